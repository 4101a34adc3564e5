"""What a careless or hostile user does, kept so that it cannot come back: each case ends with one
line and exit code 2 before anything is written, or with what the user needs to know."""

import json
import shutil

import numpy as np
import pytest
from test_cli import TINY

from pureeqxrl import cli, dqn, files, runs


@pytest.mark.parametrize("minutes", ["inf", "nan", "-1"])
def test_checkpoint_minutes_must_be_a_finite_positive_number(minutes, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert cli.main(["train", "dqn", "--checkpoint-minutes", minutes, "--run-dir", str(run_dir), *TINY]) == 2
    printed = capsys.readouterr().out.strip()
    assert (
        "checkpoint_minutes must be a positive number of minutes" in printed
        and len(printed.splitlines()) == 1
    )
    assert not run_dir.exists()


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("hostile") / "dqn"
    assert cli.main(["train", "dqn", "--run-dir", str(run_dir), *TINY]) == 0
    return run_dir


def test_a_checkpoint_of_another_run_is_refused(finished_run, tmp_path, capsys):
    # The folder says seed 1; its checkpoint was written by the seed-0 run.
    run_dir = tmp_path / "copy"
    shutil.copytree(finished_run, run_dir)
    saved = json.loads((run_dir / "config.json").read_text())
    (run_dir / "config.json").write_text(json.dumps({**saved, "seed": 1}))
    capsys.readouterr()
    assert cli.main(["train", "--resume", str(run_dir)]) == 2
    printed = capsys.readouterr().out
    assert "belongs to another run: its seed is 0" in printed and "config.json's is 1" in printed


def test_resume_compares_a_given_config_or_preset_with_the_saved_one(finished_run, tmp_path, capsys):
    capsys.readouterr()
    assert cli.main(["train", "--resume", str(finished_run), "--preset", "purejaxrl"]) == 2
    printed = capsys.readouterr().out
    assert "resume refused:" in printed and "learning_rate" in printed
    same = tmp_path / "same.json"
    same.write_text((finished_run / "config.json").read_text())
    assert cli.main(["train", "--resume", str(finished_run), "--config", str(same)]) == 0
    assert "nothing to resume" in capsys.readouterr().out


def _fake_run(run_dir, finals, status=None, rows=20):
    """A run folder whose seeds' returns end at `finals`, with a summary of `status` (None: none)."""
    run_dir.mkdir(parents=True)
    config = dqn.DQNConfig(total_timesteps=40 * 500 * 10, log_interval=500)
    runs.write_config(run_dir, "dqn", config, False, len(finals), 0)
    returns = np.repeat(np.asarray(finals, float)[:, None], rows, axis=1)
    updates = np.arange(1, rows + 1) * 500
    header, table = files.metrics_table({"episode_return": returns}, updates, 10)
    files.write_metrics_csv(run_dir / "metrics.csv", header, table)
    if status is not None:
        (run_dir / "summary.json").write_text(json.dumps({"status": status, "updates_done": rows * 500}))
    return run_dir


def test_compare_cannot_tell_from_one_seed_each(tmp_path, capsys):
    low, high = (
        _fake_run(tmp_path / "low", [100.0], "finished"),
        _fake_run(tmp_path / "high", [400.0], "finished"),
    )
    assert cli.main(["compare", str(low), str(high), "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "cannot tell (fewer than 3 seeds with a score in a run: 1 and 1)" in printed
    assert "differ" not in printed


def test_compare_shows_each_runs_status_and_steps(tmp_path, capsys):
    seeds = [100.0, 110.0, 120.0, 130.0]
    done = _fake_run(tmp_path / "done", seeds, "finished", rows=20)
    stopped = _fake_run(tmp_path / "stopped", seeds, "interrupted", rows=9)
    killed = _fake_run(tmp_path / "killed", seeds, None, rows=12)
    out = tmp_path / "out"
    assert cli.main(["compare", str(done), str(stopped), str(killed), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| finished | 100,000 |" in printed and "| interrupted | 45,000 |" in printed
    assert "| no summary | 60,000 |" in printed and "not like for like" in printed
    saved = json.loads((out / "compare.json").read_text())
    assert [(e["status"], e["updates_done"], e["env_steps_per_seed"]) for e in saved] == [
        ("finished", 10_000, 100_000),
        ("interrupted", 4_500, 45_000),
        ("no summary", None, 60_000),
    ]


def test_ppo_on_continuous_actions_points_to_ppo_continuous(tmp_path, capsys):
    tiny = "--total-timesteps 512 --num-envs 4 --num-steps 128 --log-interval 1 --eval-interval 0".split()
    assert cli.main(["train", "ppo", "--env", "Pendulum-v1", "--run-dir", str(tmp_path / "run"), *tiny]) == 0
    assert (
        "note: Pendulum-v1 has continuous actions; `pureeqxrl train ppo_continuous`"
        in capsys.readouterr().out
    )


def test_runs_started_at_the_same_moment_get_distinct_default_folders(tmp_path, monkeypatch):
    import threading

    monkeypatch.setattr(runs.time, "strftime", lambda _: "20261207-120000")  # one stamp for all
    for trial in range(10):
        parent, barrier, claimed = tmp_path / f"trial{trial}", threading.Barrier(6), []

        def launch():
            barrier.wait()
            claimed.append(runs.prepare_run_dir(None, "dqn", "CartPole-v1", parent=str(parent)))  # noqa: B023

        threads = [threading.Thread(target=launch) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(set(claimed)) == 6, claimed
        assert sorted(p.name for p in parent.iterdir()) == sorted(p.name for p in claimed)


def test_a_damaged_newest_checkpoint_points_to_the_older_ones(tmp_path, capsys):
    run_dir = tmp_path / "run"
    every_60 = ["--checkpoint-updates", "60", "--chunk-rows", "1"]
    assert cli.main(["train", "dqn", "--run-dir", str(run_dir), *TINY, *every_60]) == 0
    newest = runs.latest_checkpoint(run_dir)
    assert newest.name == "update_0000000300.ckpt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # killed mid-copy
    capsys.readouterr()
    assert cli.main(["train", "--resume", str(run_dir)]) == 2
    printed = capsys.readouterr().out
    assert "is damaged" in printed and "move update_0000000300.ckpt out of" in printed
    assert "to resume from update_0000000240.ckpt" in printed
    newest.rename(tmp_path / newest.name)  # as the message says
    assert cli.main(["train", "--resume", str(run_dir)]) == 0
    assert "from update 240" in capsys.readouterr().out
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "finished"
