"""Final performance as the field reports it (Agarwal et al., 2021, "Deep Reinforcement Learning at
the Edge of the Statistical Precipice"): the interquartile mean (IQM) over runs, and the mean, each
with a 95% stratified-bootstrap confidence interval.

Scores are a `(runs, tasks)` array (one task: a `(runs,)` array), one score per seed and task, e.g.
each seed's final return. The IQM is the mean of the middle half of all scores, the definition of
rliable (`scipy.stats.trim_mean(scores, 0.25, axis=None)`: `int(n / 4)` scores cut off each end,
so for `n` not a multiple of 4 it is not the fractional IQM). The stratified bootstrap resamples
the runs of each task with replacement, independently per task, recomputes the statistic, and
takes the 2.5th and 97.5th percentiles of its replicates (the percentile interval, rliable's
default method).

Hand-written rather than a dependency: rliable pulls in arch, scipy, pandas and seaborn for these
few lines, and the bootstrap here is vectorised over replicates with numpy alone.
"""

from collections.abc import Callable
from typing import NamedTuple

import numpy as np

DEFAULT_REPS = 10_000
CONFIDENCE = 0.95


def iqm(scores: np.ndarray, axis: int | None = None) -> np.ndarray:
    """Interquartile mean: the mean of the scores left after cutting `int(n / 4)` of the lowest
    and as many of the highest. `axis=None` pools every score; `axis=-1` gives one IQM per row
    (what the bootstrap uses on its replicates)."""
    scores = np.asarray(scores, np.float64)
    if axis is None:
        scores, axis = scores.reshape(-1), -1
    scores = np.sort(scores, axis=axis)
    n = scores.shape[axis]
    cut = int(0.25 * n)
    return np.take(scores, np.arange(cut, n - cut), axis=axis).mean(axis=axis)


def mean(scores: np.ndarray, axis: int | None = None) -> np.ndarray:
    return np.asarray(scores, np.float64).mean(axis=axis)


def stratified_bootstrap(
    scores: np.ndarray,
    statistic: Callable[..., np.ndarray],
    reps: int = DEFAULT_REPS,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile confidence interval of `statistic` over `scores` (`(runs,)` or `(runs, tasks)`):
    `reps` replicates, each resampling the runs of every task with replacement, independently per
    task. `statistic(replicates, axis=-1)` gets `(reps, runs * tasks)` and returns `(reps,)`."""
    scores = np.asarray(scores, np.float64)
    if scores.ndim == 1:
        scores = scores[:, None]
    runs, tasks = scores.shape
    rng = np.random.default_rng(seed)
    index = rng.integers(0, runs, size=(reps, runs, tasks))
    replicates = np.take_along_axis(scores[None], index, axis=1).reshape(reps, runs * tasks)
    values = statistic(replicates, axis=-1)
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


class Estimate(NamedTuple):
    """A statistic of the scores and its confidence interval."""

    value: float
    low: float
    high: float

    def __str__(self) -> str:
        return f"{self.value:.1f} [{self.low:.1f}, {self.high:.1f}]"


def estimate(
    scores: np.ndarray, statistic: Callable[..., np.ndarray], reps: int = DEFAULT_REPS, seed: int = 0
) -> Estimate:
    """`statistic` of `scores` with its 95% stratified-bootstrap interval."""
    value = float(statistic(np.asarray(scores, np.float64), axis=None))
    return Estimate(value, *stratified_bootstrap(scores, statistic, reps, seed=seed))


def summary(scores: np.ndarray, reps: int = DEFAULT_REPS, seed: int = 0) -> dict:
    """IQM and mean of the finite `scores`, each with its interval, as `summary.json` stores them:
    `{"iqm": x, "iqm_ci": [low, high], "mean": ..., "mean_ci": ..., "runs": n}`. Runs whose score
    is NaN (no episode finished in the window) are left out and counted in `"runs_without_score"`."""
    scores = np.asarray(scores, np.float64).reshape(-1)
    finite = scores[np.isfinite(scores)]
    out: dict = {"runs": int(finite.size), "runs_without_score": int(scores.size - finite.size)}
    for name, statistic in (("iqm", iqm), ("mean", mean)):
        if finite.size:
            value, low, high = estimate(finite, statistic, reps, seed)
            out[name], out[f"{name}_ci"] = value, [low, high]
        else:
            out[name], out[f"{name}_ci"] = None, None
    return out


def estimate_text(entry: dict, name: str = "iqm") -> str:
    """`"481.3 [470.2, 490.0]"`: statistic `name` ("iqm" or "mean") of a `summary` dict with its
    interval, or `"n/a"` without scores."""
    if entry.get(name) is None:
        return "n/a"
    low, high = entry[f"{name}_ci"]
    return f"{entry[name]:.1f} [{low:.1f}, {high:.1f}]"


def iqm_per_row(values: np.ndarray) -> np.ndarray:
    """The IQM of each column of a `(runs, rows)` array over its finite values (a learning curve
    over seeds); NaN where a row has none."""
    return np.array(
        [iqm(column[np.isfinite(column)]) if np.isfinite(column).any() else np.nan for column in values.T]
    )
