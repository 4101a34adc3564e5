"""What the training loop costs beyond the bare algorithm: each thing it does, switched off in a
benchmark-only build, priced by the end-to-end train time it saves (issue 18).

A variant patches the library in its own fresh process before the training program is built, so
nothing of it reaches the package or the other measurements. The switches:

- `no_episode_stats`: no in-jit episode returns and lengths (`envs.add_finished_episodes` leaves a
  rollout's carried sums at zero, DQN's `episode_stats` returns zeros);
- `no_diagnostics`: PPO's approx KL and clip fraction not computed (the losses are);
- `no_bootstrap_value`: no value of the pre-reset observation: GAE takes `V(obs[t+1])`, the next
  step's own observation, and cuts at every episode end, truncations included, as PureJaxRL does
  (the last step reuses its own value where PureJaxRL runs the critic on the last observation);
  PPO's batch of values after the rollout (`ppo.rollout_values`) holds the observations alone;
- `no_reset_every_step`: gymnax's `step` without its auto-reset (`reset_env` and the select run
  on every step, whether or not an episode ended; episodes then never restart);
- `next_obs_from_next_slot`: DQN's buffer stores no next observation and reads it from the slot
  `num_envs` later (half the observation writes; wrong at episode ends, and for the newest
  `num_envs` transitions, whose next slot holds the oldest or nothing yet);
- `no_normalization`: continuous PPO without its observation and reward normalisation wrapper;
- `one_log_row`: one metrics row for the whole run instead of one per `log_interval` updates;
- `bare`: every switch of the algorithm at once.

and candidates switched *on* (`--variants ...`; none is part of the library):

- `unrolled_threefry`: XLA:CPU lowers JAX's threefry with its rounds in a rolled loop (a loop per
  random draw); this registers JAX's unrolled lowering, the one other backends use, through JAX's
  internals (the random numbers are the same bits);
- `rbg_prng`, `unsafe_rbg_prng`: `jax_default_prng_impl` set to XLA's RNG-bit-generator keys
  (other random streams, same distributions);
- `rollout_unroll_4`: PPO's rollout `lax.scan` unrolled 4 steps per loop iteration;
- `fused_actor_critic`: PPO's separate actor and critic MLPs computed as one: the first layers'
  kernels side by side, the later ones as block-diagonal matrices, so each layer is one matrix
  product of the actor's and critic's widths together (the same function; the hidden layers do
  twice the arithmetic, as zeros);
- `flat_optimizer`: the optimizer (gradient clipping and Adam) wrapped in `optax.flatten`, which
  runs it on one vector of all the parameters instead of leaf by leaf (the same numbers up to the
  global norm's order of summation; the optimizer's state has another layout);
- `xla:FLAG=VALUE`: the measurement's process runs with `XLA_FLAGS=--FLAG=VALUE`
  (e.g. `xla:xla_cpu_use_onednn=true`, `xla:xla_cpu_use_xnnpack=true`).

Each repeat runs every variant of an algorithm in a fresh process, the order reversed on odd
repeats; a row reports the median train and compile times over the repeats and the min-max of the
per-repeat ratios to the repeat's run with everything on (below 1.00: switching it off saves time).

    python benchmarks/ablation.py --seeds 8 --repeats 3 --out benchmarks/results/ablation_cpu
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import bench_io  # benchmarks/bench_io.py (a script's folder is on its path)

# Each algorithm's run: its default config with these fields, and the switches that apply to it.
SETTINGS: dict[str, tuple[dict, tuple[str, ...]]] = {
    "dqn": (
        {"total_timesteps": 50_000},
        ("no_episode_stats", "no_reset_every_step", "next_obs_from_next_slot", "one_log_row"),
    ),
    "ppo": (
        {"total_timesteps": 100_000},
        ("no_episode_stats", "no_diagnostics", "no_bootstrap_value", "no_reset_every_step", "one_log_row"),
    ),
    "ppo_continuous": (
        {"total_timesteps": 65_536},
        ("no_diagnostics", "no_bootstrap_value", "no_normalization", "no_reset_every_step"),
    ),
    "ppo_rnn": ({"total_timesteps": 16_384}, ("no_episode_stats", "no_diagnostics", "no_bootstrap_value")),
}


ROLLOUTS = ("ppo", "ppo_continuous", "ppo_rnn")  # the algorithms with a `num_steps` rollout


def switch_off(name: str, algo: str, patch=setattr) -> dict:
    """Patch the library for variant `name` with `patch(owner, attribute, value)` (in this process
    only; a test passes pytest's `monkeypatch.setattr`); returns the config fields it changes."""
    import dataclasses

    import gymnax.environments.environment as gymnax_env
    import jax
    import jax.numpy as jnp

    from pureeqxrl import dqn, envs, policy_gradient, ppo, ppo_rnn, replay

    module = {"dqn": dqn, "ppo": ppo, "ppo_continuous": ppo, "ppo_rnn": ppo_rnn}[algo]
    if name == "no_episode_stats":
        zero = (jnp.zeros(()), jnp.zeros(()))
        if algo in ROLLOUTS:  # `envs.run_rollout`'s carried sums stay zero
            patch(envs, "add_finished_episodes", lambda totals, step: totals)
        else:
            patch(module, "episode_stats", lambda step: {"episode_return": zero, "episode_length": zero})
    elif name == "no_diagnostics":
        loss_terms = policy_gradient.loss_terms

        def without_diagnostics(*args, **kwargs):
            total, info = loss_terms(*args, **kwargs)
            return total, dataclasses.replace(info, approx_kl=jnp.zeros(()), clip_fraction=jnp.zeros(()))

        patch(policy_gradient, "loss_terms", without_diagnostics)
        if hasattr(module, "loss_terms"):  # recurrent PPO calls it by its own name
            patch(module, "loss_terms", without_diagnostics)
    elif name == "no_bootstrap_value":

        def after_reset(rollout, next_value, config):
            value = rollout.value  # V(obs[t + 1]), the next step's own (after-reset) observation
            following = jnp.concatenate([value[1:], value[-1:]])
            return policy_gradient.gae(
                rollout.reward,
                value,
                following,
                rollout.done,  # no bootstrap at any episode end
                rollout.done,
                config.gamma,
                config.gae_lambda,
            )

        patch(module, "rollout_advantages", after_reset)
        if module is ppo:  # its values come in one batch with the pre-reset ones: leave those out

            def values_alone(network, params, rollout):
                num_steps, num_envs = rollout.reward.shape
                obs = rollout.obs.reshape(num_steps * num_envs, *rollout.obs.shape[2:])
                _, value = network.apply(params, obs)
                return value.reshape(num_steps, num_envs), None

            patch(ppo, "rollout_values", values_alone)
    elif name == "no_reset_every_step":

        def step_without_reset(self, key, state, action, params=None):
            params = self.default_params if params is None else params
            key_step, _ = jax.random.split(key)
            obs, state, reward, terminated, info = self.step_env(key_step, state, action, params)
            truncated = self.is_truncated(state, params)
            return obs, state, reward, terminated, truncated, {**info, "final_observation": obs}

        patch(gymnax_env.Environment, "step", step_without_reset)
    elif name == "next_obs_from_next_slot":
        num_envs = registry_config(algo).num_envs

        add_all = replay.ReplayBuffer.add

        def add(self, batch):  # the buffer's own add, with no next observation to write
            without = lambda x: dataclasses.replace(x, next_obs=None)  # noqa: E731
            added = add_all(dataclasses.replace(self, data=without(self.data)), without(batch))
            next_obs = self.data.next_obs  # never written
            return dataclasses.replace(added, data=dataclasses.replace(added.data, next_obs=next_obs))

        def sample(self, key, batch_size):
            index = jax.random.randint(key, (batch_size,), 0, self.size)
            batch = jax.tree.map(lambda stored: stored[index], self.data)
            following = self.data.obs[(index + num_envs) % self.data.reward.shape[0]]
            return dataclasses.replace(batch, next_obs=following)

        patch(replay.ReplayBuffer, "add", add)
        patch(replay.ReplayBuffer, "sample", sample)
    elif name == "unrolled_threefry":
        from jax._src.interpreters import mlir
        from jax._src.random import threefry2x32

        rule = threefry2x32._threefry2x32_lowering_rule
        mlir.register_lowering(threefry2x32.threefry2x32_p, rule, platform="cpu", inline=False)
    elif name in ("rbg_prng", "unsafe_rbg_prng"):
        jax.config.update("jax_default_prng_impl", name.removesuffix("_prng"))
    elif name == "rollout_unroll_4":
        scan, num_steps = jax.lax.scan, registry_config(algo).num_steps

        def unrolled(f, init, xs=None, length=None, **kwargs):
            if xs is None and length == num_steps:  # the rollout: no inputs, num_steps long
                kwargs["unroll"] = 4
            return scan(f, init, xs, length, **kwargs)

        patch(jax.lax, "scan", unrolled)
    elif name == "fused_actor_critic":
        from distreqx.distributions import Categorical

        from pureeqxrl import heads

        def fused_forward(actor, critic, obs):
            x = obs.reshape(obs.shape[0], -1)
            last = len(actor.layers) - 1
            for i, (a, c) in enumerate(zip(actor.layers, critic.layers, strict=True)):
                kernel = (
                    jnp.concatenate([a.kernel, c.kernel], axis=1)
                    if i == 0
                    else jax.scipy.linalg.block_diag(a.kernel, c.kernel)
                )
                x = x @ kernel + jnp.concatenate([a.bias, c.bias])
                x = actor.activation(x) if i < last else x
            outputs = actor.layers[-1].kernel.shape[1]
            return x[:, :outputs], x[:, outputs]

        def fused_network(config, env):
            network = heads.actor_critic(config, env)

            def apply(params, obs):
                if env.discrete:
                    logits, value = fused_forward(params.actor, params.critic, obs)
                    return Categorical(logits=logits), value
                mean, value = fused_forward(params.actor_mean, params.critic, obs)
                return heads.diagonal_gaussian(mean, params.log_std), value

            return network._replace(apply=apply)

        patch(ppo, "actor_critic", fused_network)
    elif name == "flat_optimizer":
        import optax

        if algo == "dqn":  # DQN builds its optimizer in place, from `optax.adam`
            adam = optax.adam
            patch(optax, "adam", lambda *args, **kwargs: optax.flatten(adam(*args, **kwargs)))
        else:
            make_optimizer = module.make_optimizer
            patch(module, "make_optimizer", lambda config: optax.flatten(make_optimizer(config)))
    elif name.startswith("xla:"):
        pass  # set by `measure` in the process's environment
    elif name == "no_normalization":
        return {"normalize_obs": False, "normalize_reward": False}
    elif name == "one_log_row":
        return {"log_interval": registry_config(algo).num_updates}
    elif name != "all_on":
        raise ValueError(f"unknown switch {name!r}")
    return {}


def registry_config(algo: str):
    """`algo`'s config with this benchmark's fields."""
    from pureeqxrl import registry

    return registry.get(algo).config_cls(**SETTINGS[algo][0])


def child(algo: str, variant: str, num_seeds: int) -> None:
    """One measurement, in this (fresh) process: print compile and train seconds as JSON."""
    from end_to_end import measure as measure_training  # benchmarks/end_to_end.py

    from pureeqxrl import registry

    fields, switches = SETTINGS[algo]
    fields = dict(fields, eval_interval=0)
    for name in switches if variant == "bare" else (variant,):
        fields |= switch_off(name, algo)
    algorithm = registry.get(algo)
    result = measure_training(algorithm, "equinox", num_seeds, algorithm.config_cls(**fields), seed=0)
    print(
        json.dumps(
            {key: result[key] for key in ("compile_s", "train_s")} | {"return": result["final_return"]}
        )
    )


def measure(algo: str, variant: str, num_seeds: int) -> dict:
    env = dict(os.environ)
    env.pop("JAX_COMPILATION_CACHE_DIR", None)  # every compile is timed whole
    if variant.startswith("xla:"):
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --{variant.removeprefix('xla:')}".strip()
    done = subprocess.run(
        [sys.executable, __file__, "--child", algo, variant, "--seeds", str(num_seeds)],
        capture_output=True,
        text=True,
        env=env,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{algo} {variant} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--algos", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument(
        "--variants", nargs="+", help="only these (against all on); default: every switch, and bare"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/ablation_cpu"))
    parser.add_argument("--child", nargs=2, metavar=("ALGO", "VARIANT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(*args.child, args.seeds)

    runs: dict[str, dict[str, list[dict]]] = {}
    for repeat in range(args.repeats):
        for algo in args.algos:
            variants = ["all_on", *(args.variants or [*SETTINGS[algo][1], "bare"])]
            if algo not in ROLLOUTS:  # an algorithm without a rollout has nothing to unroll
                variants = [v for v in variants if v != "rollout_unroll_4"]
            if algo not in ("ppo", "ppo_continuous"):  # only these have the two MLPs
                variants = [v for v in variants if v != "fused_actor_critic"]
            for variant in variants if repeat % 2 == 0 else variants[::-1]:
                result = measure(algo, variant, args.seeds)
                runs.setdefault(algo, {}).setdefault(variant, []).append(result)
                print(f"repeat {repeat} {algo} {variant}: {json.dumps(result)}", flush=True)

    info = bench_io.machine()
    command = (
        f"python benchmarks/ablation.py --algos {' '.join(args.algos)} --seeds {args.seeds} "
        f"--repeats {args.repeats}"
        + (f" --variants {' '.join(args.variants)}" if args.variants else "")
        + f" --out {args.out}"
    )
    lines = [
        f"# The loop's features priced: train time with each switched off, {args.seeds} vmapped seeds",
        "",
        f"`{command}`",
        "",
        f"{bench_io.machine_line(info)} Medians of {args.repeats} interleaved repeats, each run in a fresh "
        "process; the ratio is to the same repeat's run with everything on (min-max over repeats).",
        "",
        "| algorithm (steps per seed) | variant | train s | vs all on (min-max) | compile s | final return |",
        "|---|---|---|---|---|---|",
    ]
    for algo, variants in runs.items():
        base = variants["all_on"]
        for variant, results in variants.items():
            ratios = [r["train_s"] / b["train_s"] for r, b in zip(results, base, strict=True)]
            median = lambda key, results=results: statistics.median(r[key] for r in results)  # noqa: E731
            lines.append(
                f"| {algo} ({SETTINGS[algo][0]['total_timesteps']:,}) | {variant.replace('_', ' ')} "
                f"| {median('train_s'):.2f} | {statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f}) "
                f"| {median('compile_s'):.2f} | {median('return'):.1f} |"
            )
    bench_io.write_results(args.out, {"machine": info, "command": command, "runs": runs}, lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
