"""Per-call Python dispatch overhead of a training step: Equinox (three ways to call it) vs Linen.

The step is one PPO gradient step on CartPole's default network (clipped loss, gradients, Adam),
minibatch 128. It is called N times from a Python loop as

- `equinox jax.jit`: the array-only Equinox Module through plain `jax.jit` (this project's pattern);
- `equinox eqx.filter_jit`: the same function through `eqx.filter_jit`;
- `equinox jax.jit on flat leaves`: the same, but the network and optimizer state are kept as one
  flat list of arrays between calls (flattened once before the loop), rebuilt inside the jit and
  flattened again inside it, so no Module crosses the boundary;
- `linen jax.jit`: the Linen twin's variables dict through `jax.jit`;
- `linen jax.jit on flat leaves`: the same flat-list pattern for Linen;

and, for each, N steps inside one jitted `lax.scan` (no Python between steps). The difference
between a Python-loop call and a scanned step is the per-call overhead: flattening the arguments,
dispatch, and (for `filter_jit`) partitioning the pytree and waiting for the result. Every round
runs every variant, in a fresh shuffled order; microseconds per step, medians over the rounds, with
the min-max of the rounds' values.

    python benchmarks/dispatch.py --rounds 7 --repeats 9 --out benchmarks/results/dispatch_cpu
"""

import argparse
import random
import statistics
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

from pureeqxrl import heads, policy_gradient
from pureeqxrl.envs import make_env
from pureeqxrl.linen import ppo as linen_ppo

import bench_io  # benchmarks/bench_io.py (a script's folder is on its path)

STEPS = 200


def gradient_step_fn(network, optimizer, config):
    def step(params, opt_state, batch):
        grads, _ = jax.grad(policy_gradient.ppo_loss, argnums=1, has_aux=True)(
            network.apply, params, batch, config
        )
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    return step


def per_step_us(run, repeats: int) -> float:
    run()  # compile and warm up
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        samples.append((time.perf_counter() - start) / STEPS * 1e6)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    config = policy_gradient.PPOConfig()
    env = make_env(config.env, 1)
    optimizer = policy_gradient.make_optimizer(config)
    keys = jax.random.split(jax.random.key(0), 4)
    batch = policy_gradient.Batch(
        obs=jax.random.normal(keys[0], (128, *env.observation_shape)),
        action=jax.random.randint(keys[1], (128,), 0, env.num_actions),
        log_prob=jnp.full((128,), -0.7),
        value=jax.random.normal(keys[2], (128,)),
        advantage=jax.random.normal(keys[3], (128,)),
        target=jnp.zeros(128),
    )
    equinox_net = heads.categorical_actor_critic(config, env)
    linen_net = linen_ppo.linen_actor_critic(config, env)
    equinox_params = equinox_net.init(jax.random.key(1))
    linen_params = linen_ppo.params_from_equinox(equinox_params)  # same numbers in both

    def python_loop(step, params):
        opt_state = optimizer.init(params)

        def run():
            p, s = params, opt_state
            for _ in range(STEPS):
                p, s = step(p, s, batch)
            jax.block_until_ready(p)

        return run

    def scanned(step, params):
        opt_state = optimizer.init(params)

        @jax.jit
        def many(p, s):
            return jax.lax.scan(lambda carry, _: (step(*carry, batch), None), (p, s), None, STEPS)[0]

        return lambda: jax.block_until_ready(many(params, opt_state))

    def on_leaves(step, params):
        """`step` taking and returning flat lists of arrays: the Module is unflattened inside the
        jit, so each call flattens a list (C++) instead of Modules (Python)."""
        treedef = jax.tree.structure((params, optimizer.init(params)))

        @jax.jit
        def leaf_step(leaves, batch):
            return jax.tree.leaves(step(*jax.tree.unflatten(treedef, leaves), batch))

        opt_state = optimizer.init(params)

        def run():
            leaves = jax.tree.leaves((params, opt_state))
            for _ in range(STEPS):
                leaves = leaf_step(leaves, batch)
            jax.block_until_ready(leaves)

        return run

    equinox_step = gradient_step_fn(equinox_net, optimizer, config)
    linen_step = gradient_step_fn(linen_net, optimizer, config)
    variants = {
        "equinox jax.jit": (
            python_loop(jax.jit(equinox_step), equinox_params),
            scanned(equinox_step, equinox_params),
        ),
        "equinox eqx.filter_jit": (python_loop(eqx.filter_jit(equinox_step), equinox_params), None),
        "equinox jax.jit on flat leaves": (on_leaves(equinox_step, equinox_params), None),
        "linen jax.jit": (python_loop(jax.jit(linen_step), linen_params), scanned(linen_step, linen_params)),
        "linen jax.jit on flat leaves": (on_leaves(linen_step, linen_params), None),
    }
    samples = {name: {"python_loop": [], "scan": []} for name in variants}
    runs = [
        (name, kind, run)
        for name, (loop, scan) in variants.items()
        for kind, run in (("python_loop", loop), ("scan", scan))
        if run is not None
    ]
    for round_ in range(args.rounds):
        random.Random(round_).shuffle(runs)  # a fixed order can favour whichever runs first
        for name, kind, run in runs:
            samples[name][kind].append(per_step_us(run, args.repeats))
    medians = {
        name: {kind: statistics.median(v) for kind, v in s.items() if v} for name, s in samples.items()
    }
    same_program = medians["equinox jax.jit"]["scan"]  # the other Equinox rows scan the same step
    scan_time = {
        "equinox eqx.filter_jit": same_program,
        "equinox jax.jit on flat leaves": same_program,
        "linen jax.jit on flat leaves": medians["linen jax.jit"]["scan"],
    }

    def flatten_round_trip_us(params) -> float:
        tree = (params, optimizer.init(params))
        leaves, treedef = jax.tree.flatten(tree)
        start = time.perf_counter()
        for _ in range(2000):
            jax.tree.unflatten(treedef, jax.tree.flatten(tree)[0])
        return (time.perf_counter() - start) / 2000 * 1e6

    round_trip = {
        "equinox": flatten_round_trip_us(equinox_params),
        "linen": flatten_round_trip_us(linen_params),
    }

    machine = bench_io.machine()
    command = (
        f"python benchmarks/dispatch.py --rounds {args.rounds} --repeats {args.repeats} --out {args.out}"
    )
    data = {
        "command": command,
        "machine": machine,
        "medians_us": medians,
        "samples_us": samples,
        "flatten_unflatten_us": round_trip,
    }
    lines = [
        f"One PPO gradient step (CartPole-v1 default network, minibatch 128, Adam), microseconds per step, "
        f"medians of {args.rounds} rounds (shuffled order) x {args.repeats} repeats of {STEPS} steps. "
        f"{bench_io.machine_line(machine)}",
        f"Command: `{command}`",
        "",
        "| how the step is called | Python loop, us/step | inside one jitted scan, us/step | per-call overhead, us |",
        "|---|---|---|---|",
    ]

    def spread(values):
        return f"({min(values):,.0f}-{max(values):,.0f})"

    for name, m in medians.items():
        scan = m.get("scan", scan_time.get(name))
        loop_rounds = samples[name]["python_loop"]
        scan_rounds = (
            samples[name]["scan"]
            or samples["linen jax.jit" if name.startswith("linen") else "equinox jax.jit"]["scan"]
        )
        lines.append(
            f"| {name} | {m['python_loop']:,.1f} {spread(loop_rounds)} | {scan:,.1f} "
            f"{spread(scan_rounds)} | {m['python_loop'] - scan:,.1f} |"
        )
    lines += [
        "",
        f"Flattening and rebuilding the step's arguments (network + Adam state, 38 arrays) in Python: "
        f"Equinox Modules {round_trip['equinox']:.1f} us, Linen dicts {round_trip['linen']:.1f} us.",
    ]
    bench_io.write_results(args.out, data, lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
