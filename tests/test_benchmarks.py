"""The benchmark scripts run and write what the README's tables are made of (no timing is asserted:
timings belong in `benchmarks/results`, not in tests)."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pureeqxrl import registry
from pureeqxrl.dqn import DQNConfig
from pureeqxrl.sac import SACConfig

BENCHMARKS = Path(__file__).parent.parent / "benchmarks"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_script(monkeypatch, name: str, *argv: str) -> None:
    monkeypatch.setattr(sys, "argv", [f"{name}.py", *argv])
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # as `python benchmarks/<name>.py` has it (bench_io)
    load(name).main()


@pytest.mark.slow
def test_end_to_end_writes_tables_and_json(tmp_path, monkeypatch):
    config = DQNConfig(total_timesteps=12_000)
    steps = config.num_updates * config.steps_per_update
    assert steps >= 12_000
    out = tmp_path / "dqn_test"
    run_script(
        monkeypatch,
        "end_to_end",
        "--algo",
        "dqn",
        "--repeats",
        "2",
        "--seeds",
        "1",
        "2",
        "--total-timesteps",
        "12000",
        "--out",
        str(out),
    )
    data = json.loads(out.with_suffix(".json").read_text())
    assert [row["num_seeds"] for row in data["rows"]] == [1, 2]
    for row in data["rows"]:
        for library in ("equinox", "linen"):
            assert row[library]["train_s"] > 0 and row[library]["compile_s"] > 0
            for sample in data["samples"][f"{library}/{row['num_seeds']}"]:
                # steps/s counts every seed's environment steps.
                assert sample["steps_per_s"] == pytest.approx(
                    steps * row["num_seeds"] / sample["train_s"], rel=1e-6
                )
        for quantity in ("compile", "train"):
            low, high = row[f"{quantity}_time_ratio_min_max"]
            assert 0 < low <= row[f"{quantity}_time_ratio_median"] <= high
    # Two repeats, both libraries each time, for each number of seeds.
    assert {key: len(samples) for key, samples in data["samples"].items()} == {
        "equinox/1": 2,
        "linen/1": 2,
        "equinox/2": 2,
        "linen/2": 2,
    }
    table = out.with_suffix(".md").read_text()
    assert "--seeds 1 2" in table and table.count("| equinox |") == 2 and table.count("| linen |") == 2


@pytest.mark.slow
def test_sweep_benchmark_trains_the_same_runs_both_ways(tmp_path, monkeypatch):
    out = tmp_path / "sweeps_test"
    run_script(
        monkeypatch, "sweeps", "--algo", "ppo", "--configs", "2", "--seeds", "2", "--repeats", "1",
        "--total-timesteps", "4096", "--out", str(out),
    )  # fmt: skip
    data = json.loads(out.with_suffix(".json").read_text())
    one, separate = data["samples"]["one_program"][0], data["samples"]["separate_programs"][0]
    # The sweep and the separate programs train the same runs: the same final returns.
    assert one["final_return"] == pytest.approx(separate["final_return"], rel=1e-6)
    assert one["final_return"][0] != one["final_return"][1]  # two learning rates, two results
    table = out.with_suffix(".md").read_text()
    assert "| compile + train |" in table and "2 learning rates x 2 seeds" in table


@pytest.mark.slow
def test_scaling_benchmark_measures_every_layout_of_four_devices(tmp_path):
    out = tmp_path / "scaling_test"
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    command = [sys.executable, str(BENCHMARKS / "scaling.py"), "--algo", "dqn", "--seeds-per-device", "1"]
    command += ["--envs-per-device", "4", "--updates", "2", "--repeats", "1", "--out", str(out)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(out.with_suffix(".json").read_text())["results"]
    layouts = [(row["mode"], row["devices"], row["runs"], row["envs_per_run"]) for row in results]
    assert layouts == [
        ("seeds", 1, 1, 4), ("seeds", 2, 2, 4), ("seeds", 4, 4, 4),
        ("data parallel", 1, 1, 4), ("data parallel", 2, 1, 8), ("data parallel", 4, 1, 16),
    ]  # fmt: skip
    assert all(row["steps_per_second"] > 0 for row in results)
    assert [row["efficiency"] for row in results if row["devices"] == 1] == [1.0, 1.0]
    assert "A correctness run, not a scaling claim" in out.with_suffix(".md").read_text()


@pytest.mark.slow
def test_throughput_benchmark_compares_algorithms(tmp_path, monkeypatch):
    out = tmp_path / "throughput_test"
    run_script(
        monkeypatch, "throughput", "--algos", "pqn", "dqn", "--seeds", "1", "--updates", "2", "20",
        "--repeats", "2", "--out", str(out),
    )  # fmt: skip
    results = json.loads(out.with_suffix(".json").read_text())["results"]
    assert [(row["algo"], row["seeds"]) for row in results] == [("pqn", 1), ("dqn", 1)]
    # A chunk of PQN is 2 updates of 32 x 64 steps; of DQN 20 updates of 10 environments' steps.
    assert [row["env_steps"] for row in results] == [2 * 32 * 64, 20 * 10]
    assert results[0]["ratio_to_first"] == 1.0 and all(len(row["seconds"]) == 2 for row in results)


def test_throughput_variants_are_presets_with_changed_fields(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # bench_io
    throughput = load("throughput")
    algorithm, config = throughput.variant_config("pqn@minatar,torso=mlp,hidden_sizes=256x256,num_envs=64")
    assert algorithm is registry.get("pqn")
    assert (config.env, config.q_lambda, config.num_steps) == ("Breakout-MinAtar", 0.65, 32)  # the preset
    assert (config.torso, config.hidden_sizes, config.num_envs) == ("mlp", (256, 256), 64)  # the changes
    _, config = throughput.variant_config("sac,learn_alpha=false,tau=0.01")
    assert config == SACConfig(learn_alpha=False, tau=0.01)
    with pytest.raises(ValueError, match="num_envs must be int, got 'many'"):
        throughput.variant_config("dqn,num_envs=many")


@pytest.mark.slow
def test_versions_benchmark_times_a_commit_against_this_tree(tmp_path, monkeypatch):
    out = tmp_path / "versions_test"
    run_script(
        monkeypatch, "versions", "--baseline", "HEAD", "--algos", "ppo", "--seeds", "2",
        "--repeats", "1", "--total-timesteps", "2048", "--out", str(out),
    )  # fmt: skip  # one row, one repeat of each version
    data = json.loads(out.with_suffix(".json").read_text())
    assert [(row["algo"], row["num_seeds"]) for row in data["rows"]] == [("ppo", 2)]
    assert all(len(samples) == 1 for samples in data["samples"].values())  # both versions
    last = data["rows"][-1]
    assert last["old_returns"]["runs"] == last["new_returns"]["runs"] == 2  # 2 seeds
    assert "intervals overlap" in out.with_suffix(".md").read_text()
    # --compile-only: the compile columns alone, no run trained (no train time, no returns)
    run_script(
        monkeypatch, "versions", "--baseline", "HEAD", "--algos", "ppo", "--seeds", "2",
        "--repeats", "1", "--total-timesteps", "2048", "--compile-only", "--out", str(out),
    )  # fmt: skip
    data = json.loads(out.with_suffix(".json").read_text())
    assert [set(sample) for samples in data["samples"].values() for sample in samples] == [
        {"compile_s", "devices"}
    ] * 2
    assert set(data["rows"][0]) == {"algo", "num_seeds", "new_compile_s", "old_compile_s"} | {
        "compile_s_ratio",
        "compile_s_ratio_min_max",
    }
    table = out.with_suffix(".md").read_text()
    assert "| compile s old | compile s new |" in table and "train" not in table.split("|", 1)[1]


def test_versions_takes_a_baseline_checkout_made_elsewhere(tmp_path, monkeypatch):
    """`--baseline-tree` (for a machine without the history) is used as given, with its label, and
    a folder without the package is refused in one line."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # bench_io
    versions = load("versions")
    root = BENCHMARKS.parent
    assert versions.baseline("717c28d", root) == ("717c28d", root.resolve())
    with pytest.raises(SystemExit, match="holds no pureeqxrl package"):
        versions.baseline("717c28d", tmp_path)


def test_a_measurement_runs_with_the_xla_flags_it_is_given(monkeypatch):
    """`measure`'s `xla_flags` become the measuring process's `XLA_FLAGS`: a flag XLA does not
    know ends that process (the error names it), where the same measurement without it would run."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # bench_io
    versions = load("versions")
    with pytest.raises(RuntimeError, match="xla_cpu_no_such_flag"):
        versions.measure(
            BENCHMARKS.parent, "ppo", 1, 0, {"total_timesteps": 512}, "command", "--xla_cpu_no_such_flag"
        )


def _event(pid, tid, name, ts, dur, launcher=None):
    event = {"ph": "X", "pid": pid, "tid": tid, "name": name, "ts": ts, "dur": dur}
    return event if launcher is None else event | {"args": {"hlo_op": launcher}}


def _names(kind, pid, tid, name):
    return {"ph": "M", "name": f"{kind}_name", "pid": pid, "tid": tid, "args": {"name": name}}
