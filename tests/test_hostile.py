"""What a careless or hostile user does, kept so that it cannot come back: each case ends with one
line and exit code 2 before anything is written, or with what the user needs to know."""

import errno
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from test_cli import TINY
from test_training_sweep import PPO_FLAGS

from pureeqxrl import cli, dqn, files, runs

PUREEQXRL = [sys.executable, "-m", "pureeqxrl"]  # the command, in a process of its own


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


# Takes the locks of the folders it is given, says so, and keeps them until it is killed.
HOLDER = """
import sys, time
from pureeqxrl import runs
locks = [runs.lock_run_dir(folder) for folder in sys.argv[1:]]
print("held", flush=True)
time.sleep(600)
"""


def test_a_folder_in_use_is_refused_to_a_second_writer_until_its_holder_dies(finished_run, tmp_path, capsys):
    run_dir, empty, sweep_dir = tmp_path / "run", tmp_path / "empty", tmp_path / "sweep"
    shutil.copytree(finished_run, run_dir)
    empty.mkdir()
    sweep_dir.mkdir()
    (sweep_dir / "sweep.json").write_text("{}")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(run_dir), str(empty), str(sweep_dir)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline() == "held\n"
        # What kill -9 during a checkpoint write leaves: cleaned by the next writer, not by a refused one.
        leftover = run_dir / "checkpoints" / ".update_0000000300.ckpt.x1y2.tmp"
        leftover.write_bytes(b"half a checkpoint")
        before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
        capsys.readouterr()
        for command in (
            ["train", "--resume", str(run_dir)],
            ["train", "dqn", "--run-dir", str(empty), *TINY],
            ["sweep", "--resume", str(sweep_dir)],
        ):
            assert cli.main(command) == 2
            printed = capsys.readouterr().out.strip()
            assert f"is in use by process {holder.pid} on " in printed and len(printed.splitlines()) == 1
        assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
    finally:
        holder.kill()  # kill -9: the kernel drops its locks with it
        holder.wait()
    assert cli.main(["train", "--resume", str(run_dir)]) == 0
    assert "nothing to resume" in capsys.readouterr().out
    assert not leftover.exists()
    assert cli.main(["train", "dqn", "--run-dir", str(empty), *TINY]) == 0


@pytest.mark.slow
def test_a_diverging_configuration_is_isolated_and_not_run_again(tmp_path, capsys):
    # Configurations 0 and 1 train in one program, 2 and 3 in a second (compiled once for both); a
    # learning rate of 1e30 makes the parameters overflow within the first updates.
    sweep_dir = tmp_path / "sweep"
    args = [
        "sweep",
        "ppo",
        *PPO_FLAGS,
        "--learning-rate",
        "3e-3",
        "1e30",
        "2e30",
        "3e30",
        "--max-group-configs",
        "2",
    ]
    assert cli.main([*args, "--sweep-dir", str(sweep_dir)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "3 of 4 configurations diverged" in out and "best: learning_rate=0.003" in out
    results = json.loads((sweep_dir / "results.json").read_text())
    assert [(e["configuration"], e["rank"], e["status"]) for e in results] == [
        (0, 1, "finished"),
        (1, None, "diverged"),
        (2, None, "diverged"),
        (3, None, "diverged"),
    ]
    assert all(e["first_bad_row"] <= 1 for e in results[1:])
    assert np.isfinite(results[0]["final_return_per_seed"]).all()
    assert "| diverged (row " in (sweep_dir / "table.md").read_text()
    best = json.loads((sweep_dir / "best_config.json").read_text())
    assert best["config"]["learning_rate"] == 3e-3
    summaries = [json.loads((sweep_dir / f"group_{g}" / "summary.json").read_text()) for g in (0, 1)]
    assert summaries[0]["status"] == "finished" and set(summaries[0]["diverged_runs"]) == {"2", "3"}
    assert summaries[1]["status"] == "diverged" and set(summaries[1]["diverged_runs"]) == {"0", "1", "2", "3"}

    # Resuming trains nothing again: the diverged group stays as it was, the results are the same.
    group_files = {p: p.read_bytes() for p in (sweep_dir / "group_1").rglob("*") if p.is_file()}
    assert cli.main(["sweep", "--resume", str(sweep_dir)]) == 0
    assert "resuming" not in capsys.readouterr().out
    assert {p: p.read_bytes() for p in (sweep_dir / "group_1").rglob("*") if p.is_file()} == group_files
    assert json.loads((sweep_dir / "results.json").read_text()) == results

    # A group is evaluated and compared per configuration, never as seeds of one run.
    group = sweep_dir / "group_0"
    assert cli.main(["eval", str(group), "--episodes", "2"]) == 0
    out = capsys.readouterr().out
    assert "configuration 0 (learning_rate=0.003):\n" in out
    assert (
        "configuration 1 (learning_rate=1e+30): diverged in training (a value not finite at metrics row"
        in out
    )
    assert out.count("mean over seeds") == 2
    written = json.loads((group / "eval_greedy.json").read_text())
    assert [part["values"] for part in written["configurations"]] == [
        {"learning_rate": 3e-3},
        {"learning_rate": 1e30},
    ]
    assert all(len(part["return_per_seed"]) == 2 for part in written["configurations"])
    assert written["configurations"][0]["first_bad_row"] is None
    assert written["configurations"][1]["first_bad_row"] == results[1]["first_bad_row"]
    assert cli.main(["compare", str(group), "--out", str(tmp_path / "compared")]) == 0
    rows = json.loads((tmp_path / "compared" / "compare.json").read_text())
    assert [(row["label"].split()[-1], row["seeds"], row["status"]) for row in rows] == [
        ("learning_rate=0.003", 2, "finished"),
        ("learning_rate=1e+30", 2, "diverged"),
    ]


@pytest.mark.slow
def test_a_reader_that_goes_away_does_not_end_the_run(tmp_path):
    # `pureeqxrl train ... | head -1`: the run goes on to its end, printing nothing more.
    run_dir = tmp_path / "run"
    command = [*PUREEQXRL, "train", "dqn", "--run-dir", str(run_dir), *TINY]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout.readline()
    process.stdout.close()
    assert process.wait(timeout=600) == 0
    errors = process.stderr.read().decode()
    assert "Traceback" not in errors and "BrokenPipe" not in errors
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "finished"


def test_the_memory_check_counts_the_evaluation_and_the_address_space_limit(finished_run, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert cli.main(["train", "ppo", "--eval-episodes", "300000000", "--run-dir", str(run_dir)]) == 2
    printed = capsys.readouterr().out.strip()
    assert "evaluation's largest value" in printed and len(printed.splitlines()) == 1
    assert not run_dir.exists()
    before = {p: p.read_bytes() for p in finished_run.rglob("*") if p.is_file()}
    assert cli.main(["eval", str(finished_run), "--episodes", "3000000000"]) == 2
    assert "3,000,000,000 episodes at once need at least" in capsys.readouterr().out
    assert {p: p.read_bytes() for p in finished_run.rglob("*") if p.is_file()} == before
    # Under `ulimit -v`, a run that fits in the host's memory but not in the address space the
    # process may still map is refused (XLA:CPU would stall at its first chunk).
    limit = 5 * 2**30
    command = [
        *PUREEQXRL,
        "train",
        "dqn",
        "--buffer-size",
        "50000000",
        "--run-dir",
        str(run_dir),
    ]
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit)),
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert (
        "address-space limit (ulimit -v) leaves" in done.stdout and len(done.stdout.strip().splitlines()) == 1
    )
    assert not run_dir.exists()


def test_a_full_disk_is_one_line_that_names_the_checkpoint_kept(tmp_path, capsys, monkeypatch):
    run_dir = tmp_path / "run"
    save, calls = runs.save_checkpoint, []

    def disk_fills_at_the_third(*args, **kwargs):
        calls.append(args)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device", str(run_dir / "checkpoints" / ".x.tmp"))
        return save(*args, **kwargs)

    args = ["--run-dir", str(run_dir), "--chunk-rows", "1", "--checkpoint-updates", "60", *TINY]
    with monkeypatch.context() as patch:
        patch.setattr(runs, "save_checkpoint", disk_fills_at_the_third)
        assert cli.main(["train", "dqn", *args]) == 1
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-1].startswith("error: No space left on device (") and "Traceback" not in "".join(printed)
    assert (
        "its newest checkpoint, update_0000000120.ckpt, is whole: once this is fixed, pureeqxrl train --resume"
        in printed[-1]
    )
    assert cli.main(["train", "--resume", str(run_dir)]) == 0
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "finished"


@pytest.mark.slow
def test_a_sweeps_run_is_the_train_run_that_trains_as_many_runs_at_once(tmp_path, capsys):
    # XLA compiles a vmapped program for the number of runs it trains at once, and another number
    # may round otherwise (the README says so). At the same number, a sweep's configuration is the
    # `train` run of its seed's key bit for bit, whatever the other runs of its program are.
    flags = ["--total-timesteps", "4096", "--log-interval", "2", "--seed", "3"]
    swept = tmp_path / "swept"  # two configurations x 1 seed: 2 runs at once
    args = [
        "sweep",
        "ppo",
        *flags,
        "--learning-rate",
        "2.5e-4",
        "1e-3",
        "--num-seeds",
        "1",
        "--rank-by",
        "train",
    ]
    assert cli.main([*args, "--sweep-dir", str(swept)]) == 0
    assert "--num-seeds 1 --seed 3" in capsys.readouterr().out  # the printed command keeps its seeds
    best = json.loads((swept / "best_config.json").read_text())
    assert (best["num_seeds"], best["seed"], best["runs_per_program"]) == (1, 3, 2)
    trained = tmp_path / "trained"  # learning rate 1e-3, 2 seeds: 2 runs at once, seed 0 has the key
    args = ["train", "ppo", *flags, "--learning-rate", "1e-3", "--num-seeds", "2", "--run-dir", str(trained)]
    assert cli.main(args) == 0
    ours, theirs = (files.read_metrics_csv(folder / "metrics.csv") for folder in (trained, swept / "group_0"))
    for name, values in ours.items():
        np.testing.assert_array_equal(theirs[name][1], values[0], err_msg=name)
    assert (swept / "group_0" / "agent_seed1.eqx").read_bytes() == (trained / "agent_seed0.eqx").read_bytes()


def test_odd_inputs_are_one_line_and_exit_2(finished_run, tmp_path, capsys):
    nested = tmp_path / "nested.json"
    nested.write_text("[" * 100_000 + "]" * 100_000)
    assert cli.main(["train", "dqn", "--config", str(nested), "--run-dir", str(tmp_path / "never")]) == 2
    assert "nested too deeply" in capsys.readouterr().out
    assert cli.main(["eval", str(finished_run), "--seed", str(10**20)]) == 2
    assert "seed (100000000000000000000) is past 2,147,483,647" in capsys.readouterr().out
    # A folder whose lock cannot be made (read-only; here a folder stands where the lock goes,
    # since the tests may run as root, whom permissions do not stop).
    stuck = tmp_path / "stuck"
    shutil.copytree(finished_run, stuck)
    (stuck / runs.LOCK_FILE).unlink()
    (stuck / runs.LOCK_FILE).mkdir()
    assert cli.main(["train", "--resume", str(stuck)]) == 2
    assert f"cannot write to {stuck}: Is a directory" in capsys.readouterr().out
    assert not (tmp_path / "never").exists()
    for environment, flags, expected in (
        ({"JAX_PLATFORMS": "cuda"}, [], "JAX could not start the platform JAX_PLATFORMS=cuda"),
        (
            {},
            ["--coordinator", "127.0.0.1:99999", "--num-processes", "2", "--process-id", "0"],
            "a port in 1-65535",
        ),
    ):
        command = [
            *PUREEQXRL,
            "train",
            "dqn",
            *flags,
            "--run-dir",
            str(tmp_path / "never"),
        ]
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=120, env={**os.environ, **environment}
        )
        assert (
            done.returncode == 2 and expected in done.stderr and len(done.stderr.strip().splitlines()) == 1
        ), done.stderr
    assert not (tmp_path / "never").exists()


def test_ctrl_c_stops_eval_at_once(finished_run, tmp_path):
    # Twenty million episodes take minutes in one compiled computation, where Python alone would
    # see the Ctrl-C only at its end.
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    command = [*PUREEQXRL, "eval", str(run_dir), "--episodes", "20000000"]
    unbuffered = {**os.environ, "PYTHONUNBUFFERED": "1"}  # the line below comes when printed
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=unbuffered
    )
    assert process.stdout.readline().startswith("evaluating ")
    time.sleep(1)  # into the compile or the evaluation
    assert process.poll() is None
    stopped = time.monotonic()
    process.send_signal(signal.SIGINT)
    out, _ = process.communicate(timeout=120)
    assert process.returncode == 130 and "interrupted" in out and time.monotonic() - stopped < 30
    assert not (run_dir / "eval_greedy.json").exists()
