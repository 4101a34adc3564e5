"""Where recurrent PPO's time goes: the phases of one update, Equinox vs Flax Linen.

One update of `pureeqxrl.ppo_rnn` (default config: CartPole-v1, 4 envs x 128 steps, 4 epochs x 4
minibatches of one environment's 128-step sequence) is a rollout of 128 sequential acting steps and
16 gradient steps, each a forward and backward pass through a 128-step sequence. Each phase is timed
as one jitted call (many repeats, median), for

- `equinox`: `pureeqxrl.recurrent.GRU`, which projects a sequence's inputs before its loop;
- `equinox-stepwise`: the same numbers with the input projection inside the loop, as
  `flax.linen.GRUCell` under `nn.scan` does it (isolates that one difference);
- `linen`: the Linen twin (`pureeqxrl.linen.ppo_rnn`), the way PureJaxRL writes it;

plus `equinox-unrollK`, the Equinox GRU with its time loop unrolled K = 2, 4 or 8 steps per
iteration (`jax.lax.scan(unroll=K)`).

    python benchmarks/rnn_phases.py --repeats 7 --out benchmarks/results/ppo_rnn_phases_cpu
"""

import argparse
import statistics
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

from pureeqxrl import heads, policy_gradient, ppo_rnn
from pureeqxrl.linen import ppo_rnn as linen_ppo_rnn
from pureeqxrl.recurrent import GRU

import bench_io  # benchmarks/bench_io.py (a script's folder is on its path)


class StepwiseGRU(GRU):
    """`GRU` with the input projection done step by step inside the time loop."""

    def __call__(self, hidden, xs, resets):
        return jax.lax.scan(lambda h, inputs: self.step(h, *inputs), hidden, (xs, resets))


class UnrolledGRU(GRU):
    """`GRU` (projection before the loop) with `unroll` time steps per loop iteration."""

    unroll: int = eqx.field(static=True, default=1)

    def __call__(self, hidden, xs, resets):
        projected = xs @ self.input_kernel + self.input_bias

        def one_step(h, inputs):
            p, reset = inputs
            h = self._cell(jnp.where(reset, 0.0, h), p)
            return h, h

        return jax.lax.scan(one_step, hidden, (projected, resets), unroll=self.unroll)


def with_core(network: ppo_rnn.RecurrentFunctional, core_cls, **fields) -> ppo_rnn.RecurrentFunctional:
    """`network` whose GRU is replaced by `core_cls` holding the same arrays."""

    def init(key):
        params = network.init(key)
        gru = params.core
        core = object.__new__(core_cls)
        for name in ("input_kernel", "input_bias", "hidden_kernel", "hidden_bias"):
            object.__setattr__(core, name, getattr(gru, name))
        for name, value in fields.items():
            object.__setattr__(core, name, value)
        return eqx.tree_at(lambda p: p.core, params, core)

    return network._replace(init=init)


def timed(fn, *args, repeats: int, inner: int) -> float:
    """Median over `repeats` of the mean microseconds per call over `inner` calls."""

    def calls():
        for _ in range(inner):
            out = fn(*args)
        return out

    return bench_io.median_seconds(calls, repeats) / inner * 1e6


def phases(network: ppo_rnn.RecurrentFunctional, config, env, repeats: int) -> dict:
    key = jax.random.key(0)
    params = network.init(key)
    optimizer = policy_gradient.make_optimizer(config)
    opt_state = optimizer.init(params)
    obs, env_state = env.reset(key)
    hidden = network.initial_hidden(config.num_envs)
    resets = jnp.ones(config.num_envs, bool)

    @jax.jit
    def rollout(params, env_state, obs, hidden, resets, key):
        def one_step(carry, step_key):
            env_state, obs, hidden, resets = carry
            action_key, env_key = jax.random.split(step_key)
            hidden, policy, value = network.step(params, hidden, obs, resets)
            action = heads.sample(policy, action_key)
            obs, env_state, step = env.step(env_key, env_state, action.astype(jnp.int32))
            return (env_state, obs, hidden, step.done), value

        return jax.lax.scan(
            one_step, (env_state, obs, hidden, resets), jax.random.split(key, config.num_steps)
        )

    envs_per_minibatch = config.num_envs // config.num_minibatches
    t, e = config.num_steps, envs_per_minibatch
    k = jax.random.split(key, 6)
    minibatch = ppo_rnn.SequenceBatch(
        hidden=network.initial_hidden(e),
        reset=jax.random.bernoulli(k[0], 0.05, (t, e)),
        steps=policy_gradient.Batch(
            obs=jax.random.normal(k[1], (t, e, *env.observation_shape)),
            action=jax.random.randint(k[2], (t, e), 0, env.num_actions),
            log_prob=jnp.full((t, e), -0.7),
            value=jax.random.normal(k[3], (t, e)),
            advantage=jax.random.normal(k[4], (t, e)),
            target=jax.random.normal(k[5], (t, e)),
        ),
    )

    @jax.jit
    def forward(params, minibatch):
        return ppo_rnn.sequence_loss(network, params, minibatch, config)[0]

    @jax.jit
    def gradient_step(params, opt_state, minibatch):
        grads = jax.grad(lambda p: ppo_rnn.sequence_loss(network, p, minibatch, config)[0])(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    @jax.jit
    def sixteen_gradient_steps(params, opt_state, minibatch):
        def body(carry, _):
            return gradient_step(*carry, minibatch), None

        return jax.lax.scan(body, (params, opt_state), None, config.update_epochs * config.num_minibatches)[0]

    return {
        "rollout_128_steps_us": timed(
            rollout, params, env_state, obs, hidden, resets, key, repeats=repeats, inner=20
        ),
        "sequence_forward_us": timed(forward, params, minibatch, repeats=repeats, inner=50),
        "gradient_step_us": timed(gradient_step, params, opt_state, minibatch, repeats=repeats, inner=50),
        "16_gradient_steps_in_scan_us": timed(
            sixteen_gradient_steps, params, opt_state, minibatch, repeats=repeats, inner=5
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    config = ppo_rnn.PPORNNConfig()
    env = policy_gradient.make_environment(config)
    equinox_net = ppo_rnn.equinox_recurrent_actor_critic(config, env)
    variants = {
        "equinox": equinox_net,
        "equinox-stepwise": with_core(equinox_net, StepwiseGRU),
        "linen": linen_ppo_rnn.linen_recurrent_actor_critic(config, env),
        **{f"equinox-unroll{k}": with_core(equinox_net, UnrolledGRU, unroll=k) for k in (2, 4, 8)},
    }
    results = {name: [] for name in variants}
    for repeat in range(3):  # interleaved rounds; the median of rounds is reported
        for name, network in variants.items():
            sample = phases(network, config, env, args.repeats)
            results[name].append(sample)
            print(repeat, name, {k: round(v) for k, v in sample.items()}, flush=True)
    medians = {
        name: {k: statistics.median(s[k] for s in samples) for k in samples[0]}
        for name, samples in results.items()
    }

    machine = bench_io.machine()
    command = f"python benchmarks/rnn_phases.py --repeats {args.repeats} --out {args.out}"
    data = {"command": command, "machine": machine, "medians": medians, "samples": results}
    columns = list(next(iter(medians.values())))
    lines = [
        f"PPO-RNN phases, {config.env}, {config.num_envs} envs x {config.num_steps} steps, minibatches of "
        f"{config.num_envs // config.num_minibatches} env x {config.num_steps} steps; microseconds per "
        f"jitted call, medians. {bench_io.machine_line(machine)}",
        f"Command: `{command}`",
        "",
        "| network | " + " | ".join(c.removesuffix("_us").replace("_", " ") for c in columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for name, m in medians.items():
        lines.append(f"| {name} | " + " | ".join(f"{m[c]:,.0f}" for c in columns) + " |")
    bench_io.write_results(args.out, data, lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
