"""Training throughput of algorithms side by side: environment steps per second of each one's
training (its reference settings, learning included), same machine, interleaved.

    python benchmarks/throughput.py --algos pqn dqn --env CartPole-v1 --seeds 1 8 \
        --out benchmarks/results/throughput_pqn_dqn_cpu
    python benchmarks/throughput.py --algos pqn@minatar pqn@minatar,torso=mlp dqn --env Breakout-MinAtar

An entry of `--algos` is `ALGO[@PRESET][,FIELD=VALUE...]`: the algorithm's defaults, or one of its
presets (`pureeqxrl train ALGO --preset PRESET`), with fields changed (`hidden_sizes=128x128`).

Each algorithm's chunk program (`--updates` updates, what `pureeqxrl train` runs between
checkpoints) is compiled first and run once to warm up; then the algorithms take turns,
alternating which goes first, for `--repeats` timed chunks. The table gives the median env steps/s
with min-max, and each algorithm's speed relative to the first one.
"""

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from pureeqxrl import registry
from pureeqxrl.config import typed_values
from pureeqxrl.training.chunks import make_chunk_runner

from bench_io import machine, machine_line, write_results


def variant_config(spec: str) -> tuple[registry.Algorithm, Any]:
    """The algorithm and config of an `--algos` entry `ALGO[@PRESET][,FIELD=VALUE...]`."""
    name, *changes = spec.split(",")
    algo, _, preset = name.partition("@")
    algorithm = registry.get(algo)
    values = dict(getattr(algorithm.config_cls, "PRESETS", {})[preset]) if preset else {}
    for change in changes:
        field, _, value = change.partition("=")
        values[field] = (
            [json.loads(v) for v in value.split("x")] if field == "hidden_sizes" else _parsed(value)
        )
    return algorithm, algorithm.config_cls(**typed_values(algorithm.config_cls, values))


def _parsed(value: str) -> Any:
    try:
        return json.loads(value)  # numbers and booleans
    except json.JSONDecodeError:
        return value  # a word: torso=mlp


def prepare(spec: str, env: str, seeds: int, updates: int) -> dict:
    algorithm, config = variant_config(spec)
    config = dataclasses.replace(config, env=env, eval_interval=0)
    # DQN's first updates only collect (learning_starts): time a stretch where it learns.
    if hasattr(config, "learning_starts"):
        config = dataclasses.replace(config, learning_starts=0)
    config = dataclasses.replace(config, total_timesteps=config.steps_per_update * updates * 4)
    runner = make_chunk_runner(algorithm.make_learner(config, algorithm.network(False)), config)
    state = runner.init(jax.random.split(jax.random.key(0), seeds))
    start = time.perf_counter()
    runner.compile(state, updates)
    compile_seconds = time.perf_counter() - start
    state, rows = runner.run(state, updates, 0)
    jax.block_until_ready(rows)
    return {
        "algo": spec,
        "seeds": seeds,
        "updates": updates,
        "runner": runner,
        "state": state,
        "env_steps": config.steps_per_update * updates * seeds,
        "compile_seconds": compile_seconds,
        "seconds": [],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algos", nargs="+", default=["pqn", "dqn"], help="ALGO[@PRESET][,FIELD=VALUE...]")
    parser.add_argument("--env", default="CartPole-v1")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 8])
    parser.add_argument(
        "--updates", type=int, nargs="+", default=None, help="updates per chunk, per algorithm"
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    # One chunk of roughly 1e5 env steps per seed, whatever an update's size.
    updates = args.updates or [
        max(1, 100_000 // variant_config(spec)[1].steps_per_update) for spec in args.algos
    ]
    runs = [
        prepare(algo, args.env, seeds, n)
        for seeds in args.seeds
        for algo, n in zip(args.algos, updates, strict=True)
    ]
    for repeat in range(args.repeats):
        for item in runs if repeat % 2 == 0 else runs[::-1]:
            start = time.perf_counter()
            item["state"], rows = item["runner"].run(item["state"], item["updates"], 0)
            jax.block_until_ready((item["state"], rows))
            item["seconds"].append(time.perf_counter() - start)
    info = machine()
    command = "python benchmarks/throughput.py " + " ".join(
        f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
        for k, v in vars(args).items()
        if v is not None
    )
    lines = [
        f"# Training throughput on {args.env}: {', '.join(args.algos)}",
        "",
        f"`{command}`",
        "",
        f"{machine_line(info)} Each algorithm's own settings (`pureeqxrl train ALGO` defaults, or the preset "
        "named after `@`, with the fields changed after commas), learning "
        f"included; median of {args.repeats} interleaved chunks (min-max), compile excluded.",
        "",
        "| algorithm | seeds | env steps per chunk | env steps/s, median (min-max) | vs "
        + args.algos[0]
        + " | compile (s) |",
        "|---|---|---|---|---|---|",
    ]
    results = []
    for item in runs:
        rates = item["env_steps"] / np.array(item["seconds"])
        first = next(r for r in runs if r["algo"] == args.algos[0] and r["seeds"] == item["seeds"])
        ratio = np.median(rates) / np.median(first["env_steps"] / np.array(first["seconds"]))
        lines.append(
            f"| {item['algo']} | {item['seeds']} | {item['env_steps']:,} | {np.median(rates):,.0f} "
            f"({rates.min():,.0f}-{rates.max():,.0f}) | {ratio:.2f} | {item['compile_seconds']:.1f} |"
        )
        results.append(
            {k: item[k] for k in ("algo", "seeds", "env_steps", "compile_seconds", "seconds")}
            | {"steps_per_second": float(np.median(rates)), "ratio_to_first": float(ratio)}
        )
    print("\n".join(lines))
    if args.out is not None:
        write_results(
            args.out,
            {"machine": info, "args": vars(args) | {"out": str(args.out)}, "results": results},
            lines,
        )


if __name__ == "__main__":
    main()
