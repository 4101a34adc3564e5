"""Steps per second on 1, 2, 4, ... devices, and the parallel efficiency (steps/s on N devices /
(N x steps/s on one)), for both ways of spreading training (`pureeqxrl.parallel`):

- seeds: `--seeds-per-device` runs on each device (N devices train N times the runs);
- data parallel: `--seeds-per-device` runs, each run's environments split over the N devices,
  `--envs-per-device` on each (N devices step N times the environments).

Both are weak scaling: the work per device stays the same, so perfect scaling is efficiency 1.0.
The variants are timed interleaved, each program compiled first; the median of `--repeats` timed
chunks of `--updates` updates is reported, with min-max.

    python benchmarks/scaling.py --algo ppo --out benchmarks/results/scaling_ppo_cpu

On a CPU, `XLA_FLAGS=--xla_force_host_platform_device_count=4` makes 4 devices out of the cores
the machine has: such a table checks that the sharded programs run, it measures no scaling.
"""

import argparse
import dataclasses
import time
from pathlib import Path

import jax
import numpy as np

from pureeqxrl import dqn, parallel, ppo
from pureeqxrl.training.chunks import make_chunk_runner

from bench_io import machine, machine_line, write_results

CONFIGS = {
    "ppo": (ppo, ppo.PPOConfig(env="CartPole-v1", num_steps=128)),
    "ppo_continuous": (ppo, ppo.PPOContinuousConfig(env="Pendulum-v1", num_steps=64, num_minibatches=8)),
    "dqn": (dqn, dqn.DQNConfig(env="CartPole-v1", learning_starts=0)),
}


def variant(algo: str, mode: str, devices: int, seeds_per_device: int, envs_per_device: int):
    """(config, number of runs, layout) of one measured variant."""
    module, base = CONFIGS[algo]
    if mode == "seeds":
        config = dataclasses.replace(base, num_envs=envs_per_device)
        return module, config, seeds_per_device * devices, parallel.Layout(devices, 1)
    config = dataclasses.replace(base, num_envs=envs_per_device * devices)
    return module, config, seeds_per_device, parallel.Layout(1, devices)


def measure(args) -> list[dict]:
    counts = [n for n in (1, 2, 4, 8, 16, 32, 64) if n <= jax.device_count()]
    variants = []
    for mode in ("seeds", "data parallel"):
        for devices in counts:
            module, config, num_runs, layout = variant(
                args.algo, mode, devices, args.seeds_per_device, args.envs_per_device
            )
            config = dataclasses.replace(config, total_timesteps=config.steps_per_update * args.updates * 4)
            config = dataclasses.replace(config, eval_interval=0)
            runner = make_chunk_runner(
                module.make_learner(config), config, layout=layout if devices > 1 else None
            )
            keys = jax.random.split(jax.random.key(0), num_runs)
            state = runner.init(keys)
            start = time.perf_counter()
            runner.compile(state, args.updates)
            compile_seconds = time.perf_counter() - start
            state, rows = runner.run(state, args.updates, 0)  # warm-up
            jax.block_until_ready(rows)
            variants.append(
                {
                    "mode": mode,
                    "devices": devices,
                    "runs": num_runs,
                    "envs_per_run": config.num_envs,
                    "env_steps_per_chunk": config.steps_per_update * args.updates * num_runs,
                    "compile_seconds": compile_seconds,
                    "seconds": [],
                    "runner": runner,
                    "state": state,
                }
            )
    for repeat in range(args.repeats):
        order = variants if repeat % 2 == 0 else variants[::-1]  # alternate which goes first
        for item in order:
            start = time.perf_counter()
            item["state"], rows = item["runner"].run(item["state"], args.updates, 0)
            jax.block_until_ready((item["state"], rows))
            item["seconds"].append(time.perf_counter() - start)
    results = []
    for item in variants:
        rates = item["env_steps_per_chunk"] / np.array(item["seconds"])
        results.append(
            {
                key: item[key]
                for key in ("mode", "devices", "runs", "envs_per_run", "compile_seconds", "seconds")
            }
            | {
                "steps_per_second": float(np.median(rates)),
                "steps_per_second_min": float(rates.min()),
                "steps_per_second_max": float(rates.max()),
            }
        )
    for row in results:
        one = next(r for r in results if r["mode"] == row["mode"] and r["devices"] == 1)
        row["efficiency"] = row["steps_per_second"] / (row["devices"] * one["steps_per_second"])
    return results


def table(args, results: list[dict], info: dict, command: str) -> list[str]:
    cpu = info["backend"] == "cpu"
    lines = [
        f"# Scaling of {args.algo}: seeds and data parallelism over devices",
        "",
        f"`{command}`",
        "",
        f"{machine_line(info)} {jax.device_count()} devices, {jax.process_count()} process(es). Weak scaling: "
        f"{args.seeds_per_device} run(s) per device (seeds) or {args.envs_per_device} environments per device "
        f"(data parallel); {args.updates} updates per timed chunk, median of {args.repeats} (min-max).",
        "",
    ]
    if cpu:
        lines += [
            "**A correctness run, not a scaling claim:** the devices are virtual CPU devices "
            "(`--xla_force_host_platform_device_count`) sharing the machine's cores, so N devices have no "
            "more compute than one. It shows that every layout compiles and runs.",
            "",
        ]
    lines += [
        "| mode | devices | runs | envs per run | env steps/s, median (min-max) | efficiency | compile (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in results:
        lines.append(
            f"| {row['mode']} | {row['devices']} | {row['runs']} | {row['envs_per_run']} | "
            f"{row['steps_per_second']:,.0f} ({row['steps_per_second_min']:,.0f}-{row['steps_per_second_max']:,.0f}) | "
            f"{row['efficiency']:.2f} | {row['compile_seconds']:.1f} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algo", choices=sorted(CONFIGS), default="ppo")
    parser.add_argument("--seeds-per-device", type=int, default=4)
    parser.add_argument("--envs-per-device", type=int, default=16)
    parser.add_argument("--updates", type=int, default=10, help="updates per timed chunk")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    info = machine()
    results = measure(args)
    command = "python benchmarks/scaling.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None
    )
    lines = table(args, results, info, command)
    print("\n".join(lines))
    if args.out is not None:
        write_results(
            args.out,
            {"machine": info, "args": {k: str(v) for k, v in vars(args).items()}, "results": results},
            lines,
        )


if __name__ == "__main__":
    main()
