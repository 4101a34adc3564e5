"""A run of vmapped seeds as a host loop over compiled chunks of updates, so that a long run can
report, checkpoint and stop between them (the updates inside a chunk stay in one `lax.scan`), and
what such a run needs in memory, from shapes alone."""

from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec
from jaxtyping import Array, PRNGKeyArray

from pureeqxrl import parallel
from pureeqxrl.loop import (
    Learner,
    counters,
    environment_specs,
    held,
    num_rows_of,
    run_updates,
)


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


def make_chunk_runner(learner: Learner, config: Any, layout: parallel.Layout | None = None) -> ChunkRunner:
    """Jitted, vmapped `init` and chunk programs of `learner` for a run of `config.num_updates`
    updates (see `ChunkRunner`), logged every `config.log_interval` and evaluating every
    `config.eval_every` updates as `pureeqxrl.loop.make_train` does.

    With a `layout` (`pureeqxrl.parallel.Layout`), the seeds are split over its `seeds` devices
    and each seed's environments over its `envs` devices; the metrics rows come back whole to every
    process. Without one, everything runs on the default device.
    """
    programs: dict[int, Callable] = {}
    log_interval, num_envs = config.log_interval, config.num_envs
    init_one = held(learner, num_envs).init
    mesh = layout.mesh() if layout is not None else None

    def on_devices(fn: Callable, num_args: int) -> Callable:
        # Each group of `envs` devices runs its own runs (`pureeqxrl.parallel.over_runs`).
        return fn if mesh is None else parallel.over_runs(fn, mesh, layout, num_args)

    def shardings(state: Any) -> Any:
        one_run = jax.eval_shape(lambda s: jax.tree.map(lambda x: x[0], s), state)
        return parallel.batched_shardings(mesh, environment_specs(one_run, num_envs))

    def init(starts: Any) -> Any:
        vmapped = on_devices(jax.vmap(init_one), 1)
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

        updates = run_updates(learner, config, num_rows=num_rows)

        def chunk(state, where):  # where: this chunk's first row in the run, its number of updates
            return updates(state, where[0], where[1])

        # The row number is the same for every seed, and so are the state's counters: they enter
        # the vmapped chunk once, so that what they decide is a branch taken or not.
        axes = jax.tree.map(lambda _: 0, state)
        if counters(state):
            axes = eqx.tree_at(counters, axes, replace_fn=lambda _: None)
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


def chunk_lengths(num_updates: int, log_interval: int, chunk_rows: int, start: int = 0) -> list[int]:
    """Updates in each chunk of a run, from update `start` (a chunk boundary) to `num_updates`:
    `chunk_rows` whole rows each, and whatever is left in the last."""
    per_chunk = chunk_rows * log_interval
    return [min(per_chunk, num_updates - done) for done in range(start, num_updates, per_chunk)]


# MEMORY, from shapes alone


def _nbytes(tree: Any) -> int:
    """Bytes of the arrays of a tree of `jax.ShapeDtypeStruct`s (a random key as its raw data)."""
    total = 0
    for leaf in jax.tree.leaves(tree):
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            total += jax.eval_shape(jax.random.key_data, leaf).size * 4
        else:
            total += leaf.size * np.dtype(leaf.dtype).itemsize
    return int(total)


def _largest_stacked_output(jaxpr: Any, stacked_only: bool = True) -> int:
    """Bytes of the largest stacked output of the loops (`lax.scan`s) of a traced program, nested
    ones included: an update's rollout, the experience it learns from. Not `stacked_only`: of the
    largest value any step of it makes (an evaluation's batch of activations)."""
    largest = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "scan":
            stacked = eqn.outvars[eqn.params["num_carry"] :]
            largest = max(largest, _nbytes([var.aval for var in stacked]))
        elif not stacked_only:
            largest = max([largest, *(_nbytes(var.aval) for var in eqn.outvars)])
        for value in eqn.params.values():
            for sub in value if isinstance(value, tuple | list) else (value,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    largest = max(largest, _largest_stacked_output(inner, stacked_only))
    return largest


def estimate_bytes(learner: Learner, num_seeds: int) -> dict[str, int]:
    """What a run of `num_seeds` vmapped seeds holds in memory, from shapes alone (nothing is
    allocated or compiled): the training state (networks, optimizer, environments, replay buffer),
    one update's collected experience (the largest stacked output of its loops: a rollout), and the
    evaluation's environments and largest value (a batch of activations)."""
    key = jax.random.key(0)
    state = jax.eval_shape(learner.init, key)
    experience = _largest_stacked_output(jax.make_jaxpr(learner.update)(state).jaxpr)
    estimate = {"training state": _nbytes(state) * num_seeds, "collected experience": experience * num_seeds}
    eval_env = getattr(learner.evaluate, "env", None)
    if eval_env is not None:
        estimate["evaluation environments"] = _nbytes(jax.eval_shape(eval_env.reset, key)) * num_seeds
        largest = _largest_stacked_output(jax.make_jaxpr(learner.evaluate)(state).jaxpr, stacked_only=False)
        estimate["evaluation's largest value"] = largest * num_seeds
    return estimate


def check_memory(
    learner: Learner, num_seeds: int, eval_on: bool, limit: int | None = None, seed_devices: int = 1
) -> dict[str, int]:
    """A `ValueError` with the numbers if a run of `num_seeds` seeds, split over `seed_devices`
    devices, cannot fit in one device's memory (`estimate_bytes`, with the training state twice,
    against `limit`, default `parallel.memory_limit()`); else the estimate for one device's seeds."""
    per_device = -(-num_seeds // seed_devices)
    estimate = estimate_bytes(learner if eval_on else learner._replace(evaluate=None), per_device)
    limit, source = (
        parallel.memory_limit() if limit is None else (limit, f"the {jax.devices()[0].platform} device has")
    )
    # A chunk's program holds the state it was given and the one it returns (not donated: a chunk
    # that diverges leaves the last good state to keep).
    needed = {**estimate, "the chunk's new state": estimate["training state"]}
    if sum(needed.values()) > limit:
        parts = ", ".join(f"{name} {size_text(size)}" for name, size in needed.items())
        where = f"{per_device} seed(s) per device" if seed_devices > 1 else f"{num_seeds} seed(s)"
        raise ValueError(
            f"this run needs at least {size_text(sum(needed.values()))} ({parts}, for {where}); "
            f"{source} {size_text(limit)}"
        )
    return estimate


def size_text(num_bytes: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if num_bytes < 1024:
            return f"{num_bytes:.1f} {unit}"
        num_bytes /= 1024
    return f"{num_bytes:,.1f} TiB"
