"""A sweep in one program against the same runs as separate programs: 8 learning rates x 4 seeds as
one `jax.jit(vmap(vmap(train)))` (`pureeqxrl.training.sweep.make_sweep_train`), against 8 programs
`jax.jit(vmap(make_train(config)))` of 4 seeds each, one per learning rate, run one after another.

Compile + train wall time of the whole sweep, per variant. Interleaved repeats, which variant goes
first alternates; medians, with the min-max of the per-repeat separate/one-program ratios. Every
repeat compiles afresh (new functions; no persistent cache), as a new sweep would.

    python benchmarks/sweeps.py --algo ppo --repeats 3 --out benchmarks/results/sweeps_ppo_cpu
    python benchmarks/sweeps.py --algo dqn --repeats 3 --total-timesteps 100000 --out benchmarks/results/sweeps_dqn_cpu
"""

import argparse
import dataclasses
import statistics
import time
from pathlib import Path

import jax
import numpy as np

from pureeqxrl.loop import final_return
from pureeqxrl.registry import ALGORITHMS
from pureeqxrl.training import sweep

import bench_io  # benchmarks/bench_io.py (a script's folder is on its path)

VARIANTS = ("one_program", "separate_programs")


def one_program(algorithm, config, configurations, keys) -> dict:
    start = time.perf_counter()
    train = sweep.make_sweep_train(algorithm.make_learner, config)
    batched = jax.vmap(jax.vmap(train, in_axes=(None, 0)), in_axes=(0, None))
    hyperparameters = sweep.stack(configurations)
    compiled = jax.jit(batched).lower(hyperparameters, keys).compile()
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    result = jax.block_until_ready(compiled(hyperparameters, keys))
    train_s = time.perf_counter() - start
    returns = final_return(np.asarray(result.metrics["episode_return"]))
    return {"compile_s": compile_s, "train_s": train_s, "final_return": returns.mean(axis=1).tolist()}


def separate_programs(algorithm, config, configurations, keys) -> dict:
    compile_s = train_s = 0.0
    finals = []
    for values in configurations:
        start = time.perf_counter()
        train = algorithm.make_train(dataclasses.replace(config, **values))
        compiled = jax.jit(jax.vmap(train)).lower(keys).compile()
        compile_s += time.perf_counter() - start
        start = time.perf_counter()
        result = jax.block_until_ready(compiled(keys))
        train_s += time.perf_counter() - start
        finals.append(float(final_return(np.asarray(result.metrics["episode_return"])).mean()))
    return {"compile_s": compile_s, "train_s": train_s, "final_return": finals}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algo", choices=sorted(ALGORITHMS), default="ppo")
    parser.add_argument("--configs", type=int, default=8)
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--total-timesteps", type=int, default=None, help="default: the config's")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    algorithm = ALGORITHMS[args.algo]
    config = algorithm.config_cls()
    if args.total_timesteps:
        config = dataclasses.replace(config, total_timesteps=args.total_timesteps)
    rates = np.geomspace(config.learning_rate / 4, config.learning_rate * 4, args.configs)
    configurations = sweep.grid({"learning_rate": rates.tolist()})
    sweep.check_configurations(config, configurations)
    keys = jax.random.split(jax.random.key(0), args.seeds)
    run = {"one_program": one_program, "separate_programs": separate_programs}
    samples: dict[str, list[dict]] = {variant: [] for variant in VARIANTS}
    for repeat in range(args.repeats):
        for variant in VARIANTS if repeat % 2 == 0 else VARIANTS[::-1]:
            measured = run[variant](algorithm, config, configurations, keys)
            samples[variant].append(measured)
            print(repeat, variant, round(measured["compile_s"], 2), round(measured["train_s"], 2), flush=True)

    def median(variant: str, key: str) -> float:
        if key == "total_s":
            return statistics.median(s["compile_s"] + s["train_s"] for s in samples[variant])
        return statistics.median(s[key] for s in samples[variant])

    def ratios(key: str) -> list[float]:
        total = lambda s: s["compile_s"] + s["train_s"] if key == "total_s" else s[key]  # noqa: E731
        return [
            total(b) / total(a)
            for a, b in zip(samples["one_program"], samples["separate_programs"], strict=True)
        ]

    machine = bench_io.machine()
    command = (
        f"python benchmarks/sweeps.py --algo {args.algo} --configs {args.configs} --seeds {args.seeds} "
        f"--repeats {args.repeats}"
        + (f" --total-timesteps {args.total_timesteps}" if args.total_timesteps else "")
        + f" --out {args.out}"
    )
    lines = [
        f"{args.algo} on {config.env}, {args.configs} learning rates x {args.seeds} seeds, "
        f"{config.total_timesteps:,} steps per run, {args.repeats} interleaved repeats. `{command}`; "
        f"{bench_io.machine_line(machine)}",
        "",
        "| | one program (s) | separate programs (s) | separate / one program, median (min-max) |",
        "|---|---|---|---|",
    ]
    for key, name in (("compile_s", "compile"), ("train_s", "train"), ("total_s", "compile + train")):
        r = ratios(key)
        lines.append(
            f"| {name} | {median('one_program', key):.2f} | {median('separate_programs', key):.2f} "
            f"| {statistics.median(r):.2f} ({min(r):.2f}-{max(r):.2f}) |"
        )
    bench_io.write_results(
        args.out,
        {"command": command, "machine": machine, "configurations": configurations, "samples": samples},
        lines,
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
