"""Hyperparameter sweeps in one compiled program: every configuration x every seed.

A config's numbers that change no shape (its float fields: learning rate, gamma, GAE lambda, clip,
loss coefficients, gradient-norm clip, tau, epsilon values, DPO's alpha and beta) can be given as a
batch. The algorithm's `make_learner` is then called *inside* the traced program with a config
whose swept fields hold traced scalars, so the same algorithm code trains every configuration, and
`jax.vmap` over configurations of `jax.vmap` over seeds makes it one program. Fields that set a
shape or a Python branch (sizes, counts, widths, flags) stay static: a sweep over them is a loop of
programs.

    configurations = sweep.grid({"learning_rate": [1e-4, 3e-4, 1e-3], "ent_coef": [0.0, 0.01]})
    result = sweep.train_configurations(ppo.make_learner, PPOConfig(), configurations, keys)
    result.metrics["episode_return"].shape  # (6 configurations, len(keys) seeds, rows)

Every configuration is checked with the config's own `validate` before anything is traced
(`check_configurations`); inside the program the checks are skipped (`TrainConfig.validate`).
Seed `s` of every configuration uses the same key, so configuration `c` of a sweep is the run of
that configuration alone, and configurations are compared on common random numbers.
"""

import dataclasses
import itertools
import json
import math
import shlex
import types
import typing
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, PRNGKeyArray
from rich.console import Console
from rich.markup import escape

from pureeqxrl import files, parallel, registry, runs, stats
from pureeqxrl.loop import (
    Learner,
    LogCallback,
    TrainResult,
    final_return,
    last_evaluated_row,
    make_train,
    rows_update_counts,
)
from pureeqxrl.training.chunks import check_memory, size_text
from pureeqxrl.training.run import (
    CheckpointSchedule,
    Ending,
    Run,
    RunOptions,
    StopSignals,
    diverged_runs,
    exit_code,
    failures_said,
    first_logged_bad_rows,
    keep_saved_layout,
    not_bit_for_bit,
    run_layout,
    run_options_of,
    train_run,
    use_compile_cache,
    write_run_results,
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
            problems.append(f"configuration {index} ({runs.describe(values)}): {error}")
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


def swept_learner(
    make_learner: Callable[..., Learner], config: Any, make_network: Callable | None = None
) -> Learner:
    """A `Learner` whose `init` takes a `Start` and whose state is a `SweptState`: each piece
    calls `make_learner` with `config` and the state's hyperparameters in place of its fields.
    `config` itself (with any values in the swept fields) is checked here; the configurations are
    checked by `check_configurations`. `make_network` is passed on to `make_learner` (None: the
    algorithm's own network)."""
    network = () if make_network is None else (make_network,)
    base = make_learner(config, *network)

    def learner_of(hyperparameters: dict[str, Array]) -> Learner:
        return make_learner(dataclasses.replace(config, **hyperparameters), *network)

    def init(start: Start) -> SweptState:
        return SweptState(start.hyperparameters, learner_of(start.hyperparameters).init(start.key))

    def update(state: SweptState):
        inner, stats = learner_of(state.hyperparameters).update(state.inner)
        return SweptState(state.hyperparameters, inner), stats

    def evaluate(state: SweptState) -> dict[str, Array]:
        return learner_of(state.hyperparameters).evaluate(state.inner)

    return Learner(init, update, evaluate if base.evaluate is not None else None)


def make_sweep_train(
    make_learner: Callable[..., Learner],
    config: Any,
    make_network: Callable | None = None,
    on_log: LogCallback | None = None,
) -> Callable[[dict[str, Array], PRNGKeyArray], TrainResult]:
    """`train(hyperparameters, key) -> TrainResult`: `make_train(config)` with the swept fields
    taken from `hyperparameters` (name -> scalar), pure and jittable.

    `jax.vmap(jax.vmap(train, in_axes=(None, 0)), in_axes=(0, None))(stack(configurations), keys)`
    trains every configuration on every key (`train_configurations` does this, checked)."""
    train = make_train(swept_learner(make_learner, config, make_network), config, on_log)
    return lambda hyperparameters, key: train(Start(key, hyperparameters))


def train_configurations(
    make_learner: Callable[..., Learner],
    config: Any,
    configurations: Sequence[Configuration],
    keys: PRNGKeyArray,
    make_network: Callable | None = None,
) -> TrainResult:
    """Check every configuration, then train all of them on every key in one compiled program;
    the result's leaves have leading axes `(num_configurations, num_keys)`."""
    check_configurations(config, configurations)
    train = make_sweep_train(make_learner, config, make_network)
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


def configuration_scores(
    metrics: dict[str, np.ndarray], num_seeds: int, diverged: dict[int, int] | None = None
) -> list[dict[str, np.ndarray]]:
    """Per configuration (of a flat `(configurations * seeds, rows)` metrics table): the final
    training return of each seed (`final_return`), the greedy evaluation at the last row that has
    one (NaN per seed if none), and the training-return curves `(seeds, rows)`. A configuration in
    `diverged` (configuration -> its first bad row) is scored on its rows before that one."""
    total = metrics["episode_return"].shape[0]
    scores = []
    for start in range(0, total, num_seeds):
        good_rows = (diverged or {}).get(start // num_seeds)
        part = {name: values[start : start + num_seeds, :good_rows] for name, values in metrics.items()}
        curves = np.full_like(metrics["episode_return"][start : start + num_seeds], np.nan)
        curves[:, : part["episode_return"].shape[1]] = part["episode_return"]
        entry = {"final_return": final_return(part["episode_return"]), "curves": curves}
        row = last_evaluated_row(part)
        entry["final_eval_return"] = (
            np.full(num_seeds, np.nan) if row is None else part["eval_return"][:, row]
        )
        scores.append(entry)
    return scores


def ranked_results(
    configurations: Sequence[Configuration],
    scores: Sequence[dict[str, np.ndarray]],
    rank_by: str,
    diverged: dict[int, int] | None = None,
) -> list[dict]:
    """One entry per configuration, best first: its values, `stats.summary` of the final return and
    of the final greedy evaluation, and the per-seed scores. Ranked by the IQM of the greedy
    evaluation (`rank_by="eval"`, where the run evaluated) or of the final training return. The
    configurations in `diverged` (configuration -> first bad row) come last, unranked (`rank`
    None), with the first row at which one of their seeds logged a value that is not finite."""
    diverged = diverged or {}
    entries = []
    for index, (values, score) in enumerate(zip(configurations, scores, strict=True)):
        entries.append(
            {
                "configuration": index,
                "values": dict(values),
                "status": "diverged" if index in diverged else "finished",
                **({"first_bad_row": diverged[index]} if index in diverged else {}),
                "final_return": stats.summary(score["final_return"]),
                "final_eval_return": stats.summary(score["final_eval_return"]),
                "final_return_per_seed": score["final_return"].tolist(),
                "final_eval_return_per_seed": score["final_eval_return"].tolist(),
            }
        )
    healthy = [entry for entry in entries if entry["status"] == "finished"] or entries
    key = (
        "final_eval_return"
        if rank_by == "eval" and healthy[0]["final_eval_return"]["runs"]
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

    entries.sort(key=lambda entry: (entry["status"] == "finished", *order(entry)), reverse=True)
    for rank, entry in enumerate(entries, 1):
        entry["rank"] = rank if entry["status"] == "finished" else None
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
        rank = entry["rank"] or f"diverged (row {entry['first_bad_row']})"
        lines.append(
            f"| {rank} | "
            + " | ".join(cells)
            + f" | {stats.estimate_text(train, 'iqm')} | {stats.estimate_text(train, 'mean')} "
            f"| {stats.estimate_text(greedy, 'iqm')} | {stats.estimate_text(greedy, 'mean')} |"
        )
    return lines


def plot_curves(
    path: Path, env_steps: np.ndarray, entries: Sequence[dict], scores: Sequence[dict], title: str
) -> None:
    """Training-return curves, one per configuration (the IQM over its seeds at each row): the
    five best in colour and labelled, the others (and the diverged, up to their last good row)
    thin and grey."""
    fig, ax = files.curves_figure((7.2, 4.4))
    for entry in reversed(entries):  # the best drawn last, on top
        curve = stats.iqm_per_row(scores[entry["configuration"]]["curves"])
        if entry["rank"] is not None and entry["rank"] <= 5:
            ax.plot(env_steps, curve, lw=1.8, label=f"#{entry['rank']}: {runs.describe(entry['values'])}")
        else:
            ax.plot(env_steps, curve, lw=0.7, color="0.6", alpha=0.7)
    files.save_curves_figure(fig, ax, path, title, "episode return (IQM over seeds)", best_last=True)


def write_results(
    sweep_dir: Path,
    algorithm: str,
    config: Any,
    configurations: Sequence[Configuration],
    metrics: dict[str, np.ndarray],
    num_seeds: int,
    rank_by: str,
    title: str,
    diverged: dict[int, int] | None = None,
    seed: int = 0,
    runs_per_program: dict[int, int] | None = None,
) -> list[dict]:
    """The sweep folder's `results.json` (ranked entries), `table.md`, `learning_curves.png` and
    `best_config.json` (the best configuration's whole config, as `pureeqxrl train --config` reads
    it, with the seeds it ran and the runs its program trained at once; none if every configuration
    diverged), from the flat metrics of every group and the configurations that `diverged`
    (configuration -> first bad row). Returns the ranked entries."""
    scores = configuration_scores(metrics, num_seeds, diverged)
    entries = ranked_results(configurations, scores, rank_by, diverged)
    files.atomic_write_text(sweep_dir / "results.json", files.strict_json(entries))
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
    files.atomic_write_text(sweep_dir / "table.md", "\n".join(header + table_lines(entries)) + "\n")
    updates = rows_update_counts(config.num_updates, config.log_interval)[
        : metrics["episode_return"].shape[1]
    ]
    plot_curves(sweep_dir / "learning_curves.png", updates * config.steps_per_update, entries, scores, title)
    if entries[0]["rank"] is not None:
        best = dataclasses.replace(config, **entries[0]["values"])
        best_config = {
            "algorithm": algorithm,
            "config": best.to_dict(),
            "num_seeds": num_seeds,
            "seed": seed,
            "runs_per_program": (runs_per_program or {}).get(entries[0]["configuration"], num_seeds),
        }
        files.atomic_write_text(sweep_dir / "best_config.json", files.strict_json(best_config))
    return entries


# THE SWEEP COMMAND: a grid (or random sample) of hyperparameters x seeds in one compiled program per
# group of configurations that fits in memory; each group is a run folder of the sweep folder.


@dataclass(frozen=True)
class SweepOptions:
    """Options of a sweep that are not hyperparameters. Each swept hyperparameter flag takes one or
    more values (`--learning-rate 1e-4 3e-4 1e-3`); the sweep trains every combination."""

    num_seeds: int = 4
    """Seeds per configuration; seed i of every configuration uses the same key."""
    seed: int = 0
    """Base seed; seed i uses `jax.random.split(key(seed), num_seeds)[i]`."""
    sweep_dir: Path | None = None
    """Output folder (must not exist or be empty). Default: sweeps/ALGO-ENV-TIMESTAMP."""
    linen: bool = False
    """Sweep the Flax Linen control version."""
    config: Path | None = None
    """Base config file (a run folder's config.json, a sweep's best_config.json, JSON or YAML)."""
    preset: str | None = None
    """Base config: a named set of settings (`dqn --preset purejaxrl`: PureJaxRL's exact DQN)."""
    random: int = 0
    """Sample this many configurations instead of the grid: each swept flag then takes LOW HIGH."""
    log_uniform: tuple[str, ...] = ()
    """Fields sampled log-uniformly by --random (e.g. learning-rate)."""
    random_seed: int = 0
    """Seed of the --random draws."""
    rank_by: Literal["eval", "train"] = "eval"
    """Rank configurations by the IQM of the final greedy evaluation, or of the final training return."""
    max_group_configs: int = 0
    """At most this many configurations per compiled program (0: as many as fit in memory)."""
    chunk_rows: int = CheckpointSchedule.chunk_rows
    """Metrics rows per compiled chunk of updates; progress, checkpoints and Ctrl-C act between chunks."""
    checkpoint_minutes: float = CheckpointSchedule.checkpoint_minutes
    """Checkpoint after this many minutes since the last checkpoint."""
    compile_cache: bool = True
    """Keep compiled programs in the user's cache folder (every group of equal size compiles once)."""
    devices: int = 0
    """Devices to train on: the runs (configurations x seeds) are split over them (0: all, or the
    most that a group's runs divide over)."""
    env_devices: int = 1
    """Devices per run: each run's environments are split over this many devices (data parallel)."""


def start(
    algo_name: str, base: Any, options: "SweepOptions", given: dict[str, tuple[float, ...]], console: Console
) -> Ending:
    """Sweep `algo_name` over the configurations of the `given` values (a grid, or `--random` draws)
    on top of the `base` config. Every configuration is checked, and the memory estimated, before
    the sweep folder exists."""
    swept = sweepable_fields(type(base))
    configurations = sweep_configurations(options, given, swept)
    group_options(options, num_seeds=options.num_seeds, run_dir=None).check()  # seeds, chunks
    if options.max_group_configs < 0:
        raise ValueError(f"max_group_configs must be >= 0, got {options.max_group_configs}")
    check_configurations(base, configurations)
    algorithm = registry.get(algo_name)
    learner = algorithm.make_learner(base, algorithm.network(options.linen))
    groups = sweep_groups(learner, base, options, len(configurations), console)
    for group in groups:  # every group can be laid out on the devices
        run_layout(group_options(options, len(group) * options.num_seeds, None), base)
    saved = {
        "algorithm": algo_name,
        "linen": options.linen,
        "config": base.to_dict(),
        "configurations": configurations,
        "groups": groups,
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(options).items()},
    }
    with runs.claim_run_dir(options.sweep_dir, algo_name, base.env, parent="sweeps") as lock:
        files.atomic_write_text(lock.run_dir / "sweep.json", files.strict_json(saved))
        return run_sweep(lock.run_dir, saved, console)


def resume(sweep_dir: Path, console: Console) -> Ending:
    """Go on with the sweep in `sweep_dir`: its unfinished groups, each from its newest checkpoint."""
    path = sweep_dir / "sweep.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {sweep_dir} is not a folder of `pureeqxrl sweep`")
    with runs.lock_run_dir(sweep_dir):
        return run_sweep(sweep_dir, json.loads(path.read_text()), console)


# What `run_sweep` reads back of a sweep's saved options (the rest chose the configurations).
_GROUP_FIELDS = (
    "num_seeds",
    "seed",
    "linen",
    "rank_by",
    "chunk_rows",
    "checkpoint_minutes",
    "compile_cache",
    "devices",
    "env_devices",
)


def group_options(options: SweepOptions, num_seeds: int, run_dir: Path | None) -> RunOptions:
    """The run options of one group of a sweep: `num_seeds` runs (configurations x seeds)."""
    return RunOptions(
        num_seeds=num_seeds,
        seed=options.seed,
        run_dir=run_dir,
        linen=options.linen,
        chunk_rows=options.chunk_rows,
        checkpoint_minutes=options.checkpoint_minutes,
        compile_cache=options.compile_cache,
        devices=options.devices,
        env_devices=options.env_devices,
    )


def sweep_configurations(
    options: SweepOptions, given: dict, swept: tuple[str, ...]
) -> list[dict[str, float]]:
    """The grid of the given values, or `--random N` draws from the given LOW HIGH ranges."""
    if not given:
        flags = ", ".join("--" + name.replace("_", "-") for name in swept)
        raise ValueError(f"a sweep needs values for at least one of {flags}")
    if not options.random:
        if options.log_uniform:
            raise ValueError("--log-uniform needs --random N")
        return grid(given)
    if options.random < 0:
        raise ValueError(f"random must be >= 0, got {options.random}")
    wrong = [
        f"--{name.replace('_', '-')} has {len(values)}" for name, values in given.items() if len(values) != 2
    ]
    if wrong:
        raise ValueError(f"--random takes LOW HIGH per swept flag: {', '.join(wrong)} value(s)")
    log_uniform = [name.replace("-", "_") for name in options.log_uniform]
    return random_configurations(given, options.random, log_uniform, options.random_seed)


def sweep_groups(
    learner, config, options: SweepOptions, num_configurations: int, console: Console
) -> list[list[int]]:
    """Configurations per compiled program: as many as fit in half the device's memory (the rest for
    XLA's temporaries), at most `--max-group-configs`; a `ValueError` if one does not fit at all."""
    estimate = check_memory(learner, options.num_seeds, config.eval_every > 0)
    per_configuration, limit = sum(estimate.values()), parallel.memory_limit()[0]
    seed_devices = max((options.devices or jax.device_count()) // max(options.env_devices, 1), 1)
    per_group = max(1, limit // 2 // max(per_configuration, 1)) * seed_devices
    if options.max_group_configs:
        per_group = min(per_group, options.max_group_configs)
    groups = group_configurations(num_configurations, per_group)
    if len(groups) > 1:
        console.print(
            f"{num_configurations} configurations x {options.num_seeds} seeds need about "
            f"{size_text(per_configuration * num_configurations)} against "
            f"{size_text(limit)} of {jax.devices()[0].platform} memory: {len(groups)} programs of up to "
            f"{len(groups[0])} configurations, one after another"
        )
    return groups


def run_sweep(sweep_dir: Path, saved: dict, console: Console) -> Ending:
    """Train every group of the sweep not yet finished (resuming one that has a checkpoint), then
    write the sweep's ranked results."""
    algo_name = saved["algorithm"]
    options = SweepOptions(
        **{name: value for name, value in saved["options"].items() if name in _GROUP_FIELDS}
    )
    algorithm = registry.get(algo_name)
    config = runs.config_from_dict(algorithm.config_cls, saved["config"])
    configurations, num_seeds = saved["configurations"], options.num_seeds
    learner = swept_learner(algorithm.make_learner, config, algorithm.network(options.linen))
    keys = jax.random.split(jax.random.key(options.seed), num_seeds)
    use_compile_cache(options.compile_cache)
    stop = StopSignals()
    resume_command = f"pureeqxrl sweep --resume {shlex.quote(str(sweep_dir))}"
    kept = f"every group's checkpoints are kept: once this is fixed, {resume_command}"
    with stop.caught(), failures_said(sweep_dir, resume_command, kept):
        console.print(
            f"[bold]sweep of {algo_name}[/] on {escape(config.env)}: {len(configurations)} configurations x "
            f"{num_seeds} seeds in {len(saved['groups'])} program(s) -> {escape(str(sweep_dir))}"
        )
        for number, group in enumerate(saved["groups"]):
            group_dir = sweep_dir / f"group_{number}"
            if (group_dir / "summary.json").is_file():  # a group whose every run diverged is not run again
                if json.loads((group_dir / "summary.json").read_text())["status"] in ("finished", "diverged"):
                    continue
            group_dir.mkdir(exist_ok=True)
            values = [configurations[i] for i in group]
            run_options = group_options(
                options,
                num_seeds=len(group) * num_seeds,
                run_dir=group_dir,
            )
            config_path = group_dir / "config.json"
            group_saved = json.loads(config_path.read_text()) if config_path.is_file() else None
            if group_saved:  # a group that started goes on where it ran
                run_options = keep_saved_layout(run_options, group_saved.get("layout"), [])
            layout = run_layout(run_options, config)
            checkpoint = runs.latest_checkpoint(group_dir)
            if not group_saved:
                runs.write_config(
                    group_dir,
                    algo_name,
                    config,
                    options.linen,
                    run_options.num_seeds,
                    options.seed,
                    run_options_of(run_options),
                    sweep={"configurations": group, "values": values, "seeds_per_configuration": num_seeds},
                    layout=(layout.seed_devices, layout.env_devices),
                )
            run = Run(algo_name, config, run_options, group_dir, console, stop, layout, isolate=True)
            starts = flat_starts(values, keys)
            if len(saved["groups"]) > 1:
                console.print(
                    f"group {number + 1} of {len(saved['groups'])}: configurations {group[0]}-{group[-1]}"
                )
            if checkpoint and group_saved:
                updates_done = runs.read_checkpoint_header(checkpoint)["updates_done"]
                console.print(
                    f"{escape(str(group_dir))}: resuming from update {updates_done}"
                    f"{escape(not_bit_for_bit(group_saved, layout))}"
                )
            with failures_said(group_dir, resume_command):
                trained = train_run(run, learner, checkpoint, starts)
            if trained is not None:
                outcome, updates_done = trained
                diverged = diverged_runs(outcome.metrics, outcome.state.params)
                if outcome.status == "diverged":  # every run (the last chunk's bad state is not kept)
                    rows = next(iter(outcome.metrics.values())).shape[1]
                    diverged = {
                        index: diverged.get(index, rows - 1) for index in range(run_options.num_seeds)
                    }
                with failures_said(group_dir, resume_command):
                    write_run_results(run, outcome, updates_done, diverged)
                if outcome.status == "interrupted":
                    return Ending(group_dir, outcome, None, resume_command, exit_code(run, outcome))
    metrics, diverged = sweep_metrics(sweep_dir, saved["groups"], num_seeds, config)
    library = "Linen" if options.linen else "Equinox"
    title = f"sweep of {algo_name.upper().replace('_', ' ')} ({library}) on {config.env}"
    runs_per_program = {c: len(group) * num_seeds for group in saved["groups"] for c in group}
    entries = write_results(
        sweep_dir,
        algo_name,
        config,
        configurations,
        metrics,
        num_seeds,
        options.rank_by,
        title,
        diverged,
        options.seed,
        runs_per_program,
    )
    lines = table_lines(entries[:10])
    if len(entries) > 10:
        lines.append(f"(the top 10 of {len(entries)}; all of them in {sweep_dir}/table.md)")
    if diverged:
        lines.append(
            f"{len(diverged)} of {len(configurations)} configurations diverged (a seed logged a value that "
            "is not finite at the row given): scored on their rows before it, not ranked"
        )
    if entries[0]["rank"] is None:
        lines.append(f"every configuration diverged: no best configuration; wrote {sweep_dir}/results.json")
        return Ending(sweep_dir, None, None, resume_command, 1, tuple(lines))
    lines.append(
        f"best: {runs.describe(entries[0]['values'])}. Train it on its seeds: pureeqxrl train {algo_name} --config "
        f"{shlex.quote(str(sweep_dir / 'best_config.json'))} --num-seeds {num_seeds} --seed {options.seed}"
    )
    lines.append(
        f"wrote {sweep_dir}/{{sweep.json,results.json,table.md,learning_curves.png,best_config.json,group_*/}}"
    )
    return Ending(sweep_dir, None, None, resume_command, 0, tuple(lines))


def sweep_metrics(
    sweep_dir: Path, groups: Sequence[Sequence[int]], num_seeds: int, config: Any
) -> tuple[dict[str, np.ndarray], dict[int, int]]:
    """Every group's metrics rows as one flat `(configurations * seeds, rows)` table (the rows that
    a group whose every run diverged did not reach are NaN), and the configurations that diverged,
    each with the first bad row of its seeds (from the groups' `summary.json` and the rows that
    logged a value that is not finite)."""
    num_rows = len(rows_update_counts(config.num_updates, config.log_interval))
    metrics: dict[str, list[np.ndarray]] = {}
    diverged: dict[int, int] = {}
    for number, group in enumerate(groups):
        group_dir = sweep_dir / f"group_{number}"
        for name, values in files.read_metrics_csv(group_dir / "metrics.csv").items():
            padded = np.full((values.shape[0], num_rows), np.nan)
            padded[:, : values.shape[1]] = values
            metrics.setdefault(name, []).append(padded)
        summary = json.loads((group_dir / "summary.json").read_text())
        logged = first_logged_bad_rows(metrics["nonfinite_stats"][-1]) if "nonfinite_stats" in metrics else {}
        for run, row in [*logged.items(), *summary.get("diverged_runs", {}).items()]:
            configuration = group[int(run) // num_seeds]
            diverged[configuration] = min(row, diverged.get(configuration, row))
    return {name: np.concatenate(parts) for name, parts in metrics.items()}, dict(sorted(diverged.items()))
