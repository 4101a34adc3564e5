"""Equinox vs Flax Linen, per operation: the four pieces of a training update, timed alone.

For each algorithm with a Linen twin (`--algo dqn | ppo | ppo_continuous | ppo_rnn`), with its
default config, the pieces of its `make_update_steps` (`pureeqxrl.loop.UpdateSteps`):

- forward pass: the network on one batch of `num_envs` observations (one acting step);
- experience collection: one update's environment steps (`collect`; DQN: one step per env);
- policy update: one update's learning (`learn`; PPO: advantages and all its epochs of
  minibatches; DQN: one gradient step on a sampled batch);
- full step: one whole update (`update`), what `make_train` scans.

Each is timed two ways: `--inner` calls of a jitted function from a Python loop (dispatch
included), and `--inner` iterations inside one jitted `lax.scan` (for the forward pass, 25 times
as many of both). Equinox and Linen run the same code from the same initial numbers, interleaved over
`--rounds`; medians, with the min-max of the rounds' Equinox/Linen ratios.

    python benchmarks/per_op.py --algo ppo --out benchmarks/results/per_op_ppo_cpu  # and so on
"""

import argparse
import statistics
import time
from pathlib import Path

import equinox as eqx
import jax

from pureeqxrl import dqn, ppo, ppo_rnn
from pureeqxrl.linen import dqn as linen_dqn
from pureeqxrl.linen import ppo as linen_ppo
from pureeqxrl.linen import ppo_rnn as linen_ppo_rnn
from pureeqxrl.registry import ALGORITHMS

import bench_io  # benchmarks/bench_io.py (a script's folder is on its path)

LIBRARIES = ("equinox", "linen")
MODULES = {  # the algorithm's module (its `make_update_steps`) and its Linen twin's
    "dqn": (dqn, linen_dqn),
    "ppo": (ppo, linen_ppo),
    "ppo_continuous": (ppo, linen_ppo),
    "ppo_rnn": (ppo_rnn, linen_ppo_rnn),
}
INNER_SCALE = {"forward pass": 25}  # a forward pass takes microseconds: time more of them


def operations(algo: str, config, library: str) -> dict:
    """`name -> (function of the carried value, initial value)`; each function returns the next
    value, so that a Python loop and a scan can both thread it. Both libraries start from the
    same numbers (the Equinox init, converted for Linen)."""
    module, linen_module = MODULES[algo]
    algorithm = ALGORITHMS[algo]
    steps = module.make_update_steps(config, algorithm.network(linen=library == "linen"))
    state = jax.jit(steps.init)(jax.random.key(0))
    if library == "linen":
        equinox_state = jax.jit(module.make_update_steps(config).init)(jax.random.key(0))
        same = linen_module.params_from_equinox(equinox_state.params)
        state = eqx.tree_at(lambda s: s.params, state, same)
        if hasattr(state, "target_params"):
            state = eqx.tree_at(lambda s: s.target_params, state, same)
    if algo == "dqn":  # fill the replay buffer past `learning_starts` first
        warmup = config.learning_starts // config.num_envs + 1
        state = jax.jit(lambda s: jax.lax.scan(lambda c, _: (steps.collect(c)[0], None), s, None, warmup)[0])(
            state
        )

        def learn(s):  # a fresh key every call, so that each iteration samples a new batch
            key, sample_key = jax.random.split(s.key)
            return steps.learn(eqx.tree_at(lambda t: t.key, s, key), sample_key)[0]
    else:
        _, experience, _ = jax.jit(steps.collect)(state)
        learn = lambda s: steps.learn(s, experience)[0]  # noqa: E731

    def forward(obs):
        if algo == "dqn":
            outputs = steps.network.apply(state.params, obs)
        elif algo == "ppo_rnn":
            outputs = steps.network.step(state.params, state.hidden, obs, state.reset)[1:]
        else:
            outputs = steps.network.apply(state.params, obs)  # (policy, value)
        # Every output feeds the next input, so that nothing is dead code and nothing is hoisted.
        out = sum(leaf.reshape(leaf.shape[0], -1).sum(-1) for leaf in jax.tree.leaves(outputs))
        return obs + 1e-6 * out.reshape(-1, *([1] * (obs.ndim - 1)))

    return {
        "forward pass": (forward, state.obs),
        "experience collection": (lambda s: steps.collect(s)[0], state),
        "policy update": (learn, state),
        "full step": (lambda s: steps.update(s)[0], state),
    }


def compile_op(fn, value, inner: int):
    """`run() -> (us per call from a Python loop, us per iteration inside one jitted scan)`."""
    called = jax.jit(fn)
    scanned = jax.jit(lambda v: jax.lax.scan(lambda c, _: (fn(c), None), v, None, inner)[0])
    jax.block_until_ready(called(value))
    jax.block_until_ready(scanned(value))

    def run() -> tuple[float, float]:
        start = time.perf_counter()
        v = value
        for _ in range(inner):
            v = called(v)
        jax.block_until_ready(v)
        loop_us = (time.perf_counter() - start) / inner * 1e6
        start = time.perf_counter()
        jax.block_until_ready(scanned(value))
        return loop_us, (time.perf_counter() - start) / inner * 1e6

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algo", choices=sorted(MODULES), default="ppo")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--inner", type=int, default=20)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    config = ALGORITHMS[args.algo].config_cls()
    ops = {
        lib: {
            op: compile_op(fn, value, args.inner * INNER_SCALE.get(op, 1))
            for op, (fn, value) in operations(args.algo, config, lib).items()
        }
        for lib in LIBRARIES
    }
    samples = {(lib, op, how): [] for lib in LIBRARIES for op in ops[lib] for how in ("loop", "scan")}
    for round_ in range(args.rounds):
        for op in ops["equinox"]:
            # Interleaved, and which library goes first alternates: a fixed order can bias one side.
            for lib in LIBRARIES if round_ % 2 == 0 else LIBRARIES[::-1]:
                loop_us, scan_us = ops[lib][op]()
                samples[lib, op, "loop"].append(loop_us)
                samples[lib, op, "scan"].append(scan_us)
                print(round_, op, lib, round(loop_us), round(scan_us), flush=True)

    machine = bench_io.machine()
    command = (
        f"python benchmarks/per_op.py --algo {args.algo} --rounds {args.rounds} --inner {args.inner} "
        f"--out {args.out}"
    )
    rows = []
    for op in ops["equinox"]:
        row = {"operation": op}
        for how in ("loop", "scan"):
            eq, li = samples["equinox", op, how], samples["linen", op, how]
            ratios = [ours / theirs for ours, theirs in zip(eq, li, strict=True)]
            row[how] = {
                "equinox_us": statistics.median(eq),
                "linen_us": statistics.median(li),
                "ratio_median": statistics.median(ratios),
                "ratio_min_max": [min(ratios), max(ratios)],
            }
        rows.append(row)
    data = {
        "command": command,
        "machine": machine,
        "rows": rows,
        "samples": {"/".join(k): v for k, v in samples.items()},
    }
    sizes = (
        f"{config.num_envs} envs x {config.num_steps} steps, {config.update_epochs} x "
        f"{config.num_minibatches} minibatches"
        if hasattr(config, "num_steps")
        else f"{config.num_envs} envs, batch {config.batch_size}"
    )
    lines = [
        f"{args.algo.upper()}, {config.env}, {sizes}; microseconds, medians of {args.rounds} "
        f"interleaved rounds. {bench_io.machine_line(machine)}",
        f"Command: `{command}`",
        "",
        "| operation | called from Python: Equinox | Linen | Equinox/Linen (min-max) | "
        "inside one jitted scan: Equinox | Linen | Equinox/Linen (min-max) |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        cells = []
        for how in ("loop", "scan"):
            r = row[how]
            cells += [
                f"{r['equinox_us']:,.0f}",
                f"{r['linen_us']:,.0f}",
                f"**{r['ratio_median']:.3f}** ({r['ratio_min_max'][0]:.3f}-{r['ratio_min_max'][1]:.3f})",
            ]
        lines.append(f"| {row['operation']} | " + " | ".join(cells) + " |")
    bench_io.write_results(args.out, data, lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
