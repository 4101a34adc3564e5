import json
import struct
import sys
import time
import types

import numpy as np
import pytest

from pureeqxrl import cli, files
from pureeqxrl.training import loggers

SAVED = {"algorithm": "dqn", "num_seeds": 2, "seed": 0, "config": {"env": "CartPole-v1"}}
ROW_UPDATES = np.array([10, 20, 30, 35])  # a run of 35 updates, a row every 10
NAN = np.nan


def _rows(first_row: int, num_rows: int) -> dict[str, np.ndarray]:
    """Rows whose values say where they are: seed * 100 + row; seed 1 finishes no episode in row 1."""
    rows = np.arange(first_row, first_row + num_rows, dtype=float)
    episode_return = np.stack([rows, 100 + rows])
    episode_return[1, rows == 1] = NAN
    return {"episode_return": episode_return, "nonfinite_stats": np.zeros((2, num_rows))}


def _read_events(folder) -> list[tuple[str, int, float]]:
    """(tag, step, value) of the scalars of a TensorBoard event file (TFRecord framing)."""
    from tensorboardX.proto import event_pb2

    (path,) = folder.glob("events.out.tfevents.*")
    data, scalars, offset = path.read_bytes(), [], 0
    while offset < len(data):
        (length,) = struct.unpack("<Q", data[offset : offset + 8])
        event = event_pb2.Event.FromString(data[offset + 12 : offset + 12 + length])
        offset += 12 + length + 4
        scalars += [
            (v.tag, event.step, v.simple_value) for v in event.summary.value if v.HasField("simple_value")
        ]
    return scalars


def test_csv_grows_chunk_by_chunk_and_reads_back_in_any_order(tmp_path):
    live = loggers.Loggers(("csv",), tmp_path, SAVED, ROW_UPDATES, steps_per_update=4)
    live.log(_rows(0, 2), first_row=0)
    live.log(_rows(2, 2), first_row=2)
    metrics = files.read_metrics_csv(tmp_path / "metrics.csv")
    np.testing.assert_array_equal(metrics["episode_return"], [[0, 1, 2, 3], [100, NAN, 102, 103]])
    np.testing.assert_array_equal(metrics["env_steps"][0], ROW_UPDATES * 4)
    # A resumed run rewrites what its checkpoint holds (rows 0-1), dropping rows appended after it.
    resumed = loggers.Loggers(("csv",), tmp_path, SAVED, ROW_UPDATES, 4, history=_rows(0, 2))
    resumed.log(_rows(2, 1), first_row=2)
    metrics = files.read_metrics_csv(tmp_path / "metrics.csv")
    np.testing.assert_array_equal(metrics["episode_return"], [[0, 1, 2], [100, NAN, 102]])


def test_finish_leaves_a_complete_csv_alone_and_completes_any_other(tmp_path):
    path = tmp_path / "metrics.csv"

    def at_once(rows):  # the file of all these rows written in one go: seed by seed
        header, table = files.metrics_table(rows, ROW_UPDATES[: rows["episode_return"].shape[1]], 4)
        files.write_metrics_csv(tmp_path / "at_once.csv", header, table)
        return (tmp_path / "at_once.csv").read_bytes()

    # One chunk held every row: the file is left as it is.
    live = loggers.Loggers(("csv",), tmp_path, SAVED, ROW_UPDATES, steps_per_update=4)
    live.log(_rows(0, 3), first_row=0)
    path.write_text(path.read_text() + "# untouched\n")  # a mark: finish must not rewrite the file
    live.finish(_rows(0, 3))
    assert path.read_text().endswith("# untouched\n")
    # Appended chunks interleave the seeds: the finished file is the one written at once.
    live = loggers.Loggers(("csv",), tmp_path, SAVED, ROW_UPDATES, steps_per_update=4)
    live.log(_rows(0, 2), first_row=0)
    live.log(_rows(2, 1), first_row=2)
    assert path.read_bytes() != at_once(_rows(0, 3))
    live.finish(_rows(0, 3))
    assert path.read_bytes() == at_once(_rows(0, 3))
    # A diverged chunk's rows (not logged live) are written with the others.
    live.finish(_rows(0, 4))
    assert path.read_bytes() == at_once(_rows(0, 4))
    # A resumed run stopped before its first chunk: the file holds its checkpoint's rows, no more.
    resumed = loggers.Loggers(("csv",), tmp_path, SAVED, ROW_UPDATES, 4, history=_rows(0, 2))
    resumed.finish(_rows(0, 2))
    assert path.read_bytes() == at_once(_rows(0, 2))


def test_tensorboard_logs_each_seed_and_the_mean_at_their_env_steps(tmp_path):
    live = loggers.Loggers(("csv", "tensorboard"), tmp_path, SAVED, ROW_UPDATES, steps_per_update=4)
    live.log(_rows(0, 2), first_row=0)
    live.log(_rows(2, 2), first_row=2)
    live.close()
    folder = tmp_path / "tensorboard"
    assert _read_events(folder / "seed0") == [
        ("episode_return", s, r) for r, s in enumerate([40, 80, 120, 140])
    ]
    assert _read_events(folder / "seed1") == [("episode_return", 40, 100), ("episode_return", 120, 102)] + [
        ("episode_return", 140, 103)
    ]  # no value in row 1, where seed 1 finished no episode
    means = [(step, value) for tag, step, value in _read_events(folder / "mean")]
    assert means == [(40, 50), (80, 1), (120, 52), (140, 53)]  # row 1: the mean of the seeds with a value
    assert "nonfinite_stats" not in {tag for tag, *_ in _read_events(folder / "mean")}
    text = (next((folder / "mean").glob("events.*"))).read_bytes()
    assert b"CartPole-v1" in text  # the config, attached as text


class _FakeRun:
    def __init__(self, **kwargs):
        self.init, self.logged, self.finished = kwargs, [], False

    def log(self, values, step):
        self.logged.append((step, values))

    def finish(self):
        self.finished = True


def test_wandb_logs_seeds_and_mean_with_the_config_and_a_resume_continues_its_run(tmp_path, monkeypatch):
    started = []
    fake = types.SimpleNamespace(init=lambda **kwargs: started.append(_FakeRun(**kwargs)) or started[-1])
    monkeypatch.setitem(sys.modules, "wandb", fake)
    live = loggers.Loggers(("wandb",), tmp_path, SAVED, ROW_UPDATES, 4, wandb_mode="offline")
    live.log(_rows(0, 2), first_row=0)
    live.close()
    (run,) = started
    assert run.init["config"] == SAVED and run.init["mode"] == "offline" and run.init["dir"] == str(tmp_path)
    assert run.logged == [
        (40, {"seed0/episode_return": 0.0, "seed1/episode_return": 100.0, "mean/episode_return": 50.0}),
        (80, {"seed0/episode_return": 1.0, "mean/episode_return": 1.0}),
    ]
    assert run.finished
    loggers.Loggers(("wandb",), tmp_path, SAVED, ROW_UPDATES, 4, history=_rows(0, 2)).close()
    assert started[1].init["id"] == run.init["id"] and started[1].init["resume"] == "allow"


def test_a_missing_logger_package_is_named_with_its_extra(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # as if not installed
    with pytest.raises(ValueError, match=r"pip install 'pureeqxrl\[tensorboard\]'"):
        loggers.check_available(("csv", "tensorboard"))
    assert cli.main(["train", "dqn", "--logger", "tensorboard", "--run-dir", str(tmp_path / "r")]) == 2
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_cli_run_logs_to_tensorboard_and_to_wandb_offline(tmp_path):
    run_dir = tmp_path / "run"
    args = "--total-timesteps 3000 --learning-starts 500 --log-interval 60 --num-seeds 2".split()
    logger_args = ["--logger", "tensorboard", "wandb", "--wandb-mode", "offline"]
    assert cli.main(["train", "dqn", "--run-dir", str(run_dir), *args, *logger_args]) == 0
    metrics = files.read_metrics_csv(run_dir / "metrics.csv")
    seed0 = _read_events(run_dir / "tensorboard" / "seed0")
    logged = [value for tag, step, value in seed0 if tag == "eval_return"]
    np.testing.assert_allclose(logged, metrics["eval_return"][0], rtol=1e-6)
    assert json.loads((run_dir / "config.json").read_text())["run"]["logger"] == ["tensorboard", "wandb"]
    # W&B's offline run: its record file holds the per-seed and mean keys and the config.
    (record,) = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    data = record.read_bytes()
    assert b"seed1/episode_return" in data and b"mean/eval_return" in data and b"CartPole-v1" in data


def _read_as_tensorboard(folder) -> dict[str, list[tuple[int, float]]]:
    """The scalars TensorBoard shows of a folder of event files, read in the order they were
    written: a session that starts at step P (`purge_step`) drops what earlier files hold from P on."""
    from tensorboardX.proto import event_pb2

    shown: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        data, offset = path.read_bytes(), 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset : offset + 8])
            event = event_pb2.Event.FromString(data[offset + 12 : offset + 12 + length])
            offset += 12 + length + 4
            if event.HasField("session_log") and event.session_log.status == event_pb2.SessionLog.START:
                shown = {tag: [(s, v) for s, v in points if s < event.step] for tag, points in shown.items()}
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    shown.setdefault(value.tag, []).append((event.step, value.simple_value))
    return shown


def test_a_resumed_run_replaces_the_steps_a_killed_run_logged_after_its_checkpoint(tmp_path):
    killed = loggers.Loggers(("csv", "tensorboard"), tmp_path, SAVED, ROW_UPDATES, steps_per_update=4)
    killed.log(_rows(0, 4), first_row=0)  # then killed: its checkpoint holds rows 0-1 only
    killed.close()
    time.sleep(1.1)  # event files are named by the second they were opened in
    history = _rows(0, 2)
    resumed = loggers.Loggers(("csv", "tensorboard"), tmp_path, SAVED, ROW_UPDATES, 4, history=history)
    again = _rows(2, 2)
    again["episode_return"] += 1000  # rows 2-3 trained again (with other numbers, to tell them apart)
    resumed.log(again, first_row=2)
    resumed.close()
    shown = _read_as_tensorboard(tmp_path / "tensorboard" / "seed0")["episode_return"]
    assert shown == [(40, 0.0), (80, 1.0), (120, 1002.0), (140, 1003.0)]  # each step once, the resumed values
