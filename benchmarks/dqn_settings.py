"""Which DQN setting learns CartPole on every seed: 16 seeds per setting, the keys of
`pureeqxrl train dqn --num-seeds 16` (`jax.random.split(key(0), 16)`), PureJaxRL's budget (5e5
steps), truncation bootstrapped in all of them.

Each setting is one `jax.jit(jax.vmap(train))` run of the default config with the setting's
changes. Per setting: the final training return (epsilon-greedy, last 5% of the run) and the final
greedy evaluation (16 episodes per seed at the last row), each as the IQM and the mean with 95%
stratified-bootstrap intervals over the seeds, the lowest seed, and how many seeds reach 475.
Results are written after every setting, so an interrupted run keeps the settings it finished.

    python benchmarks/dqn_settings.py --out benchmarks/results/dqn_settings_cpu
    python benchmarks/dqn_settings.py --settings reference double_dqn --seeds 16 --out /tmp/x
"""

import argparse
import dataclasses
import json
import time
from pathlib import Path

import jax
import numpy as np

from pureeqxrl import dqn, stats
from pureeqxrl.loop import final_return

import bench_io  # benchmarks/bench_io.py (a script's folder is on its path)

# PureJaxRL's settings (`DQNConfig.PRESETS["purejaxrl"]`), what each setting changes.
REFERENCE = {
    "learning_rate": 2.5e-4,
    "double_dqn": False,
    "loss": "mse",
    "max_grad_norm": None,
    "anneal_lr": False,
}
SETTINGS = {
    "reference": {},
    "double_dqn": {"double_dqn": True},
    "huber": {"loss": "huber"},
    "grad_clip_10": {"max_grad_norm": 10.0},
    "grad_clip_1": {"max_grad_norm": 1.0},
    "anneal_lr": {"anneal_lr": True},
    "target_1000": {"target_update_interval": 1000},
    "target_250": {"target_update_interval": 250},
    "lr_1.25e-4": {"learning_rate": 1.25e-4},
    "lr_1.25e-4_grad_clip_10": {"learning_rate": 1.25e-4, "max_grad_norm": 10.0},
    "lr_1.25e-4_double": {"learning_rate": 1.25e-4, "double_dqn": True},
    "double_anneal": {"double_dqn": True, "anneal_lr": True},
    "double_grad_clip_10": {"double_dqn": True, "max_grad_norm": 10.0},
    "grad_clip_10_anneal": {"max_grad_norm": 10.0, "anneal_lr": True},
    "buffer_100k": {"buffer_size": 100_000},
    "buffer_100k_grad_clip_10": {"buffer_size": 100_000, "max_grad_norm": 10.0},
    "double_grad_clip_10_anneal": {"double_dqn": True, "max_grad_norm": 10.0, "anneal_lr": True},
}
BAR = 475.0


def run_setting(changes: dict, num_seeds: int, seed: int) -> dict:
    config = dataclasses.replace(dqn.DQNConfig(), **{**REFERENCE, **changes})
    keys = jax.random.split(jax.random.key(seed), num_seeds)
    start = time.perf_counter()
    result = jax.block_until_ready(jax.jit(jax.vmap(dqn.make_train(config)))(keys))
    seconds = time.perf_counter() - start
    train = final_return(np.asarray(result.metrics["episode_return"]))
    greedy = np.asarray(result.metrics["eval_return"])[:, -1]
    return {
        "changes": changes,
        "final_return_per_seed": train.tolist(),
        "final_eval_return_per_seed": greedy.tolist(),
        "final_return": stats.summary(train),
        "final_eval_return": stats.summary(greedy),
        "lowest_eval_return": float(greedy.min()),
        "seeds_at_bar": int((greedy >= BAR).sum()),
        "seconds": seconds,
    }


def table(results: dict, num_seeds: int) -> list[str]:
    lines = [
        "| setting | final return IQM [95% CI] | mean [95% CI] | greedy eval IQM [95% CI] | mean [95% CI] "
        f"| lowest greedy | seeds with greedy >= {BAR:.0f} |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in results.items():
        train, greedy = row["final_return"], row["final_eval_return"]
        lines.append(
            f"| {name} | {stats.estimate_text(train)} | {stats.estimate_text(train, 'mean')} "
            f"| {stats.estimate_text(greedy)} | {stats.estimate_text(greedy, 'mean')} "
            f"| {row['lowest_eval_return']:.1f} | {row['seeds_at_bar']}/{num_seeds} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", nargs="+", choices=sorted(SETTINGS), default=list(SETTINGS))
    parser.add_argument("--seeds", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    results: dict = {}
    if args.out.with_suffix(".json").exists():  # settings measured by an earlier call are kept
        earlier = json.loads(args.out.with_suffix(".json").read_text())
        if earlier["num_seeds"] == args.seeds:
            results = {name: row for name, row in earlier["results"].items() if name not in args.settings}
    command = f"python benchmarks/dqn_settings.py --seeds {args.seeds} --seed {args.seed} --out {args.out}"
    machine = bench_io.machine()
    for name in args.settings:
        results[name] = run_setting(SETTINGS[name], args.seeds, args.seed)
        row = results[name]
        print(
            name, "greedy IQM", stats.estimate_text(row["final_eval_return"]), row["seeds_at_bar"], flush=True
        )
        header = [
            f"DQN settings on CartPole-v1, {args.seeds} seeds each (keys split from key({args.seed})), "
            f"5e5 steps, truncation bootstrapped; the rest of the config is PureJaxRL's. "
            f"`{command}`; {bench_io.machine_line(machine)}",
            "",
        ]
        bench_io.write_results(
            args.out,
            {"command": command, "machine": machine, "num_seeds": args.seeds, "results": results},
            header + table(results, args.seeds),
        )


if __name__ == "__main__":
    main()
