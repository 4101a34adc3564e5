"""Run folders: what a training run leaves on disk, and reading it back.

A run folder holds `config.json`, `metrics.csv` (one row per seed and logged row), `summary.json`,
`learning_curve.png` and one `agent_seed{i}.eqx` per seed. Every file is written to a temporary name
and renamed into place, so an interrupted run never leaves a half-written file, and an existing
non-empty folder is never written into.
"""

import csv
import dataclasses
import io
import json
import os
import tempfile
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
from pureeqxrl import registry
from pureeqxrl.envs import make_env
from pureeqxrl.evaluate import evaluate
from pureeqxrl.loop import TrainResult, final_return, rows_update_counts
from pureeqxrl.normalize import RunningStats

# Config fields renamed since runs were first written: old name -> new name.
RENAMED_FIELDS = {"lr_linear_decay": "anneal_lr"}


# FILES


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` via a temporary file in the same folder and an atomic rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would hide results from other users
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def prepare_run_dir(run_dir: Path | None, algorithm: str, env: str) -> Path:
    """Create the run folder; refuse to reuse a non-empty one (nothing the user had is touched)."""
    if run_dir is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        run_dir = Path("runs") / f"{algorithm}-{env}-{stamp}"
        suffix = 1
        while run_dir.exists():
            run_dir = Path("runs") / f"{algorithm}-{env}-{stamp}-{suffix}"
            suffix += 1
    run_dir = Path(run_dir)
    if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        raise FileExistsError(f"{run_dir} already exists and is not an empty folder; pick another")
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def write_config(run_dir: Path, algorithm: str, config: Any, linen: bool, num_seeds: int, seed: int) -> None:
    """`config.json`: everything needed to rebuild the run's config, networks and keys."""
    saved = {
        "algorithm": algorithm,
        "linen": linen,
        "num_seeds": num_seeds,
        "seed": seed,
        "config": config.to_dict(),
        "versions": {
            "pureeqxrl": pureeqxrl.__version__,
            "jax": jax.__version__,
            "backend": jax.default_backend(),
        },
    }
    atomic_write_text(run_dir / "config.json", json.dumps(saved, indent=2))


def write_results(
    run_dir: Path,
    title: str,
    config: Any,
    result: TrainResult,
    compile_seconds: float,
    train_seconds: float,
) -> dict[str, Any]:
    """Write what a finished run of `num_seeds` vmapped seeds produced (`metrics.csv`,
    `learning_curve.png`, `agent_seed{i}.eqx`, `summary.json`) and return the summary."""
    metrics = {name: np.asarray(value) for name, value in result.metrics.items()}
    num_seeds = metrics["episode_return"].shape[0]
    updates = rows_update_counts(config.num_updates, config.log_interval)  # at each row's end
    header, rows = metrics_table(metrics, updates, config.steps_per_update)
    write_metrics_csv(run_dir / "metrics.csv", header, rows)
    plot_learning_curve(
        run_dir / "learning_curve.png", updates * config.steps_per_update, metrics["episode_return"], title
    )
    for seed in range(num_seeds):
        save_agent(run_dir / f"agent_seed{seed}.eqx", *seed_slice((result.params, result.obs_stats), seed))

    finals = final_return(metrics["episode_return"])
    any_finished = bool(np.isfinite(finals).any())
    total_steps = config.num_updates * config.steps_per_update * num_seeds
    summary = {
        "final_return_per_seed": [float(x) for x in finals],
        "final_return_mean": float(np.nanmean(finals)) if any_finished else None,
        "final_return_std": float(np.nanstd(finals)) if any_finished else None,
        "compile_seconds": compile_seconds,
        "train_seconds": train_seconds,
        "env_steps_per_second": total_steps / train_seconds,
    }
    atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2))
    return summary


def seed_slice(tree: Any, seed: int) -> Any:
    """One seed's part of a pytree whose leaves have a leading seed axis (a `vmap` output)."""
    return jax.tree.map(lambda x: x[seed], tree)


def metrics_table(
    metrics: dict[str, np.ndarray], updates: np.ndarray, steps_per_update: int
) -> tuple[list[str], list[list]]:
    """Long-format rows (seed, row, update, env_steps, metric...) from `(num_seeds, num_rows)` arrays.

    `updates[row]` is the number of updates done at the end of each row (`rows_update_counts`).
    """
    names = sorted(metrics)
    header = ["seed", "row", "update", "env_steps", *names]
    num_seeds = next(iter(metrics.values())).shape[0]
    rows = [
        [
            seed,
            row,
            int(updates[row]),
            int(updates[row]) * steps_per_update,
            *(float(metrics[name][seed, row]) for name in names),
        ]
        for seed in range(num_seeds)
        for row in range(len(updates))
    ]
    return header, rows


def write_metrics_csv(path: Path, header: list[str], rows: list[list]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def read_metrics_csv(path: Path) -> dict[str, np.ndarray]:
    """`metrics.csv` back as `name -> (num_seeds, num_rows)` arrays (plus `env_steps`)."""
    with open(path) as f:
        records = list(csv.DictReader(f))
    num_seeds = 1 + max(int(r["seed"]) for r in records)
    columns = {}
    for name in records[0]:
        if name in ("seed", "row"):
            continue
        columns[name] = np.array([float(r[name]) for r in records]).reshape(num_seeds, -1)
    return columns


def plot_learning_curve(path: Path, env_steps: np.ndarray, returns: np.ndarray, title: str) -> None:
    """Mean episode return over seeds with a min-max band, one thin line per seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # rows where no seed finished an episode
        mean = np.nanmean(returns, axis=0)
        low, high = np.nanmin(returns, axis=0), np.nanmax(returns, axis=0)
    for seed_returns in returns:
        ax.plot(env_steps, seed_returns, lw=0.6, alpha=0.35, color="tab:blue")
    ax.fill_between(env_steps, low, high, alpha=0.2, color="tab:blue", label="min-max over seeds")
    ax.plot(env_steps, mean, lw=2, color="tab:blue", label=f"mean of {len(returns)} seeds")
    ax.set_xlabel("environment steps")
    ax.set_ylabel("episode return")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


# AGENTS


def save_agent(path: Path, params: Any, obs_stats: RunningStats | None = None) -> None:
    """Write one trained agent: its network and, if it was trained on normalised observations,
    the normalisation statistics (without them the network would see the wrong inputs)."""
    buffer = io.BytesIO()
    eqx.tree_serialise_leaves(buffer, (params, obs_stats))
    atomic_write_bytes(path, buffer.getvalue())


def load_agent(run_dir: Path | str, seed: int = 0) -> Any:
    """Load the trained network of one seed of a run folder.

    For an Equinox run this is the Module itself (a `pureeqxrl.dqn.QNetwork`, a
    `pureeqxrl.heads.ActorCritic` or a `pureeqxrl.heads.GaussianActorCritic`: call it on one
    observation; a `pureeqxrl.ppo_rnn.RecurrentActorCritic`: `step` it with a hidden state); for a
    `--linen` run it is the Linen variables dict. If the run normalised
    observations, use `load_agent_and_obs_stats` and normalise with the statistics too.

        network = pureeqxrl.runs.load_agent("runs/dqn-CartPole-v1-...", seed=0)
        action = pureeqxrl.dqn.greedy_action(network, obs)
    """
    return load_agent_and_obs_stats(run_dir, seed)[0]


def load_agent_and_obs_stats(run_dir: Path | str, seed: int = 0) -> tuple[Any, RunningStats | None]:
    """The trained network of one seed and its observation statistics (None if not normalised)."""
    run_dir = Path(run_dir)
    saved, config, network_fn = read_run(run_dir)
    env = make_env(config.env, 1, config.max_episode_steps)
    params = eqx.filter_eval_shape(network_fn(config, env).init, jax.random.key(0))
    obs_stats = None
    if getattr(config, "normalize_obs", False):
        obs_stats = eqx.filter_eval_shape(RunningStats.empty, env.observation_shape)
    path = run_dir / f"agent_seed{seed}.eqx"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found (the run has seeds 0..{saved['num_seeds'] - 1})")
    try:
        return eqx.tree_deserialise_leaves(path, (params, obs_stats))
    except RuntimeError as error:  # equinox: a saved leaf's shape or dtype differs from the network's
        raise ValueError(
            f"{path} does not hold this network's parameters ({error}). This version stores every "
            "Dense layer as (bias, kernel), Linen's order (pureeqxrl.nets.Dense); agents saved by "
            "pureeqxrl 0.1.0 before commit ad4e144 (and its S5 agents' gate layers) store (kernel, "
            "bias): load those with the pureeqxrl 0.1.0 code they were saved by."
        ) from error


def evaluate_run(run_dir: Path | str, episodes: int, sample: bool = False, seed: int = 0) -> list[float]:
    """Mean return of each saved agent of a run folder over `episodes` fresh episodes (the first
    episode of each of `episodes` parallel environments): the greedy policy, or with `sample` the
    stochastic one. Every agent sees the same episodes (key `seed`).

    Here rather than in `pureeqxrl.evaluate`, which the algorithms import: reading a run folder
    needs the registry, which imports the algorithms."""
    if episodes < 1:
        raise ValueError(f"episodes must be positive, got {episodes}")
    saved, config, network_fn = read_run(Path(run_dir))
    algorithm = registry.get(saved["algorithm"])
    if sample and not algorithm.stochastic:
        raise ValueError(f"{saved['algorithm']} has no stochastic policy to sample from")
    env = make_env(config.env, episodes, config.max_episode_steps)
    network = network_fn(config, env)

    @jax.jit
    def mean_return(params, obs_stats, key):
        act = algorithm.policy(network, params, env, obs_stats, not sample)
        return jnp.nanmean(evaluate(env, act, key))

    return [
        float(mean_return(*load_agent_and_obs_stats(run_dir, i), jax.random.key(seed)))
        for i in range(saved["num_seeds"])
    ]


def read_run(run_dir: Path) -> tuple[dict, Any, Callable[[Any, Any], Any]]:
    """A run folder's saved `config.json`, its config object, and its network builder."""
    saved = json.loads((Path(run_dir) / "config.json").read_text())
    algorithm = registry.get(saved["algorithm"])  # a ValueError naming the known ones
    config = config_from_dict(algorithm.config_cls, saved["config"])
    return saved, config, algorithm.network(saved["linen"])


def config_from_dict(config_cls: type, values: dict) -> Any:
    """Rebuild a config dataclass from its JSON form (lists back to tuples, renamed fields under
    their current names); a field this version does not know is a `ValueError` naming it."""
    values = {RENAMED_FIELDS.get(name, name): value for name, value in values.items()}
    known = {field.name for field in dataclasses.fields(config_cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(
            f"{config_cls.__name__} has no field {', '.join(unknown)} (written by another pureeqxrl version?)"
        )
    return config_cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
