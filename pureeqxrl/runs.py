"""Run folders: what a training run leaves on disk, and reading it back.

A run folder holds `config.json`, `metrics.csv` (one row per seed and logged row), `summary.json`,
`learning_curve.png` and one `agent_seed{i}.eqx` per seed. Every file is written to a temporary name
and renamed into place, so an interrupted run never leaves a half-written file, and an existing
non-empty folder is never written into. One process writes a folder at a time: it holds the
folder's lock (`.lock`) while it trains or resumes there.
"""

import contextlib
import dataclasses
import fcntl
import itertools
import json
import os
import pickle
import socket
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import pureeqxrl
from pureeqxrl import parallel, registry, stats
from pureeqxrl.config import INT32_MAX, typed_values
from pureeqxrl.cpu import usable_cores
from pureeqxrl.envs import make_env
from pureeqxrl.evaluate import evaluate
from pureeqxrl.files import (
    atomic_write_text,
    atomic_writer,
    curves_figure,
    save_curves_figure,
    strict_json,
)
from pureeqxrl.loop import EVAL_COLUMNS, TrainResult, final_return, last_evaluated_row, rows_update_counts
from pureeqxrl.normalize import RunningStats

# Config fields renamed since runs were first written: old name -> new name.
RENAMED_FIELDS = {"lr_linear_decay": "anneal_lr"}


# FILES


LOCK_FILE = ".lock"


class FolderLock:
    """The lock of a run (or sweep) folder, held by the one process that writes it. It is the
    kernel's lock on `.lock` (flock), so the process's end releases it, kill -9 included; the file
    names the holder for the message a second writer gets. An unacquired lock (`FolderLock(path)`)
    stands for a folder that another process writes."""

    def __init__(self, run_dir: Path | None):
        self.run_dir = run_dir
        self._fd: int | None = None

    def acquire(self) -> "FolderLock":
        try:
            fd = os.open(Path(self.run_dir) / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as error:  # a read-only folder or disk, no permission: nothing can be written
            raise ValueError(f"cannot write to {self.run_dir}: {error.strerror or error}") from error
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 500, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise FolderInUse(
                f"{self.run_dir} is in use by {holder}: wait for it to end, or stop it, before writing there"
            ) from None
        except OSError as error:  # a file system without locks
            os.close(fd)
            raise ValueError(f"cannot lock {self.run_dir}: {error.strerror or error}") from error
        self._fd = fd
        with contextlib.suppress(OSError):  # the holder's name is for the message a second writer gets
            os.ftruncate(fd, 0)
            started = time.strftime("%Y-%m-%d %H:%M:%S")
            os.pwrite(fd, f"process {os.getpid()} on {socket.gethostname()} (since {started})\n".encode(), 0)
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # the kernel drops the lock with its last descriptor
            self._fd = None

    def __enter__(self) -> "FolderLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class FolderInUse(ValueError):
    """Another process holds the folder's lock."""


def lock_run_dir(run_dir: Path) -> FolderLock:
    """Take `run_dir`'s lock (refused, naming the holder, while another process writes there) and
    remove the temporary files that an interrupted write left (`.NAME.*.tmp`, see
    `files.atomic_write_bytes`): with the lock held, no other writer can own them."""
    lock = FolderLock(Path(run_dir)).acquire()
    for leftover in Path(run_dir).rglob(".*.tmp"):
        with contextlib.suppress(OSError):
            leftover.unlink()
    return lock


def claim_run_dir(run_dir: Path | None, algorithm: str, env: str, parent: str = "runs") -> FolderLock:
    """`prepare_run_dir`, then hold its lock: a launch that raced this one to the same empty folder
    is refused by the lock, or finds the folder no longer empty."""
    run_dir = prepare_run_dir(run_dir, algorithm, env, parent)
    lock = FolderLock(run_dir).acquire()
    if any(path.name != LOCK_FILE for path in run_dir.iterdir()):
        lock.release()
        raise FileExistsError(f"{run_dir} already exists and is not an empty folder; pick another")
    return lock


def prepare_run_dir(run_dir: Path | None, algorithm: str, env: str, parent: str = "runs") -> Path:
    """Create the run folder (default `parent/ALGO-ENV-TIMESTAMP`); refuse to reuse a non-empty one
    (nothing the user had is touched). A folder is claimed by creating it, which only one process
    can do: runs started at the same moment get distinct default folders."""
    try:
        if run_dir is None:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            Path(parent).mkdir(parents=True, exist_ok=True)
            for suffix in itertools.count():
                run_dir = Path(parent) / f"{algorithm}-{env}-{stamp}{f'-{suffix}' if suffix else ''}"
                with contextlib.suppress(FileExistsError):
                    run_dir.mkdir()
                    break
        run_dir = Path(run_dir)
        if run_dir.exists() and (
            not run_dir.is_dir() or any(path.name != LOCK_FILE for path in run_dir.iterdir())
        ):
            raise FileExistsError(f"{run_dir} already exists and is not an empty folder; pick another")
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".writable"
        probe.touch()  # a folder we may create but not write into fails here, not after training
        probe.unlink()
    except FileExistsError:
        raise
    except OSError as error:  # a path through a file, no permission, a name too long, ...
        raise ValueError(f"cannot use {run_dir} as the run folder: {error.strerror or error}") from error
    return run_dir


def write_config(
    run_dir: Path,
    algorithm: str,
    config: Any,
    linen: bool,
    num_seeds: int,
    seed: int,
    run: dict[str, Any] | None = None,
    sweep: dict[str, Any] | None = None,
    layout: tuple[int, int] = (1, 1),
) -> None:
    """`config.json`: everything needed to rebuild the run's config, networks and keys, and the
    `run` options (chunks, checkpoints) a resume keeps; for a group of a sweep, the `sweep` part
    (its configurations: the run's element `c * seeds_per_configuration + s` is configuration `c`,
    seed `s`); the `layout` it trains on (devices for seeds x devices per agent's environments)."""
    saved = {
        "algorithm": algorithm,
        "linen": linen,
        "num_seeds": num_seeds,
        "seed": seed,
        "config": config.to_dict(),
        "run": run or {},
        **({"sweep": sweep} if sweep is not None else {}),
        "layout": list(layout),
        "processes": jax.process_count(),
        "versions": {"pureeqxrl": pureeqxrl.__version__, **compiled_for()},
    }
    atomic_write_text(run_dir / "config.json", strict_json(saved))


def compiled_for() -> dict[str, Any]:
    """What this process compiles a run's arithmetic for, beyond its program and layout: the jax
    version, the backend and, on a CPU, the cores it may use (XLA:CPU compiles and runs a program
    for them: the same program rounds otherwise with another count)."""
    backend = jax.default_backend()
    return {
        "jax": jax.__version__,
        "backend": backend,
        **({"cpu_cores": usable_cores()} if backend == "cpu" else {}),
    }


def compiled_otherwise(saved: dict[str, Any], now: dict[str, Any] | None = None) -> list[str]:
    """How the process that saved a run (its `config.json`) compiled it otherwise than this one
    does (`compiled_for`), a phrase each: a run resumed so goes on to float rounding, not bit for
    bit. What either side did not record (an older version's run; cores off a CPU) is not compared."""
    then, now = saved.get("versions"), now or compiled_for()
    then = then if isinstance(then, dict) else {}
    phrases = {
        "jax": "under jax {}, this process has {}",
        "backend": "on {}, this process on {}",
        "cpu_cores": "with {} CPU cores, this process has {}",
    }
    return [
        phrase.format(then[name], now[name])
        for name, phrase in phrases.items()
        if name in then and name in now and then[name] != now[name]
    ]


def write_results(
    run_dir: Path,
    title: str,
    config: Any,
    result: TrainResult,
    compile_seconds: float,
    train_seconds: float,
    status: str = "finished",
    updates_done: int | None = None,
    trained_updates: int | None = None,
    diverged_runs: dict[int, int] | None = None,
) -> dict[str, Any]:
    """Write what a run of `num_seeds` vmapped seeds produced so far (`learning_curve.png`,
    `agent_seed{i}.eqx`, `summary.json`; `metrics.csv` is the csv logger's, `pureeqxrl.training.loggers`)
    and return the summary.

    `status` is "finished", "interrupted" or "diverged"; `updates_done` the updates in
    `result.params` (default: all of them); `trained_updates` those that `train_seconds` timed
    (default: `updates_done`; fewer after a resume); `diverged_runs` the seeds (a sweep group's
    runs) that diverged while the others went on, each with its first bad metrics row."""
    updates_done = config.num_updates if updates_done is None else updates_done
    trained_updates = updates_done if trained_updates is None else trained_updates
    metrics = {name: np.asarray(value) for name, value in result.metrics.items()}
    num_seeds, num_rows = metrics["episode_return"].shape
    updates = rows_update_counts(config.num_updates, config.log_interval)[:num_rows]  # at each row's end
    evaluations = {name: metrics[name] for name in EVAL_COLUMNS if name in metrics}
    plot_learning_curve(
        run_dir / "learning_curve.png",
        updates * config.steps_per_update,
        metrics["episode_return"],
        title,
        evaluations,
    )
    for seed in range(num_seeds):
        save_agent(run_dir / f"agent_seed{seed}.eqx", *seed_slice((result.params, result.obs_stats), seed))

    finals = final_return(metrics["episode_return"])
    any_finished = bool(np.isfinite(finals).any())
    summary = {
        "status": status,
        "updates_done": updates_done,
        "env_steps_per_seed": updates_done * config.steps_per_update,
        **({"diverged_runs": {str(run): row for run, row in diverged_runs.items()}} if diverged_runs else {}),
        "final_return_per_seed": [float(x) for x in finals],
        "final_return_mean": float(np.nanmean(finals)) if any_finished else None,
        "final_return_std": float(np.nanstd(finals)) if any_finished else None,
        **interval_estimates("final_return", finals),
        **last_evaluation(metrics, updates * config.steps_per_update, config.eval_episodes),
        "compile_seconds": compile_seconds,
        "train_seconds": train_seconds,
        "env_steps_per_second": trained_updates
        * config.steps_per_update
        * num_seeds
        / max(train_seconds, 1e-9),
    }
    atomic_write_text(run_dir / "summary.json", strict_json(summary))
    return summary


def last_evaluation(metrics: dict[str, np.ndarray], env_steps: np.ndarray, episodes: int) -> dict[str, Any]:
    """The summary's part on the run's last evaluation during training (the last row with one):
    `final_eval_return_per_seed` (greedy), `final_eval_sampled_return_per_seed` (stochastic
    policies), their means, and the environment steps it was made at; empty if none was made."""
    row = last_evaluated_row(metrics)
    if row is None:
        return {}
    summary: dict[str, Any] = {"final_eval_env_steps": int(env_steps[row]), "final_eval_episodes": episodes}
    for column, policy in EVAL_COLUMNS.items():
        if column in metrics:
            per_seed = metrics[column][:, row].astype(float)
            key = "final_eval_return" if policy == "greedy" else "final_eval_sampled_return"
            summary[f"{key}_per_seed"] = per_seed.tolist()
            summary[f"{key}_mean"] = float(np.nanmean(per_seed)) if np.isfinite(per_seed).any() else None
            summary |= interval_estimates(key, per_seed)
    return summary


def interval_estimates(key: str, per_seed: np.ndarray) -> dict[str, Any]:
    """`{key}_iqm`, `{key}_iqm_ci` and `{key}_mean_ci` over the seeds with a score: the
    interquartile mean and 95% stratified-bootstrap intervals (`pureeqxrl.stats.summary`)."""
    estimates = stats.summary(per_seed)
    return {
        f"{key}_iqm": estimates["iqm"],
        f"{key}_iqm_ci": estimates["iqm_ci"],
        f"{key}_mean_ci": estimates["mean_ci"],
    }


def describe(values: dict[str, float]) -> str:
    """A configuration of a sweep as `learning_rate=0.001, ent_coef=0.01`."""
    return ", ".join(f"{name}={value:g}" for name, value in values.items())


def configuration_parts(
    per_seed: list[float], sweep: dict[str, Any] | None, diverged: dict[int, int] | None = None
) -> list[dict[str, Any]]:
    """A run's per-seed scores with their mean and standard deviation: one part for a run, one per
    configuration for a sweep's group (`sweep`: its `config.json` part), whose configurations are
    not seeds of one run; a configuration with a run in `diverged` (run -> first bad metrics row)
    has that row as its `first_bad_row`."""
    if sweep is None:
        parts = [{"return_per_seed": per_seed}]
    else:
        per = sweep["seeds_per_configuration"]
        parts = [
            {
                "configuration": configuration,
                "values": values,
                "values_text": describe(values),
                "return_per_seed": per_seed[number * per : (number + 1) * per],
                "first_bad_row": min(
                    (
                        row
                        for run, row in (diverged or {}).items()
                        if number * per <= run < (number + 1) * per
                    ),
                    default=None,
                ),
            }
            for number, (configuration, values) in enumerate(
                zip(sweep["configurations"], sweep["values"], strict=True)
            )
        ]
    for part in parts:
        part["return_mean"] = float(np.mean(part["return_per_seed"]))
        part["return_std"] = float(np.std(part["return_per_seed"]))
    return parts


def diverged_runs_of(run_dir: Path) -> dict[int, int]:
    """The runs of a sweep's group that diverged while the others went on (its `summary.json`), each
    with its first bad metrics row."""
    path = Path(run_dir) / "summary.json"
    with contextlib.suppress(OSError, ValueError, AttributeError):
        return {int(run): row for run, row in json.loads(path.read_text()).get("diverged_runs", {}).items()}
    return {}


def write_evaluation(
    run_dir: Path, kind: str, episodes: int, seed: int, per_seed: list[float], sweep: dict | None = None
) -> Path:
    """`eval_{kind}.json` in the run folder: what `pureeqxrl eval` measured; for a sweep's group
    (`sweep`, its `config.json` part), per configuration."""
    path = Path(run_dir) / f"eval_{kind.replace('-', '_')}.json"
    parts = configuration_parts(per_seed, sweep, diverged_runs_of(run_dir))
    result = {"policy": kind, "episodes_per_seed": episodes, "seed": seed}
    if sweep is None:
        result.update(parts[0])
    else:
        result["configurations"] = [
            {name: value for name, value in part.items() if name != "values_text"} for part in parts
        ]
    atomic_write_text(path, strict_json(result))
    return path


def seed_slice(tree: Any, seed: int) -> Any:
    """One seed's part of a pytree whose leaves have a leading seed axis (a `vmap` output)."""
    return jax.tree.map(lambda x: x[seed], tree)


def plot_learning_curve(
    path: Path,
    env_steps: np.ndarray,
    returns: np.ndarray,
    title: str,
    evaluations: dict[str, np.ndarray] | None = None,
) -> None:
    """Mean episode return over seeds with a min-max band, one thin line per seed, and the mean
    of each evaluation column (`EVAL_COLUMNS`) at the rows that have one."""
    fig, ax = curves_figure((6.4, 4.0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # rows where no seed finished an episode
        mean = np.nanmean(returns, axis=0)
        low, high = np.nanmin(returns, axis=0), np.nanmax(returns, axis=0)
    for seed_returns in returns:
        ax.plot(env_steps, seed_returns, lw=0.6, alpha=0.35, color="tab:blue")
    ax.fill_between(env_steps, low, high, alpha=0.2, color="tab:blue", label="min-max over seeds")
    ax.plot(env_steps, mean, lw=2, color="tab:blue", label=f"training return, mean of {len(returns)} seeds")
    for column, values in (evaluations or {}).items():
        evaluated = ~np.isnan(values).all(axis=0)
        if evaluated.any():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                eval_mean = np.nanmean(values[:, evaluated], axis=0)
            label = f"{EVAL_COLUMNS.get(column, column)} evaluation, mean"
            color = "tab:orange" if column == "eval_return" else "tab:green"
            ax.plot(env_steps[evaluated], eval_mean, "o-", ms=3, lw=1.5, color=color, label=label)
    save_curves_figure(fig, ax, path, title, "episode return")


# CHECKPOINTS: the whole training state of every seed (networks, optimizer states, environment
# states, replay buffers, normalisation statistics, random keys) and the metrics rows so far.
#
# One file per checkpoint, `checkpoints/update_{n}.ckpt`: a JSON header line (format, package
# version, config, seeds, updates done), then the leaves as `eqx.tree_serialise_leaves` writes them.
# Equinox serialisation rather than orbax-checkpoint: a run's state lives on one host and is read
# back into a template the algorithm builds itself, so the leaves and a header are all it takes,
# without tensorstore and an asynchronous manager. Random keys are stored as their raw uint32 data.

CHECKPOINT_FORMAT = "pureeqxrl-checkpoint-1"


def keys_as_data(tree: Any) -> Any:
    return jax.tree.map(lambda x: jax.random.key_data(x) if parallel.is_key(x) else x, tree)


def save_checkpoint(run_dir: Path, header: dict[str, Any], state: Any, metrics: dict, keep: int) -> Path:
    """Write one checkpoint atomically and delete all but the newest `keep`. `header` must hold
    `updates_done`, which names the file."""
    folder = Path(run_dir) / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    header = {"format": CHECKPOINT_FORMAT, "pureeqxrl": pureeqxrl.__version__, **header}
    header["metric_names"] = sorted(metrics)
    path = folder / f"update_{header['updates_done']:010d}.ckpt"
    with atomic_writer(path) as f:  # streamed: a large replay buffer is not copied in memory
        f.write((json.dumps(header, allow_nan=False) + "\n").encode())
        eqx.tree_serialise_leaves(
            f, (keys_as_data(state), {name: np.asarray(v) for name, v in metrics.items()})
        )
    for old in sorted(folder.glob("update_*.ckpt"))[:-keep]:
        old.unlink()
    return path


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest checkpoint of a run folder, if any."""
    found = sorted((Path(run_dir) / "checkpoints").glob("update_*.ckpt"))
    return found[-1] if found else None


def read_checkpoint_header(path: Path) -> dict[str, Any]:
    with open(path, "rb") as f:
        line = f.readline()
    try:
        header = json.loads(line)
        if header.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"format {header.get('format')!r}")
    except (ValueError, AttributeError) as error:
        raise ValueError(f"{path} is not a pureeqxrl checkpoint ({error})") from error
    return header


def load_checkpoint(path: Path, like_state: Any) -> tuple[dict[str, Any], Any, dict[str, np.ndarray]]:
    """`(header, state, metrics)` of a checkpoint; `like_state` is a training state of the same
    run (e.g. its initial one), whose structure, shapes and key types the saved leaves take."""
    header = read_checkpoint_header(path)
    if header["pureeqxrl"] != pureeqxrl.__version__:
        raise ValueError(
            f"{path} was written by pureeqxrl {header['pureeqxrl']}, this is {pureeqxrl.__version__}: "
            f"resume it with version {header['pureeqxrl']}"
        )
    num_seeds, rows = header["num_seeds"], header["rows_done"]
    like_metrics = {name: np.zeros((num_seeds, rows), np.float32) for name in header["metric_names"]}
    with open(path, "rb") as f:
        f.readline()
        try:
            data, metrics = eqx.tree_deserialise_leaves(f, (keys_as_data(like_state), like_metrics))
        except (RuntimeError, ValueError, EOFError, OSError, pickle.UnpicklingError) as error:
            raise ValueError(f"{path} is damaged or belongs to another run ({error})") from error
    state = jax.tree.map(
        lambda x, like: (
            jax.random.wrap_key_data(x, impl=jax.random.key_impl(like)) if parallel.is_key(like) else x
        ),
        data,
        like_state,
    )
    return header, state, {name: np.asarray(value) for name, value in metrics.items()}


# AGENTS


def save_agent(path: Path, params: Any, obs_stats: RunningStats | None = None) -> None:
    """Write one trained agent: its network and, if it was trained on normalised observations,
    the normalisation statistics (without them the network would see the wrong inputs)."""
    with atomic_writer(path) as f:
        eqx.tree_serialise_leaves(f, (params, obs_stats))


def load_agent(run_dir: Path | str, seed: int = 0) -> Any:
    """Load the trained network of one seed of a run folder.

    For an Equinox run this is the Module itself (a `pureeqxrl.dqn.QNetwork`, a
    `pureeqxrl.heads.ActorCritic` or a `pureeqxrl.heads.GaussianActorCritic`: call it on one
    observation; a `pureeqxrl.ppo_rnn.RecurrentActorCritic`: `step` it with a hidden state); for a
    `--linen` run it is a `pureeqxrl.linen.LinenNetwork` holding the Linen variables, called the
    same way. If the run normalised observations, use `load_agent_and_obs_stats` and normalise with the statistics too.

        network = pureeqxrl.runs.load_agent("runs/dqn-CartPole-v1-...", seed=0)
        action = pureeqxrl.dqn.greedy_action(network, obs)
    """
    return load_agent_and_obs_stats(run_dir, seed)[0]


def load_agent_and_obs_stats(run_dir: Path | str, seed: int = 0) -> tuple[Any, RunningStats | None]:
    """The trained network of one seed and its observation statistics (None if not normalised)."""
    run_dir = Path(run_dir)
    saved, config, make_network = read_run(run_dir)
    env = make_env(config.env, 1, config.max_episode_steps)
    params = eqx.filter_eval_shape(lambda key: make_network(config, env, key), jax.random.key(0))
    obs_stats = None
    if getattr(config, "normalize_obs", False):
        obs_stats = eqx.filter_eval_shape(RunningStats.empty, env.observation_shape)
    path = run_dir / f"agent_seed{seed}.eqx"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found (the run has seeds 0..{saved['num_seeds'] - 1})")
    with open(path, "rb") as f:
        if f.read(6) != b"\x93NUMPY":  # every saved leaf is an array in numpy's format
            raise ValueError(f"{path} is damaged or not a pureeqxrl agent file")
    try:
        return eqx.tree_deserialise_leaves(path, (params, obs_stats))
    except (ValueError, EOFError, OSError, pickle.UnpicklingError) as error:
        raise ValueError(f"{path} is damaged or not a pureeqxrl agent file ({error})") from error
    except RuntimeError as error:  # equinox: a saved leaf's shape or dtype differs from the network's
        raise ValueError(
            f"{path} does not hold this network's parameters ({error}): it was written by another "
            f"network or another pureeqxrl version (this is {pureeqxrl.__version__}; agents of early "
            "0.1.0 releases store each Dense layer as (kernel, bias)); load it with the version that "
            "wrote it."
        ) from error


def evaluate_run(run_dir: Path | str, episodes: int, sample: bool = False, seed: int = 0) -> list[float]:
    """Mean return of each saved agent of a run folder over `episodes` fresh episodes (the first
    episode of each of `episodes` parallel environments): the greedy policy, or with `sample` the
    stochastic one. Every agent sees the same episodes (key `seed`).

    Here rather than in `pureeqxrl.evaluate`, which the algorithms import: reading a run folder
    needs the registry, which imports the algorithms."""
    if episodes < 1:
        raise ValueError(f"episodes must be positive, got {episodes}")
    if not abs(seed) <= INT32_MAX:
        raise ValueError(f"seed ({seed}) is past {INT32_MAX:,}")
    saved, config, _ = read_run(Path(run_dir))
    algorithm = registry.get(saved["algorithm"])
    if sample and not algorithm.stochastic:
        raise ValueError(f"{saved['algorithm']} has no stochastic policy to sample from")
    env = make_env(config.env, episodes, config.max_episode_steps)
    needed = sum(
        x.size * x.dtype.itemsize for x in jax.tree.leaves(jax.eval_shape(env.reset, jax.random.key(0)))
    )
    limit, source = parallel.memory_limit()
    if needed > limit:
        raise ValueError(
            f"{episodes:,} episodes at once need at least {needed / 2**30:,.1f} GiB for their environments; "
            f"{source} {limit / 2**30:,.1f} GiB: ask for fewer --episodes"
        )

    @jax.jit
    def mean_return(network, obs_stats, key):
        act = algorithm.policy(network, env, obs_stats, not sample)
        return jnp.nanmean(evaluate(env, act, key))

    return [
        float(mean_return(*load_agent_and_obs_stats(run_dir, i), jax.random.key(seed)))
        for i in range(saved["num_seeds"])
    ]


def read_run(run_dir: Path) -> tuple[dict, Any, Callable[[Any, Any, Any], Any]]:
    """A run folder's saved `config.json`, its config object, and its network builder. A file that
    is not one (hand-edited, truncated, another program's) is a `ValueError` that says so."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {run_dir} is not a run folder of `pureeqxrl train`")
    try:
        saved = json.loads(path.read_text())
        algorithm = registry.get(saved["algorithm"])  # a ValueError naming the known ones
        config = config_from_dict(algorithm.config_cls, saved["config"])
        config.validate()
        if not (isinstance(saved["num_seeds"], int) and saved["num_seeds"] >= 1):
            raise ValueError(f"num_seeds must be a positive integer, got {saved['num_seeds']!r}")
        return saved, config, algorithm.network(bool(saved["linen"]))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as error:
        detail = f"no {error}" if isinstance(error, KeyError) else str(error)
        raise ValueError(
            f"{path} is not a pureeqxrl config.json ({type(error).__name__}: {detail})"
        ) from error
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from error


def config_from_dict(config_cls: type, values: dict) -> Any:
    """Rebuild a config dataclass from its JSON (or YAML) form (renamed fields under their current
    names, values checked by `pureeqxrl.config.typed_values`); a field this version does not know, or
    a value of the wrong type, is a `ValueError` naming it."""
    values = {RENAMED_FIELDS.get(name, name): value for name, value in values.items()}
    known = {field.name for field in dataclasses.fields(config_cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(
            f"{config_cls.__name__} has no field {', '.join(unknown)} (written by another pureeqxrl version?)"
        )
    return config_cls(**typed_values(config_cls, values))
