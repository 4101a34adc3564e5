"""Every Equinox-vs-Linen benchmark with the settings of the README's tables, then the chart.

Runs, one after another (never two JAX jobs at once: they would share the cores), for each algorithm
`per_op.py` and `end_to_end.py` (1 and 8 vmapped seeds), then `dispatch.py` and `chart.py`, then
the training throughput (env steps/s) of the algorithms without a Linen twin beside those with one
(`throughput.py`: PQN and DQN on CartPole and on Breakout-MinAtar, PQN's CNN and MLP there, SAC
and continuous PPO on Pendulum). Results
go to `benchmarks/results/*_<backend>.{md,json}` and `ratios_<backend>.png`, where `<backend>` is
`jax.default_backend()` (`cpu`, `gpu`).

    python benchmarks/suite.py                      # all of it: about 50 minutes on 2 CPU cores
    python benchmarks/suite.py --algos ppo --skip-dispatch
"""

import argparse
import subprocess
import sys
import time
from pathlib import Path

import jax

HERE = Path(__file__).parent
# End-to-end budgets: PureJaxRL's defaults where a run takes seconds on a CPU, shorter for the
# slower ones (continuous PPO: a quarter of its 1M steps; recurrent PPO: 32,768 steps).
TOTAL_TIMESTEPS = {"dqn": 500_000, "ppo": 500_000, "ppo_continuous": 262_144, "ppo_rnn": 32_768}
# Throughput tables: (name, environment, `throughput.py --algos` entries, updates per chunk or None
# for about 1e5 env steps per seed). SAC takes one env step per update: 2,000 updates per chunk.
THROUGHPUT = [
    ("pqn_dqn", "CartPole-v1", ["pqn", "dqn"], None),
    (
        "minatar",
        "Breakout-MinAtar",
        ["pqn@minatar", "pqn@minatar,torso=mlp,hidden_sizes=256x256", "dqn"],
        None,
    ),
    ("sac", "Pendulum-v1", ["sac", "ppo_continuous"], [2_000, 24]),
]
# Per-operation iterations per timing: more for the cheap operations.
INNER = {"dqn": 1000, "ppo": 20, "ppo_continuous": 20, "ppo_rnn": 10}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algos", nargs="+", choices=sorted(TOTAL_TIMESTEPS), default=list(TOTAL_TIMESTEPS))
    parser.add_argument("--repeats", type=int, default=5, help="end-to-end repeats (at least 5)")
    parser.add_argument("--rounds", type=int, default=8, help="per-operation rounds")
    parser.add_argument("--skip-per-op", action="store_true")
    parser.add_argument("--skip-end-to-end", action="store_true")
    parser.add_argument("--skip-dispatch", action="store_true")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument(
        "--results", type=Path, default=Path("benchmarks/results"), help="relative to the repository root"
    )
    args = parser.parse_args()
    if args.repeats < 1 or args.rounds < 1:
        parser.error("--repeats and --rounds must be positive")
    suffix = jax.default_backend()
    out = args.results

    commands = []
    for algo in args.algos:
        if not args.skip_per_op:
            commands.append(
                [
                    "per_op.py",
                    "--algo",
                    algo,
                    "--rounds",
                    str(args.rounds),
                    "--inner",
                    str(INNER[algo]),
                    "--out",
                    str(out / f"per_op_{algo}_{suffix}"),
                ]
            )
        if not args.skip_end_to_end:
            commands.append(
                [
                    "end_to_end.py",
                    "--algo",
                    algo,
                    "--repeats",
                    str(args.repeats),
                    "--seeds",
                    "1",
                    "8",
                    "--total-timesteps",
                    str(TOTAL_TIMESTEPS[algo]),
                    "--out",
                    str(out / f"{algo}_{suffix}"),
                ]
            )
    if not args.skip_dispatch:
        commands.append(
            ["dispatch.py", "--rounds", "7", "--repeats", "9", "--out", str(out / f"dispatch_{suffix}")]
        )
    commands.append(["chart.py", "--results", str(out), "--suffix", suffix])
    if not args.skip_throughput:
        for name, env, algos, updates in THROUGHPUT:
            command = [
                "throughput.py",
                "--algos",
                *algos,
                "--env",
                env,
                "--seeds",
                "1",
                "8",
                "--repeats",
                "3",
            ]
            if updates:
                command += ["--updates", *map(str, updates)]
            commands.append([*command, "--out", str(out / f"throughput_{name}_{suffix}")])

    for command in commands:
        start = time.perf_counter()
        print("$ python benchmarks/" + " ".join(command), flush=True)
        subprocess.run(
            [sys.executable, f"benchmarks/{command[0]}", *command[1:]], check=True, cwd=HERE.parent
        )
        print(f"({time.perf_counter() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
