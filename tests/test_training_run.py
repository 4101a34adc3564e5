import dataclasses
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_loop import LoopConfig

from pureeqxrl import dqn, ppo, ppo_rnn, runs, sac
from pureeqxrl.loop import Learner, counter_field, make_train, train_result
from pureeqxrl.training.chunks import check_memory, chunk_lengths, estimate_bytes, make_chunk_runner
from pureeqxrl.training.run import CheckpointSchedule, StopSignals, first_bad_row, run_chunks

TINY = {
    "dqn": dqn.DQNConfig(
        env="CartPole-v1",
        total_timesteps=2_400,
        num_envs=4,
        buffer_size=500,
        batch_size=32,
        learning_starts=200,
        epsilon_anneal_time=1_000,
        target_update_interval=100,
        hidden_sizes=(16,),
        log_interval=50,
    ),
    "ppo": ppo.PPOConfig(total_timesteps=4_608, num_envs=4, num_steps=32, hidden_sizes=(16,), log_interval=4),
    "ppo_continuous": ppo.PPOContinuousConfig(
        total_timesteps=4_608, num_envs=4, num_steps=32, num_minibatches=4, hidden_sizes=(16,), log_interval=4
    ),
    "ppo_rnn": ppo_rnn.PPORNNConfig(
        total_timesteps=4_608,
        num_envs=4,
        num_steps=32,
        encoder_sizes=(16,),
        hidden_sizes=(16,),
        log_interval=4,
    ),
    "sac": sac.SACConfig(
        total_timesteps=1_200,
        num_envs=4,
        buffer_size=1_000,
        batch_size=32,
        learning_starts=400,
        hidden_sizes=(16,),
        normalize_obs=True,
        log_interval=25,
    ),
}
MODULES = {"dqn": dqn, "ppo": ppo, "ppo_continuous": ppo, "ppo_rnn": ppo_rnn, "sac": sac}
HEADER = {"algorithm": "test", "config": {}, "num_seeds": 0, "seed": 0, "linen": False}


def _run(learner, config, num_seeds, run_dir, schedule, stop_after_chunks=None, start=None):
    """run_chunks from the start (or from a checkpoint path `start`), optionally 'interrupted'."""
    chunks = make_chunk_runner(learner, config)
    state, metrics, done = chunks.init(jax.random.split(jax.random.key(7), num_seeds)), {}, 0
    if start is not None:
        header, state, metrics = runs.load_checkpoint(start, state)
        done = header["updates_done"]
    stop, seen = StopSignals(), []

    def on_chunk(rows, first_row):
        seen.append(first_row)
        if stop_after_chunks is not None and len(seen) == stop_after_chunks:
            stop.received = 2  # as the SIGINT handler records it

    header = {**HEADER, "num_seeds": num_seeds}
    return run_chunks(
        chunks,
        state,
        metrics,
        done,
        config.num_updates,
        config.log_interval,
        schedule,
        run_dir=run_dir,
        header=header,
        stop=stop,
        on_chunk=on_chunk,
    )


def _assert_same(a: Any, b: Any):
    a, b = runs.keys_as_data(a), runs.keys_as_data(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_chunk_lengths():
    assert chunk_lengths(98, 10, 3) == [30, 30, 30, 8]
    assert chunk_lengths(98, 10, 3, start=60) == [30, 8]
    assert chunk_lengths(90, 10, 3) == [30, 30, 30]


@pytest.mark.parametrize(
    ("algo", "num_seeds"),
    [
        *((algo, 1) for algo in ("dqn", "ppo", "ppo_continuous", "ppo_rnn", "sac")),
        # Seeds vmapped: SAC's state holds the most kinds (replay buffer, normalisation, keys).
        pytest.param("sac", 3, marks=pytest.mark.slow),
    ],
)
def test_interrupted_and_resumed_run_is_bit_identical_to_the_uninterrupted_one(algo, num_seeds, tmp_path):
    config = TINY[algo]
    learner = MODULES[algo].make_learner(config)
    schedule = CheckpointSchedule(chunk_rows=3)  # 3 or 4 chunks of 3 rows
    whole = _run(learner, config, num_seeds, tmp_path / "whole", schedule)
    assert whole.status == "finished" and whole.updates_done == config.num_updates

    first = _run(learner, config, num_seeds, tmp_path / "cut", schedule, stop_after_chunks=1)
    assert first.status == "interrupted" and 0 < first.updates_done < config.num_updates
    assert first.checkpoint == runs.latest_checkpoint(tmp_path / "cut")
    second = _run(learner, config, num_seeds, tmp_path / "cut", schedule, start=first.checkpoint)
    assert second.status == "finished"
    _assert_same(train_result(second.state, second.metrics), train_result(whole.state, whole.metrics))
    _assert_same(second.state, whole.state)  # keys, buffers, optimizer and normalisation states too


def test_chunks_compute_what_the_single_program_computes(tmp_path):
    config = TINY["ppo_continuous"]  # observation and reward normalisation
    keys = jax.random.split(jax.random.key(7), 2)
    single = jax.jit(jax.vmap(ppo.make_train(config)))(keys)
    chunked = _run(ppo.make_learner(config), config, 2, tmp_path, CheckpointSchedule(chunk_rows=2))
    ours = train_result(chunked.state, chunked.metrics)
    assert ours.metrics.keys() == single.metrics.keys()
    assert jax.tree.structure(ours.params) == jax.tree.structure(single.params)
    # Two separately compiled programs round a few floats differently, and training amplifies
    # it: the first rows agree to float precision, the later ones only closely.
    np.testing.assert_allclose(ours.metrics["loss"][:, :2], single.metrics["loss"][:, :2], rtol=1e-4)
    np.testing.assert_allclose(ours.metrics["loss"], single.metrics["loss"], rtol=0.05)


class _State(eqx.Module):
    params: jax.Array
    env_state: Any
    count: jax.Array = counter_field()


def test_counters_decide_branches_in_chunks_as_in_the_single_program():
    # An update whose branch runs on every 5th update, decided by a counter that every seed shares.
    taken = []

    def update(state):
        def every_fifth(params):
            jax.debug.callback(lambda: taken.append(1))
            return params + 1.0

        params = jax.lax.cond(state.count % 5 == 0, every_fifth, lambda p: p, state.params)
        return _State(params, None, state.count + 1), {"episode_return": (params.sum(), jnp.array(1.0))}

    def init(key):
        return _State(jax.random.normal(key, (2,)), None, jnp.array(0))

    learner = Learner(init, update)
    config = LoopConfig(num_updates=20, log_interval=5)
    chunks = make_chunk_runner(learner, config)
    state = chunks.init(jax.random.split(jax.random.key(0), 3))
    for first_row in (0, 2):
        state, _ = chunks.run(state, 10, first_row)
    jax.effects_barrier()
    assert len(taken) == 4  # a branch taken 4 times for all seeds at once, not computed on every update
    np.testing.assert_array_equal(state.count, [20, 20, 20])  # still one per seed on the host
    single = jax.jit(jax.vmap(make_train(learner, config)))(jax.random.split(jax.random.key(0), 3))
    np.testing.assert_array_equal(state.params, single.params)


def _steps_that_diverge_at(update: int) -> Learner:
    def step(state):
        count = state.count + 1
        loss = jnp.where(count >= update, jnp.nan, 1.0)
        stats = {"loss": (loss, jnp.array(1.0)), "episode_return": (jnp.array(0.0), jnp.array(0.0))}
        return _State(state.params + 1.0, None, count), stats

    return Learner(lambda key: _State(jnp.zeros(2), None, jnp.array(0)), step)


def test_divergence_stops_at_its_chunk_and_keeps_the_last_good_checkpoint(tmp_path):
    config = dataclasses.replace(TINY["dqn"], log_interval=10)  # 600 updates
    schedule = CheckpointSchedule(chunk_rows=5, checkpoint_updates=50)
    outcome = _run(_steps_that_diverge_at(123), config, 2, tmp_path, schedule)
    assert outcome.status == "diverged" and outcome.updates_done == 100  # the last good chunk
    assert "loss of seed 0 not finite in metrics row 12" in outcome.message  # updates 121-130
    assert "between updates 101 and 150" in outcome.message
    assert runs.read_checkpoint_header(outcome.checkpoint)["updates_done"] == 100
    np.testing.assert_array_equal(outcome.state.params, 100.0)  # the good state, not the bad one
    assert outcome.metrics["loss"].shape == (2, 15)  # the bad chunk's rows are kept to look at
    # NaN row values only mean that nothing was counted (no episode finished, no gradient step).
    nothing_counted = {"episode_return": np.full((2, 3), np.nan), "loss": np.full((2, 3), np.nan)}
    assert first_bad_row({**nothing_counted, "nonfinite_stats": np.zeros((2, 3))}, 0) is None


def test_checkpoints_follow_the_schedule_and_only_the_newest_are_kept(tmp_path):
    config = dataclasses.replace(TINY["dqn"], log_interval=10)
    schedule = CheckpointSchedule(chunk_rows=2, checkpoint_updates=60, keep_checkpoints=2)
    outcome = _run(_steps_that_diverge_at(10**6), config, 1, tmp_path, schedule)
    assert outcome.status == "finished"
    # Chunks of 20 updates; a checkpoint once 60 have passed (60, 120, ...), and at the end.
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["update_0000000540.ckpt", "update_0000000600.ckpt"]
    header, state, metrics = runs.load_checkpoint(tmp_path / "checkpoints" / names[-1], outcome.state)
    assert header["rows_done"] == 60 and metrics["loss"].shape == (1, 60)
    _assert_same(state, outcome.state)


def test_a_checkpoint_of_another_version_or_a_damaged_one_is_refused(tmp_path):
    config = dataclasses.replace(TINY["dqn"], log_interval=10)
    outcome = _run(_steps_that_diverge_at(10**6), config, 1, tmp_path, CheckpointSchedule(chunk_rows=60))
    path = outcome.checkpoint
    data = path.read_bytes()
    (tmp_path / "damaged.ckpt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="damaged"):
        runs.load_checkpoint(tmp_path / "damaged.ckpt", outcome.state)
    header, rest = data.split(b"\n", 1)
    (tmp_path / "old.ckpt").write_bytes(
        header.replace(b'"pureeqxrl": "', b'"pureeqxrl": "0.0.') + b"\n" + rest
    )
    with pytest.raises(ValueError, match="resume it with version 0.0."):
        runs.load_checkpoint(tmp_path / "old.ckpt", outcome.state)
    (tmp_path / "foreign.ckpt").write_bytes(b"not a checkpoint\n")
    with pytest.raises(ValueError, match="not a pureeqxrl checkpoint"):
        runs.read_checkpoint_header(tmp_path / "foreign.ckpt")


def test_memory_estimate_counts_the_replay_buffer_and_the_evaluation_from_shapes(no_compile):
    def estimate(**changes):
        return estimate_bytes(dqn.make_learner(dqn.DQNConfig(**changes)), num_seeds=3)

    # A CartPole transition: obs and next obs (4 float32 each), action, reward (4 bytes), terminated.
    transition = 4 * 4 + 4 + 4 + 4 * 4 + 1
    grown = estimate(buffer_size=20_000)["training state"] - estimate()["training state"]
    assert grown == 3 * 10_000 * transition
    evaluation = estimate(eval_episodes=32)["evaluation environments"]
    assert evaluation == 2 * estimate()["evaluation environments"] > 0
    # The evaluation's largest value (its batch of observations or activations) grows with its episodes.
    largest = estimate(eval_episodes=32_000)["evaluation's largest value"]
    assert largest >= 3 * 32_000 * 64 * 4 > 100 * estimate()["evaluation's largest value"]
    learner = dqn.make_learner(dqn.DQNConfig())
    state = estimate()["training state"]  # held twice: a chunk's input and its output
    check_memory(learner, num_seeds=3, eval_on=True, limit=sum(estimate().values()) + state)  # fits exactly
    with pytest.raises(ValueError, match=r"needs at least 3.4 MiB \(training state 1.7 MiB, .*has 1.0 MiB"):
        check_memory(learner, num_seeds=3, eval_on=True, limit=2**20)
    with pytest.raises(ValueError, match="needs at least"):
        check_memory(learner, num_seeds=3, eval_on=True, limit=sum(estimate().values()) + state - 1)
