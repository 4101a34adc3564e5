"""A long training run on the host: compiled chunks of updates (`pureeqxrl.training.chunks`)
driven one after another, with checkpoints on a schedule, Ctrl-C and SIGTERM that finish the
current chunk and keep the work, a stop at the first non-finite loss or parameter, the live
loggers fed between chunks, and the run folder's results at the end.

`start` trains a new run and `resume` goes on with one; both check everything that can reject the
run before the run folder is touched, and return an `Ending` that the command line prints. The
Python API's `make_train` stays one pure program.
"""

import contextlib
import dataclasses
import json
import math
import os
import shlex
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from pureeqxrl import parallel, registry, runs
from pureeqxrl.config import INT32_MAX
from pureeqxrl.loop import EVAL_COLUMNS, rows_update_counts, train_result
from pureeqxrl.training import loggers
from pureeqxrl.training.chunks import ChunkRunner, check_memory, chunk_lengths, make_chunk_runner
from pureeqxrl.training.loggers import LoggerName

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
        if not 0 < self.checkpoint_minutes < math.inf:
            problems.append(
                f"checkpoint_minutes must be a positive number of minutes, got {self.checkpoint_minutes} "
                "(--checkpoint-updates N checkpoints by updates instead)"
            )
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
        if name not in EPISODE_METRICS and name not in EVAL_COLUMNS and not np.isfinite(rows[name][seed, row])
    ]
    return (
        f"{', '.join(names) or 'a logged value'} of seed {seed} not finite in metrics row {row_offset + row}"
    )


def first_logged_bad_rows(nonfinite_stats: np.ndarray) -> dict[int, int]:
    """Each run (row of `nonfinite_stats`, `(runs, rows)`) that logged a value that is not finite,
    with the first metrics row where it did (NaN counts nothing: a row not reached)."""
    flagged = np.asarray(nonfinite_stats) > 0
    return {int(run): int(np.argmax(flagged[run])) for run in np.flatnonzero(flagged.any(axis=1))}


def diverged_runs(metrics: dict[str, np.ndarray], params: Any) -> dict[int, int]:
    """The runs (seeds; a sweep's configurations x seeds) that diverged, each with its first bad
    metrics row: the first row that logged a non-finite value or, for a run whose parameters alone
    are not finite (at its very last update), its last row."""
    if not metrics:  # stopped before its first chunk
        return {}
    first = first_logged_bad_rows(metrics["nonfinite_stats"])
    for run in np.flatnonzero(~np.asarray(parallel.gather(_finite_per_seed(params)))):
        first.setdefault(int(run), metrics["nonfinite_stats"].shape[1] - 1)
    return dict(sorted(first.items()))


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
    isolate: bool = False,
) -> Outcome:
    """Train from `state` (`updates_done` updates in, a chunk boundary, with its `metrics` rows)
    to `num_updates`, in chunks, checkpointing `header` + state + metrics into `run_dir`.

    Compiles the chunk programs first (`on_compiled` is called after), then runs them, calling
    `on_chunk(rows, first_row)` with each chunk's good rows (the live loggers' row callback). Stops
    early, after the chunk in progress, when `stop` has caught a signal (a checkpoint is written)
    or a loss or parameter is not finite (the last good checkpoint is kept). With `isolate` (a
    sweep's configurations), a run that diverges goes on beside the others (its values stay
    non-finite, `diverged_runs` finds it) and only a chunk after which every run has diverged stops.

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
    (received,) = parallel.largest_over_processes(stop.received or 0)
    if received:
        stop.received = stop.received or received  # the signal another process was stopped by
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
        if bad is not None and isolate:
            every_run = len(diverged_runs(all_rows, new_state.params)) == finite.size
            bad = "every run has a value that is not finite" if every_run else None
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
        received, save_due = parallel.largest_over_processes(
            stop.received or 0, int(updates_done == num_updates or due)
        )
        stopped = bool(received)
        if stopped:
            stop.received = stop.received or received  # the signal another process was stopped by
        if stopped or save_due:
            checkpoint = save()
        if stopped and updates_done < num_updates:  # a later signal stops all after the next chunk
            return outcome(
                "interrupted", f"{stop.name} after update {updates_done} of {num_updates}", train_start
            )
    return outcome("finished", "", train_start)


# A COMMAND'S RUN: options, checks, the run folder, the chunks with a progress bar, the results


@dataclass(frozen=True)
class RunOptions:
    """Options of a training run that are not hyperparameters."""

    num_seeds: int = 1
    """Independent seeds, trained at once with `jax.vmap`."""
    seed: int = 0
    """Base seed; seed i of the run uses `jax.random.split(key(seed), num_seeds)[i]`."""
    run_dir: Path | None = None
    """Output folder (must not exist or be empty). Default: runs/ALGO-ENV-TIMESTAMP."""
    linen: bool = False
    """Train the Flax Linen control version instead of the Equinox one."""
    config: Path | None = None
    """Start from a saved configuration: a run folder's config.json, or a JSON or YAML file of config
    fields. Flags given on the command line override it."""
    preset: str | None = None
    """Start from a named set of settings instead of the defaults: `dqn --preset purejaxrl` is
    PureJaxRL's exact DQN (no gradient clipping). Flags override it."""
    chunk_rows: int = CheckpointSchedule.chunk_rows
    """Metrics rows per compiled chunk of updates; progress, checkpoints and Ctrl-C act between chunks."""
    checkpoint_updates: int = CheckpointSchedule.checkpoint_updates
    """Checkpoint after this many updates since the last checkpoint (0: by time only)."""
    checkpoint_minutes: float = CheckpointSchedule.checkpoint_minutes
    """Checkpoint after this many minutes since the last checkpoint."""
    keep_checkpoints: int = CheckpointSchedule.keep_checkpoints
    """Checkpoints kept in the run folder."""
    compile_cache: bool = True
    """Keep compiled programs in the user's cache folder, so that an identical run compiles at once."""
    logger: tuple[LoggerName, ...] = ("csv",)
    """Live loggers of the metrics rows, per seed and the mean: csv (metrics.csv, always written),
    tensorboard (RUN_DIR/tensorboard), wandb (Weights & Biases)."""
    wandb_mode: Literal["online", "offline", "disabled"] | None = None
    """W&B's mode (default: W&B's own setting); offline needs no network (`wandb sync` uploads later)."""
    wandb_project: str = "pureeqxrl"
    """W&B project the run is logged to."""
    devices: int = 0
    """Devices to train on (0: all of them, or in one process the most that the seeds divide over;
    on a CPU, the command makes a device per core). A resumed run keeps the devices it ran on."""
    env_devices: int = 1
    """Devices per agent: each agent's environments are split over this many devices, which average
    its gradients (data parallel); the seeds are split over the rest (`devices / env_devices`)."""
    coordinator: str | None = None
    """HOST:PORT of process 0 of a multi-process run (with --num-processes and --process-id)."""
    num_processes: int | None = None
    """Processes of a multi-process run (one per host, or per GPU)."""
    process_id: int | None = None
    """This process's number in a multi-process run; process 0 writes the run folder."""
    cluster: bool = False
    """Join a multi-process run whose processes JAX reads from the cluster's environment (SLURM, ...)."""
    distributed_timeout: int = 300
    """Seconds a process waits for the others to join before it gives up."""

    @property
    def schedule(self) -> CheckpointSchedule:
        return CheckpointSchedule(
            self.chunk_rows, self.checkpoint_updates, self.checkpoint_minutes, self.keep_checkpoints
        )

    def check(self) -> None:
        loggers.check_available(self.logger)
        problems = self.schedule.errors()
        if not 1 <= self.num_seeds <= INT32_MAX:
            problems.append(f"num_seeds must be positive, got {self.num_seeds}")
        if not abs(self.seed) <= INT32_MAX:
            problems.append(f"seed ({self.seed}) is past {INT32_MAX:,}")
        if self.devices < 0:
            problems.append(f"devices must be >= 0, got {self.devices}")
        if self.env_devices < 1:
            problems.append(f"env_devices must be positive, got {self.env_devices}")
        if self.cluster and self.coordinator is not None:
            problems.append("--cluster reads the coordinator from the cluster: give it or --coordinator")
        if problems:
            raise ValueError("; ".join(problems))


def compile_cache_dir() -> Path:
    """Where `--compile-cache` keeps compiled programs: the user's cache folder."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pureeqxrl" / "xla"


def use_compile_cache(on: bool) -> None:
    if on and not jax.config.jax_compilation_cache_dir:  # a cache set up already stays
        jax.config.update("jax_compilation_cache_dir", str(compile_cache_dir()))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def start_processes(options: RunOptions) -> None:
    """Join the other processes of a multi-process run, if the options name one and the `pureeqxrl`
    command has not joined them already (`pureeqxrl.__main__`, before JAX started); a coordinator
    that does not answer is a `ValueError` after the timeout."""
    if jax.distributed.is_initialized():
        return
    if options.cluster or options.coordinator is not None or options.num_processes is not None:
        try:
            parallel.initialize(
                options.coordinator, options.num_processes, options.process_id, options.distributed_timeout
            )
        except RuntimeError as error:
            raise ValueError(str(error)) from error


def run_layout(options: RunOptions, config: Any, num_runs: int | None = None) -> parallel.Layout:
    """The devices of a run of `num_runs` runs (default: its seeds); a `ValueError` naming every
    reason the run cannot be laid out so."""
    num_runs = options.num_seeds if num_runs is None else num_runs
    layout = parallel.choose_layout(num_runs, options.devices, options.env_devices)
    problems = layout.errors(num_runs, config.num_envs)
    if problems:
        raise ValueError("; ".join(problems))
    return layout


def on_devices(layout: parallel.Layout, options: RunOptions) -> str:
    return "" if layout.num_devices == 1 else f" on {layout.describe(options.num_seeds)}"


def main_process_prepares(prepare, run_dir: Path | None) -> runs.FolderLock:
    """`prepare()` the run folder in process 0 only, which then holds its lock; every process learns
    whether it worked (a collective, so that no process goes on to train alone), the others get
    process 0's error, or the folder (its default name included) with an unacquired lock."""
    if jax.process_count() == 1:
        return prepare()
    lock = runs.FolderLock(run_dir)
    if parallel.is_main_process():
        try:
            lock = prepare()
        except Exception:
            parallel.any_process(True)
            raise
    if parallel.any_process(False):
        raise ValueError("process 0 could not prepare the run folder (its error says why)")
    folder = Path(parallel.broadcast_text(str(lock.run_dir)))
    return lock if parallel.is_main_process() else runs.FolderLock(folder)


def run_options_of(options: RunOptions) -> dict[str, Any]:
    """What `config.json` records of the options that shape a run's chunks, checkpoints and loggers
    (a resumed run keeps them unless flags say otherwise)."""
    return {
        name: getattr(options, name)
        for name in (
            "chunk_rows",
            "checkpoint_updates",
            "checkpoint_minutes",
            "keep_checkpoints",
            "logger",
            "wandb_mode",
            "wandb_project",
            "devices",
            "env_devices",
        )
    }


def not_bit_for_bit(saved: dict, layout: parallel.Layout) -> str:
    """What a run resumed from a checkpoint runs on otherwise than the process that saved it (its
    `config.json`, `saved`): other devices, another jax, backend or count of CPU cores; said as
    a parenthesis, since it then goes on to float rounding, not bit for bit. Empty if nothing."""
    otherwise = runs.compiled_otherwise(saved)
    saved_layout = saved.get("layout")
    if saved_layout and saved_layout != [layout.seed_devices, layout.env_devices]:
        otherwise.insert(0, f"on {saved_layout[0]} x {saved_layout[1]} devices")
    if not otherwise:
        return ""
    return (
        f" (it ran {'; '.join(otherwise)}: the continuation agrees with an uninterrupted run to "
        "float rounding, not bit for bit)"
    )


def keep_saved_layout(options: RunOptions, saved_layout: list[int] | None, devices_given: bool) -> RunOptions:
    """A resumed run goes on on the devices it ran on, so that it continues bit for bit, unless
    `--devices` or `--env-devices` say otherwise or there are no longer enough devices (a run saved
    on one CPU device, before a device per core was the default, stays on one)."""
    if saved_layout is None or devices_given:
        return options
    seed_devices, env_devices = saved_layout
    if seed_devices * env_devices > jax.device_count():
        return options
    return dataclasses.replace(options, devices=seed_devices * env_devices, env_devices=env_devices)


class Ending(NamedTuple):
    """How a command's run (or sweep) ended, for the command line to say: `outcome` (None where
    nothing was left to train), the run folder's `summary` (None where not one row was logged),
    the command that continues it, the exit code, and any `lines` of results to print."""

    run_dir: Path
    outcome: Outcome | None
    summary: dict | None
    resume_command: str
    exit_code: int
    lines: tuple[str, ...] = ()


class Run(NamedTuple):
    """What the steps of one `train` (or `train --resume`) command share."""

    algo_name: str
    config: Any
    options: RunOptions
    run_dir: Path
    console: Console
    stop: StopSignals
    layout: parallel.Layout = parallel.Layout()
    isolate: bool = False
    """Runs diverge alone (`run_chunks`): a sweep's configurations."""


def start(algo_name: str, config: Any, options: RunOptions, console: Console) -> Ending:
    """Train a new run of `algo_name` on `config`. Everything that can reject it (options, config,
    devices, memory, the run folder) is checked before the folder is written."""
    options.check()
    start_processes(options)
    algorithm = registry.get(algo_name)
    learner = algorithm.make_learner(config, algorithm.network(options.linen))
    layout = run_layout(options, config)
    check_memory(learner, options.num_seeds, config.eval_every > 0, seed_devices=layout.seed_devices)
    with main_process_prepares(
        lambda: runs.claim_run_dir(options.run_dir, algo_name, config.env), options.run_dir
    ) as lock:
        run_dir = lock.run_dir
        if parallel.is_main_process():
            runs.write_config(
                run_dir,
                algo_name,
                config,
                options.linen,
                options.num_seeds,
                options.seed,
                run_options_of(options),
                layout=(layout.seed_devices, layout.env_devices),
            )
        started = (
            f"[bold]{algo_name}[/] on {escape(config.env)}, {options.num_seeds} seed(s)"
            f"{on_devices(layout, options)} -> {escape(str(run_dir))}"
        )
        return train_chunks(algo_name, config, learner, options, run_dir, console, None, started, layout)


def saved_options(run_dir: Path) -> tuple[dict, RunOptions, Any]:
    """A run folder's `config.json`, the options it ran with and its config: what `resume` starts
    from before the command line's flags. A sweep's group is refused (the sweep resumes it)."""
    saved, config, _ = runs.read_run(run_dir)
    if "sweep" in saved:
        raise ValueError(
            f"{run_dir} is a group of a sweep: continue the sweep with pureeqxrl sweep --resume "
            f"{shlex.quote(str(run_dir.parent))}"
        )
    options = RunOptions(
        num_seeds=saved["num_seeds"],
        seed=saved["seed"],
        run_dir=run_dir,
        linen=bool(saved["linen"]),
        **{name: tuple(v) if isinstance(v, list) else v for name, v in saved.get("run", {}).items()},
    )
    return saved, options, config


def resume(run_dir: Path, options: RunOptions, given: Any, devices_given: bool, console: Console) -> Ending:
    """Go on with the run in `run_dir` from its newest checkpoint, with `options` and the config
    `given` by the command line over the saved ones; refused, naming them, where they would change
    the run. `devices_given`: whether the command line chose the devices (else the run keeps its
    own, `keep_saved_layout`)."""
    saved, saved_run, config = saved_options(run_dir)
    options.check()
    start_processes(options)
    changed = [
        f"{name} (saved {saved_value!r}, given {new_value!r})"
        for name, saved_value, new_value in [
            *((f.name, getattr(config, f.name), getattr(given, f.name)) for f in dataclasses.fields(config)),
            *(
                (name, getattr(saved_run, name), getattr(options, name))
                for name in ("num_seeds", "seed", "linen", "chunk_rows")
            ),
        ]
        if saved_value != new_value
    ]
    if options.run_dir != run_dir:
        changed.append(f"run_dir (resuming {run_dir}, given {options.run_dir})")
    if changed:
        raise ValueError(
            f"resume refused: {', '.join(changed)} would change the run; start a new one instead"
        )
    algo_name = saved["algorithm"]
    algorithm = registry.get(algo_name)
    learner = algorithm.make_learner(config, algorithm.network(options.linen))
    options = keep_saved_layout(options, saved.get("layout"), devices_given)
    layout = run_layout(options, config)
    with main_process_prepares(lambda: runs.lock_run_dir(run_dir), run_dir):
        checkpoint = runs.latest_checkpoint(run_dir)
        where = (
            f"update {runs.read_checkpoint_header(checkpoint)['updates_done']}" if checkpoint else "the start"
        )
        started = (
            f"[bold]{algo_name}[/] on {escape(config.env)}: resuming {escape(str(run_dir))} from {where}"
            f"{on_devices(layout, options)}"
        )
        if checkpoint:
            started += not_bit_for_bit(saved, layout)
        return train_chunks(
            algo_name, config, learner, options, run_dir, console, checkpoint, started, layout
        )


def train_chunks(
    algo_name,
    config,
    learner,
    options: RunOptions,
    run_dir: Path,
    console: Console,
    checkpoint,
    started: str,
    layout: parallel.Layout,
) -> Ending:
    """Train (or go on training) in chunks with checkpoints, then write the run folder's results.
    `started` is printed once Ctrl-C and SIGTERM are caught, so a signal sent on seeing it keeps
    the run."""
    use_compile_cache(options.compile_cache)
    if not parallel.is_main_process():  # process 0 shows the progress and writes the folder
        console = Console(quiet=True)
    run = Run(algo_name, config, options, run_dir, console, StopSignals(), layout)
    resume_command = f"pureeqxrl train --resume {shlex.quote(str(run_dir))}"
    with failures_said(run_dir, resume_command):
        with run.stop.caught():  # from here on, Ctrl-C and SIGTERM stop the run between compiled pieces
            console.print(started)
            keys = jax.random.split(jax.random.key(options.seed), options.num_seeds)
            trained = train_run(run, learner, checkpoint, keys)
        if trained is None:
            return Ending(run_dir, None, None, resume_command, 0)
        outcome, updates_done = trained
        outcome = outcome._replace(state=parallel.gather(outcome.state))  # every process takes part
        summary = write_run_results(run, outcome, updates_done) if parallel.is_main_process() else None
    return Ending(run_dir, outcome, summary, resume_command, exit_code(run, outcome))


class RunFailed(RuntimeError):
    """A run stopped by its machine (a full disk, a read-only folder, out of memory): the message
    says what happened and what the run folder keeps."""


def os_error_text(error: OSError) -> str:
    """`No space left on device (PATH)`: an OSError in words, with its file where it names one."""
    text = error.strerror or str(error) or type(error).__name__
    return f"{text} ({error.filename})" if error.filename else text


@contextlib.contextmanager
def failures_said(run_dir: Path, resume_command: str, kept: str | None = None) -> Iterator[None]:
    """Turn what the machine may do to a run in progress (no space or no permission to write, out
    of host or device memory) into a `RunFailed` that says it in one line with what is kept: `kept`,
    or else the run folder's newest checkpoint."""
    try:
        yield
    except (OSError, MemoryError, jax.errors.JaxRuntimeError) as error:
        if isinstance(error, FileNotFoundError | FileExistsError) or (
            isinstance(error, jax.errors.JaxRuntimeError) and "RESOURCE_EXHAUSTED" not in str(error)
        ):
            raise  # a missing or existing file is the command's own error
        what = (
            os_error_text(error)
            if isinstance(error, OSError)
            else "out of device memory"
            if isinstance(error, jax.errors.JaxRuntimeError)
            else "out of memory"
        )
        if kept is None:
            checkpoint = runs.latest_checkpoint(run_dir)
            kept = (
                f"its newest checkpoint, {checkpoint.name}, is whole: once this is fixed, {resume_command}"
                if checkpoint
                else "no checkpoint had been written"
            )
        raise RunFailed(f"{what} while training {run_dir}; {kept}") from error


def exit_code(run: Run, outcome: Outcome) -> int:
    """0 for a finished run, 1 for a diverged one, 128 + the signal's number for a stopped one."""
    return {"finished": 0, "diverged": 1}.get(outcome.status, run.stop.exit_code)


def train_run(run: Run, learner, checkpoint, starts) -> tuple[Outcome, int] | None:
    """Run `learner` from its `init(starts)` (the seeds' keys, or a sweep's `Start`s), or from
    `checkpoint`, until done or stopped: the outcome and the updates done before it; None if the
    checkpoint has done them all."""
    config = run.config
    chunks = make_chunk_runner(learner, config, run.layout if run.layout.num_devices > 1 else None)
    state, metrics, updates_done = chunks.init(starts), {}, 0
    if checkpoint is not None:
        try:
            header, state, metrics = runs.load_checkpoint(checkpoint, parallel.gather(state))
        except ValueError as error:
            older = sorted(checkpoint.parent.glob("update_*.ckpt"))[:-1]
            if not older:
                raise
            raise ValueError(
                f"{error}; the older checkpoints ({', '.join(path.name for path in older)}) are kept: move "
                f"{checkpoint.name} out of {checkpoint.parent} to resume from {older[-1].name}"
            ) from error
        if header["config"] != json.loads(json.dumps(config.to_dict())):
            raise ValueError(f"{checkpoint} was written for another config than {run.run_dir}/config.json")
        saved = json.loads((run.run_dir / "config.json").read_text())
        for name in ("algorithm", "num_seeds", "seed", "linen"):
            if name in header and header[name] != saved.get(name):
                raise ValueError(
                    f"{checkpoint} belongs to another run: its {name} is {header[name]!r}, "
                    f"{run.run_dir}/config.json's is {saved.get(name)!r}"
                )
        state, updates_done = chunks.place(state), header["updates_done"]
    if updates_done >= config.num_updates:
        if not (
            run.run_dir / "summary.json"
        ).is_file():  # stopped between its last checkpoint and its results
            run.console.print(f"{escape(str(run.run_dir))} has done all its updates: writing its results")
            return Outcome("finished", state, metrics, updates_done, 0.0, 0.0, "", checkpoint), updates_done
        run.console.print(
            f"{escape(str(run.run_dir))} has finished all {config.num_updates} updates: nothing to resume"
        )
        return None
    return _run_with_progress(run, chunks, state, metrics, updates_done), updates_done


def _run_with_progress(run: Run, chunks, state, metrics, updates_done) -> Outcome:
    """`run_chunks` with a progress bar of metrics rows, shown once the compile is done, and
    the live loggers fed with each chunk's rows."""
    config, options = run.config, run.options
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=run.console,
        disable=not run.console.is_terminal,
    )
    row_updates = rows_update_counts(config.num_updates, config.log_interval)
    rows_done = next(iter(metrics.values())).shape[1] if metrics else 0
    bar = progress.add_task("compiling", total=None)
    if not parallel.is_main_process():  # it trains; process 0 logs and writes the checkpoints
        saved, live = {}, None
    else:
        saved = json.loads((run.run_dir / "config.json").read_text())
        live = loggers.Loggers(
            options.logger,
            run.run_dir,
            saved,
            row_updates,
            config.steps_per_update,
            history=metrics,
            wandb_mode=options.wandb_mode,
            wandb_project=options.wandb_project,
        )

    def on_chunk(rows: dict[str, np.ndarray], first_row: int) -> None:
        progress.advance(bar, next(iter(rows.values())).shape[1])
        if live is not None:
            live.log(rows, first_row)

    header = {
        key: saved[key] for key in ("algorithm", "config", "num_seeds", "seed", "linen") if key in saved
    }
    try:
        with progress:
            outcome = run_chunks(
                chunks,
                state,
                metrics,
                updates_done,
                config.num_updates,
                config.log_interval,
                options.schedule,
                run_dir=run.run_dir,
                header=header,
                stop=run.stop,
                on_compiled=lambda: progress.update(
                    bar, description="training", total=len(row_updates), completed=rows_done
                ),
                on_chunk=on_chunk,
                isolate=run.isolate,
            )
        if live is not None and outcome.metrics and next(iter(outcome.metrics.values())).shape[1]:
            live.finish(outcome.metrics)  # metrics.csv has one writer: the csv logger
        return outcome
    finally:
        if live is not None:
            live.close()


def write_run_results(
    run: Run, outcome: Outcome, updates_done: int, diverged: dict[int, int] | None = None
) -> dict | None:
    """The run folder's results of `outcome` (`runs.write_results`), with the runs that `diverged`
    (run -> first bad row; a sweep's groups); its summary, or None if not one row was logged."""
    if not outcome.metrics or not next(iter(outcome.metrics.values())).shape[1]:
        return None
    library = "Linen" if run.options.linen else "Equinox"
    title = f"{run.algo_name.upper().replace('_', ' ')} ({library}) on {run.config.env}"
    return runs.write_results(
        run.run_dir,
        title,
        run.config,
        train_result(outcome.state, outcome.metrics),
        outcome.compile_seconds,
        outcome.train_seconds,
        status=outcome.status,
        updates_done=outcome.updates_done,
        trained_updates=outcome.updates_done - updates_done,
        diverged_runs=diverged,
    )
