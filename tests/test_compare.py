import json

import numpy as np
import pytest

from pureeqxrl import cli, compare, dqn, files, runs


def _fake_run(run_dir, final_returns, greedy, rows=20):
    """A run folder of `len(final_returns)` seeds whose returns climb to `final_returns` and stay
    there over the last 5% of the rows, with a greedy evaluation at the last row."""
    run_dir.mkdir(parents=True)
    config = dqn.DQNConfig(total_timesteps=rows * 500 * 10, log_interval=500)
    runs.write_config(run_dir, "dqn", config, False, len(final_returns), 0)
    finals = np.asarray(final_returns, float)[:, None]
    returns = np.concatenate([finals * np.linspace(0.1, 0.9, rows - 1), finals], axis=1)
    eval_return = np.full_like(returns, np.nan)
    eval_return[:, -1] = greedy
    updates = np.arange(1, rows + 1) * 500
    header, table = files.metrics_table({"episode_return": returns, "eval_return": eval_return}, updates, 10)
    files.write_metrics_csv(run_dir / "metrics.csv", header, table)
    return run_dir


def test_scores_of_a_run_folder(tmp_path):
    run = compare.read_run_scores(_fake_run(tmp_path / "a", [100, 200, 300, 400], [10, 20, 30, 40]), "a")
    assert run.returns.shape == (4, 20) and run.env_steps[-1] == 20 * 500 * 10
    assert run.final_return["iqm"] == pytest.approx(250.0) and run.final_return["mean"] == pytest.approx(
        250.0
    )
    assert run.final_eval_return["iqm"] == pytest.approx(25.0)
    iqm, low, high = compare.curve_band(run.returns)
    assert iqm[-1] == pytest.approx(250.0) and low[-1] <= 250.0 <= high[-1]


def test_compare_says_whether_two_runs_differ(tmp_path, capsys):
    rng = np.random.default_rng(0)
    low_scores, high_scores = rng.normal(400, 10, 16), rng.normal(480, 10, 16)
    same = _fake_run(tmp_path / "same", low_scores + 1.0, low_scores)
    low = _fake_run(tmp_path / "low", low_scores, low_scores)
    high = _fake_run(tmp_path / "high", high_scores, high_scores)
    out = tmp_path / "out"
    assert cli.main(["compare", str(low), str(high), "--labels", "Equinox", "Linen", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| Equinox | 16 |" in printed and "| Linen | 16 |" in printed
    assert "final training return: IQM" in printed and "differ (the 95% intervals are disjoint)" in printed
    assert {p.name for p in out.iterdir()} == {"compare.png", "compare.md", "compare.json"}
    saved = json.loads((out / "compare.json").read_text())
    assert [entry["label"] for entry in saved] == ["Equinox", "Linen"]
    assert saved[0]["final_return"]["iqm_ci"][1] < saved[1]["final_return"]["iqm_ci"][0]

    assert cli.main(["compare", str(low), str(same), "--out", str(tmp_path / "out2")]) == 0
    assert "do not differ detectably (the 95% intervals overlap)" in capsys.readouterr().out


def test_compare_bad_input_gets_one_line_and_writes_nothing(tmp_path, capsys):
    run = _fake_run(tmp_path / "a", [1.0, 2.0], [1.0, 2.0])
    out = tmp_path / "out"
    assert cli.main(["compare", str(run), str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert "not a run folder" in capsys.readouterr().out
    assert cli.main(["compare", str(run), "--labels", "a", "b", "--out", str(out)]) == 2
    assert "2 labels for 1 runs" in capsys.readouterr().out
    assert not out.exists()
    assert cli.main(["compare", "--out", str(out)]) == 2
    assert "compare needs run folders" in capsys.readouterr().out
    assert not out.exists()
