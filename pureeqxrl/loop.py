"""The training loop every algorithm runs: `steps.init`, then `num_updates` of `steps.update`
inside `lax.scan`, logged in rows.

An algorithm builds `UpdateSteps` (the pure pieces of one update); `train_from_steps` turns them into
`train(key) -> TrainResult`. Metrics are computed inside the jitted run and stay small: an update
reports `stats`: a dict `name -> (sum, count)`. `scan_logged` runs the updates in chunks of
`log_interval` and keeps one row per chunk, the mean of each stat over the chunk (NaN where nothing was
counted, e.g. no episode finished). Memory is `num_updates / log_interval` rows, whatever the number of
environment steps, and a host callback after every chunk drives progress bars and live loggers.
"""

import warnings
from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec
from jaxtyping import Array, PRNGKeyArray

from pureeqxrl import parallel

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


class UpdateSteps(NamedTuple):
    """The pieces of one training update of an algorithm, each a pure function: what
    `train_from_steps` scans, and what `benchmarks/per_op.py` times one by one.

    - `network`: the algorithm's network (`init`/`apply`);
    - `init(key) -> state`: initial network, optimizer, environments (and buffer);
    - `collect(state) -> (state, experience, ...)`: the update's environment steps;
    - `learn(state, ...) -> (state, ...)`: the update's gradient steps (arguments per algorithm);
    - `update(state) -> (state, stats)`: one whole update, with the stats `scan_logged` sums;
    - `evaluate(state) -> {name: scalar}`: the policy of `state` on fresh episodes (a
      `pureeqxrl.evaluate.Evaluator`, whose `env` `estimate_bytes` counts), or None;
    - `shared(state) -> tuple of leaves`: the counters of the state that are the same for every
      seed (a step count, a buffer's position), or None. `jax.vmap` of a whole `train(key)` keeps
      them unbatched by itself, so the branches they decide stay branches (`lax.cond`) rather than
      both sides computed for every seed; `make_chunk_runner` keeps them so too.
    - `environments(state) -> subtrees`: the parts of the state that hold the `num_envs`
      environments (their states, observations, ...), or None. Their leaves with a leading axis of
      `num_envs` are what a data-parallel run splits over devices (`pureeqxrl.parallel`).
    """

    network: Any
    init: Callable[..., Any]
    collect: Callable[..., Any]
    learn: Callable[..., Any]
    update: Callable[[Any], tuple[Any, Stats]]
    evaluate: Callable[[Any], dict[str, Array]] | None = None
    shared: Callable[[Any], tuple[Array, ...]] | None = None
    environments: Callable[[Any], Any] | None = None
    num_envs: int = 0


def train_from_steps(
    steps: UpdateSteps,
    num_updates: int,
    log_interval: int,
    on_log: LogCallback | None = None,
    eval_interval: int = 0,
) -> Callable[[PRNGKeyArray], TrainResult]:
    """`train(key) -> TrainResult`: `steps.init(key)`, then `num_updates` of `steps.update` logged
    every `log_interval` updates by `scan_logged`, with `steps.evaluate` every `eval_interval`
    updates (`eval_rows`; 0: never).

    The training state must have `params` and `env_state` fields; if the environment normalises
    observations (`pureeqxrl.normalize.NormalizedState.obs_stats`), their statistics are returned
    with the params, since the trained policy must see observations normalised by them.
    """

    def train(key: PRNGKeyArray) -> TrainResult:
        state, metrics = scan_logged(
            held_update(steps),
            hold(steps, steps.init(key)),
            num_updates,
            log_interval,
            on_log,
            evaluation(steps, due),
        )
        return train_result(state, metrics)

    due = eval_rows(num_updates, log_interval, eval_interval)

    return train


def hold(steps: UpdateSteps, state: Any) -> Any:
    """`state` with its environments held on their devices when traced under a mesh with an `envs`
    axis (`pureeqxrl.parallel.hold_environments`); `state` itself otherwise."""
    return parallel.hold_environments(state, steps.environments, steps.num_envs)


def held_update(steps: UpdateSteps) -> Callable[[Any], tuple[Any, Stats]]:
    """`steps.update` that starts by holding the environments where they are (`hold`)."""
    return lambda state: steps.update(hold(steps, state))


def train_result(state: Any, metrics: dict[str, Array]) -> TrainResult:
    """What a run hands out from its training state: the params and, if the environment normalises
    observations, their statistics."""
    return TrainResult(
        params=state.params, metrics=metrics, obs_stats=getattr(state.env_state, "obs_stats", None)
    )


# CHUNKS: the same training as a host loop over compiled pieces, so that a long run can report,
# checkpoint and stop between them. The updates inside a chunk stay in one `lax.scan`.


class ChunkRunner(NamedTuple):
    """A run of vmapped seeds in chunks of updates (`make_chunk_runner`).

    - `init(keys) -> state`: the initial training state of every seed (a leading seed axis);
    - `run(state, num_updates, first_row) -> (state, rows)`: `num_updates` more updates of every
      seed, from metrics row `first_row` of the run on, with `rows[name]` of shape
      `(num_seeds, num_rows)`, a row per `log_interval` updates (the last one shorter if
      `num_updates` is not a multiple);
    - `compile(state, num_updates)`: compile, ahead of time, the program that `run` runs for
      chunks of up to `num_updates` updates. The count of updates is an argument of the program,
      not a constant in it: a run of equal chunks and a shorter last one compiles one program;
    - `place(state) -> state`: a state read back from the host (a checkpoint) laid out as `init`
      lays its states out.
    """

    init: Callable[[PRNGKeyArray], Any]
    run: Callable[[Any, int, int], tuple[Any, dict[str, Array]]]
    compile: Callable[[Any, int], None]
    place: Callable[[Any], Any]


def make_chunk_runner(
    steps: UpdateSteps,
    num_updates: int,
    log_interval: int,
    eval_interval: int = 0,
    layout: parallel.Layout | None = None,
) -> ChunkRunner:
    """Jitted, vmapped `init` and chunk programs of `steps` for a run of `num_updates` (see
    `ChunkRunner`), evaluating every `eval_interval` updates as `train_from_steps` does.

    With a `layout` (`pureeqxrl.parallel.Layout`), the seeds are split over its `seeds` devices
    and each seed's environments over its `envs` devices; the metrics rows come back whole to every
    process. Without one, everything runs on the default device.
    """
    programs: dict[int, Callable] = {}
    evaluate = evaluation(steps, eval_rows(num_updates, log_interval, eval_interval))
    update = held_update(steps)
    mesh = layout.mesh() if layout is not None else None

    def on_devices(fn: Callable, num_args: int) -> Callable:
        # Each group of `envs` devices runs its own runs (`pureeqxrl.parallel.over_runs`).
        return fn if mesh is None else parallel.over_runs(fn, mesh, layout, num_args)

    def shardings(state: Any) -> Any:
        one_run = jax.eval_shape(lambda s: jax.tree.map(lambda x: x[0], s), state)
        return parallel.batched_shardings(
            mesh, parallel.run_specs(one_run, steps.environments, steps.num_envs)
        )

    def init(starts: Any) -> Any:
        vmapped = on_devices(jax.vmap(lambda start: hold(steps, steps.init(start))), 1)
        if mesh is None:
            return jax.jit(vmapped)(starts)
        start_shardings = jax.tree.map(lambda _: NamedSharding(mesh, PartitionSpec(parallel.SEEDS)), starts)
        with jax.set_mesh(mesh):
            state_shardings = shardings(jax.eval_shape(vmapped, starts))
            program = jax.jit(vmapped, in_shardings=(start_shardings,), out_shardings=state_shardings)
            return program(parallel.put(starts, start_shardings))

    def place(state: Any) -> Any:
        return state if mesh is None else parallel.put(state, shardings(state))

    def compile(state: Any, length: int) -> None:
        num_rows = num_rows_of(length, log_interval)
        if num_rows in programs:
            return

        def chunk(state, where):  # where: this chunk's first row in the run, its number of updates
            return scan_logged(
                update,
                state,
                where[1],
                log_interval,
                evaluate=evaluate,
                first_row=where[0],
                num_rows=num_rows,
            )

        # The row number is the same for every seed, and so are the `shared` counters: they
        # enter the vmapped chunk once, so that what they decide is a branch taken or not.
        axes = jax.tree.map(lambda _: 0, state)
        if steps.shared is not None:
            axes = eqx.tree_at(steps.shared, axes, replace_fn=lambda _: None)
        vmapped = jax.vmap(chunk, in_axes=(axes, None), out_axes=(axes, 0))

        def program(state, where):
            num_seeds = jax.tree.leaves(state)[0].shape[0]
            once = jax.tree.map(lambda x, axis: x if axis == 0 else x[0], state, axes)
            state, rows = vmapped(once, where)
            seeds = lambda x, axis: x if axis == 0 else jnp.broadcast_to(x, (num_seeds, *x.shape))  # noqa: E731
            return jax.tree.map(seeds, state, axes), rows

        if mesh is None:
            programs[num_rows] = jax.jit(program).lower(state, np.zeros(2, np.int32)).compile()
            return
        local = on_devices(lambda state, where: program(state, where[0]), 2)
        state_shardings, whole = shardings(state), NamedSharding(mesh, PartitionSpec())
        runs = NamedSharding(mesh, PartitionSpec(parallel.SEEDS))
        with jax.set_mesh(mesh):
            programs[num_rows] = (
                jax.jit(local, in_shardings=(state_shardings, runs), out_shardings=(state_shardings, whole))
                .lower(state, jax.ShapeDtypeStruct((layout.seed_devices, 2), np.int32, sharding=runs))
                .compile()
            )

    def run(state: Any, length: int, first_row: int) -> tuple[Any, dict[str, Array]]:
        needed = num_rows_of(length, log_interval)
        # The program of the fewest rows that holds `length` updates (compiled now if none does).
        num_rows = min((rows for rows in programs if rows >= needed), default=None)
        if num_rows is None:
            compile(state, length)
            num_rows = needed
        where = np.array([first_row, length], np.int32)
        if mesh is None:
            state, rows = programs[num_rows](state, where)
        else:  # once per group of devices (a global array: each process places its own)
            where_at = NamedSharding(mesh, PartitionSpec(parallel.SEEDS))
            state, rows = programs[num_rows](
                state, parallel.put(np.tile(where, (layout.seed_devices, 1)), where_at)
            )
        if num_rows > needed:  # the rows past `length` updates hold nothing
            rows = {name: value[:, :needed] for name, value in rows.items()}
        return state, rows

    return ChunkRunner(init=init, run=run, compile=compile, place=place)


def _nbytes(tree: Any) -> int:
    """Bytes of the arrays of a tree of `jax.ShapeDtypeStruct`s (a random key as its raw data)."""
    total = 0
    for leaf in jax.tree.leaves(tree):
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            total += jax.eval_shape(jax.random.key_data, leaf).size * 4
        else:
            total += leaf.size * np.dtype(leaf.dtype).itemsize
    return int(total)


def estimate_bytes(steps: UpdateSteps, num_seeds: int) -> dict[str, int]:
    """What a run of `num_seeds` vmapped seeds holds in memory, from shapes alone (`jax.eval_shape`,
    nothing is allocated or compiled): the training state (networks, optimizer, environments,
    replay buffer), one update's collected experience, and the evaluation's environments."""
    key = jax.random.key(0)
    state = jax.eval_shape(steps.init, key)
    estimate = {
        "training state": _nbytes(state) * num_seeds,
        "collected experience": _nbytes(jax.eval_shape(steps.collect, state)[1:]) * num_seeds,
    }
    eval_env = getattr(steps.evaluate, "env", None)
    if eval_env is not None:
        estimate["evaluation environments"] = _nbytes(jax.eval_shape(eval_env.reset, key)) * num_seeds
    return estimate


# EPOCHS OF MINIBATCHES, for the algorithms that learn from one update's rollout (PPO, PQN, PPO-RNN)


def epoch_orders(key: PRNGKeyArray, num_epochs: int, size: int) -> Array:
    """A random order of `size` examples for each of `num_epochs` epochs, `(num_epochs, size)`:
    epoch `i`'s is `jax.random.permutation(jax.random.split(key, num_epochs)[i], size)`, all drawn in
    one batched shuffle rather than one per epoch inside the loop of epochs."""
    return jax.vmap(lambda key: jax.random.permutation(key, size))(jax.random.split(key, num_epochs))


def shuffled_epochs(
    gradient_step: Callable[[Carry, Any], tuple[Carry, Any]],
    carry: Carry,
    batch: Any,
    key: PRNGKeyArray,
    num_epochs: int,
    num_minibatches: int,
) -> tuple[Carry, Any]:
    """`num_epochs` passes over `batch` (leaves with a leading axis of examples), each in a new
    random order (`epoch_orders`) cut into `num_minibatches` equal minibatches, with
    `gradient_step(carry, minibatch) -> (carry, out)` on each in turn. Returns the final carry and
    the outputs stacked `(num_epochs, num_minibatches, ...)`."""
    size = jax.tree.leaves(batch)[0].shape[0]

    def epoch(carry: Carry, order: Array) -> tuple[Carry, Any]:
        minibatches = jax.tree.map(lambda x: x[order].reshape(num_minibatches, -1, *x.shape[1:]), batch)
        return jax.lax.scan(gradient_step, carry, minibatches)

    return jax.lax.scan(epoch, carry, epoch_orders(key, num_epochs, size))


def chunk_lengths(num_updates: int, log_interval: int, chunk_rows: int, start: int = 0) -> list[int]:
    """Updates in each chunk of a run, from update `start` (a chunk boundary) to `num_updates`:
    `chunk_rows` whole rows each, and whatever is left in the last."""
    per_chunk = chunk_rows * log_interval
    return [min(per_chunk, num_updates - done) for done in range(start, num_updates, per_chunk)]


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


def evaluation(steps: UpdateSteps, due: np.ndarray) -> Evaluation | None:
    return Evaluation(steps.evaluate, due) if steps.evaluate is not None and due.any() else None


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
