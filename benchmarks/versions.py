"""This version against an older commit, end to end: each algorithm's whole training run (compile
time and train time, 1 and 8 vmapped seeds) and the final returns of its 8-seed runs.

The older commit is checked out in a git worktree; every measurement runs in a fresh process with
one of the two trees first on its path, so neither version's imports, caches or thread pools touch
the other's. Runs are interleaved: each repeat measures both versions, and which goes first
alternates. A row reports medians over the repeats, and the min-max of the per-repeat new/old time
ratios (below 1.00: the new version is faster). The returns of every 8-seed run (a different key
per repeat) are pooled per version into an interquartile mean with a 95% stratified-bootstrap
interval (`pureeqxrl.stats`), so a change of learning shows as intervals that do not overlap.

    python benchmarks/versions.py --baseline 32c0e66 --repeats 5 --out benchmarks/results/versions_cpu
    python benchmarks/versions.py --baseline 32c0e66 --algos dqn --seeds 1 --repeats 3 --out /tmp/versions

`--layout` sets up each measuring process: both versions on one CPU device (the default), both on a
CPU device per usable core, or each as its own `pureeqxrl` command sets JAX up (`command`: 717c28d's
set up nothing; since `pureeqxrl.cpu`, the command makes a CPU device per core and compiles
threefry without loops).

    python benchmarks/versions.py --baseline 717c28d --layout command --seeds 8 --repeats 3 --out /tmp/versions

`--compile-only` lowers and compiles each run without training it: many quick repeats of the
compile columns alone (compile times spread more than train times).

On a machine without the repository's history (the device tool's GPU machines), make the worktree
where git is, carry it, and name it: `git worktree add --detach .baseline-717c28d 717c28d` here,
then `--baseline 717c28d --baseline-tree .baseline-717c28d` there.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from pureeqxrl import stats
from pureeqxrl.cpu import usable_cores

import bench_io  # benchmarks/bench_io.py (a script's folder is on its path)

ROOT = Path(__file__).resolve().parent.parent
# Each algorithm's benchmark run: its default config (the reference's settings) with these fields.
# Continuous PPO keeps its 64 envs x 64 steps over a quarter of its 1e6 steps; recurrent PPO (GRU and
# S5) and SAC get shorter budgets so that a repeat stays within a minute on 2 CPU cores.
SETTINGS: dict[str, dict] = {
    "dqn": {"total_timesteps": 500_000},
    "ppo": {"total_timesteps": 500_000},
    "ppo_continuous": {"total_timesteps": 262_144},
    "ppo_rnn": {"total_timesteps": 32_768},
    "ppo_s5": {"total_timesteps": 16_384},
    "pqn": {"total_timesteps": 500_000},
    "sac": {"total_timesteps": 10_000, "learning_starts": 1_000},
}

# What one measurement runs, in a fresh process, with the code of the tree on its path.
MEASURE = """
import json, sys, time
import jax, numpy as np
algo, num_seeds, seed, fields, setup, cores, train = json.loads(sys.argv[1])
if setup == "cores":  # before anything starts JAX's backend
    jax.config.update("jax_num_cpu_devices", cores)
elif setup == "command":  # what this version's `pureeqxrl` command sets up before it starts
    import pathlib, pureeqxrl
    # (only the tree's own: an editable install would lend a version without it the new one's)
    if (pathlib.Path(pureeqxrl.__file__).parent / "cpu.py").is_file():
        from pureeqxrl import cpu
        cpu.prepare(algo)
from jax.sharding import NamedSharding, PartitionSpec
from pureeqxrl import parallel, registry
from pureeqxrl.loop import final_return

algorithm = registry.get(algo)
config = algorithm.config_cls(**fields, eval_interval=0)
keys = jax.random.split(jax.random.key(seed), num_seeds)
program = jax.vmap(algorithm.make_train(config))
layout = parallel.choose_layout(num_seeds)  # every device the seeds divide over, as the command
start = time.perf_counter()
if layout.num_devices == 1:
    compiled = jax.jit(program).lower(keys).compile()
    call = compiled
else:  # the seeds split over the devices: parallel.sharded, its compilation timed apart
    mesh = layout.mesh()
    keys = parallel.put(keys, NamedSharding(mesh, PartitionSpec(parallel.SEEDS)))
    with jax.set_mesh(mesh):
        compiled = jax.jit(parallel.over_runs(program, mesh, layout)).lower(keys).compile()
    def call(keys):
        with jax.set_mesh(mesh):
            return compiled(keys)
compile_s = time.perf_counter() - start
if not train:
    print(json.dumps({"compile_s": compile_s, "devices": layout.num_devices}))
    sys.exit()
start = time.perf_counter()
result = jax.block_until_ready(call(keys))
train_s = time.perf_counter() - start
returns = final_return(np.asarray(result.metrics["episode_return"]))
steps = config.num_updates * config.steps_per_update * num_seeds
print(json.dumps({"compile_s": compile_s, "train_s": train_s, "steps_per_s": steps / train_s,
                  "devices": layout.num_devices, "returns": [float(r) for r in np.atleast_1d(returns)]}))
"""

# What each measuring process sets up before JAX starts (`--layout`): nothing (one CPU device), a CPU
# device per usable core (`jax_num_cpu_devices`), or what that version's `pureeqxrl` command sets up
# (since `pureeqxrl.cpu`: a CPU device per core and threefry without loops). The seeds are split over
# as many devices as they divide over.
SETUPS = ("one", "cores", "command")


def measure(
    tree: Path,
    algo: str,
    num_seeds: int,
    seed: int,
    fields: dict,
    setup: str = "one",
    xla_flags: str | None = None,
    train: bool = True,
) -> dict:
    """One compile and one training run of `algo` with the code of `tree` (only the compile if not
    `train`), in a fresh process that sets up JAX as `setup` says (one of `SETUPS`), with
    `xla_flags` as its `XLA_FLAGS` if given."""
    # the tree first, so `pureeqxrl` is its own; the rest of the path (packages installed with
    # `pip --target`, as on the device tool's machines) stays behind it
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(tree), os.environ.get("PYTHONPATH")]))
    )
    if xla_flags is not None:
        env["XLA_FLAGS"] = xla_flags
    env.pop("JAX_COMPILATION_CACHE_DIR", None)  # every compile is timed whole
    argument = json.dumps([algo, num_seeds, seed, fields, setup, usable_cores(), train])
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, argument], env=env, cwd=tree, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(f"{algo} on {tree} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def ratios(quantity: str, runs: list[dict], baseline_runs: list[dict]) -> dict:
    """The median and min-max of the per-repeat ratios `runs[i][quantity] / baseline_runs[i][quantity]`,
    as a table row's `{quantity}_ratio` and `{quantity}_ratio_min_max`."""
    values = [run[quantity] / base[quantity] for run, base in zip(runs, baseline_runs, strict=True)]
    return {
        f"{quantity}_ratio": statistics.median(values),
        f"{quantity}_ratio_min_max": [min(values), max(values)],
    }


def ratio_text(row: dict, quantity: str) -> str:
    """A row's ratio of `quantity` as a table shows it: median (min-max)."""
    low, high = row[f"{quantity}_ratio_min_max"]
    return f"{row[f'{quantity}_ratio']:.3f} ({low:.3f}-{high:.3f})"


def baseline(revision: str, tree: Path | None) -> tuple[str, Path]:
    """The older version's label and tree: `tree` as given (a checkout of `revision` made
    elsewhere, labelled `revision`), or a git worktree of `revision` labelled by its short hash."""
    if tree is not None:
        if not (tree / "pureeqxrl" / "__init__.py").is_file():
            raise SystemExit(f"--baseline-tree {tree} holds no pureeqxrl package")
        return revision, tree.resolve()
    commit = subprocess.run(
        ["git", "rev-parse", "--short", revision], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.strip()
    return commit, worktree(commit)


def worktree(commit: str) -> Path:
    """A detached git worktree of `commit` (made once, reused by later runs)."""
    path = Path(tempfile.gettempdir()) / f"pureeqxrl-{commit}"
    if not (path / "pureeqxrl").exists():
        subprocess.run(["git", "worktree", "add", "--detach", str(path), commit], cwd=ROOT, check=True)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", required=True, help="the older commit (a git revision)")
    parser.add_argument(
        "--baseline-tree", type=Path, default=None, help="a checkout of --baseline (no git needed)"
    )
    parser.add_argument("--algos", nargs="+", choices=sorted(SETTINGS), default=list(SETTINGS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--total-timesteps", type=int, default=None, help="every algorithm's budget (a quick check)"
    )
    parser.add_argument(
        "--layout",
        choices=SETUPS,
        default="one",
        help="one: both versions on one CPU device; cores: both on a CPU device per core; command: "
        "each set up as its `pureeqxrl` command sets up JAX",
    )
    parser.add_argument("--compile-only", action="store_true", help="compile each run, train none")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    cores = usable_cores()
    timed = ("compile_s",) if args.compile_only else ("compile_s", "train_s")  # medians and ratios
    budget = {} if args.total_timesteps is None else {"total_timesteps": args.total_timesteps}
    commit, old_tree = baseline(args.baseline, args.baseline_tree)
    trees = {"new": ROOT, "old": old_tree}
    samples: dict[str, list[dict]] = {}
    for repeat in range(args.repeats):
        for algo in args.algos:
            for num_seeds in args.seeds:
                fields = SETTINGS[algo] | budget
                for version in ("new", "old") if repeat % 2 == 0 else ("old", "new"):
                    sample = measure(
                        trees[version],
                        algo,
                        num_seeds,
                        repeat,
                        fields,
                        args.layout,
                        train=not args.compile_only,
                    )
                    samples.setdefault(f"{algo}/{num_seeds}/{version}", []).append(sample)
                    shown = {k: round(v, 2) for k, v in sample.items() if k != "returns"}
                    print(repeat, algo, num_seeds, version, shown, flush=True)

    rows = []
    for algo in args.algos:
        for num_seeds in args.seeds:
            new, old = samples[f"{algo}/{num_seeds}/new"], samples[f"{algo}/{num_seeds}/old"]
            row = {"algo": algo, "num_seeds": num_seeds}
            for quantity in timed + (() if args.compile_only else ("steps_per_s",)):
                row[f"new_{quantity}"] = statistics.median(s[quantity] for s in new)
                row[f"old_{quantity}"] = statistics.median(s[quantity] for s in old)
            for quantity in timed:
                row |= ratios(quantity, new, old)
            if not args.compile_only:
                row["speedup"] = 1 / row["train_s_ratio"]
                if num_seeds == max(args.seeds):
                    for version, runs in (("new", new), ("old", old)):
                        pooled = np.array([r for run in runs for r in run["returns"]])
                        row[f"{version}_returns"] = stats.summary(pooled)
            rows.append(row)

    machine = bench_io.machine()
    command = (
        f"python benchmarks/versions.py --baseline {args.baseline} --algos {' '.join(args.algos)} --seeds "
        f"{' '.join(map(str, args.seeds))} --repeats {args.repeats} --out {args.out}"
        + (f" --total-timesteps {args.total_timesteps}" if args.total_timesteps else "")
        + (f" --baseline-tree {args.baseline_tree}" if args.baseline_tree else "")
        + (f" --layout {args.layout}" if args.layout != "one" else "")
        + (" --compile-only" if args.compile_only else "")
    )
    where = {
        "one": "Both versions on one CPU device.",
        "cores": f"Both versions on {cores} CPU devices, one per usable core, the seeds split over them.",
        "command": "Each version set up as its `pureeqxrl` command sets up JAX: from `pureeqxrl.cpu` on, "
        f"{cores} CPU devices, one per usable core, the seeds split over them, and threefry without "
        "loops (but for SAC, since 5934738); before it, one CPU device.",
    }[args.layout]
    what = "compiles of whole training runs (none trained)" if args.compile_only else "whole training runs"
    lines = [
        f"# This version against {commit}: {what}, medians of {args.repeats} interleaved repeats",
        "",
        f"`{command}`",
        "",
        f"{bench_io.machine_line(machine)} Settings per algorithm: `SETTINGS` in `benchmarks/versions.py`; "
        f"evaluation off. {where} Ratios are new/old (below 1.00: faster), min-max over the repeats.",
        "",
    ]
    # the train columns (unless --compile-only), then the compile columns
    columns = ["algorithm", "seeds"]
    if not args.compile_only:
        columns += ["train s old", "train s new", "speed-up", "train new/old (min-max)"]
    columns += ["compile s old", "compile s new", "compile new/old (min-max)"]
    lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [row["algo"], str(row["num_seeds"])]
        if not args.compile_only:
            cells += [f"{row['old_train_s']:.2f}", f"{row['new_train_s']:.2f}", f"**{row['speedup']:.2f}x**"]
            cells.append(ratio_text(row, "train_s"))
        cells += [f"{row['old_compile_s']:.2f}", f"{row['new_compile_s']:.2f}", ratio_text(row, "compile_s")]
        lines.append("| " + " | ".join(cells) + " |")
    if not args.compile_only:
        lines += [
            "",
            f"Final training returns of the {max(args.seeds)}-seed runs, pooled over the repeats "
            "(IQM [95% stratified-bootstrap interval]):",
            "",
            "| algorithm | runs | old | new | intervals overlap |",
            "|---|---|---|---|---|",
        ]
    for row in rows:
        if "new_returns" not in row:
            continue
        old, new = row["old_returns"], row["new_returns"]
        overlap = old["iqm_ci"][0] <= new["iqm_ci"][1] and new["iqm_ci"][0] <= old["iqm_ci"][1]
        lines.append(
            f"| {row['algo']} | {row['num_seeds'] * args.repeats} | {stats.estimate_text(old)} | "
            f"{stats.estimate_text(new)} | {'yes' if overlap else '**no**'} |"
        )
    data = {"command": command, "baseline": commit, "machine": machine, "rows": rows, "samples": samples}
    bench_io.write_results(args.out, data, lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
