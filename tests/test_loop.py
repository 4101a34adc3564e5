from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pureeqxrl.loop import (
    Evaluation,
    Learner,
    counter_field,
    counters,
    environment_field,
    environment_leaves,
    environments,
    eval_rows,
    final_return,
    make_train,
    rows_update_counts,
    scan_logged,
)
from pureeqxrl.normalize import NormalizedState, RunningStats

pytestmark = pytest.mark.usefixtures("strict_promotion")


def counting_update(counter):
    # Reports the update index as a stat, and an "episode" only on every third update.
    every_third = (counter % 3 == 0).astype(jnp.float32)
    stats = {
        "index": (counter.astype(jnp.float32), jnp.array(1.0)),
        "episode_return": (counter.astype(jnp.float32) * every_third, every_third),
    }
    return counter + 1, stats


def test_scan_logged_rows_and_remainder():
    calls = []
    final, rows = jax.jit(
        lambda c: scan_logged(counting_update, c, 10, 4, on_log=lambda i, row: calls.append(int(i)))
    )(jnp.array(0))
    assert int(final) == 10
    # Rows cover updates [0..3], [4..7], [8, 9].
    np.testing.assert_allclose(rows["index"], [1.5, 5.5, 8.5])
    np.testing.assert_allclose(rows["episode_return"], [1.5, 6.0, 9.0])  # (0+3)/2, 6/1, 9/1
    np.testing.assert_allclose(rows["episodes"], [2, 1, 1])
    assert sorted(calls) == [0, 1, 2]
    np.testing.assert_array_equal(rows_update_counts(10, 4), [4, 8, 10])
    np.testing.assert_array_equal(rows_update_counts(8, 4), [4, 8])


def test_a_shorter_last_row_runs_the_one_copy_of_the_update():
    # 10 updates in rows of 4: the last row's 2 updates go through the same loop body as the
    # others, so the update is traced (and lowered and compiled) once, not once more for the
    # shorter row; the program holds one loop of updates inside the loop of rows.
    traced = []

    def update(counter):
        traced.append(counter)
        return counting_update(counter)

    lowered = jax.jit(lambda c: scan_logged(update, c, 10, 4)).lower(jnp.array(0))
    assert len(traced) == 1
    assert lowered.as_text().count("stablehlo.while") == 2
    final, rows = lowered.compile()(jnp.array(0))
    assert int(final) == 10
    np.testing.assert_allclose(rows["index"], [1.5, 5.5, 8.5])


def test_rows_without_episodes_are_nan_not_zero():
    _, rows = scan_logged(counting_update, jnp.array(1), 2, 1)  # updates 1, 2: no multiple of 3
    assert np.isnan(rows["episode_return"]).all()
    np.testing.assert_array_equal(rows["episodes"], [0, 0])


def test_final_return_uses_last_fraction_and_skips_nan():
    curve = np.concatenate([np.zeros(95), [100.0, np.nan, 200.0, 300.0, 400.0]])
    assert final_return(curve) == 250.0
    both = np.stack([curve, curve + 1])
    np.testing.assert_allclose(final_return(both), [250.0, 251.0])
    assert final_return(np.array([1.0, 2.0])) == 2.0  # at least one row


class _State(eqx.Module):
    params: jax.Array
    env_state: Any


class LoopConfig(NamedTuple):
    """What `make_train` and the engine's chunk runner read of a config."""

    num_updates: int
    log_interval: int
    eval_every: int = 0
    num_envs: int = 1


def test_make_train_runs_init_then_the_logged_updates():
    def update(state):
        counter, stats = counting_update(state.params)
        return _State(counter, state.env_state), stats

    learner = Learner(init=lambda key: _State(jnp.array(0), None), update=update)
    result = jax.jit(make_train(learner, LoopConfig(num_updates=10, log_interval=4)))(jax.random.key(0))
    assert int(result.params) == 10 and result.obs_stats is None
    np.testing.assert_allclose(result.metrics["index"], [1.5, 5.5, 8.5])


def test_make_train_returns_the_observation_statistics_it_normalised_with():
    stats = RunningStats.empty((2,)).update(jnp.ones((3, 2)))
    env_state = NormalizedState(inner=None, obs_stats=stats, reward_stats=None, discounted_return=None)
    learner = Learner(
        init=lambda key: _State(jnp.array(0), env_state),
        update=lambda s: (s, {"x": (jnp.array(1.0), jnp.array(1.0))}),
    )
    result = make_train(learner, LoopConfig(num_updates=2, log_interval=1))(jax.random.key(0))
    np.testing.assert_array_equal(result.obs_stats.mean, stats.mean)


def test_eval_rows_are_the_first_to_reach_each_multiple_and_the_last():
    # Rows end at updates 4, 8, 10: multiples of 3 are reached in rows 0 (3), 1 (6), 2 (9).
    np.testing.assert_array_equal(eval_rows(10, 4, 3), [True, True, True])
    # Rows end at 10, 20, ..., 100: multiples of 25 are reached in rows 2, 4 (50), 7, 9.
    np.testing.assert_array_equal(np.flatnonzero(eval_rows(100, 10, 25)), [2, 4, 7, 9])
    np.testing.assert_array_equal(np.flatnonzero(eval_rows(100, 10, 1000)), [9])  # the last row
    assert not eval_rows(100, 10, 0).any()


def test_evaluations_run_at_their_rows_with_the_carry_of_the_row_end_in_chunks_too():
    due = eval_rows(10, 2, 4)  # rows end at 2, 4, ..., 10: evaluations in rows 1, 3 and 4
    evaluate = Evaluation(lambda counter: {"eval_counter": counter.astype(jnp.float32)}, due)
    _, rows = jax.jit(lambda c: scan_logged(counting_update, c, 10, 2, evaluate=evaluate))(jnp.array(0))
    np.testing.assert_array_equal(rows["eval_counter"], [np.nan, 4, np.nan, 8, 10])
    # The same run as chunks of 2 rows: `first_row` says where each chunk's rows are.
    counter, chunks = jnp.array(0), []
    chunk = jax.jit(
        lambda c, first: scan_logged(counting_update, c, 4, 2, evaluate=evaluate, first_row=first)
    )
    for first in (0, 2):
        counter, rows_of_chunk = chunk(counter, jnp.int32(first))
        chunks.append(rows_of_chunk["eval_counter"])
    np.testing.assert_array_equal(np.concatenate(chunks), [np.nan, 4, np.nan, 8])


class _Buffer(eqx.Module):
    data: jax.Array
    position: jax.Array = counter_field()


class _MarkedState(eqx.Module):
    params: jax.Array
    buffer: _Buffer
    env_state: Any = environment_field()
    obs: jax.Array = environment_field()
    steps: jax.Array = counter_field()


def test_a_states_fields_say_which_leaves_are_environments_and_counters_nested_ones_too():
    state = _MarkedState(
        params=jnp.zeros(4),
        buffer=_Buffer(data=jnp.zeros((10, 4)), position=jnp.array(3)),
        env_state={"time": jnp.zeros(4, jnp.int32), "stats": jnp.zeros(2)},
        obs=jnp.ones((4, 2)),
        steps=jnp.array(7),
    )
    assert environments(state) == (state.env_state, state.obs)
    assert counters(state) == (state.buffer.position, state.steps)
    # the split leaves: those with a leading axis of num_envs (4), not the statistics of shape (2,)
    leaves = environment_leaves(state, num_envs=4)
    assert {id(leaf) for leaf in leaves} == {id(state.env_state["time"]), id(state.obs)}
    # a state without marked fields has none
    assert environments(_State(jnp.zeros(1), None)) == () and counters(_State(jnp.zeros(1), None)) == ()
