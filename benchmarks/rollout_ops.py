"""The operations of one rollout step, counted in the compiled training program (issue 18).

On a GPU, an update of PPO is bound by how many operations its rollout's step runs, not by what
they compute (docs/speed.md: 38 kernel launches per step, three quarters of an update on an H100).
This script compiles an algorithm's whole training program (`jax.jit(jax.vmap(make_train(config)))`,
default settings, `--seeds` seeds) on the machine at hand, finds the loops that run `num_steps`
times, and counts the operations in the largest one's body by kind: fusions (on a GPU, each one a
kernel), copies, matrix products left unfused, and among the fusions those that write a step's
output into the stacked rollout (`dynamic-update-slice`). A CPU compiles other fusions than a GPU,
so the counts compare versions on one backend; they are not the GPU's kernels.

    python benchmarks/rollout_ops.py --algos ppo pqn ppo_rnn --out benchmarks/results/rollout_ops_cpu
    PYTHONPATH=.baseline-97eab10 python benchmarks/rollout_ops.py --out /tmp/rollout_ops_97eab10

(the second line counts another checkout's program: the first `pureeqxrl` on the path is the one
compiled, and the table names its commit). `--collect-alone` counts instead the program that
`benchmarks/profile_update.py` times as the collection alone (`UpdateSteps.collect` scanned,
keeping the state it hands on), to show what XLA leaves out of it. `--gradient-step` counts
instead the largest loop body that runs `num_minibatches` times in the training program: one
gradient step of the update's epochs (the forward and backward passes, the loss and the optimizer).

    python benchmarks/rollout_ops.py --algos ppo --seeds 1 --gradient-step --out /tmp/gradient_step_ops
"""

import argparse
import re
import subprocess
from collections import Counter
from pathlib import Path

import jax

import pureeqxrl
from pureeqxrl import registry
from pureeqxrl.loop import make_chunk_runner

import bench_io  # benchmarks/bench_io.py (a script's folder is on its path)

ROLLOUT_ALGORITHMS = ("ppo", "ppo_continuous", "ppo_rnn", "pqn")


def computations(hlo: str) -> dict[str, list[str]]:
    """The instruction lines of each computation of an HLO module's text, by name."""
    bodies: dict[str, list[str]] = {}
    name = None
    for line in hlo.splitlines():
        header = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$", line)
        if header:
            name = header.group(1)
            bodies[name] = []
        elif line.startswith("}"):
            name = None
        elif name is not None:
            bodies[name].append(line)
    return bodies


def loop_bodies(bodies: dict[str, list[str]], trip_count: int) -> list[list[str]]:
    """The bodies of the while loops that XLA knows to run `trip_count` times, among a module's
    `computations`."""
    found = []
    for lines in bodies.values():
        for line in lines:
            if " while(" in line and f'"n":"{trip_count}"' in line.replace(" ", ""):
                found.append(bodies[re.search(r"body=%?([\w.\-]+)", line).group(1)])
    return found


def count_operations(body: list[str], bodies: dict[str, list[str]]) -> dict[str, int]:
    """Operations of a loop body by kind, its fusions looked up in the module's `computations`;
    `stacked outputs` are the fusions that compute a `dynamic-update-slice` (a scan's output, one
    step's slice of it), `matrix products` the operations that compute a `dot` (fused or not; both
    also count as their kind)."""

    def computes(line: str, op: str) -> bool:
        called = re.search(r"calls=%?([\w.\-]+)", line)
        return called is not None and any(f" {op}(" in inner for inner in bodies.get(called.group(1), []))

    kinds: Counter = Counter()
    for line in body:
        op = re.search(r"= [^ ]+ ([\w\-]+)\(", line)
        if op is None:
            continue
        kind = op.group(1)
        if kind in ("get-tuple-element", "tuple", "constant", "bitcast", "parameter"):
            continue  # bookkeeping: no work of their own
        kinds[kind] += 1
        if kind == "fusion" and computes(line, "dynamic-update-slice"):
            kinds["stacked outputs"] += 1
        if kind == "dot" or (kind == "fusion" and computes(line, "dot")):
            kinds["matrix products"] += 1
    return dict(kinds)


def rollout_operations(
    algo: str, num_seeds: int, collect_alone: bool = False, gradient_step: bool = False
) -> dict[str, int]:
    """`count_operations` of the largest `num_steps` loop of `algo`'s compiled training program
    (or, with `collect_alone`, of `profile_update.py`'s collection program; with `gradient_step`,
    of its largest `num_minibatches` loop)."""
    algorithm = registry.get(algo)
    config = algorithm.config_cls(eval_interval=0)
    keys = jax.random.split(jax.random.key(0), num_seeds)
    if collect_alone:  # as benchmarks/profile_update.py times it
        steps = algorithm.make_update_steps(config)
        state = make_chunk_runner(steps, config.num_updates, config.log_interval).init(keys)
        collect = jax.vmap(lambda s: jax.lax.optimization_barrier(steps.collect(s))[0])
        scanned = lambda s: jax.lax.scan(lambda c, _: (collect(c), None), s, None, 2)[0]  # noqa: E731
        hlo = jax.jit(scanned).lower(state).compile().as_text()
    else:
        hlo = jax.jit(jax.vmap(algorithm.make_train(config))).lower(keys).compile().as_text()
    bodies = computations(hlo)
    trips = config.num_minibatches if gradient_step else config.num_steps
    loops = loop_bodies(bodies, trips)
    if not loops:
        raise SystemExit(f"{algo}: no loop of {trips} steps in the compiled program")
    return count_operations(max(loops, key=len), bodies)


def checkout() -> str:
    """The commit of the `pureeqxrl` imported (`+` if its tree has changes), or its path."""
    folder = Path(pureeqxrl.__file__).resolve().parent.parent
    git = ["git", "-C", str(folder)]
    try:
        commit = subprocess.run(
            [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        )
        dirty = subprocess.run(
            [*git, "status", "--porcelain", "--", "pureeqxrl"], capture_output=True, text=True
        )
    except (OSError, subprocess.CalledProcessError):
        return str(folder)
    return commit.stdout.strip() + ("+" if dirty.stdout.strip() else "")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--algos", nargs="+", choices=ROLLOUT_ALGORITHMS, default=["ppo", "pqn", "ppo_rnn"])
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/rollout_ops_cpu"))
    parser.add_argument("--collect-alone", action="store_true", help="profile_update.py's collection program")
    parser.add_argument(
        "--gradient-step", action="store_true", help="a gradient step instead of a rollout step"
    )
    args = parser.parse_args()
    if args.collect_alone and args.gradient_step:
        parser.error("--collect-alone has no gradient step")

    rows = [
        {"algo": algo, **rollout_operations(algo, args.seeds, args.collect_alone, args.gradient_step)}
        for algo in args.algos
    ]
    info, version = bench_io.machine(), checkout()
    command = f"python benchmarks/rollout_ops.py --algos {' '.join(args.algos)} --seeds {args.seeds} --out {args.out}"
    program = (
        "the collection alone, as `profile_update.py` times it"
        if args.collect_alone
        else "the training program"
    )
    command += " --collect-alone" if args.collect_alone else ""
    command += " --gradient-step" if args.gradient_step else ""
    step = "gradient step" if args.gradient_step else "rollout step"
    lines = [
        f"# The operations of one {step} in {program}, compiled",
        "",
        f"`{command}`",
        "",
        f"{bench_io.machine_line(info)} pureeqxrl at {version}; {args.seeds} vmapped seeds, default settings.",
        "",
        "| algorithm | fusions | of them stacked outputs | matrix products | copies | other | all |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        counts = {key: value for key, value in row.items() if key != "algo"}
        fusions, stacked, copies = (
            counts.get("fusion", 0),
            counts.get("stacked outputs", 0),
            counts.get("copy", 0),
        )
        products = counts.get("matrix products", 0)
        other = sum(counts.values()) - fusions - stacked - copies - products
        lines.append(
            f"| {row['algo']} | {fusions} | {stacked} | {products} | {copies} | {other} "
            f"| {fusions + copies + other} |"
        )
    bench_io.write_results(
        args.out, {"machine": info, "command": command, "version": version, "rows": rows}, lines
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
