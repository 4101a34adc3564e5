import json
import os

import numpy as np
import pytest

from pureeqxrl import files


def test_atomic_writes_replace_whole_files_and_leave_nothing_behind(tmp_path):
    path = tmp_path / "summary.json"
    files.atomic_write_text(path, "first")
    files.atomic_write_text(path, "second")
    assert path.read_text() == "second"
    with pytest.raises(TypeError):
        files.atomic_write_bytes(path, "not bytes")  # fails while writing the temporary file
    assert path.read_text() == "second"  # the old content is whole
    assert os.listdir(tmp_path) == ["summary.json"]  # and no temporary file is left


def test_metrics_csv_round_trip(tmp_path):
    metrics = {
        "episode_return": np.array([[1.0, np.nan, 3.0], [4.0, 5.0, 6.0]]),
        "loss": np.array([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]]),
    }
    updates = np.array([10, 20, 25])
    header, rows = files.metrics_table(metrics, updates, steps_per_update=4)
    assert header == ["seed", "row", "update", "env_steps", "episode_return", "loss"]
    assert rows[2][:4] == [0, 2, 25, 100] and rows[3][:4] == [1, 0, 10, 40]
    files.write_metrics_csv(tmp_path / "metrics.csv", header, rows)
    back = files.read_metrics_csv(tmp_path / "metrics.csv")
    np.testing.assert_array_equal(back["episode_return"], metrics["episode_return"])  # NaN kept
    np.testing.assert_allclose(back["loss"], metrics["loss"])
    np.testing.assert_array_equal(back["env_steps"], [[40, 80, 100]] * 2)


def test_strict_json_writes_nan_and_infinities_as_null():
    text = files.strict_json({"a": float("nan"), "b": [1.0, float("inf")], "c": (2, "x")})
    assert json.loads(text) == {"a": None, "b": [1.0, None], "c": [2, "x"]}
