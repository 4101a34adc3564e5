"""The package's shape: its layers, no import cycles, one test file per module. Read from the source
with `ast` (nothing is imported), function-level imports included.

The layers, bottom up: the files module; the building blocks (networks, environments, buffers, the
training loop, minibatches, statistics); the algorithms; then what works from them: the device code,
the engine (`pureeqxrl.training`), the run folders and the registry, the command line."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "pureeqxrl"
ALGORITHMS = {"pureeqxrl.dqn", "pureeqxrl.pqn", "pureeqxrl.ppo", "pureeqxrl.ppo_rnn", "pureeqxrl.sac"}
FILES = {"pureeqxrl.files"}
BUILDING_BLOCKS = {
    f"pureeqxrl.{name}"
    for name in (
        "adapters config envs evaluate flags heads loop minibatch nets normalize probes recurrent replay stats"
    ).split()
}
DEVICES = {"pureeqxrl.parallel", "pureeqxrl.cpu"}
TRAINING = "pureeqxrl.training"
COMMAND_LINE = {"pureeqxrl.cli", "pureeqxrl.__main__"}
RECURRENT_PPO_USES = {"pureeqxrl.ppo_rnn": {"pureeqxrl.ppo"}}
"""Recurrent PPO is PPO's recipe (config, GAE, loss) with memory: the one algorithm that imports another."""


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    modules = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                assert node.level == 0, f"{path.name}: relative import (this check reads absolute ones)"
                imported.add(node.module)
                imported |= {f"{node.module}.{alias.name}" for alias in node.names}
        graph[name] = {module for module in imported if module in modules and module != name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as the list of modules around it, or None."""
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = "open"
        path.append(module)
        for other in sorted(graph[module]):
            if state.get(other) == "open":
                return path[path.index(other) :] + [other]
            if other not in state and (found := visit(other)):
                return found
        state[module] = "done"
        path.pop()
        return None

    for module in sorted(graph):
        if module not in state and (found := visit(module)):
            return found
    return None


def test_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycles():
    graph = _import_graph()
    assert "pureeqxrl.ppo" in graph["pureeqxrl.ppo_rnn"]  # the graph sees imports
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def _package(graph: dict[str, set[str]], module: str) -> set[str]:
    """What `module` imports of the package, its own package's `__init__` left out."""
    return {other for other in graph[module] if other != "pureeqxrl"}


def test_the_files_module_and_the_building_blocks_import_no_algorithm_and_nothing_above():
    graph = _import_graph()
    assert FILES | BUILDING_BLOCKS <= set(graph)
    assert not _package(graph, "pureeqxrl.files")
    for module in BUILDING_BLOCKS:
        above = _package(graph, module) - FILES - BUILDING_BLOCKS
        assert not above, (module, above)


def test_algorithms_import_building_blocks_only_not_the_engine_the_devices_or_the_command_line():
    graph = _import_graph()
    assert ALGORITHMS <= set(graph)
    for algorithm in ALGORITHMS:
        other = (
            _package(graph, algorithm) - FILES - BUILDING_BLOCKS - RECURRENT_PPO_USES.get(algorithm, set())
        )
        assert not other, (algorithm, other)
    assert "pureeqxrl.ppo" in graph["pureeqxrl.ppo_rnn"]  # the exception is real


def test_the_device_code_and_the_engine_stay_below_the_command_line():
    graph = _import_graph()
    for module in DEVICES:
        assert not _package(graph, module) - FILES - BUILDING_BLOCKS, module
    engine = [module for module in graph if module.startswith(TRAINING)]
    assert len(engine) >= 4  # chunks, run, sweep, loggers
    for module in graph:
        if module not in COMMAND_LINE:
            assert not graph[module] & COMMAND_LINE, (module, graph[module] & COMMAND_LINE)


def test_every_module_has_its_test_file():
    tests = Path(__file__).resolve().parent
    missing = []
    for path in PACKAGE.rglob("*.py"):
        if path.name in ("__init__.py", "__main__.py"):  # the command's entry: tests/test_parallel.py
            continue
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if not (tests / f"test_{'_'.join(parts)}.py").exists():
            missing.append(path.name)
    assert not missing, missing
