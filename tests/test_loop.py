from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pureeqxrl.loop import (
    Evaluation,
    UpdateSteps,
    epoch_orders,
    eval_rows,
    final_return,
    make_chunk_runner,
    rows_update_counts,
    scan_logged,
    shuffled_epochs,
    train_from_steps,
)
from pureeqxrl.normalize import NormalizedState, RunningStats

pytestmark = pytest.mark.usefixtures("strict_promotion")


def _counting_update(counter):
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
        lambda c: scan_logged(_counting_update, c, 10, 4, on_log=lambda i, row: calls.append(int(i)))
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
        return _counting_update(counter)

    lowered = jax.jit(lambda c: scan_logged(update, c, 10, 4)).lower(jnp.array(0))
    assert len(traced) == 1
    assert lowered.as_text().count("stablehlo.while") == 2
    final, rows = lowered.compile()(jnp.array(0))
    assert int(final) == 10
    np.testing.assert_allclose(rows["index"], [1.5, 5.5, 8.5])


def test_rows_without_episodes_are_nan_not_zero():
    _, rows = scan_logged(_counting_update, jnp.array(1), 2, 1)  # updates 1, 2: no multiple of 3
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


def test_train_from_steps_runs_init_then_the_logged_updates():
    def update(state):
        counter, stats = _counting_update(state.params)
        return _State(counter, state.env_state), stats

    steps = UpdateSteps(
        network=None, init=lambda key: _State(jnp.array(0), None), collect=None, learn=None, update=update
    )
    result = jax.jit(train_from_steps(steps, num_updates=10, log_interval=4))(jax.random.key(0))
    assert int(result.params) == 10 and result.obs_stats is None
    np.testing.assert_allclose(result.metrics["index"], [1.5, 5.5, 8.5])


def test_train_from_steps_returns_the_observation_statistics_it_normalised_with():
    stats = RunningStats.empty((2,)).update(jnp.ones((3, 2)))
    env_state = NormalizedState(inner=None, obs_stats=stats, reward_stats=None, discounted_return=None)
    steps = UpdateSteps(
        network=None,
        init=lambda key: _State(jnp.array(0), env_state),
        collect=None,
        learn=None,
        update=lambda s: (s, {"x": (jnp.array(1.0), jnp.array(1.0))}),
    )
    result = train_from_steps(steps, num_updates=2, log_interval=1)(jax.random.key(0))
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
    _, rows = jax.jit(lambda c: scan_logged(_counting_update, c, 10, 2, evaluate=evaluate))(jnp.array(0))
    np.testing.assert_array_equal(rows["eval_counter"], [np.nan, 4, np.nan, 8, 10])
    # The same run as chunks of 2 rows: `first_row` says where each chunk's rows are.
    counter, chunks = jnp.array(0), []
    chunk = jax.jit(
        lambda c, first: scan_logged(_counting_update, c, 4, 2, evaluate=evaluate, first_row=first)
    )
    for first in (0, 2):
        counter, rows_of_chunk = chunk(counter, jnp.int32(first))
        chunks.append(rows_of_chunk["eval_counter"])
    np.testing.assert_array_equal(np.concatenate(chunks), [np.nan, 4, np.nan, 8])


def test_chunks_of_several_lengths_run_one_program_and_padded_rows_evaluate_nothing():
    # 11 updates in rows of 2, chunks of 3 rows: 6, then 5 updates (a shorter last row too). The
    # program compiled for 6 runs both: one trace of the update; the last chunk's third row runs
    # 1 update, and the rows past it are cut off, the evaluation of row 5 (the run's last) kept.
    traced = []

    def update(state):
        traced.append(state)
        counter, stats = _counting_update(state.params)
        return _State(counter, state.env_state), stats

    steps = UpdateSteps(
        network=None,
        init=lambda key: _State(jnp.array(0), None),
        collect=None,
        learn=None,
        update=update,
        evaluate=lambda state: {"eval_counter": state.params.astype(jnp.float32)},
    )
    runner = make_chunk_runner(steps, num_updates=11, log_interval=2, eval_interval=4)
    state = runner.init(jax.random.split(jax.random.key(0), 2))
    runner.compile(state, 6)
    state, first = runner.run(state, 6, 0)
    state, last = runner.run(state, 5, 3)
    assert len(traced) == 1
    np.testing.assert_array_equal(state.params, [11, 11])
    np.testing.assert_allclose(first["index"][0], [0.5, 2.5, 4.5])
    np.testing.assert_allclose(last["index"][0], [6.5, 8.5, 10.0])
    # Rows end at 2, 4, ..., 10, 11: evaluations in rows 1, 3, 5 (the first to reach 4, 8; the last).
    np.testing.assert_array_equal(
        np.concatenate([first["eval_counter"][1], last["eval_counter"][1]]),
        [np.nan, 4, np.nan, 8, np.nan, 11],
    )


def test_shuffled_epochs_visit_every_example_once_per_epoch_in_each_epochs_own_order():
    key = jax.random.key(3)
    batch = {"x": jnp.arange(12.0), "y": 10.0 * jnp.arange(12.0)[:, None]}

    def gradient_step(count, minibatch):
        return count + 1, minibatch

    count, seen = shuffled_epochs(gradient_step, 0, batch, key, num_epochs=3, num_minibatches=4)
    assert count == 12  # 3 epochs x 4 minibatches, in order
    assert seen["x"].shape == (3, 4, 3) and seen["y"].shape == (3, 4, 3, 1)
    orders = epoch_orders(key, 3, 12)
    for epoch in range(3):
        # epoch i's order is the permutation of the i-th split key, as a per-epoch draw would give
        expected = jax.random.permutation(jax.random.split(key, 3)[epoch], 12)
        np.testing.assert_array_equal(orders[epoch], expected)
        np.testing.assert_array_equal(seen["x"][epoch].ravel(), expected)
        # the fields stay paired
        np.testing.assert_array_equal(seen["y"][epoch].ravel(), 10.0 * np.asarray(expected))
    assert len({tuple(np.asarray(order)) for order in orders}) == 3  # a new order every epoch
