import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import equinox as eqx
import jax.numpy as jnp
import numpy as np
import pytest

from pureeqxrl import cli, dqn, files, heads, runs
from pureeqxrl.training.run import RunOptions

TINY = [
    "--total-timesteps",
    "3000",
    "--learning-starts",
    "500",
    "--log-interval",
    "60",
    "--hidden-sizes",
    "16",
    "16",
]


def _no_constant(name):
    raise AssertionError(f"{name} in a JSON file: not strict JSON")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "dqn-tiny"
    code = cli.main(
        ["train", "dqn", "--env", "CartPole-v1", "--num-seeds", "2", "--run-dir", str(run_dir), *TINY]
    )
    assert code == 0
    return run_dir


def test_train_writes_the_run_folder(run_dir):
    names = {p.name for p in run_dir.iterdir()}
    assert names == {
        ".lock",
        "config.json",
        "metrics.csv",
        "summary.json",
        "learning_curve.png",
        "agent_seed0.eqx",
        "agent_seed1.eqx",
        "checkpoints",
    }
    assert [c.name for c in (run_dir / "checkpoints").iterdir()] == ["update_0000000300.ckpt"]  # the end
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["config"]["total_timesteps"] == 3000 and saved["num_seeds"] == 2
    rows = list(csv.DictReader(open(run_dir / "metrics.csv")))
    # 300 updates of 10 envs, a row every 60 updates: 5 rows per seed, per update not per step.
    assert len(rows) == 10
    assert [int(r["env_steps"]) for r in rows[:5]] == [600, 1200, 1800, 2400, 3000]
    assert {r["seed"] for r in rows} == {"0", "1"}
    assert (run_dir / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((run_dir / "summary.json").read_text(), parse_constant=_no_constant)
    assert summary["env_steps_per_second"] > 0
    assert summary["status"] == "finished" and summary["updates_done"] == 300
    assert len(summary["final_return_per_seed"]) == 2
    # Evaluated during training every 30 updates (10 times by default): each row of 60, greedy only.
    evaluated = [int(r["env_steps"]) for r in rows[:5] if r["eval_return"] != "nan"]
    assert evaluated == [600, 1200, 1800, 2400, 3000] and "eval_return_sampled" not in rows[0]
    assert summary["final_eval_env_steps"] == 3000 and summary["final_eval_episodes"] == 16
    assert summary["final_eval_return_per_seed"] == [float(r["eval_return"]) for r in rows[4::5]]
    metrics = files.read_metrics_csv(run_dir / "metrics.csv")
    np.testing.assert_allclose(
        np.mean(summary["final_return_per_seed"]), np.nanmean(metrics["episode_return"][:, -1]), rtol=1e-5
    )


def test_saved_agents_load_and_act(run_dir):
    first, second = runs.load_agent(run_dir, seed=0), runs.load_agent(run_dir, seed=1)
    assert isinstance(first, dqn.QNetwork)
    obs = jnp.array([0.01, -0.02, 0.03, 0.0])
    assert first(obs).shape == (2,)
    assert not np.allclose(first(obs), second(obs))  # two different seeds were saved
    assert int(dqn.greedy_action(first, obs)) in (0, 1)
    with pytest.raises(FileNotFoundError, match="seeds 0..1"):
        runs.load_agent(run_dir, seed=2)


def test_agent_saved_in_the_old_layer_order_gets_a_clear_error(run_dir, tmp_path):
    old_dir = tmp_path / "old-run"
    shutil.copytree(run_dir, old_dir)
    network = runs.load_agent(run_dir)
    kernel_first = eqx.tree_at(lambda n: n.layers, network, tuple((d.kernel, d.bias) for d in network.layers))
    eqx.tree_serialise_leaves(old_dir / "agent_seed0.eqx", (kernel_first, None))
    with pytest.raises(ValueError, match=r"\(kernel, bias\)"):
        runs.load_agent(old_dir)


def test_eval_command(run_dir, capsys):
    assert cli.main(["eval", str(run_dir), "--episodes", "3"]) == 0
    assert "greedy return" in capsys.readouterr().out
    written = json.loads((run_dir / "eval_greedy.json").read_text())
    assert written["episodes_per_seed"] == 3 and len(written["return_per_seed"]) == 2
    assert cli.main(["eval", str(run_dir), "--sample"]) == 2
    assert "dqn has no stochastic policy" in capsys.readouterr().out


def test_existing_run_folder_is_never_overwritten(run_dir, capsys):
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    assert cli.main(["train", "dqn", "--run-dir", str(run_dir), *TINY]) == 2
    assert "already exists" in capsys.readouterr().out
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--env", "Cartpole-v1"], "Did you mean CartPole-v1"),
        (["--batch-size", "512", "--buffer-size", "256"], "larger than buffer_size"),
        (["--num-seeds", "0"], "num_seeds must be positive"),
        (["--learning-rate", "-0.1"], "learning_rate must be positive"),
        (["--learning-rate", "inf"], "learning_rate must be finite, got inf"),
        (
            ["--max-episode-steps", "100000000000"],
            "max_episode_steps (100000000000) is past 2,147,483,647",
        ),
        (["--seed", "100000000000000000000000"], "seed (100000000000000000000000) is past"),
        (["--total-timesteps", "3000000000"], "total_timesteps (3000000000) is past"),
        (["--env", "Pendulum-v1"], "Pendulum-v1 has continuous actions"),
        (
            ["--chunk-rows", "0", "--keep-checkpoints", "0"],
            "chunk_rows must be positive, got 0; keep_checkpoints",
        ),
        (["--config", "/nonexistent/config.json"], "cannot read the config file /nonexistent/config.json"),
        (["--preset", "fast"], "unknown preset 'fast' for DQNConfig (presets: purejaxrl)"),
        (
            ["--preset", "purejaxrl", "--config", "c.json"],
            "--config and --preset both set the starting config",
        ),
        # 1000 replay buffers of 1e8 transitions: about 3.7 TiB; 2e9 evaluation episodes x 1000 seeds.
        (
            ["--buffer-size", "100000000", "--num-seeds", "1000"],
            "needs at least 7.5 TiB (training state 3.7 TiB",
        ),
        (["--eval-episodes", "2000000000", "--num-seeds", "1000"], "evaluation environments 80.0 TiB"),
    ],
)
def test_bad_input_is_reported_and_nothing_is_written(args, message, tmp_path, capsys, no_compile):
    target = tmp_path / "never"
    assert cli.main(["train", "dqn", "--run-dir", str(target), *args]) == 2
    assert message in capsys.readouterr().out
    assert not target.exists()


def test_the_purejaxrl_preset_is_the_reference_dqn_and_flags_go_on_top():
    options, config = cli.parse_train_flags(
        ["--preset", "purejaxrl", "--tau", "0.5"],
        "dqn",
        (RunOptions(), cli.base_config(dqn.DQNConfig, ["--preset", "purejaxrl"])),
    )
    assert options.preset == "purejaxrl"
    assert config == dqn.DQNConfig(learning_rate=2.5e-4, double_dqn=False, tau=0.5)
    assert dqn.DQNConfig().double_dqn and dqn.DQNConfig().learning_rate == 1.25e-4


def test_usage_errors(capsys):
    assert cli.main([]) == 2
    assert cli.main(["train", "sarsa"]) == 2
    assert "train needs an algorithm" in capsys.readouterr().out
    assert cli.main(["envs"]) == 0
    assert "ActionReward-probe" in capsys.readouterr().out


@pytest.mark.slow
def test_linen_run_saves_a_loadable_agent(tmp_path):
    run_dir = tmp_path / "linen"
    assert cli.main(["train", "dqn", "--linen", "--run-dir", str(run_dir), *TINY]) == 0
    network = runs.load_agent(run_dir)  # a LinenNetwork, called like the Equinox QNetwork
    assert set(network.variables["params"]) == {"Dense_0", "Dense_1", "Dense_2"}
    assert network(jnp.zeros(4)).shape == (2,)
    assert json.loads((run_dir / "config.json").read_text())["linen"] is True


PPO_TINY = [
    "--total-timesteps",
    "4096",
    "--num-steps",
    "64",
    "--log-interval",
    "4",
    "--hidden-sizes",
    "16",
    "16",
]


@pytest.mark.slow
def test_ppo_trains_saves_loads_and_evaluates(tmp_path, capsys):
    run_dir = tmp_path / "ppo"
    assert cli.main(["train", "ppo", "--num-seeds", "2", "--run-dir", str(run_dir), *PPO_TINY]) == 0
    rows = list(csv.DictReader(open(run_dir / "metrics.csv")))
    # 4096 steps = 16 updates of 4 envs x 64 steps, a row every 4 updates: 4 rows per seed.
    assert [int(r["env_steps"]) for r in rows[:4]] == [1024, 2048, 3072, 4096]
    assert {"episode_return", "entropy", "approx_kl", "clip_fraction", "value_loss"} <= set(rows[0])
    network = runs.load_agent(run_dir, seed=1)
    assert isinstance(network, heads.ActorCritic)
    assert int(heads.greedy_action(network, jnp.zeros(4))) in (0, 1)
    capsys.readouterr()
    assert cli.main(["eval", str(run_dir), "--episodes", "2"]) == 0
    assert "seed 1: greedy return" in capsys.readouterr().out
    assert cli.main(["eval", str(run_dir), "--episodes", "2", "--sample"]) == 0
    assert "seed 1: sampled-policy return" in capsys.readouterr().out


@pytest.mark.slow
def test_ppo_linen_run_saves_a_loadable_agent(tmp_path):
    run_dir = tmp_path / "ppo-linen"
    assert cli.main(["train", "ppo", "--linen", "--run-dir", str(run_dir), *PPO_TINY]) == 0
    assert set(runs.load_agent(run_dir).variables["params"]) == {
        "actor_0",
        "actor_1",
        "actor_head",
        "critic_0",
        "critic_1",
        "critic_head",
    }


def test_ppo_sizes_that_do_not_divide_are_rejected(tmp_path, capsys, no_compile):
    target = tmp_path / "never"
    assert cli.main(["train", "ppo", "--run-dir", str(target), "--num-minibatches", "5"]) == 2
    assert "num_minibatches (5) does not divide" in capsys.readouterr().out
    assert not target.exists()


@pytest.mark.slow
def test_ppo_continuous_saves_normalisation_statistics_with_the_agent(tmp_path, capsys):
    run_dir = tmp_path / "pendulum"
    args = [
        "train",
        "ppo_continuous",
        "--env",
        "Pendulum-v1",
        "--num-seeds",
        "2",
        "--run-dir",
        str(run_dir),
        "--total-timesteps",
        "8192",
        "--num-envs",
        "16",
        "--num-steps",
        "32",
        "--num-minibatches",
        "4",
        "--hidden-sizes",
        "16",
        "16",
        "--log-interval",
        "4",
    ]
    assert cli.main(args) == 0
    network, obs_stats = runs.load_agent_and_obs_stats(run_dir, seed=1)
    assert network.log_std.shape == (1,)
    assert obs_stats.mean.shape == (3,) and float(obs_stats.count) > 8000  # all training obs
    first_stats = runs.load_agent_and_obs_stats(run_dir, seed=0)[1]
    assert not np.allclose(first_stats.mean, obs_stats.mean)  # each seed keeps its own
    capsys.readouterr()
    assert cli.main(["eval", str(run_dir), "--episodes", "2"]) == 0
    assert "seed 1: greedy return" in capsys.readouterr().out


RNN_TINY = [
    "--env",
    "MemoryChain-bsuite",
    "--total-timesteps",
    "2048",
    "--num-steps",
    "32",
    "--log-interval",
    "4",
    "--encoder-sizes",
    "16",
    "--hidden-sizes",
    "16",
]


@pytest.mark.slow
def test_recurrent_ppo_trains_and_evaluates_with_its_memory(tmp_path, capsys):
    from pureeqxrl import ppo_rnn
    from pureeqxrl.recurrent import S5

    run_dir = tmp_path / "rnn"
    assert cli.main(["train", "ppo_rnn", "--num-seeds", "2", "--run-dir", str(run_dir), *RNN_TINY]) == 0
    network = runs.load_agent(run_dir, seed=1)
    assert isinstance(network, ppo_rnn.RecurrentActorCritic)
    hidden, policy, value = network.step(network.initial_hidden(), jnp.zeros(3), jnp.array(True))
    assert hidden.shape == (16,) and policy.logits.shape == (2,) and value.shape == ()
    capsys.readouterr()
    assert cli.main(["eval", str(run_dir), "--episodes", "2", "--sample"]) == 0
    assert "seed 1: sampled-policy return" in capsys.readouterr().out

    s5_dir = tmp_path / "s5"
    assert (
        cli.main(
            [
                "train",
                "ppo_s5",
                "--run-dir",
                str(s5_dir),
                *RNN_TINY,
                "--s5-layers",
                "1",
                "--s5-state-size",
                "4",
                "--eval-interval",
                "0",  # a smaller program to compile; the GRU run above evaluates in training
            ]
        )
        == 0
    )
    assert isinstance(runs.load_agent(s5_dir).core, S5)
    assert cli.main(["eval", str(s5_dir), "--episodes", "2"]) == 0

    linen_dir = tmp_path / "rnn-linen"
    args = ["train", "ppo_rnn", "--linen", "--run-dir", str(linen_dir), *RNN_TINY, "--eval-interval", "0"]
    assert cli.main(args) == 0
    cell = runs.load_agent(linen_dir).variables["params"]["gru"]["cell"]
    assert set(cell) == {"ir", "iz", "in", "hr", "hz", "hn"}
    assert cli.main(["eval", str(linen_dir), "--episodes", "2"]) == 0


def test_recurrent_ppo_rejects_what_it_cannot_run(tmp_path, capsys, no_compile):
    target = tmp_path / "never"
    assert cli.main(["train", "ppo_s5", "--linen", "--run-dir", str(target)]) == 2
    assert "GRU core only" in capsys.readouterr().out
    assert cli.main(["train", "ppo_rnn", "--run-dir", str(target), "--num-envs", "6"]) == 2
    assert "does not divide num_envs" in capsys.readouterr().out
    assert not target.exists()


# LONG RUNS: user mistakes, signals, resume, saved configurations


def test_unusable_run_folders_get_one_line_and_exit_2(tmp_path, capsys, no_compile):
    (tmp_path / "a-file").write_text("")
    for target, message in [
        (tmp_path / "a-file" / "run", "cannot use"),
        (tmp_path / ("x" * 300), "cannot use"),
    ]:
        assert cli.main(["train", "dqn", "--run-dir", str(target)]) == 2
        out = capsys.readouterr().out
        assert message in out and "Traceback" not in out and out.count("\n") <= 3


def test_hand_edited_or_foreign_files_get_one_line_and_exit_2(run_dir, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(run_dir, broken)
    (broken / "agent_seed1.eqx").write_bytes(b"this is not an agent")
    assert cli.main(["eval", str(broken)]) == 2
    assert "agent_seed1.eqx is damaged or not a pureeqxrl agent file" in capsys.readouterr().out
    for text, message in [
        ("{not json", "is not a pureeqxrl config.json (JSONDecodeError"),
        ('{"algorithm": "dqn", "linen": false, "num_seeds": 2, "seed": 0}', "no 'config'"),
        (
            json.dumps({**json.loads((run_dir / "config.json").read_text()), "algorithm": "sarsa"}),
            "unknown algorithm",
        ),
    ]:
        (broken / "config.json").write_text(text)
        assert cli.main(["eval", str(broken)]) == 2
        out = capsys.readouterr().out
        assert message in out and "Traceback" not in out


def test_markup_in_a_path_is_printed_as_it_is(tmp_path, capsys):
    target = tmp_path / "x[bold]y[/]"
    assert cli.main(["train", "dqn", "--run-dir", str(target), "--no-compile-cache", *TINY]) == 0
    out = capsys.readouterr().out.replace("\n", "")
    assert "x[bold]y[/]" in out and (target / "summary.json").exists()


def test_a_saved_config_is_rerun_with_flags_on_top(run_dir, tmp_path):
    target = tmp_path / "again"
    args = ["train", "dqn", "--config", str(run_dir / "config.json"), "--learning-rate", "0.001"]
    assert cli.main([*args, "--run-dir", str(target), "--no-compile-cache"]) == 0
    saved = json.loads((target / "config.json").read_text())["config"]
    original = json.loads((run_dir / "config.json").read_text())["config"]
    assert saved == {**original, "learning_rate": 0.001}


def test_a_yaml_config_file_and_one_of_the_wrong_type(tmp_path, capsys, no_compile):
    path = tmp_path / "config.yaml"
    path.write_text("env: Acrobot-v1\nlearning_rate: 3e-4\nhidden_sizes: [32, 32]\n")
    config = cli.config_from_file(path, dqn.DQNConfig)
    assert config == dqn.DQNConfig(env="Acrobot-v1", learning_rate=3e-4, hidden_sizes=(32, 32))
    path.write_text("learning_rate: fast\n")
    assert cli.main(["train", "dqn", "--config", str(path), "--run-dir", str(tmp_path / "r")]) == 2
    assert f"error: {path}: learning_rate must be float, got 'fast'" in capsys.readouterr().out
    assert not (tmp_path / "r").exists()


def test_a_run_that_finishes_no_episode_writes_strict_json(tmp_path):
    target = tmp_path / "endless"
    args = ["--env", "TimeLimit-probe", "--max-episode-steps", "1000000", "--total-timesteps", "2000"]
    assert cli.main(["train", "dqn", "--run-dir", str(target), "--learning-starts", "100", *args]) == 0
    summary = json.loads((target / "summary.json").read_text(), parse_constant=_no_constant)
    assert summary["final_return_per_seed"] == [None] and summary["final_return_mean"] is None


def _start(tmp_path, *args):
    env = {**os.environ, "COLUMNS": "250", "XDG_CACHE_HOME": str(tmp_path / "cache")}
    return subprocess.Popen(
        [sys.executable, "-m", "pureeqxrl.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


@pytest.mark.slow
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_keeps_the_work_and_the_run_resumes_to_the_end(sig, code, tmp_path, capsys):
    run_dir = tmp_path / "long"
    flags = [
        "--total-timesteps",
        "300000",
        "--log-interval",
        "100",
        "--chunk-rows",
        "1",
        "--hidden-sizes",
        "16",
    ]
    process = _start(
        tmp_path, "train", "dqn", "--run-dir", str(run_dir), "--checkpoint-updates", "100", *flags
    )
    deadline = time.monotonic() + 120
    while not list((run_dir / "checkpoints").glob("*.ckpt")) and time.monotonic() < deadline:
        time.sleep(0.2)
    process.send_signal(sig)
    out, err = process.communicate(timeout=120)
    assert process.returncode == code, (out, err)
    assert "Traceback" not in err and f"pureeqxrl train --resume {run_dir}" in out.replace("\n", "")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted" and 0 < summary["updates_done"] < 30_000
    assert {"metrics.csv", "learning_curve.png", "agent_seed0.eqx"} <= {p.name for p in run_dir.iterdir()}
    stopped_at = runs.read_checkpoint_header(runs.latest_checkpoint(run_dir))["updates_done"]
    assert stopped_at == summary["updates_done"]

    assert cli.main(["train", "--resume", str(run_dir), "--learning-rate", "0.001"]) == 2
    assert "learning_rate (saved 0.000125, given 0.001) would change the run" in capsys.readouterr().out
    assert cli.main(["train", "--resume", str(run_dir), "--no-compile-cache"]) == 0
    assert f"from update {stopped_at}" in capsys.readouterr().out
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["updates_done"] == 30_000
    assert len(files.read_metrics_csv(run_dir / "metrics.csv")["episode_return"][0]) == 300


@pytest.mark.slow
def test_kill_9_loses_only_the_updates_since_the_last_checkpoint(tmp_path, capsys):
    run_dir = tmp_path / "killed"
    flags = "--total-timesteps 200000 --log-interval 100 --chunk-rows 1 --checkpoint-updates 200".split()
    process = _start(tmp_path, "train", "dqn", "--run-dir", str(run_dir), "--hidden-sizes", "16", *flags)
    deadline = time.monotonic() + 120
    while len(list((run_dir / "checkpoints").glob("*.ckpt"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    process.kill()  # SIGKILL: no handler runs, nothing is written after this
    process.communicate(timeout=60)
    saved = runs.read_checkpoint_header(runs.latest_checkpoint(run_dir))["updates_done"]
    assert saved >= 400 and saved % 200 == 0
    # metrics.csv, written chunk by chunk, holds at least the checkpointed rows and reads back.
    assert files.read_metrics_csv(run_dir / "metrics.csv")["episode_return"].shape[1] >= saved // 100
    # As if saved by a process with other cores: the resume says it goes on to float rounding.
    config = json.loads((run_dir / "config.json").read_text())
    assert config["versions"] == runs.compiled_for() | {"pureeqxrl": config["versions"]["pureeqxrl"]}
    config["versions"]["cpu_cores"] = 64
    (run_dir / "config.json").write_text(json.dumps(config))
    assert cli.main(["train", "--resume", str(run_dir)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert f"from update {saved}" in out
    assert (
        f"(it ran with 64 CPU cores, this process has {runs.compiled_for()['cpu_cores']}: the continuation"
        in out
    )
    assert files.read_metrics_csv(run_dir / "metrics.csv")["episode_return"].shape == (1, 200)


@pytest.mark.slow
def test_ctrl_c_while_compiling_exits_cleanly(tmp_path):
    run_dir = tmp_path / "early"
    process = _start(tmp_path, "train", "ppo", "--run-dir", str(run_dir))
    line = ""
    while "seed(s)" not in line:
        line = process.stdout.readline()
        assert line, process.stderr.read()
    process.send_signal(signal.SIGINT)  # while it traces and compiles (seconds, in a cold cache)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 130, (out, err)
    assert "Traceback" not in err and "Segmentation" not in err
    assert "while compiling" in out or "after update" in out
    assert f"pureeqxrl train --resume {run_dir}" in out.replace("\n", "")
