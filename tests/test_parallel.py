"""Training over several devices and processes (`pureeqxrl.parallel`), on CPU: 4 virtual devices
(`--xla_force_host_platform_device_count=4`) in subprocesses, since this process has one, and two
real processes joined by `jax.distributed` over gloo."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from pureeqxrl import __main__ as entry
from pureeqxrl import files, parallel, runs

WORKER = Path(__file__).with_name("parallel_worker.py")


def _env(tmp_path, devices: int = 4) -> dict:
    """A subprocess's environment: `devices` CPU devices, and the tests' compilation cache."""
    cache = jax.config.jax_compilation_cache_dir  # set by conftest.py
    return {
        **os.environ,
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
        "COLUMNS": "250",
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
        **(
            {"JAX_COMPILATION_CACHE_DIR": cache, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
            if cache
            else {}
        ),
    }


def _worker(tmp_path, *args) -> dict:
    done = subprocess.run(
        [sys.executable, str(WORKER), *args], env=_env(tmp_path), capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _cli(tmp_path, *args, devices: int = 4, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pureeqxrl", *args],
        env=_env(tmp_path, devices),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _processes(tmp_path, args_of) -> list[subprocess.Popen]:
    """Two processes of 2 devices each, joined on a free port; `args_of(i)` are process i's
    arguments."""
    port = _free_port()
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "pureeqxrl", *args_of(i), "--coordinator", f"127.0.0.1:{port}"]
            + ["--num-processes", "2", "--process-id", str(i), "--distributed-timeout", "120"],
            env=_env(tmp_path, devices=2),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    return processes


# LAYOUTS (this process's one device)


def test_layout_of_one_device_and_its_errors():
    assert parallel.choose_layout(num_runs=4) == parallel.Layout(1, 1)
    assert parallel.Layout(2, 2).errors(num_runs=5, num_envs=3) == [
        "4 devices requested (2 for seeds x 2 for environments); 1 cpu device(s) exist",
        "5 runs do not divide over 2 devices",
        "num_envs (3) does not divide over 2 devices for environments",
    ]
    assert parallel.Layout(1, 1).errors(num_runs=5, num_envs=3) == []
    with pytest.raises(ValueError, match=r"devices \(3\) is not a multiple of env_devices \(2\)"):
        parallel.choose_layout(4, devices=3, env_devices=2)


def test_one_process_answers_its_own_flags_one_by_one():
    # Across processes each flag is OR-ed separately (the signal test below stops both processes).
    assert parallel.any_process_each(True, False, 0, np.bool_(True)) == (True, False, False, True)
    assert parallel.any_process(False) is False and parallel.any_process(True) is True


def test_the_command_joins_no_processes_unless_asked():
    assert entry.join_processes(["train", "ppo", "--num-seeds", "2"]) is None
    assert entry.join_processes(["train", "ppo", "--coordinator", "h:1", "--num-processes", "two"]) is None


# SHARDED RUNS AGAINST ONE DEVICE (4 virtual devices in a subprocess)

# Largest absolute difference allowed after 12 updates, per algorithm: discrete actions give the same
# episodes, so only the float rounding of the gradients differs; Pendulum's sampled continuous
# actions carry that rounding into the environments, whose states then part by about 1e-2.
PARAMS_TOLERANCE = {"ppo": 1e-6, "dqn": 1e-6, "ppo_rnn": 1e-6, "ppo_continuous": 1e-4}


@pytest.mark.parametrize(
    "algo",
    [
        "ppo",
        "dqn",
        pytest.param("ppo_continuous", marks=pytest.mark.slow),
        pytest.param("ppo_rnn", marks=pytest.mark.slow),
    ],
)
def test_sharded_runs_agree_with_the_single_device_run_of_the_same_keys(algo, tmp_path):
    measured = _worker(tmp_path, "compare", algo)[algo]
    tolerance = PARAMS_TOLERANCE[algo]
    for layout in [name for name in ("seeds", "envs", "both") if name in measured]:
        run = measured[layout]
        # The environments of every run lie split over the layout's devices: (runs, envs) per device.
        seed_devices, env_devices = {"seeds": (4, 1), "envs": (1, 4), "both": (2, 2)}[layout]
        assert run["env_shape"] == [4, 8] and run["env_shard_shape"] == [4 // seed_devices, 8 // env_devices]
        # Initial states are bit-identical, except where normalisation averages the first
        # observations over environments that lie on several devices (a cross-device sum).
        assert run["initial_state_identical"] or (algo == "ppo_continuous" and env_devices > 1)
        assert run["params_max_difference"] <= tolerance, (layout, run)
        for name, difference in run["rows_max_difference"].items():
            if algo == "ppo_continuous" and name in ("episode_return", "episode_length"):
                assert difference <= 1e-3 * run["rows_scale"][name], (layout, name, difference)
            elif name in ("episodes", "episode_return", "episode_length"):
                assert difference == 0, (layout, name, difference)  # the same actions and episodes
            else:
                assert difference <= 1e-4 * max(run["rows_scale"][name], 1.0), (layout, name, difference)
        if algo == "ppo_continuous":
            assert run["obs_stats_max_difference"] <= 1e-3
    if algo == "ppo":  # the Python API: `parallel.sharded(make_train(config), Layout(2, 2))`
        api = measured["api"]
        assert api["params_sharding"] == "P('seeds',)" and api["params_max_difference"] <= tolerance


def test_a_sharded_run_resumes_from_its_checkpoint_bit_for_bit(tmp_path):
    measured = _worker(tmp_path, "resume")
    assert all(measured["placed_like_trained"])  # read back, the state lies as the trained one did
    assert measured["resumed_identical"]
    # Resumed on another layout (seeds over 4 devices instead of 2 x 2): the same to float rounding.
    assert measured["other_layout_params_max_difference"] <= 1e-4


# THE COMMAND LINE ON SEVERAL DEVICES AND PROCESSES


def test_bad_layouts_and_an_unreachable_coordinator_are_one_line_and_exit_2(tmp_path):
    target = tmp_path / "never"
    base = ["train", "ppo", "--run-dir", str(target), "--total-timesteps", "4096"]
    too_many = _cli(tmp_path, *base, "--devices", "8")
    assert too_many.returncode == 2
    assert "8 devices requested (8 for seeds x 1 for environments); 4 cpu device(s) exist" in too_many.stdout
    uneven = _cli(tmp_path, *base, "--env-devices", "3", "--devices", "3")
    assert uneven.returncode == 2 and "num_envs (4) does not divide over 3 devices" in uneven.stdout
    seeds = _cli(tmp_path, *base, "--num-seeds", "3", "--devices", "2")
    assert seeds.returncode == 2 and "3 runs do not divide over 2 devices" in seeds.stdout
    # Process 1 looks for a coordinator nobody serves; process 0 waits for a process that never comes.
    for process_id in (1, 0):
        start = time.monotonic()
        lonely = _cli(
            tmp_path,
            *base,
            "--coordinator",
            f"127.0.0.1:{_free_port()}",
            "--num-processes",
            "2",
            "--process-id",
            str(process_id),
            "--distributed-timeout",
            "5",
            timeout=120,
        )
        assert lonely.returncode == 2, lonely.stderr[-2000:]
        assert f"error: process {process_id} could not join the coordinator 127.0.0.1:" in lonely.stderr
        assert "(timeout 5 s)" in lonely.stderr and "Traceback" not in lonely.stderr
        assert time.monotonic() - start < 90
    assert not target.exists()


def _same_run_folders(ours: Path, theirs: Path) -> None:
    assert (ours / "metrics.csv").read_bytes() == (theirs / "metrics.csv").read_bytes()
    for seed in range(4):
        assert (ours / f"agent_seed{seed}.eqx").read_bytes() == (
            theirs / f"agent_seed{seed}.eqx"
        ).read_bytes()
    assert runs.latest_checkpoint(ours).read_bytes() == runs.latest_checkpoint(theirs).read_bytes()


@pytest.mark.slow
def test_two_processes_train_one_agent_together_as_one_process_of_four_devices(tmp_path):
    # Seeds over two processes are the one process's run bit for bit (in the signal test below);
    # here each agent's environments and gradients span both processes.
    flags = [
        "train",
        "ppo",
        "--num-seeds",
        "4",
        "--num-envs",
        "8",
        "--total-timesteps",
        "20480",
        "--env-devices",
        "4",
        "--no-compile-cache",
    ]
    alone = _cli(tmp_path, *flags, "--run-dir", str(tmp_path / "alone"))
    assert alone.returncode == 0, alone.stderr[-3000:]
    processes = _processes(tmp_path, lambda i: [*flags, "--run-dir", str(tmp_path / f"together_{i}")])
    outputs = [process.communicate(timeout=900) for process in processes]
    assert [process.returncode for process in processes] == [0, 0], [err[-3000:] for _, err in outputs]
    assert "4 cpu devices of 2 processes" in outputs[0][0] and "final return" in outputs[0][0]
    # Process 1 trains, and shows and writes nothing (gloo, the CPU collectives, says it connected).
    assert [line for line in outputs[1][0].splitlines() if line.strip() and not _is_gloo_log(line)] == []
    assert not (tmp_path / "together_1").exists()
    saved = json.loads((tmp_path / "together_0" / "config.json").read_text())
    assert saved["processes"] == 2 and saved["layout"] == [1, 4]
    # Each agent's gradients are summed over both processes by gloo, in another order than within
    # one process: the same episodes, and losses equal to float rounding.
    ours = files.read_metrics_csv(tmp_path / "together_0" / "metrics.csv")
    theirs = files.read_metrics_csv(tmp_path / "alone" / "metrics.csv")
    for name in ours:
        if name in ("episodes", "episode_return", "episode_length", "eval_return", "eval_return_sampled"):
            np.testing.assert_array_equal(ours[name], theirs[name])
        else:
            np.testing.assert_allclose(
                ours[name], theirs[name], rtol=0, atol=1e-5 * max(np.nanmax(np.abs(theirs[name])), 1)
            )


@pytest.mark.slow
def test_a_data_parallel_agent_learns_cartpole(tmp_path):
    target = tmp_path / "spread"
    done = _cli(
        tmp_path,
        "train",
        "ppo",
        "--num-seeds",
        "2",
        "--num-envs",
        "8",
        "--env-devices",
        "4",
        "--run-dir",
        str(target),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "each run's environments over 4 devices" in done.stdout
    summary = json.loads((target / "summary.json").read_text())
    assert min(summary["final_eval_return_per_seed"]) >= 475, summary["final_eval_return_per_seed"]


@pytest.mark.slow
def test_a_signal_to_one_process_stops_both_and_they_resume_bit_for_bit(tmp_path):
    flags = [
        "--num-seeds",
        "4",
        "--total-timesteps",
        str(512 * 120),
        "--chunk-rows",
        "1",
        "--log-interval",
        "2",
    ]
    flags += ["--checkpoint-updates", "10", "--no-compile-cache"]
    alone = _cli(tmp_path, "train", "ppo", *flags, "--run-dir", str(tmp_path / "alone"))
    assert alone.returncode == 0, alone.stderr[-3000:]

    run_dir = tmp_path / "shared"  # one folder both processes can read, as on a cluster's file system
    processes = _processes(tmp_path, lambda i: ["train", "ppo", *flags, "--run-dir", str(run_dir)])
    deadline = time.monotonic() + 300
    while not list((run_dir / "checkpoints").glob("*.ckpt")) and time.monotonic() < deadline:
        time.sleep(0.1)
    processes[1].send_signal(signal.SIGINT)  # process 1 is stopped; process 0 must stop with it
    outputs = [process.communicate(timeout=300) for process in processes]
    assert [process.returncode for process in processes] == [130, 130], [err[-2000:] for _, err in outputs]
    assert "SIGINT after update" in outputs[0][0]  # process 0 names the signal process 1 received
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted" and 0 < summary["updates_done"] < 120
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["processes"] == 2 and saved["layout"] == [4, 1]

    processes = _processes(tmp_path, lambda i: ["train", "--resume", str(run_dir), "--no-compile-cache"])
    outputs = [process.communicate(timeout=900) for process in processes]
    assert [process.returncode for process in processes] == [0, 0], [err[-2000:] for _, err in outputs]
    assert f"from update {summary['updates_done']}" in outputs[0][0]
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "finished"
    _same_run_folders(run_dir, tmp_path / "alone")


def _is_gloo_log(line: str) -> bool:
    """Whether a line of a process's output is gloo's own log: "[Gloo] Rank 3 is connected to 3 peer
    ranks. ...", which gloo's threads may print split in two, the second part without the prefix."""
    return line.startswith("[Gloo]") or "peer ranks" in line


@pytest.mark.parametrize("version", ["v2", "v1"])
def test_the_memory_left_by_a_cgroup_counts_its_reclaimable_cache_as_free(tmp_path, version):
    membership, root = tmp_path / "cgroup", tmp_path / "fs"
    gib = 2**30
    if version == "v2":
        membership.write_text("0::/job/42\n")
        folder, files_ = root / "job" / "42", {"memory.max": 8 * gib, "memory.current": 5 * gib}
        stat = f"anon 1\ninactive_file {gib}\n"
    else:
        membership.write_text("5:cpu:/x\n4:memory:/job/42\n")
        folder = root / "memory" / "job" / "42"
        files_ = {"memory.limit_in_bytes": 8 * gib, "memory.usage_in_bytes": 5 * gib}
        stat = f"cache 3\ntotal_inactive_file {gib}\n"
    folder.mkdir(parents=True)
    for name, value in files_.items():
        (folder / name).write_text(f"{value}\n")
    (folder / "memory.stat").write_text(stat)
    left, source = parallel.cgroup_memory_left(membership, root)
    assert left == 4 * gib and str(folder) in source  # 8 - 5 used + 1 of cache the kernel reclaims
    (folder / next(iter(files_))).write_text("max\n" if version == "v2" else f"{2**63 - 4096}\n")
    assert parallel.cgroup_memory_left(membership, root) is None  # no limit
