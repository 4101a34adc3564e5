"""The training loop every algorithm runs: its `Learner`'s `init`, then `num_updates` of its
`update` inside `lax.scan`, logged in rows.

An algorithm hands the loop a `Learner`: `init(key) -> state`, `update(state) -> (state, stats)`
and, optionally, an `evaluate(state)` of its policy on fresh episodes. `make_train` turns it into
`train(key) -> TrainResult`, PureJaxRL's one pure, jittable, vmappable program. Metrics are computed
inside the jitted run and stay small: an update reports `stats`, a dict `name -> (sum, count)`;
`scan_logged` runs the updates in rows of `log_interval` and keeps one row per row of updates, the
mean of each stat over it (NaN where nothing was counted, e.g. no episode finished). Memory is
`num_updates / log_interval` rows, whatever the number of environment steps.

What the engine (`pureeqxrl.training`: chunks, checkpoints, devices, sweeps) needs to know of a
training state beyond this, its type says: a field declared with `environment_field()` holds the
`num_envs` environments (their states, observations, ...), which a data-parallel run splits over
devices, and one declared with `counter_field()` a counter that is the same for every seed (a step
count, a replay buffer's position), which a vmapped run keeps unbatched so that what it decides
stays a branch (`lax.cond`) rather than both sides computed for every seed.
"""

import dataclasses
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec
from jaxtyping import Array, PRNGKeyArray

from pureeqxrl.minibatch import ENVS, envs_devices

Carry = TypeVar("Carry")
Stats = dict[str, tuple[Array, Array]]
LogCallback = Callable[[Array, dict[str, Array]], Any]


class TrainResult(eqx.Module):
    """What every `train(key)` returns.

    `params`: the trained network (an Equinox Module, or a Linen variables dict for the twins).
    `metrics`: name -> `(num_rows,)` per-row means (`(num_seeds, num_rows)` under `vmap`).
    `obs_stats`: the observation-normalisation statistics the network was trained with, if any
    (a `pureeqxrl.normalize.RunningStats`); a policy must see observations normalised by them.
    """

    params: Any
    metrics: dict[str, Array]
    obs_stats: Any = None


class Learner(NamedTuple):
    """An algorithm as the training loop and the engine see it, for one config.

    - `init(key) -> state`: the initial networks, optimizer states, environments (and buffer);
    - `update(state) -> (state, stats)`: one training update, with the stats `scan_logged` sums;
    - `evaluate(state) -> {name: scalar}`: the policy of `state` on fresh episodes (a
      `pureeqxrl.evaluate.Evaluator`, whose `env` the memory estimate counts), or None.

    The state is an Equinox Module with fields `params` and `env_state`; which of its fields hold
    environments or counters, `environment_field` and `counter_field` say.
    """

    init: Callable[[PRNGKeyArray], Any]
    update: Callable[[Any], tuple[Any, Stats]]
    evaluate: Callable[[Any], dict[str, Array]] | None = None


# WHAT A TRAINING STATE'S FIELDS HOLD

_ROLE = "pureeqxrl_role"


def environment_field(**kwargs: Any) -> Any:
    """A state field that holds the environments (their states, the observations to act on, ...):
    its leaves with a leading axis of `num_envs` are split over the `envs` devices of a
    data-parallel run."""
    return eqx.field(metadata={_ROLE: "environments"}, **kwargs)


def counter_field(**kwargs: Any) -> Any:
    """A state field that holds a counter that is the same for every seed (environment steps taken,
    updates done, a replay buffer's position): a run of vmapped seeds keeps one of it."""
    return eqx.field(metadata={_ROLE: "counter"}, **kwargs)


def _marked(state: Any, role: str) -> tuple[Any, ...]:
    found = []

    def visit(node: Any) -> None:
        if isinstance(node, eqx.Module):
            for field in dataclasses.fields(node):
                if field.metadata.get("static"):
                    continue
                value = getattr(node, field.name)
                if field.metadata.get(_ROLE) == role:
                    found.append(value)
                else:
                    visit(value)
        elif isinstance(node, list | tuple):
            for item in node:
                visit(item)
        elif isinstance(node, dict):
            for item in node.values():
                visit(item)

    visit(state)
    return tuple(found)


def environments(state: Any) -> tuple[Any, ...]:
    """The subtrees of `state` in its `environment_field`s (through its Modules' fields)."""
    return _marked(state, "environments")


def counters(state: Any) -> tuple[Any, ...]:
    """The subtrees of `state` in its `counter_field`s (through its Modules' fields)."""
    return _marked(state, "counter")


def environment_leaves(state: Any, num_envs: int) -> list[Any]:
    """The leaves of `state`'s environments (`environments`) that have a leading axis of
    `num_envs` environments: the ones a data-parallel run splits over the `envs` devices."""
    return [
        leaf for leaf in jax.tree.leaves(environments(state)) if getattr(leaf, "shape", ())[:1] == (num_envs,)
    ]


def environment_specs(state: Any, num_envs: int) -> Any:
    """A `PartitionSpec` per leaf of one run's state: `P(ENVS)` for its `environment_leaves`, `P()`
    (whole on every device of the run's group) for the rest."""
    chosen = {id(leaf) for leaf in environment_leaves(state, num_envs)}
    return jax.tree.map(lambda leaf: PartitionSpec(ENVS) if id(leaf) in chosen else PartitionSpec(), state)


def hold_environments(state: Any, num_envs: int) -> Any:
    """One run's state with its environments (`environment_leaves`) held split over the `envs`
    devices of the mesh being traced under (the state itself outside one), so that each device
    keeps stepping its own environments from update to update. Other leaves are left to the
    partitioner."""
    if envs_devices() == 1:
        return state
    specs = environment_specs(state, num_envs)
    return jax.tree.map(
        lambda x, spec: jax.lax.with_sharding_constraint(x, spec) if spec else x, state, specs
    )


def held(learner: Learner, num_envs: int) -> Learner:
    """`learner` whose `init` and `update` hold the environments where they are (`hold_environments`)."""
    return learner._replace(
        init=lambda key: hold_environments(learner.init(key), num_envs),
        update=lambda state: learner.update(hold_environments(state, num_envs)),
    )


# THE WHOLE RUN AS ONE PROGRAM


def make_train(
    learner: Learner, config: Any, on_log: LogCallback | None = None
) -> Callable[[PRNGKeyArray], TrainResult]:
    """`train(key) -> TrainResult`: `learner.init(key)`, then `config.num_updates` of
    `learner.update` logged every `config.log_interval` updates by `scan_logged`, with
    `learner.evaluate` every `config.eval_every` updates (`eval_rows`; 0: never).

    If the environment normalises observations (`pureeqxrl.normalize.NormalizedState.obs_stats`),
    their statistics are returned with the params, since the trained policy must see observations
    normalised by them.
    """
    init = held(learner, config.num_envs).init
    updates = run_updates(learner, config, on_log)

    def train(key: PRNGKeyArray) -> TrainResult:
        state, metrics = updates(init(key), 0, config.num_updates)
        return train_result(state, metrics)

    return train


def run_updates(
    learner: Learner, config: Any, on_log: LogCallback | None = None, num_rows: int | None = None
) -> Callable[[Any, Array | int, Array | int], tuple[Any, dict[str, Array]]]:
    """`updates(state, first_row, num_updates) -> (state, rows)`: `num_updates` of
    `learner.update` from metrics row `first_row` of the run on, logged every `config.log_interval`
    updates and evaluated by `learner.evaluate` where `config.eval_every` says (`scan_logged`).

    Every way of running a learner is this: `make_train` runs all the updates in one call, and the
    engine's chunks (`pureeqxrl.training.chunks`) run them a chunk of `num_rows` rows at a time.
    """
    learner = held(learner, config.num_envs)
    evaluate = evaluation(learner, eval_rows(config.num_updates, config.log_interval, config.eval_every))

    def updates(state: Any, first_row: Array | int, num_updates: Array | int) -> tuple[Any, dict[str, Array]]:
        return scan_logged(
            learner.update,
            state,
            num_updates,
            config.log_interval,
            on_log,
            evaluate,
            first_row=first_row,
            num_rows=num_rows,
        )

    return updates


def train_result(state: Any, metrics: dict[str, Array]) -> TrainResult:
    """What a run hands out from its training state: the params and, if the environment normalises
    observations, their statistics."""
    return TrainResult(
        params=state.params, metrics=metrics, obs_stats=getattr(state.env_state, "obs_stats", None)
    )


# EVALUATION during training, at the end of some logged rows, inside the compiled program.


def eval_rows(num_updates: int, log_interval: int, eval_interval: int) -> np.ndarray:
    """Which metrics rows end with an evaluation: the first row to reach each multiple of
    `eval_interval` updates, and the last row (none if `eval_interval` is 0)."""
    ends = rows_update_counts(num_updates, log_interval)
    if not eval_interval:
        return np.zeros(len(ends), bool)
    starts = np.concatenate([[0], ends[:-1]])
    due = ends // eval_interval > starts // eval_interval
    due[-1] = True
    return due


class Evaluation(NamedTuple):
    """`evaluate(state) -> {name: scalar}` and the rows (`eval_rows`) whose end runs it."""

    evaluate: Callable[[Any], dict[str, Array]]
    due: np.ndarray


def evaluation(learner: Learner, due: np.ndarray) -> Evaluation | None:
    return Evaluation(learner.evaluate, due) if learner.evaluate is not None and due.any() else None


def _reduce(stats: Stats) -> dict[str, Array]:
    row = {}
    nonfinite = jnp.array(0.0)
    for name, (total, count) in stats.items():
        total, count = total.sum(), count.sum()
        row[name] = jnp.where(count > 0, total / jnp.maximum(count, 1), jnp.nan)
        nonfinite += (~jnp.isfinite(total)).astype(jnp.float32)
        if name == "episode_return":
            row["episodes"] = count
    # A NaN row value can mean "nothing counted"; a non-finite sum means a NaN or inf was counted.
    row["nonfinite_stats"] = nonfinite
    return row


def scan_logged(
    update: Callable[[Carry], tuple[Carry, Stats]],
    carry: Carry,
    num_updates: int | Array,
    log_interval: int,
    on_log: LogCallback | None = None,
    evaluate: Evaluation | None = None,
    first_row: Array | int = 0,
    num_rows: int | None = None,
) -> tuple[Carry, dict[str, Array]]:
    """Apply `update` `num_updates` times, logging a row every `log_interval`: a `lax.scan` over
    the rows, each a loop of `log_interval` updates (the last row's loop runs what is left).

    **Arguments:**

    - `update`: one training update, `carry -> (carry, stats)`.
    - `on_log`: optional host function `(row_index, row)` called after each row (via
      `jax.debug.callback`, so it works under `jit` and is called once per seed under `vmap`).
    - `evaluate`: optional; where `evaluate.due[first_row + row_index]`, the row also holds
      `evaluate.evaluate(carry)` of the carry at its end, elsewhere NaN in those columns. The
      branch is a `lax.cond` on the row number, so rows without an evaluation cost nothing.
    - `first_row`: the number of this call's first row in the whole run (for a run in chunks).
    - `num_rows`: how many rows the program runs; by default `ceil(num_updates / log_interval)`.
      With more, `num_updates` may be a traced count (one compiled program for chunks of several
      lengths): the rows past it run no update, hold NaN, and evaluate nothing.

    **Returns:** the final carry and the rows, each metric an array of shape `(num_rows,)` (the
    last row that has updates may cover fewer than `log_interval`).
    """

    if evaluate is not None:
        due = jnp.asarray(evaluate.due)
        skipped = jax.tree.map(
            lambda s: jnp.full(s.shape, jnp.nan, s.dtype), jax.eval_shape(evaluate.evaluate, carry)
        )
    # Every row runs the same loop of updates, the last one fewer of them: one copy of the update
    # in the program, traced, lowered and compiled once, where a shorter last row would be another.
    update = eqx.filter_closure_convert(update, carry)
    no_stats = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), update.out_struct[1])

    def add_update(_, carry_and_sums):
        carry, sums = carry_and_sums
        carry, stats = update(carry)
        return carry, jax.tree.map(jnp.add, sums, stats)

    def run_chunk(carry, index):
        length = jnp.clip(num_updates - index * log_interval, 0, log_interval)
        carry, sums = jax.lax.fori_loop(0, length, add_update, (carry, no_stats))
        row = _reduce(sums)
        if evaluate is not None:
            row_due = due[jnp.minimum(first_row + index, len(evaluate.due) - 1)] & (length > 0)
            row |= jax.lax.cond(row_due, evaluate.evaluate, lambda _: skipped, carry)
        if on_log is not None:
            jax.debug.callback(on_log, index, row)
        return carry, row

    if num_rows is None:
        num_rows = num_rows_of(num_updates, log_interval)
    return jax.lax.scan(run_chunk, carry, jnp.arange(num_rows))


def num_rows_of(num_updates: int, log_interval: int) -> int:
    """Logged rows of `num_updates` updates in rows of `log_interval`, the last one maybe shorter."""
    return -(-num_updates // log_interval)


def rows_update_counts(num_updates: int, log_interval: int) -> np.ndarray:
    """Number of updates completed at the end of each logged row (host side)."""
    ends = np.arange(log_interval, num_updates + 1, log_interval)
    if num_updates % log_interval:
        ends = np.append(ends, num_updates)
    return ends


def final_return(episode_return: np.ndarray, fraction: float = 0.05) -> np.ndarray:
    """Mean of the logged episode returns over the last `fraction` of training, per seed.

    Rows are averaged with equal weight (a time average, like PureJaxRL's curves); rows where no
    episode finished are skipped. Works on `(num_rows,)` or `(num_seeds, num_rows)` arrays.
    """
    episode_return = np.asarray(episode_return, np.float64)
    tail = max(1, int(np.ceil(fraction * episode_return.shape[-1])))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN tail -> NaN, said once here
        return np.nanmean(episode_return[..., -tail:], axis=-1)


EVAL_COLUMNS = {"eval_return": "greedy", "eval_return_sampled": "sampled"}
"""The evaluation columns of the metrics (`pureeqxrl.evaluate.make_evaluator`), and their policies."""


def last_evaluated_row(metrics: dict[str, np.ndarray]) -> int | None:
    """The last metrics row with an evaluation during training (`eval_return` not NaN for some
    seed), or None if the run made none."""
    if "eval_return" not in metrics:
        return None
    evaluated = np.flatnonzero(~np.isnan(metrics["eval_return"]).all(axis=0))
    return int(evaluated[-1]) if evaluated.size else None
