"""Host side of a training run: run folders, metrics files, plots, saved agents, progress.

A run folder holds `config.json`, `metrics.csv` (one row per seed and logged row), `summary.json`,
`learning_curve.png` and one `agent_seed{i}.eqx` per seed. Every file is written to a temporary name
and renamed into place, so an interrupted run never leaves a half-written file, and an existing
non-empty folder is never written into.
"""

import csv
import io
import json
import os
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import numpy as np

from pureeqxrl import dqn, ppo, ppo_continuous, ppo_rnn
from pureeqxrl.envs import make_env
from pureeqxrl.normalize import RunningStats


@dataclass(frozen=True)
class Algorithm:
    """What the CLI and `load_agent` need to know about one algorithm."""

    config_cls: type
    make_train: Callable[..., Callable]
    network_fn: Callable[[Any, Any], Any]
    linen_network_fn: Callable[[], Callable[[Any, Any], Any]]
    """Imported lazily: flax is only needed for Linen runs."""
    policy: Callable[..., Callable[[Any, Any], Any]]
    """`(network, params, env, obs_stats, greedy) -> act(key, obs_batch)` (or a
    `pureeqxrl.envs.RecurrentPolicy`): the evaluation policy."""
    stochastic: bool = True
    """Whether `policy(..., greedy=False)` samples a stochastic policy (not for DQN)."""

    def network(self, linen: bool) -> Callable[[Any, Any], Any]:
        """The network builder of the Equinox version, or of the Linen control version."""
        return self.linen_network_fn() if linen else self.network_fn


def _linen_dqn():
    from pureeqxrl.linen.dqn import linen_q_function

    return linen_q_function


def _linen_ppo():
    from pureeqxrl.linen.ppo import linen_network

    return linen_network


def _linen_ppo_rnn():
    from pureeqxrl.linen.ppo_rnn import linen_recurrent_actor_critic

    return linen_recurrent_actor_critic


ALGORITHMS: dict[str, Algorithm] = {
    "dqn": Algorithm(
        dqn.DQNConfig, dqn.make_train, dqn.equinox_q_function, _linen_dqn, dqn.policy,
        stochastic=False,
    ),
    # Both PPO entries pick the actor-critic from the environment's action space; they differ in
    # their config's defaults (discrete CartPole vs continuous Pendulum settings).
    "ppo": Algorithm(ppo.PPOConfig, ppo.make_train, ppo.default_network, _linen_ppo, ppo.policy),
    "ppo_continuous": Algorithm(
        ppo_continuous.PPOContinuousConfig, ppo_continuous.make_train, ppo.default_network,
        _linen_ppo, ppo.policy,
    ),
    # Recurrent PPO: a GRU core (`ppo_rnn`) or S5 layers (`ppo_s5`, Equinox only).
    "ppo_rnn": Algorithm(
        ppo_rnn.PPORNNConfig, ppo_rnn.make_train, ppo_rnn.equinox_recurrent_actor_critic,
        _linen_ppo_rnn, ppo_rnn.policy,
    ),
    "ppo_s5": Algorithm(
        ppo_rnn.PPOS5Config, ppo_rnn.make_train, ppo_rnn.equinox_recurrent_actor_critic,
        _linen_ppo_rnn, ppo_rnn.policy,
    ),
}


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


def metrics_table(metrics: dict[str, np.ndarray], updates: np.ndarray,
                  steps_per_update: int) -> tuple[list[str], list[list]]:
    """Long-format rows (seed, row, update, env_steps, metric...) from `(num_seeds, num_rows)` arrays.

    `updates[row]` is the number of updates done at the end of each row (`rows_update_counts`).
    """
    names = sorted(metrics)
    header = ["seed", "row", "update", "env_steps", *names]
    num_seeds = next(iter(metrics.values())).shape[0]
    rows = [
        [seed, row, int(updates[row]), int(updates[row]) * steps_per_update,
         *(float(metrics[name][seed, row]) for name in names)]
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
    `pureeqxrl.ppo.ActorCritic` or a `pureeqxrl.ppo_continuous.GaussianActorCritic`: call it on one
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
            f"{path} does not hold this network's parameters ({error}). Agents saved before "
            "2026-11-25 (commit ad4e144) store each MLP layer as (kernel, bias); this version stores "
            "(bias, kernel), Linen's order (see pureeqxrl.nets.MLP): load those with an earlier commit."
        ) from error


def read_run(run_dir: Path) -> tuple[dict, Any, Callable[[Any, Any], Any]]:
    """A run folder's saved `config.json`, its config object, and its network builder."""
    saved = json.loads((Path(run_dir) / "config.json").read_text())
    algorithm = ALGORITHMS[saved["algorithm"]]
    config = config_from_dict(algorithm.config_cls, saved["config"])
    return saved, config, algorithm.network(saved["linen"])


def config_from_dict(config_cls: type, values: dict) -> Any:
    """Rebuild a config dataclass from its JSON form (lists back to tuples)."""
    return config_cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
