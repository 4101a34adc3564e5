"""Hyperparameter sweeps in one compiled program: every configuration x every seed.

A config's numbers that change no shape (its float fields: learning rate, gamma, GAE lambda, clip,
loss coefficients, gradient-norm clip, tau, epsilon values, DPO's alpha and beta) can be given as a
batch. The algorithm's `make_update_steps` is then called *inside* the traced program with a config
whose swept fields hold traced scalars, so the same algorithm code trains every configuration, and
`jax.vmap` over configurations of `jax.vmap` over seeds makes it one program. Fields that set a
shape or a Python branch (sizes, counts, widths, flags) stay static: a sweep over them is a loop of
programs.

    configurations = sweep.grid({"learning_rate": [1e-4, 3e-4, 1e-3], "ent_coef": [0.0, 0.01]})
    result = sweep.train_configurations(ppo.make_update_steps, PPOConfig(), configurations, keys)
    result.metrics["episode_return"].shape  # (6 configurations, len(keys) seeds, rows)

Every configuration is checked with the config's own `validate` before anything is traced
(`check_configurations`); inside the program the checks are skipped (`TrainConfig.validate`).
Seed `s` of every configuration uses the same key, so configuration `c` of a sweep is the run of
that configuration alone, and configurations are compared on common random numbers.
"""

import dataclasses
import itertools
import math
import types
import typing
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, PRNGKeyArray

from pureeqxrl import runs, stats
from pureeqxrl.loop import (
    LogCallback,
    TrainResult,
    UpdateSteps,
    final_return,
    rows_update_counts,
    train_from_steps,
)

Configuration = dict[str, float]
"""Values of the swept fields of one configuration."""


def sweepable_fields(config_cls: type) -> tuple[str, ...]:
    """The fields of `config_cls` that a sweep can batch: those typed `float` (or `float | None`)."""
    hints = typing.get_type_hints(config_cls)

    def is_float(hint) -> bool:
        if typing.get_origin(hint) in (typing.Union, types.UnionType):
            return set(typing.get_args(hint)) == {float, type(None)}
        return hint is float

    return tuple(field.name for field in dataclasses.fields(config_cls) if is_float(hints[field.name]))


def grid(values: dict[str, Sequence[float]]) -> list[Configuration]:
    """Every combination of the given values, the last field varying fastest."""
    names = list(values)
    return [
        dict(zip(names, map(float, combination), strict=True))
        for combination in itertools.product(*values.values())
    ]


def random_configurations(
    ranges: dict[str, tuple[float, float]], count: int, log_uniform: Collection[str] = (), seed: int = 0
) -> list[Configuration]:
    """`count` configurations drawn independently, each field uniform in its `(low, high)` range,
    or log-uniform for the fields named in `log_uniform` (whose ranges must be positive)."""
    problems = [name for name in log_uniform if name not in ranges]
    problems += [
        f"{name} has low > high {bounds}" for name, bounds in ranges.items() if bounds[0] > bounds[1]
    ]
    problems += [
        f"{name} is log-uniform but its range {bounds} is not positive"
        for name, bounds in ranges.items()
        if name in log_uniform and bounds[0] <= 0
    ]
    if problems:
        raise ValueError("random search: " + "; ".join(problems))
    rng = np.random.default_rng(seed)
    draws = {}
    for name, (low, high) in ranges.items():
        if name in log_uniform:
            draws[name] = np.exp(rng.uniform(math.log(low), math.log(high), count))
        else:
            draws[name] = rng.uniform(low, high, count)
    return [{name: float(draws[name][i]) for name in ranges} for i in range(count)]


def describe(configuration: Configuration) -> str:
    return ", ".join(f"{name}={value:g}" for name, value in configuration.items())


def check_configurations(config: Any, configurations: Sequence[Configuration]) -> list[Any]:
    """Each configuration's full config, checked by the config's own `validate`, before any tracing.
    One `ValueError` names every bad configuration with the config's own messages."""
    if not configurations:
        raise ValueError("a sweep needs at least one configuration")
    names = list(configurations[0])
    allowed = sweepable_fields(type(config))
    not_sweepable = [name for name in names if name not in allowed]
    if not_sweepable:
        raise ValueError(
            f"cannot sweep {', '.join(not_sweepable)} in one program (it sets a shape or a branch); "
            f"the sweepable fields of {type(config).__name__} are {', '.join(allowed)}"
        )
    problems, configs = [], []
    for index, values in enumerate(configurations):
        if list(values) != names:
            raise ValueError(f"configuration {index} sets {list(values)}, the first one {names}")
        if any(value is None for value in values.values()):
            problems.append(
                f"configuration {index} ({values}): a swept field needs a number in every configuration"
            )
            continue
        full = dataclasses.replace(config, **values)
        try:
            full.validate()
        except ValueError as error:
            problems.append(f"configuration {index} ({describe(values)}): {error}")
        configs.append(full)
    if problems:
        raise ValueError("; ".join(problems))
    return configs


def stack(configurations: Sequence[Configuration]) -> dict[str, Array]:
    """The configurations as one float32 array of shape `(num_configurations,)` per swept field."""
    return {
        name: jnp.asarray([values[name] for values in configurations], jnp.float32)
        for name in configurations[0]
    }


# THE SWEPT TRAINING STATE: each run carries its hyperparameters, so that every update rebuilds the
# algorithm's pieces with them (a few Python calls at tracing time, nothing at run time).


class Start(eqx.Module):
    """What a swept run starts from: its key and its hyperparameters (scalars)."""

    key: PRNGKeyArray
    hyperparameters: dict[str, Array]


class SweptState(eqx.Module):
    """The algorithm's own training state, with the hyperparameters it trains with."""

    hyperparameters: dict[str, Array]
    inner: Any

    @property
    def params(self) -> Any:
        return self.inner.params

    @property
    def env_state(self) -> Any:
        return self.inner.env_state


def swept_update_steps(
    make_update_steps: Callable[..., UpdateSteps], config: Any, network_fn: Callable | None = None
) -> UpdateSteps:
    """`UpdateSteps` whose `init` takes a `Start` and whose state is a `SweptState`: each piece
    calls `make_update_steps` with `config` and the state's hyperparameters in place of its fields.
    `config` itself (with any values in the swept fields) is checked here; the configurations are
    checked by `check_configurations`."""
    base = make_update_steps(config, network_fn)

    def steps_of(hyperparameters: dict[str, Array]) -> UpdateSteps:
        return make_update_steps(dataclasses.replace(config, **hyperparameters), network_fn)

    def init(start: Start) -> SweptState:
        return SweptState(start.hyperparameters, steps_of(start.hyperparameters).init(start.key))

    def collect(state: SweptState):
        inner, *rest = steps_of(state.hyperparameters).collect(state.inner)
        return SweptState(state.hyperparameters, inner), *rest

    def learn(state: SweptState, *args):
        inner, *rest = steps_of(state.hyperparameters).learn(state.inner, *args)
        return SweptState(state.hyperparameters, inner), *rest

    def update(state: SweptState):
        inner, stats = steps_of(state.hyperparameters).update(state.inner)
        return SweptState(state.hyperparameters, inner), stats

    def evaluate(state: SweptState) -> dict[str, Array]:
        return steps_of(state.hyperparameters).evaluate(state.inner)

    shared = None
    if base.shared is not None:
        shared = lambda state: base.shared(state.inner)  # noqa: E731
    environments = None
    if base.environments is not None:
        environments = lambda state: base.environments(state.inner)  # noqa: E731
    return UpdateSteps(
        base.network,
        init,
        collect,
        learn,
        update,
        evaluate if base.evaluate is not None else None,
        shared,
        environments,
        base.num_envs,
    )


def make_sweep_train(
    make_update_steps: Callable[..., UpdateSteps],
    config: Any,
    network_fn: Callable | None = None,
    on_log: LogCallback | None = None,
) -> Callable[[dict[str, Array], PRNGKeyArray], TrainResult]:
    """`train(hyperparameters, key) -> TrainResult`: `make_train(config)` with the swept fields
    taken from `hyperparameters` (name -> scalar), pure and jittable.

    `jax.vmap(jax.vmap(train, in_axes=(None, 0)), in_axes=(0, None))(stack(configurations), keys)`
    trains every configuration on every key (`train_configurations` does this, checked)."""
    steps = swept_update_steps(make_update_steps, config, network_fn)
    train = train_from_steps(steps, config.num_updates, config.log_interval, on_log, config.eval_every)
    return lambda hyperparameters, key: train(Start(key, hyperparameters))


def train_configurations(
    make_update_steps: Callable[..., UpdateSteps],
    config: Any,
    configurations: Sequence[Configuration],
    keys: PRNGKeyArray,
    network_fn: Callable | None = None,
) -> TrainResult:
    """Check every configuration, then train all of them on every key in one compiled program;
    the result's leaves have leading axes `(num_configurations, num_keys)`."""
    check_configurations(config, configurations)
    train = make_sweep_train(make_update_steps, config, network_fn)
    batched = jax.vmap(jax.vmap(train, in_axes=(None, 0)), in_axes=(0, None))
    return jax.jit(batched)(stack(configurations), keys)


# GROUPS THAT FIT IN MEMORY, and the flat layout the CLI's chunked runs use: element
# `c * num_seeds + s` of a group is its configuration `c`, seed `s`.


def group_configurations(num_configurations: int, per_group: int) -> list[list[int]]:
    """Configuration indices in groups of at most `per_group`, the last one possibly shorter."""
    per_group = max(1, per_group)
    return [
        list(range(i, min(i + per_group, num_configurations)))
        for i in range(0, num_configurations, per_group)
    ]


def flat_starts(configurations: Sequence[Configuration], keys: PRNGKeyArray) -> Start:
    """`Start`s of every configuration x every key, flattened configuration-major."""
    num_seeds = keys.shape[0]
    hyperparameters = {name: jnp.repeat(values, num_seeds) for name, values in stack(configurations).items()}
    return Start(keys[jnp.tile(jnp.arange(num_seeds), len(configurations))], hyperparameters)


# A SWEEP FOLDER's results: each configuration's final scores over its seeds, ranked, with the
# learning curves and the best configuration as a config file `pureeqxrl train --config` reads.


def configuration_scores(metrics: dict[str, np.ndarray], num_seeds: int) -> list[dict[str, np.ndarray]]:
    """Per configuration (of a flat `(configurations * seeds, rows)` metrics table): the final
    training return of each seed (`final_return`), the greedy evaluation at the last row that has
    one (NaN per seed if none), and the training-return curves `(seeds, rows)`."""
    total = metrics["episode_return"].shape[0]
    scores = []
    for start in range(0, total, num_seeds):
        part = {name: values[start : start + num_seeds] for name, values in metrics.items()}
        entry = {"final_return": final_return(part["episode_return"]), "curves": part["episode_return"]}
        row = runs.last_evaluated_row(part)
        entry["final_eval_return"] = (
            np.full(num_seeds, np.nan) if row is None else part["eval_return"][:, row]
        )
        scores.append(entry)
    return scores


def ranked_results(
    configurations: Sequence[Configuration], scores: Sequence[dict[str, np.ndarray]], rank_by: str
) -> list[dict]:
    """One entry per configuration, best first: its values, `stats.summary` of the final return and
    of the final greedy evaluation, and the per-seed scores. Ranked by the IQM of the greedy
    evaluation (`rank_by="eval"`, where the run evaluated) or of the final training return."""
    entries = []
    for index, (values, score) in enumerate(zip(configurations, scores, strict=True)):
        entries.append(
            {
                "configuration": index,
                "values": dict(values),
                "final_return": stats.summary(score["final_return"]),
                "final_eval_return": stats.summary(score["final_eval_return"]),
                "final_return_per_seed": score["final_return"].tolist(),
                "final_eval_return_per_seed": score["final_eval_return"].tolist(),
            }
        )
    key = (
        "final_eval_return"
        if rank_by == "eval" and entries[0]["final_eval_return"]["runs"]
        else "final_return"
    )

    def order(entry: dict) -> tuple[float, ...]:  # ties (many configurations at 500) broken by the mean, then
        # by the other score's IQM and mean
        other = "final_return" if key == "final_eval_return" else "final_eval_return"
        return tuple(
            -np.inf if entry[score][name] is None else entry[score][name]
            for score in (key, other)
            for name in ("iqm", "mean")
        )

    entries.sort(key=order, reverse=True)
    for rank, entry in enumerate(entries, 1):
        entry["rank"] = rank
        entry["ranked_by"] = key
    return entries


def table_lines(entries: Sequence[dict]) -> list[str]:
    """The ranked results as a markdown table (IQM and mean with 95% bootstrap intervals)."""
    names = list(entries[0]["values"])
    lines = [
        "| rank | " + " | ".join(names) + " | final return IQM [95% CI] | mean [95% CI] "
        "| greedy eval IQM [95% CI] | mean [95% CI] |",
        "|---" * (len(names) + 5) + "|",
    ]
    for entry in entries:
        cells = [f"{entry['values'][name]:.4g}" for name in names]
        train, greedy = entry["final_return"], entry["final_eval_return"]
        lines.append(
            f"| {entry['rank']} | "
            + " | ".join(cells)
            + f" | {stats.estimate_text(train, 'iqm')} | {stats.estimate_text(train, 'mean')} "
            f"| {stats.estimate_text(greedy, 'iqm')} | {stats.estimate_text(greedy, 'mean')} |"
        )
    return lines


def plot_curves(
    path: Path, env_steps: np.ndarray, entries: Sequence[dict], scores: Sequence[dict], title: str
) -> None:
    """Training-return curves, one per configuration (the IQM over its seeds at each row): the
    five best in colour and labelled, the others thin and grey."""
    fig, ax = runs.curves_figure((7.2, 4.4))
    for entry in reversed(entries):  # the best drawn last, on top
        curve = stats.iqm_per_row(scores[entry["configuration"]]["curves"])
        if entry["rank"] <= 5:
            ax.plot(env_steps, curve, lw=1.8, label=f"#{entry['rank']}: {describe(entry['values'])}")
        else:
            ax.plot(env_steps, curve, lw=0.7, color="0.6", alpha=0.7)
    runs.save_curves_figure(fig, ax, path, title, "episode return (IQM over seeds)", best_last=True)


def write_results(
    sweep_dir: Path,
    algorithm: str,
    config: Any,
    configurations: Sequence[Configuration],
    metrics: dict[str, np.ndarray],
    num_seeds: int,
    rank_by: str,
    title: str,
) -> list[dict]:
    """The sweep folder's `results.json` (ranked entries), `table.md`, `learning_curves.png` and
    `best_config.json` (the best configuration's whole config, as `pureeqxrl train --config` reads
    it), from the flat metrics of every group. Returns the ranked entries."""
    scores = configuration_scores(metrics, num_seeds)
    entries = ranked_results(configurations, scores, rank_by)
    runs.atomic_write_text(sweep_dir / "results.json", runs.strict_json(entries))
    ranked_by = (
        "greedy evaluation" if entries[0]["ranked_by"] == "final_eval_return" else "final training return"
    )
    header = [
        f"# {title}",
        "",
        f"{len(configurations)} configurations x {num_seeds} seeds, ranked by the IQM of the {ranked_by} "
        "(95% stratified-bootstrap intervals over the seeds).",
        "",
    ]
    runs.atomic_write_text(sweep_dir / "table.md", "\n".join(header + table_lines(entries)) + "\n")
    updates = rows_update_counts(config.num_updates, config.log_interval)[
        : metrics["episode_return"].shape[1]
    ]
    plot_curves(sweep_dir / "learning_curves.png", updates * config.steps_per_update, entries, scores, title)
    best = dataclasses.replace(config, **entries[0]["values"])
    runs.atomic_write_text(
        sweep_dir / "best_config.json", runs.strict_json({"algorithm": algorithm, "config": best.to_dict()})
    )
    return entries
