from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from test_loop import LoopConfig, counting_update

from pureeqxrl.loop import Learner
from pureeqxrl.training.chunks import make_chunk_runner


class _State(eqx.Module):
    params: jax.Array
    env_state: Any


def test_chunks_of_several_lengths_run_one_program_and_padded_rows_evaluate_nothing():
    # 11 updates in rows of 2, chunks of 3 rows: 6, then 5 updates (a shorter last row too). The
    # program compiled for 6 runs both: one trace of the update; the last chunk's third row runs
    # 1 update, and the rows past it are cut off, the evaluation of row 5 (the run's last) kept.
    traced = []

    def update(state):
        traced.append(state)
        counter, stats = counting_update(state.params)
        return _State(counter, state.env_state), stats

    learner = Learner(
        init=lambda key: _State(jnp.array(0), None),
        update=update,
        evaluate=lambda state: {"eval_counter": state.params.astype(jnp.float32)},
    )
    runner = make_chunk_runner(learner, LoopConfig(num_updates=11, log_interval=2, eval_every=4))
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
