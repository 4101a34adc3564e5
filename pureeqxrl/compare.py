"""Several runs side by side (`pureeqxrl compare RUN_DIR RUN_DIR ...`): their learning curves as the
IQM over seeds with a 95% bootstrap band, and their final scores with intervals (`pureeqxrl.stats`).
E.g. the Equinox DQN against its Linen twin, or DQN against Double DQN.

Each run is read from its folder (`metrics.csv`, `config.json`, `summary.json`), so runs of any
age, finished or stopped, compare; each run's status and environment steps are shown beside its
scores. A sweep's group folder compares as one run per configuration (its seeds), labelled with
its values.
"""

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pureeqxrl import files, runs, stats
from pureeqxrl.loop import final_return, last_evaluated_row

CURVE_REPS = 2_000
"""Bootstrap replicates per row of a curve's band (the final scores use `stats.DEFAULT_REPS`)."""
MIN_SEEDS_TO_DECIDE = 3
"""Below this many seeds with a score in either run, two runs' intervals decide nothing: with one
seed an interval is a single point, with two a bootstrap has three distinct means."""


@dataclass(frozen=True)
class RunScores:
    run_dir: Path
    label: str
    env_steps: np.ndarray
    """Environment steps per seed at the end of each logged row."""
    returns: np.ndarray
    """Training episode returns, `(seeds, rows)`."""
    final_return: dict
    """`stats.summary` of the seeds' final training returns (last 5% of the rows)."""
    final_eval_return: dict
    """`stats.summary` of the seeds' last greedy evaluations (`runs: 0` if the run made none)."""
    status: str
    """`summary.json`'s status (finished, interrupted, diverged), or `no summary` for a run that
    wrote none (killed, or still running)."""
    updates_done: int | None
    """Updates the run had done when it wrote its summary (None without one)."""


def read_scores(run_dir: Path, label: str | None = None) -> list[RunScores]:
    """The scores of a run folder (`read_run_scores`), or of a sweep's group folder one per
    configuration, labelled with its values: a group's configurations are not seeds of one run."""
    saved, _, _ = runs.read_run(run_dir)
    if "sweep" not in saved:
        return [read_run_scores(run_dir, label)]
    per = saved["sweep"]["seeds_per_configuration"]
    label = label or f"{saved['algorithm']} {Path(run_dir).parent.name}/{Path(run_dir).name}"
    return [
        read_run_scores(
            run_dir,
            f"{label} {runs.describe(values)}",
            range(number * per, (number + 1) * per),
        )
        for number, values in enumerate(saved["sweep"]["values"])
    ]


def read_run_scores(run_dir: Path, label: str | None = None, seeds: range | None = None) -> RunScores:
    """The scores of a run folder, of its `seeds` (default: all; rows of a sweep group's table)."""
    saved, config, _ = runs.read_run(run_dir)
    path = Path(run_dir) / "metrics.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {run_dir} has not logged a row yet")
    metrics = files.read_metrics_csv(path)
    seeds = range(metrics["episode_return"].shape[0]) if seeds is None else seeds
    metrics = {name: values[seeds.start : seeds.stop] for name, values in metrics.items()}
    nonfinite = metrics.get("nonfinite_stats", np.zeros_like(metrics["episode_return"]))  # older runs: none
    bad_rows = np.flatnonzero((nonfinite > 0).any(axis=0))
    if bad_rows.size:  # a diverged run: scored on its rows before the first that logged a value not finite
        metrics = {name: values[:, : max(int(bad_rows[0]), 1)] for name, values in metrics.items()}
        if bad_rows[0] == 0:
            metrics = {**metrics, "episode_return": np.full_like(metrics["episode_return"], np.nan)}
            metrics.pop("eval_return", None)
    row = last_evaluated_row(metrics)
    greedy = (
        np.full(metrics["episode_return"].shape[0], np.nan) if row is None else metrics["eval_return"][:, row]
    )
    if label is None:
        library = "Linen" if saved["linen"] else "Equinox"
        label = f"{saved['algorithm']} ({library}) {Path(run_dir).name}"
    status, updates_done = "no summary", None
    summary_path = Path(run_dir) / "summary.json"
    if summary_path.is_file():
        try:
            summary = json.loads(summary_path.read_text())
            status, updates_done = str(summary["status"]), int(summary["updates_done"])
            if bad_rows.size or any(int(run) in seeds for run in summary.get("diverged_runs", {})):
                status = "diverged"  # in a sweep's group, where the others went on
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{summary_path} is not a pureeqxrl summary.json ({error})") from error
    return RunScores(
        run_dir=Path(run_dir),
        label=label,
        env_steps=metrics["env_steps"][0],
        returns=metrics["episode_return"],
        final_return=stats.summary(final_return(metrics["episode_return"])),
        final_eval_return=stats.summary(greedy),
        status=status,
        updates_done=updates_done,
    )


def curve_band(returns: np.ndarray, reps: int = CURVE_REPS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IQM over seeds per row and its 95% bootstrap interval (NaN where no seed has a value)."""
    low, high = (np.full(returns.shape[1], np.nan) for _ in range(2))
    for row, column in enumerate(returns.T):
        column = column[np.isfinite(column)]
        if column.size:
            low[row], high[row] = stats.stratified_bootstrap(column, stats.iqm, reps)
    return stats.iqm_per_row(returns), low, high


def table_lines(scored: list[RunScores]) -> list[str]:
    lines = [
        "| run | seeds | final return IQM [95% CI] | mean [95% CI] | greedy eval IQM [95% CI] | mean [95% CI] "
        "| status | env steps per seed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for run in scored:
        train, greedy = run.final_return, run.final_eval_return
        lines.append(
            f"| {run.label} | {run.returns.shape[0]} | {stats.estimate_text(train, 'iqm')} "
            f"| {stats.estimate_text(train, 'mean')} | {stats.estimate_text(greedy, 'iqm')} "
            f"| {stats.estimate_text(greedy, 'mean')} | {run.status} | {int(run.env_steps[-1]):,} |"
        )
    return lines


def unequal_lines(scored: list[RunScores]) -> list[str]:
    """A warning where the runs did not all finish, or stopped at different environment steps:
    their scores are then of unequal training."""
    ends = {(run.status, int(run.env_steps[-1])) for run in scored}
    if len(ends) == 1 and scored[0].status == "finished":
        return []
    where = "; ".join(f"{run.label}: {run.status} at {int(run.env_steps[-1]):,} env steps" for run in scored)
    return [f"not like for like: {where}"]


def overlap_lines(scored: list[RunScores]) -> list[str]:
    """For two runs: whether their IQM intervals overlap, for the training return and the greedy
    evaluation (disjoint 95% intervals: a difference; overlapping: none shown at this many seeds)."""
    if len(scored) != 2:
        return []
    lines = []
    for key, name in (("final_return", "final training return"), ("final_eval_return", "greedy evaluation")):
        a, b = (getattr(run, key) for run in scored)
        if a["iqm"] is None or b["iqm"] is None:
            continue
        if min(a["runs"], b["runs"]) < MIN_SEEDS_TO_DECIDE:
            lines.append(
                f"{name}: IQM {a['iqm']:.1f} vs {b['iqm']:.1f}, cannot tell (fewer than "
                f"{MIN_SEEDS_TO_DECIDE} seeds with a score in a run: {a['runs']} and {b['runs']})"
            )
            continue
        disjoint = a["iqm_ci"][1] < b["iqm_ci"][0] or b["iqm_ci"][1] < a["iqm_ci"][0]
        verdict = (
            "differ (the 95% intervals are disjoint)"
            if disjoint
            else "do not differ detectably (the 95% intervals overlap)"
        )
        lines.append(f"{name}: IQM {a['iqm']:.1f} vs {b['iqm']:.1f}, {verdict}")
    return lines


def plot(path: Path, scored: list[RunScores], title: str = "") -> None:
    fig, ax = files.curves_figure((7.2, 4.4))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for run in scored:
            iqm, low, high = curve_band(run.returns)
            (line,) = ax.plot(run.env_steps, iqm, lw=1.8, label=f"{run.label} ({run.returns.shape[0]} seeds)")
            ax.fill_between(run.env_steps, low, high, alpha=0.2, color=line.get_color())
    files.save_curves_figure(fig, ax, path, title, "episode return (IQM over seeds, 95% CI)")


def write_comparison(out: Path, scored: list[RunScores], title: str, command: str) -> list[str]:
    """The comparison folder's `compare.png`, `compare.md` (the command, the table and, for two
    runs, whether their intervals overlap) and `compare.json`; the table's and verdicts' lines."""
    table, verdicts = table_lines(scored), [*unequal_lines(scored), *overlap_lines(scored)]
    plot(out / "compare.png", scored, title)
    header = [f"# {title or 'comparison'}", "", f"`{command}`", ""]
    files.atomic_write_text(out / "compare.md", "\n".join([*header, *table, "", *verdicts]) + "\n")
    entries = [
        {
            "run_dir": str(run.run_dir),
            "label": run.label,
            "seeds": int(run.returns.shape[0]),
            "status": run.status,
            "updates_done": run.updates_done,
            "env_steps_per_seed": int(run.env_steps[-1]),
            "final_return": run.final_return,
            "final_eval_return": run.final_eval_return,
        }
        for run in scored
    ]
    files.atomic_write_text(out / "compare.json", files.strict_json(entries))
    return [*table, *verdicts]
