"""Runs of `tests/test_parallel.py` that need several devices: run as a subprocess with
`XLA_FLAGS=--xla_force_host_platform_device_count=4`, it trains each named algorithm on one device
and on sharded layouts from the same keys, and prints what it measured as one JSON line.

`python tests/parallel_worker.py compare ALGO...` and `python tests/parallel_worker.py resume`.
"""

import dataclasses
import json
import sys
import tempfile
from pathlib import Path

import jax
import numpy as np

from pureeqxrl import dqn, parallel, ppo, ppo_rnn, runs
from pureeqxrl.loop import train_result
from pureeqxrl.training.chunks import make_chunk_runner

TINY = {
    "ppo": ppo.PPOConfig(
        env="CartPole-v1", num_envs=8, num_steps=32, total_timesteps=8 * 32 * 12, log_interval=3
    ),
    "dqn": dqn.DQNConfig(
        env="CartPole-v1",
        num_envs=8,
        total_timesteps=8 * 400,
        learning_starts=800,
        batch_size=32,
        buffer_size=1000,
        log_interval=100,
        target_update_interval=200,
    ),
    "ppo_continuous": ppo.PPOContinuousConfig(
        env="Pendulum-v1",
        num_envs=8,
        num_steps=32,
        num_minibatches=4,
        total_timesteps=8 * 32 * 12,
        log_interval=3,
    ),
    "ppo_rnn": ppo_rnn.PPORNNConfig(
        env="CartPole-v1",
        num_envs=8,
        num_steps=16,
        num_minibatches=4,
        total_timesteps=8 * 16 * 12,
        log_interval=3,
    ),
}
MODULES = {"ppo": ppo, "dqn": dqn, "ppo_continuous": ppo, "ppo_rnn": ppo_rnn}
LAYOUTS = {"seeds": parallel.Layout(4, 1), "envs": parallel.Layout(1, 4), "both": parallel.Layout(2, 2)}
NUM_SEEDS = 4


def _host(tree):
    """Numpy leaves (random keys as their data), gathered from the devices."""
    tree = runs.keys_as_data(parallel.gather(tree))
    return [np.asarray(leaf) for leaf in jax.tree.leaves(tree)]


def _difference(a, b) -> float:
    """The largest absolute difference between two trees (inf if any leaf is equal only in shape)."""
    diffs = [
        float(np.nanmax(np.abs(x.astype(np.float64) - y))) if x.size else 0.0
        for x, y in zip(_host(a), _host(b), strict=True)
    ]
    return max(diffs)


def _same(a, b) -> bool:
    return all(np.array_equal(x, y, equal_nan=True) for x, y in zip(_host(a), _host(b), strict=True))


def _without_evaluation(config):
    return dataclasses.replace(config, eval_interval=0)


def _train(learner, config, keys, layout):
    runner = make_chunk_runner(learner, _without_evaluation(config), layout=layout)
    start = runner.init(keys)
    state, rows = runner.run(start, config.num_updates, 0)
    return start, state, rows


def compare(algo: str) -> dict:
    """The sharded layouts against one device: initial states, metrics rows, final state."""
    config = TINY[algo]
    learner = MODULES[algo].make_learner(config)
    keys = jax.random.split(jax.random.key(3), NUM_SEEDS)
    start, state, rows = _train(learner, config, keys, None)
    result = train_result(state, rows)
    out = {}
    # Every layout for DQN; the others on the combined layout, which splits both ways (each layout
    # is a compile; PPO's Python API below runs on it too).
    names = ("seeds", "envs", "both") if algo == "dqn" else ("both",)
    for name, layout in ((name, LAYOUTS[name]) for name in names):
        their_start, their_state, their_rows = _train(learner, config, keys, layout)
        theirs = train_result(their_state, their_rows)
        env_leaf = jax.tree.leaves(their_state.env_state)[0]
        out[name] = {
            "initial_state_identical": _same(start, their_start),
            "rows_max_difference": {
                key: float(np.nanmax(np.abs(np.asarray(rows[key], np.float64) - np.asarray(their_rows[key]))))
                for key in rows
            },
            "rows_scale": {key: float(np.nanmax(np.abs(np.asarray(rows[key])))) for key in rows},
            "params_max_difference": _difference(result.params, theirs.params),
            "obs_stats_max_difference": None
            if result.obs_stats is None
            else _difference(result.obs_stats, theirs.obs_stats),
            "state_max_difference": _difference(state, their_state),
            "env_shard_shape": list(env_leaf.addressable_shards[0].data.shape),
            "env_shape": list(env_leaf.shape),
        }
    if algo != "ppo":
        return out
    # The Python API: `make_train`'s whole run, jitted and vmapped, on the `both` layout.
    make_train = MODULES[algo].make_train
    single = jax.jit(jax.vmap(make_train(config)))(keys)
    on_devices = parallel.sharded(make_train(config), LAYOUTS["both"])(keys)
    out["api"] = {
        "params_max_difference": _difference(single.params, on_devices.params),
        "rows_max_difference": {
            key: float(
                np.nanmax(
                    np.abs(np.asarray(single.metrics[key], np.float64) - _host(on_devices.metrics[key])[0])
                )
            )
            for key in single.metrics
        },
        "params_sharding": str(jax.tree.leaves(on_devices.params)[0].sharding.spec),
    }
    return out


def resume() -> dict:
    """A run on the `both` layout cut after its first chunk, checkpointed (gathered to the host,
    written, read back and laid out again), and resumed, against the same run uncut."""
    config = TINY["ppo_continuous"]  # normalisation statistics in the state
    learner = ppo.make_learner(config)
    keys = jax.random.split(jax.random.key(5), NUM_SEEDS)
    runner = make_chunk_runner(learner, _without_evaluation(config), layout=LAYOUTS["both"])
    half = config.num_updates // 2
    state, first = runner.run(runner.init(keys), half, 0)
    uncut, second = runner.run(state, config.num_updates - half, first["loss"].shape[1])
    with tempfile.TemporaryDirectory() as folder:
        header = {"num_seeds": NUM_SEEDS, "updates_done": half, "rows_done": first["loss"].shape[1]}
        path = runs.save_checkpoint(Path(folder), header, parallel.gather(state), {"loss": first["loss"]}, 1)
        _, loaded, _ = runs.load_checkpoint(path, parallel.gather(runner.init(keys)))
        placed = runner.place(loaded)
    resumed, second_again = runner.run(placed, config.num_updates - half, first["loss"].shape[1])
    # The same checkpoint resumed on another layout: every seed on its own device.
    other = make_chunk_runner(learner, _without_evaluation(config), layout=LAYOUTS["seeds"])
    elsewhere, _ = other.run(other.place(loaded), config.num_updates - half, first["loss"].shape[1])
    return {
        "other_layout_params_max_difference": _difference(elsewhere.params, uncut.params),
        "placed_like_trained": jax.tree.leaves(
            jax.tree.map(lambda a, b: a.sharding == b.sharding, placed, state)
        ),
        "resumed_identical": _same(resumed, uncut) and _same(second_again, second),
    }


if __name__ == "__main__":
    command, *algos = sys.argv[1:]
    measured = {algo: compare(algo) for algo in algos} if command == "compare" else resume()
    print(json.dumps(measured))
