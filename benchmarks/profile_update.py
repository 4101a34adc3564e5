"""Where one training update's time goes, per algorithm (issue 18): the whole update as training
runs it, its experience collection and its learning timed alone, and the learning's arithmetic floor.

- update: one update inside the chunk program `pureeqxrl train` runs (`loop.make_chunk_runner`,
  the step counters shared by the seeds, so DQN's "learn now?" stays a branch); DQN is measured
  once its learning has started;
- collect / learn: `UpdateSteps.collect` and `UpdateSteps.learn` (PPO: advantages and every epoch;
  DQN: one sampled gradient step), vmapped over the seeds, `UPDATES[algo]` times in one `lax.scan`.
  The collection keeps only the state it hands on, and XLA drops the rest despite the barrier: in
  PPO's compiled program its step stacks no outputs and runs no critic, so this column understates
  the collection (PPO on an H100: 2.3 ms alone, 6.1 ms of the training program's kernels;
  docs/speed.md);
- matmul floor: the same gradient steps (layer sizes, batch, forward and backward passes) written as
  plain `jax.numpy` MLPs with nothing else (no distributions, losses, optimizer or sampling; PPO's
  critic pass over the rollout's next observations left out too): the time this machine's XLA
  needs for the gradient steps' matrix products and activations alone. For recurrent PPO it is the
  encoder, a plain GRU scanned over the minibatch's sequences (inputs projected before the loop,
  as `pureeqxrl.recurrent.GRU` does; no resets) and the two heads.

A floor close to the learning's time, and a learning close to the update's, mean the update is
bound by the matrix products of the reference's network sizes, which no loop engineering removes.

    python benchmarks/profile_update.py --seeds 1 8 --out benchmarks/results/profile_update_cpu
"""

import argparse
import math
from pathlib import Path

import jax
import jax.numpy as jnp

from pureeqxrl import registry
from pureeqxrl.envs import make_env
from pureeqxrl.loop import make_chunk_runner
from pureeqxrl.nets import ACTIVATIONS

import bench_io  # benchmarks/bench_io.py (a script's folder is on its path)

# Updates per timed run: about a second of 8-seed training each.
UPDATES = {"dqn": 2_000, "ppo": 50, "ppo_continuous": 2, "ppo_rnn": 8}


def timed(fn, *args, repeats: int) -> float:
    """Median seconds of `repeats` calls of the compiled `fn(*args)` (after one untimed call)."""
    compiled = jax.jit(fn).lower(*args).compile()
    return bench_io.median_seconds(lambda: compiled(*args), repeats)


def scanned(fn, length: int):
    """`fn(carry) -> carry` applied `length` times in one `lax.scan`."""
    return lambda carry: jax.lax.scan(lambda c, _: (fn(c), None), carry, None, length)[0]


def plain_mlps(sizes_list, activation, batch: int, num_seeds: int, double_dqn: bool = False):
    """`(step, params)`: a gradient step of plain MLPs of `sizes_list`'s sizes on `batch` inputs,
    vmapped over `num_seeds`: PPO's actor and critic (a loss on both outputs), or with `double_dqn`
    one Q-network learning towards targets from its own and a target copy's forward passes on other
    inputs. The gradient step's matrix products and activations, and nothing else."""
    keys = iter(jax.random.split(jax.random.key(0), 64))
    params = [
        [
            (jax.random.normal(next(keys), (num_seeds, a, b)) * 0.1, jnp.zeros((num_seeds, b)))
            for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        ]
        for sizes in sizes_list
    ]
    inputs = jax.random.normal(next(keys), (num_seeds, 2, batch, sizes_list[0][0]))

    def mlp(layers, x):
        for w, b in layers[:-1]:
            x = activation(x @ w + b)
        w, b = layers[-1]
        return x @ w + b

    def loss(params, x):
        if double_dqn:
            online, target = params
            next_q = jax.lax.stop_gradient(mlp(online, x[1]) + mlp(target, x[1]))
            return ((mlp(online, x[0]) - next_q) ** 2).mean()
        return sum((mlp(layers, x[0]) ** 2).mean() for layers in params)

    def step(params):
        grads = jax.vmap(jax.grad(loss))(params, inputs)
        return jax.tree.map(lambda p, g: p - 1e-4 * g, params, grads)

    return step, params


def plain_gru(config, obs_size: int, num_actions: int, num_seeds: int):
    """`(step, params)`: recurrent PPO's gradient step as plain `jax.numpy`: the dense encoder, a
    GRU (Flax `GRUCell`'s equations) scanned over `num_steps` steps of the minibatch's sequences,
    and the actor and critic heads, vmapped over `num_seeds`."""
    activation = ACTIVATIONS[config.activation]
    width, sequences = config.encoder_sizes[-1], config.num_envs // config.num_minibatches
    keys = iter(jax.random.split(jax.random.key(0), 64))
    normal = lambda *shape: jax.random.normal(next(keys), (num_seeds, *shape)) * 0.1  # noqa: E731
    layers = lambda sizes: [(normal(a, b), normal(b)) for a, b in zip(sizes[:-1], sizes[1:], strict=True)]  # noqa: E731
    params = (
        layers([obs_size, *config.encoder_sizes]),
        (normal(width, 3 * width), normal(3 * width), normal(width, 3 * width), normal(width)),
        layers([width, *config.hidden_sizes, num_actions]),
        layers([width, *config.hidden_sizes, 1]),
    )
    inputs = jax.random.normal(next(keys), (num_seeds, config.num_steps, sequences, obs_size))

    def mlp(layers, x, last=False):
        for w, b in layers[:-1]:
            x = activation(x @ w + b)
        w, b = layers[-1]
        return activation(x @ w + b) if last else x @ w + b

    def loss(params, x):
        encoder, (input_kernel, input_bias, hidden_kernel, hidden_bias), actor, critic = params
        projected = mlp(encoder, x, last=True) @ input_kernel + input_bias

        def cell(h, p):
            x_r, x_z, x_n = jnp.split(p, 3, axis=-1)
            h_r, h_z, h_n = jnp.split(h @ hidden_kernel, 3, axis=-1)
            r, z = jax.nn.sigmoid(x_r + h_r), jax.nn.sigmoid(x_z + h_z)
            h = (1.0 - z) * jnp.tanh(x_n + r * (h_n + hidden_bias)) + z * h
            return h, h

        _, hs = jax.lax.scan(cell, jnp.zeros((sequences, width)), projected)
        return (mlp(actor, hs) ** 2).mean() + (mlp(critic, hs) ** 2).mean()

    def step(params):
        grads = jax.vmap(jax.grad(loss))(params, inputs)
        return jax.tree.map(lambda p, g: p - 1e-4 * g, params, grads)

    return step, params


def floor_step(algo: str, config, env_shapes, num_seeds: int):
    """The plain-MLP twin of `algo`'s gradient step and how many of them one update takes."""
    obs_size, num_outputs = env_shapes
    hidden = list(config.hidden_sizes)
    if algo == "dqn":  # online and target networks of the same sizes (ReLU)
        q_network = [obs_size, *hidden, num_outputs]
        step, params = plain_mlps([q_network, q_network], jax.nn.relu, config.batch_size, num_seeds, True)
        return step, params, 1
    if algo == "ppo_rnn":
        step, params = plain_gru(config, obs_size, num_outputs, num_seeds)
        return step, params, config.update_epochs * config.num_minibatches
    actor, critic = [obs_size, *hidden, num_outputs], [obs_size, *hidden, 1]
    activation = ACTIVATIONS[config.activation]
    step, params = plain_mlps([actor, critic], activation, config.minibatch_size, num_seeds)
    return step, params, config.update_epochs * config.num_minibatches


def profile(algo: str, num_seeds: int, num_updates: int, repeats: int) -> dict:
    algorithm = registry.get(algo)
    config = algorithm.config_cls(eval_interval=0)
    steps = algorithm.make_update_steps(config)
    keys = jax.random.split(jax.random.key(0), num_seeds)
    runner = make_chunk_runner(steps, config.num_updates, config.log_interval)
    state = runner.init(keys)
    if algo == "dqn":  # past learning_starts, so that every update learns
        warmup = -(-config.learning_starts // config.num_envs) + 1
        state, _ = runner.run(state, warmup, 0)
    update_s = bench_io.median_seconds(lambda: runner.run(state, num_updates, 0), repeats) / num_updates

    # the whole of what collect hands out is kept (a barrier), so none of it is compiled away
    collect = jax.vmap(lambda s: jax.lax.optimization_barrier(steps.collect(s))[0])
    collect_s = timed(scanned(collect, num_updates), state, repeats=repeats) / num_updates
    if algo == "dqn":  # one sampled gradient step, a new sample every time
        learn = jax.vmap(lambda s, k: steps.learn(s, k)[0])

        def learning(state, keys):
            def one(carry):
                state, keys = carry
                keys, sample_keys = jax.vmap(jax.random.split, out_axes=1)(keys)
                return learn(state, sample_keys), keys

            return scanned(one, num_updates)((state, keys))

        learn_s = timed(learning, state, keys, repeats=repeats)
    else:  # advantages and every epoch, on one rollout (the params change at every update)
        learn = jax.vmap(lambda s, e: steps.learn(s, e)[0])
        rollout = jax.jit(jax.vmap(lambda s: steps.collect(s)[1]))(state)
        learning = lambda s, e: scanned(lambda c: learn(c, e), num_updates)(s)  # noqa: E731
        learn_s = timed(learning, state, rollout, repeats=repeats)
    learn_s /= num_updates

    env = make_env(config.env, 1)
    outputs = env.num_actions if env.discrete else math.prod(env.action_shape)
    step, params, per_update = floor_step(
        algo, config, (math.prod(env.observation_shape), outputs), num_seeds
    )
    floor_s = timed(scanned(step, per_update * num_updates), params, repeats=repeats) / num_updates
    return {
        "update_s": update_s,
        "collect_s": collect_s,
        "learn_s": learn_s,
        "matmul_floor_s": floor_s,
        "gradient_steps_per_update": per_update,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--algos", nargs="+", default=list(UPDATES), choices=list(UPDATES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/profile_update_cpu"))
    args = parser.parse_args()

    results = []
    for algo in args.algos:
        for num_seeds in args.seeds:
            row = {"algo": algo, "seeds": num_seeds, **profile(algo, num_seeds, UPDATES[algo], args.repeats)}
            results.append(row)
            print(row, flush=True)

    info = bench_io.machine()
    command = (
        f"python benchmarks/profile_update.py --algos {' '.join(args.algos)} --seeds "
        f"{' '.join(map(str, args.seeds))} --repeats {args.repeats} --out {args.out}"
    )
    ms = lambda seconds: f"{1e3 * seconds:.3f}"  # noqa: E731
    lines = [
        "# Where one update's time goes: collection, learning, and the learning's matrix products",
        "",
        f"`{command}`",
        "",
        f"{bench_io.machine_line(info)} Each algorithm's default settings; milliseconds per update, medians "
        f"of {args.repeats} runs of {', '.join(f'{a} {UPDATES[a]:,}' for a in args.algos)} updates. The matmul "
        "floor is the update's gradient steps as plain jax.numpy MLPs of the same sizes (see the script).",
        "",
        "| algorithm | seeds | update ms | collect ms | learn ms | matmul floor ms | floor / update |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in results:
        lines.append(
            f"| {row['algo']} | {row['seeds']} | {ms(row['update_s'])} | {ms(row['collect_s'])} "
            f"| {ms(row['learn_s'])} | {ms(row['matmul_floor_s'])} | {row['matmul_floor_s'] / row['update_s']:.2f} |"
        )
    bench_io.write_results(args.out, {"machine": info, "command": command, "results": results}, lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
