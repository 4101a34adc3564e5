"""Equinox vs Flax Linen, end to end: one algorithm's whole training run with its default config.

Both versions run the same training code (`make_train` of `pureeqxrl.registry.ALGORITHMS[algo]`);
only the network library differs. Runs are interleaved (each repeat runs both libraries, and which
goes first alternates) and each row reports the median of the repeats, with the min-max of the
per-repeat Equinox/Linen ratios of compile time and of train time (after one unrecorded warm-up
compile per library). Compile time is tracing, lowering and XLA compilation of the whole
`jax.jit(jax.vmap(train))`; train time is one call of the compiled program.

    python benchmarks/end_to_end.py --algo dqn --repeats 5 --seeds 1 8 --out benchmarks/results/dqn_cpu
    python benchmarks/end_to_end.py --algo ppo --repeats 5 --seeds 1 8 --out benchmarks/results/ppo_cpu
"""

import argparse
import statistics
import time
from pathlib import Path

import jax
import numpy as np

from pureeqxrl.loop import final_return
from pureeqxrl.registry import ALGORITHMS, Algorithm

import bench_io  # benchmarks/bench_io.py (a script's folder is on its path)

LIBRARIES = ("equinox", "linen")


def compile_train(algorithm: Algorithm, library: str, config, keys):
    train = algorithm.make_train(config, make_network=algorithm.network(linen=library == "linen"))
    return jax.jit(jax.vmap(train)).lower(keys).compile()


def measure(algorithm: Algorithm, library: str, num_seeds: int, config, seed: int) -> dict:
    keys = jax.random.split(jax.random.key(seed), num_seeds)
    start = time.perf_counter()
    compiled = compile_train(algorithm, library, config, keys)
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    result = jax.block_until_ready(compiled(keys))
    train_s = time.perf_counter() - start
    returns = final_return(np.asarray(result.metrics["episode_return"]))
    return {
        "compile_s": compile_s,
        "train_s": train_s,
        "steps_per_s": config.num_updates * config.steps_per_update * num_seeds / train_s,
        "final_return": float(np.mean(returns)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algo", choices=sorted(ALGORITHMS), default="dqn")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--total-timesteps", type=int, default=500_000)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    algorithm = ALGORITHMS[args.algo]
    # The training alone, as in the committed tables (measured before evaluation during training
    # existed): evaluation is the same code for both libraries.
    config = algorithm.config_cls(total_timesteps=args.total_timesteps, eval_interval=0)
    samples = {(lib, n): [] for n in args.seeds for lib in LIBRARIES}
    # Warm-up, not recorded: the first compile in a process also pays one-off costs (JAX's and
    # XLA's own caches and thread pools), which would land on whichever library went first.
    for library in LIBRARIES:
        compile_train(algorithm, library, config, jax.random.split(jax.random.key(0), 1))
    for repeat in range(args.repeats):
        for num_seeds in args.seeds:
            # Interleaved, so drift hits both alike; which goes first alternates, so order does not.
            for library in LIBRARIES if repeat % 2 == 0 else LIBRARIES[::-1]:
                sample = measure(algorithm, library, num_seeds, config, seed=repeat)
                samples[library, num_seeds].append(sample)
                print(repeat, library, num_seeds, {k: round(v, 2) for k, v in sample.items()}, flush=True)

    rows = []
    for num_seeds in args.seeds:
        medians = {
            lib: {
                k: statistics.median(s[k] for s in samples[lib, num_seeds])
                for k in samples[lib, num_seeds][0]
            }
            for lib in LIBRARIES
        }
        row = {"num_seeds": num_seeds, "equinox": medians["equinox"], "linen": medians["linen"]}
        for quantity in ("compile", "train"):
            ratios = [
                ours[f"{quantity}_s"] / theirs[f"{quantity}_s"]
                for ours, theirs in zip(
                    samples["equinox", num_seeds], samples["linen", num_seeds], strict=True
                )
            ]
            row[f"{quantity}_time_ratio_median"] = statistics.median(ratios)
            row[f"{quantity}_time_ratio_min_max"] = [min(ratios), max(ratios)]
        rows.append(row)

    machine = bench_io.machine()
    command = (
        f"python benchmarks/end_to_end.py --algo {args.algo} --repeats {args.repeats} --seeds "
        f"{' '.join(map(str, args.seeds))} --total-timesteps {args.total_timesteps} --out {args.out}"
    )
    data = {
        "command": command,
        "machine": machine,
        "rows": rows,
        "samples": {f"{lib}/{n}": s for (lib, n), s in samples.items()},
    }

    lines = [
        f"{args.algo.upper()}, {config.env}, {args.total_timesteps:,} env steps per seed, medians of {args.repeats} "
        f"interleaved repeats. {bench_io.machine_line(machine)}",
        f"Command: `{command}`",
        "",
        "| seeds | library | compile s | train s | env steps/s | final return | Equinox/Linen compile (min-max) "
        "| Equinox/Linen train (min-max) |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def ratio(row, quantity):
        low, high = row[f"{quantity}_time_ratio_min_max"]
        return f"**{row[f'{quantity}_time_ratio_median']:.3f}** ({low:.3f}-{high:.3f})"

    for row in rows:
        for library in LIBRARIES:
            m = row[library]
            ratios = f"{ratio(row, 'compile')} | {ratio(row, 'train')}" if library == "equinox" else " | "
            lines.append(
                f"| {row['num_seeds']} | {library} | {m['compile_s']:.2f} | {m['train_s']:.2f} | "
                f"{m['steps_per_s']:,.0f} | {m['final_return']:.1f} | {ratios} |"
            )
    bench_io.write_results(args.out, data, lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
