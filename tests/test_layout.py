"""The package's shape: no import cycles, no algorithm module importing another, one test file per
module. Read from the source with `ast` (nothing is imported), function-level imports included."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "pureeqxrl"
ALGORITHMS = {"pureeqxrl.dqn", "pureeqxrl.pqn", "pureeqxrl.ppo", "pureeqxrl.ppo_rnn", "pureeqxrl.sac"}


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
    assert "pureeqxrl.policy_gradient" in graph["pureeqxrl.ppo"]  # the graph sees imports
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_no_algorithm_module_imports_another():
    graph = _import_graph()
    assert ALGORITHMS <= set(graph)
    for algorithm in ALGORITHMS:
        assert not graph[algorithm] & ALGORITHMS, (algorithm, graph[algorithm] & ALGORITHMS)


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
