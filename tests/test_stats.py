import numpy as np
import pytest

from pureeqxrl import stats


@pytest.mark.parametrize(
    "scores, expected",
    [
        ([4.0, 1.0, 3.0, 2.0], 2.5),  # n=4: one cut off each end, mean of 2 and 3
        (list(range(8)), 3.5),  # n=8: two each end, mean of 2, 3, 4, 5
        ([100.0, 1.0, 2.0, 3.0, -50.0], 2.0),  # n=5: int(1.25) = 1 each end, mean of 1, 2, 3
        ([7.0, 9.0, 8.0], 8.0),  # n=3: nothing cut, the mean
        # n=12: sorted -500 0 0 | 0 10 10 10 10 30 | 40 500 500, three cut each end.
        ([0, 0, 0, 10, 10, 10, 10, 500, 500, -500, 30, 40], (0 + 10 + 10 + 10 + 10 + 30) / 6),
    ],
)
def test_iqm_by_hand(scores, expected):
    assert stats.iqm(np.array(scores, float)) == pytest.approx(expected)


def test_iqm_pools_every_task_and_works_per_row():
    scores = np.array([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0], [4.0, 40.0]])  # 4 runs x 2 tasks
    # 8 scores pooled: 1 2 3 4 10 20 30 40, two cut each end -> mean of 3, 4, 10, 20.
    assert stats.iqm(scores) == pytest.approx(9.25)
    np.testing.assert_allclose(stats.iqm(scores.T, axis=-1), [2.5, 25.0])


def test_bootstrap_of_two_points_by_hand():
    # Two runs scoring 0 and 1: a replicate's mean is 0, 0.5 or 1 with probability 1/4, 1/2, 1/4,
    # so the 2.5th percentile is 0 and the 97.5th is 1.
    assert stats.stratified_bootstrap(np.array([0.0, 1.0]), stats.mean) == (0.0, 1.0)


def test_constant_scores_have_a_point_interval():
    assert stats.estimate(np.full(10, 3.0), stats.iqm) == (3.0, 3.0, 3.0)


def test_bootstrap_resamples_within_each_task():
    # Task A always scores 0, task B always 10: resampling runs within each task gives every
    # replicate 16 zeros and 16 tens, so the pooled mean is exactly 5. Pooling the runs before
    # resampling would not.
    scores = np.stack([np.zeros(16), np.full(16, 10.0)], axis=1)
    assert stats.stratified_bootstrap(scores, stats.mean) == (5.0, 5.0)
    pooled = stats.stratified_bootstrap(scores.reshape(-1), stats.mean)
    assert pooled[0] < 4.5 and pooled[1] > 5.5


def test_mean_interval_covers_the_true_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(1)
    trials = 300
    covered = 0
    for trial in range(trials):
        low, high = stats.stratified_bootstrap(rng.normal(2.0, 1.0, 30), stats.mean, reps=2000, seed=trial)
        covered += low <= 2.0 <= high
    assert 0.89 <= covered / trials <= 0.99  # the percentile interval undercovers slightly at n=30


def test_summary_leaves_out_runs_without_a_score():
    summary = stats.summary(np.array([1.0, 2.0, np.nan, 3.0, 4.0]))
    assert summary["runs"] == 4 and summary["runs_without_score"] == 1
    assert summary["iqm"] == pytest.approx(2.5) and summary["mean"] == pytest.approx(2.5)
    low, high = summary["mean_ci"]
    assert 1.0 <= low < 2.5 < high <= 4.0
    empty = stats.summary(np.array([np.nan, np.nan]))
    assert empty["iqm"] is None and empty["iqm_ci"] is None and empty["runs"] == 0
