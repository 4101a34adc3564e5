"""A long training run on the host: compiled chunks of updates (`pureeqxrl.loop.ChunkRunner`)
driven one after another, with checkpoints on a schedule, Ctrl-C and SIGTERM that finish the
current chunk and keep the work, and a stop at the first non-finite loss or parameter.

The CLI drives a run through `run_chunks`; the Python API's `make_train` stays one pure program.
"""

import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from pureeqxrl import parallel, runs
from pureeqxrl.loop import ChunkRunner, UpdateSteps, chunk_lengths, estimate_bytes

EPISODE_METRICS = ("episode_return", "episode_length", "episodes")


@dataclass(frozen=True)
class CheckpointSchedule:
    """How a run is cut into chunks and how often its state is written to disk."""

    chunk_rows: int = 10
    """Metrics rows per compiled chunk; progress, checkpoints and stops happen between chunks."""
    checkpoint_updates: int = 0
    """Write a checkpoint once this many updates have passed since the last one (0: by time only)."""
    checkpoint_minutes: float = 10.0
    """Write a checkpoint once this many minutes have passed since the last one."""
    keep_checkpoints: int = 3
    """Checkpoints kept in the run folder; older ones are deleted."""

    def errors(self) -> list[str]:
        problems = []
        if self.chunk_rows < 1:
            problems.append(f"chunk_rows must be positive, got {self.chunk_rows}")
        if self.checkpoint_updates < 0:
            problems.append(f"checkpoint_updates must be >= 0, got {self.checkpoint_updates}")
        if not self.checkpoint_minutes > 0:
            problems.append(f"checkpoint_minutes must be positive, got {self.checkpoint_minutes}")
        if self.keep_checkpoints < 1:
            problems.append(f"keep_checkpoints must be positive, got {self.keep_checkpoints}")
        return problems


class Outcome(NamedTuple):
    status: Literal["finished", "interrupted", "diverged"]
    state: Any
    """The last good training state (every seed)."""
    metrics: dict[str, np.ndarray]
    """Rows so far, `(num_seeds, rows)`; a diverged run's include the bad chunk's rows."""
    updates_done: int
    """Updates in `state`."""
    compile_seconds: float
    train_seconds: float
    message: str
    checkpoint: Path | None
    """The newest checkpoint on disk (the last good one)."""


class StopSignals:
    """While active, Ctrl-C (SIGINT) and SIGTERM are recorded instead of raised, so that a compile
    or a chunk in progress finishes and the run stops cleanly between chunks."""

    def __init__(self):
        self.received: int | None = None

    @contextlib.contextmanager
    def caught(self) -> Iterator["StopSignals"]:
        def record(signum, frame):
            self.received = signum

        previous = {sig: signal.signal(sig, record) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    @property
    def exit_code(self) -> int:
        """The shell's convention: 128 + the signal's number (130 for Ctrl-C, 143 for SIGTERM)."""
        return 128 + int(self.received or signal.SIGINT)

    @property
    def name(self) -> str:
        return signal.Signals(self.received).name if self.received else "no signal"


def memory_limit_bytes() -> int:
    """Memory of the device a run trains on: an accelerator's own, or the host's physical memory."""
    device = jax.devices()[0]
    stats = device.memory_stats() if device.platform != "cpu" else None
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"])
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_memory(
    steps: UpdateSteps, num_seeds: int, eval_on: bool, limit: int | None = None, seed_devices: int = 1
) -> dict[str, int]:
    """A `ValueError` with the numbers if a run of `num_seeds` seeds, split over `seed_devices`
    devices, cannot fit in one device's memory (`pureeqxrl.loop.estimate_bytes`, against `limit`,
    default `memory_limit_bytes()`); else the estimate for one device's seeds."""
    per_device = -(-num_seeds // seed_devices)
    estimate = estimate_bytes(steps if eval_on else steps._replace(evaluate=None), per_device)
    limit = memory_limit_bytes() if limit is None else limit
    if sum(estimate.values()) > limit:
        parts = ", ".join(f"{name} {size_text(size)}" for name, size in estimate.items())
        where = f"{per_device} seed(s) per device" if seed_devices > 1 else f"{num_seeds} seed(s)"
        raise ValueError(
            f"this run needs at least {size_text(sum(estimate.values()))} ({parts}, for {where}); "
            f"the {jax.devices()[0].platform} device has {size_text(limit)}"
        )
    return estimate


def size_text(num_bytes: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if num_bytes < 1024:
            return f"{num_bytes:.1f} {unit}"
        num_bytes /= 1024
    return f"{num_bytes:,.1f} TiB"


@jax.jit
def _finite_per_seed(params: Any) -> jax.Array:
    leaves = [jnp.isfinite(leaf).reshape(leaf.shape[0], -1).all(axis=1) for leaf in jax.tree.leaves(params)]
    return jnp.stack(leaves).all(axis=0)


def first_bad_row(rows: dict[str, np.ndarray], row_offset: int) -> str | None:
    """A message naming the first row of a chunk in which a non-finite value was logged (the row's
    `nonfinite_stats` count), or None."""
    bad_seeds, bad_rows = np.nonzero(rows["nonfinite_stats"] > 0)
    if not bad_rows.size:
        return None
    row = int(bad_rows.min())
    seed = int(bad_seeds[bad_rows == row][0])
    names = [
        name
        for name in sorted(rows)
        if name not in EPISODE_METRICS
        and name not in runs.EVAL_COLUMNS
        and not np.isfinite(rows[name][seed, row])
    ]
    return (
        f"{', '.join(names) or 'a logged value'} of seed {seed} not finite in metrics row {row_offset + row}"
    )


def run_chunks(
    runner: ChunkRunner,
    state: Any,
    metrics: dict[str, np.ndarray],
    updates_done: int,
    num_updates: int,
    log_interval: int,
    schedule: CheckpointSchedule,
    *,
    run_dir: Path,
    header: dict[str, Any],
    stop: StopSignals,
    on_compiled: Callable[[], None] = lambda: None,
    on_chunk: Callable[[dict[str, np.ndarray], int], None] = lambda rows, first_row: None,
) -> Outcome:
    """Train from `state` (`updates_done` updates in, a chunk boundary, with its `metrics` rows)
    to `num_updates`, in chunks, checkpointing `header` + state + metrics into `run_dir`.

    Compiles the chunk programs first (`on_compiled` is called after), then runs them, calling
    `on_chunk(rows, first_row)` with each chunk's good rows (the live loggers' row callback). Stops
    early, after the chunk in progress, when `stop` has caught a signal (a checkpoint is written)
    or a loss or parameter is not finite (the last good checkpoint is kept).

    In a run of several processes every process calls this: they decide together when to save or
    stop (a signal to any of them stops all), the state is gathered for each checkpoint, and only
    process 0 writes it.
    """
    lengths = chunk_lengths(num_updates, log_interval, schedule.chunk_rows, start=updates_done)
    start = time.perf_counter()
    if lengths:  # one program runs every chunk, the shorter last one too
        runner.compile(state, max(lengths))
    compile_seconds = time.perf_counter() - start
    on_compiled()

    checkpoint = runs.latest_checkpoint(run_dir)
    last_saved_updates, last_saved_time = updates_done, time.monotonic()

    def save() -> Path | None:
        nonlocal last_saved_updates, last_saved_time
        rows_done = next(iter(metrics.values())).shape[1] if metrics else 0
        whole_state = parallel.gather(state)  # every process takes part; process 0 writes
        path = None
        if parallel.is_main_process():
            path = runs.save_checkpoint(
                run_dir,
                {**header, "updates_done": updates_done, "rows_done": rows_done},
                whole_state,
                metrics,
                schedule.keep_checkpoints,
            )
        last_saved_updates, last_saved_time = updates_done, time.monotonic()
        return path

    def outcome(status, message, train_start, final_metrics=None) -> Outcome:
        return Outcome(
            status,
            state,
            metrics if final_metrics is None else final_metrics,
            updates_done,
            compile_seconds,
            time.perf_counter() - train_start,
            message,
            checkpoint,
        )

    train_start = time.perf_counter()
    if parallel.any_process(stop.received is not None):
        stop.received = stop.received or signal.SIGTERM  # another process was stopped
        checkpoint = save() if checkpoint is None else checkpoint
        return outcome("interrupted", f"{stop.name} while compiling: no update was run", train_start)
    for length in lengths:
        rows_before = next(iter(metrics.values())).shape[1] if metrics else 0
        new_state, rows = runner.run(state, length, rows_before)
        rows = {name: np.asarray(value) for name, value in rows.items()}
        all_rows = {
            name: np.concatenate([metrics[name], rows[name]], axis=1) if metrics else rows[name]
            for name in rows
        }
        bad = first_bad_row(rows, rows_before)
        finite = np.asarray(parallel.gather(_finite_per_seed(new_state.params)))
        if bad is None and not finite.all():
            bad = f"the parameters of seed {int(np.flatnonzero(~finite)[0])} are not finite"
        if bad is not None:
            message = (
                f"training diverged between updates {updates_done + 1} and {updates_done + length}: {bad}"
            )
            return outcome("diverged", message, train_start, all_rows)
        state, metrics, updates_done = new_state, all_rows, updates_done + length
        on_chunk(rows, rows_before)
        due = (
            schedule.checkpoint_updates and updates_done - last_saved_updates >= schedule.checkpoint_updates
        ) or (time.monotonic() - last_saved_time >= 60 * schedule.checkpoint_minutes)
        # both flags in one collective: all processes stop, and save, after the same chunk
        stopped, save_due = parallel.any_process_each(
            stop.received is not None, bool(updates_done == num_updates or due)
        )
        if stopped:
            stop.received = stop.received or signal.SIGTERM
        if stopped or save_due:
            checkpoint = save()
        if stopped and updates_done < num_updates:  # a later signal stops all after the next chunk
            return outcome(
                "interrupted", f"{stop.name} after update {updates_done} of {num_updates}", train_start
            )
    return outcome("finished", "", train_start)
