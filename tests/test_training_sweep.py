import dataclasses
import json
import signal

import jax
import numpy as np
import pytest

from pureeqxrl import cli, dqn, ppo, runs
from pureeqxrl.ppo import PPOConfig
from pureeqxrl.training import loggers, sweep
from pureeqxrl.training.chunks import estimate_bytes

PPO_TINY = PPOConfig(total_timesteps=4 * 128 * 12, log_interval=4, hidden_sizes=(16, 16))
DQN_TINY = dqn.DQNConfig(total_timesteps=3000, learning_starts=500, log_interval=50, hidden_sizes=(16, 16))


def test_sweepable_fields_are_the_floats():
    fields = sweep.sweepable_fields(PPOConfig)
    for name in ("learning_rate", "gamma", "gae_lambda", "clip_eps", "ent_coef", "vf_coef", "max_grad_norm"):
        assert name in fields
    assert "dpo_alpha" in fields and "dpo_beta" in fields
    for name in ("num_envs", "num_steps", "update_epochs", "hidden_sizes", "anneal_lr", "env"):
        assert name not in fields
    dqn_fields = sweep.sweepable_fields(dqn.DQNConfig)
    assert {"tau", "epsilon_start", "epsilon_finish", "max_grad_norm", "learning_rate", "gamma"} <= set(
        dqn_fields
    )
    assert "buffer_size" not in dqn_fields and "double_dqn" not in dqn_fields


def test_grid_and_random_configurations():
    grid = sweep.grid({"learning_rate": [1e-4, 1e-3], "ent_coef": [0, 0.01, 0.1]})
    assert len(grid) == 6 and grid[1] == {"learning_rate": 1e-4, "ent_coef": 0.01}
    drawn = sweep.random_configurations(
        {"learning_rate": (1e-5, 1e-2), "ent_coef": (0.0, 0.1)}, 2000, log_uniform=["learning_rate"], seed=3
    )
    rates = np.array([c["learning_rate"] for c in drawn])
    assert rates.min() >= 1e-5 and rates.max() <= 1e-2
    # Log-uniform: each decade holds about a third of the draws (uniform would put 90% in the last).
    assert 0.28 < np.mean(rates < 1e-4) < 0.39 and 0.28 < np.mean(rates > 1e-3) < 0.39
    assert drawn == sweep.random_configurations(
        {"learning_rate": (1e-5, 1e-2), "ent_coef": (0.0, 0.1)}, 2000, log_uniform=["learning_rate"], seed=3
    )
    with pytest.raises(ValueError, match="log-uniform but its range"):
        sweep.random_configurations({"ent_coef": (0.0, 0.1)}, 3, log_uniform=["ent_coef"])


def test_a_bad_value_anywhere_is_rejected_before_tracing(no_compile):
    configurations = sweep.grid({"learning_rate": [1e-3, -0.5], "gae_lambda": [0.9, 1.5]})
    with pytest.raises(ValueError) as error:
        sweep.train_configurations(
            ppo.make_learner, PPO_TINY, configurations, jax.random.split(jax.random.key(0), 2)
        )
    message = str(error.value)
    # The config's own messages, once per bad configuration (3 of the 4), naming it.
    assert (
        "configuration 1 (learning_rate=0.001, gae_lambda=1.5): Invalid PPOConfig: gae_lambda must be in [0, 1]"
        in message
    )
    assert (
        "configuration 2 (learning_rate=-0.5, gae_lambda=0.9): Invalid PPOConfig: learning_rate must be positive"
        in message
    )
    assert "configuration 3" in message and "configuration 0" not in message
    with pytest.raises(ValueError, match="cannot sweep num_envs in one program"):
        sweep.check_configurations(PPO_TINY, [{"num_envs": 8.0}])
    with pytest.raises(ValueError, match="learning_rate must be finite"):
        sweep.check_configurations(PPO_TINY, [{"learning_rate": float("nan")}])


def _same_as_single_runs(module, config, configurations, keys, exact_metrics):
    result = sweep.train_configurations(module.make_learner, config, configurations, keys)
    assert result.metrics["episode_return"].shape[:2] == (len(configurations), len(keys))
    # The last configuration against its own run (each is a compile); the others differ from it below.
    for index, values in list(enumerate(configurations))[-1:]:
        single = jax.jit(jax.vmap(module.make_train(dataclasses.replace(config, **values))))(keys)
        swept = jax.tree.map(lambda x: x[index], result)
        for ours, theirs in zip(jax.tree.leaves(swept.params), jax.tree.leaves(single.params), strict=True):
            np.testing.assert_array_equal(ours, theirs)  # bit for bit
        for name, theirs in single.metrics.items():
            if exact_metrics or name != "epsilon":
                np.testing.assert_array_equal(swept.metrics[name], theirs, err_msg=name)
            else:  # epsilon_finish as a traced float32 vs a folded constant: one float32 ulp
                np.testing.assert_allclose(swept.metrics[name], theirs, rtol=1e-6, err_msg=name)
    # The configurations really differ (a sweep that trained the last one with another's values
    # fails above, one that trained another with the last one's values fails here).
    finals = np.asarray(result.metrics["loss"]).reshape(len(configurations), -1)
    assert len({tuple(row) for row in finals.round(6)}) == len(configurations)


def test_a_swept_ppo_run_is_each_configuration_run_alone_bit_for_bit():
    configurations = [{"learning_rate": 1e-3, "ent_coef": 0.0}, {"learning_rate": 2.5e-4, "ent_coef": 0.05}]
    _same_as_single_runs(ppo, PPO_TINY, configurations, jax.random.split(jax.random.key(1), 2), True)


def test_a_swept_dqn_run_is_each_configuration_run_alone():
    configurations = [
        {"learning_rate": 1e-3, "tau": 1.0, "epsilon_finish": 0.1},
        {"learning_rate": 2.5e-4, "tau": 0.5, "epsilon_finish": 0.1},
    ]
    _same_as_single_runs(dqn, DQN_TINY, configurations, jax.random.split(jax.random.key(2), 2), False)


def test_groups_and_flat_layout():
    assert sweep.group_configurations(5, 2) == [[0, 1], [2, 3], [4]]
    keys = jax.random.split(jax.random.key(0), 3)
    starts = sweep.flat_starts(sweep.grid({"gamma": [0.9, 0.99]}), keys)
    np.testing.assert_allclose(starts.hyperparameters["gamma"], [0.9] * 3 + [0.99] * 3)
    np.testing.assert_array_equal(jax.random.key_data(starts.key[4]), jax.random.key_data(keys[1]))


# THE CLI: `pureeqxrl sweep`


PPO_FLAGS = [
    "--total-timesteps",
    "6144",
    "--log-interval",
    "4",
    "--hidden-sizes",
    "16",
    "16",
    "--num-seeds",
    "2",
]


@pytest.mark.slow
def test_sweep_folder_ranks_configurations_and_its_best_config_reruns(tmp_path, capsys, monkeypatch):
    sweep_dir = tmp_path / "sweep"
    args = ["sweep", "ppo", *PPO_FLAGS, "--learning-rate", "3e-3", "1e-4", "--ent-coef", "0", "0.01"]
    args += ["--chunk-rows", "1"]  # 3 rows, 3 chunks per group
    assert cli.main([*args, "--sweep-dir", str(sweep_dir), "--max-group-configs", "3"]) == 0
    out = capsys.readouterr().out
    assert "2 programs of up to 3 configurations" in out and "| rank | learning_rate | ent_coef |" in out
    names = {p.name for p in sweep_dir.iterdir()}
    assert names == {
        ".lock",
        "sweep.json",
        "results.json",
        "table.md",
        "learning_curves.png",
        "best_config.json",
        "group_0",
        "group_1",
    }
    results = json.loads((sweep_dir / "results.json").read_text())
    assert [entry["rank"] for entry in results] == [1, 2, 3, 4]
    iqms = [entry["final_eval_return"]["iqm"] for entry in results]
    assert iqms == sorted(iqms, reverse=True) and results[0]["ranked_by"] == "final_eval_return"
    assert {tuple(e["values"].values()) for e in results} == {
        (3e-3, 0.0),
        (3e-3, 0.01),
        (1e-4, 0.0),
        (1e-4, 0.01),
    }
    # 3e-3 learns CartPole faster than 1e-4 within 6144 steps.
    assert results[0]["values"]["learning_rate"] == 3e-3

    # The best configuration, trained alone from best_config.json, gives the same numbers.
    best = results[0]
    rerun = tmp_path / "best"
    assert (
        cli.main(
            [
                "train",
                "ppo",
                "--config",
                str(sweep_dir / "best_config.json"),
                "--num-seeds",
                "2",
                "--chunk-rows",
                "1",
                "--run-dir",
                str(rerun),
            ]
        )
        == 0
    )
    summary = json.loads((rerun / "summary.json").read_text())
    assert summary["final_return_per_seed"] == best["final_return_per_seed"]
    assert summary["final_eval_return_per_seed"] == best["final_eval_return_per_seed"]

    # A group's folder is a run folder (`pureeqxrl eval` reads it), but resumes only with its sweep.
    assert len(runs.evaluate_run(sweep_dir / "group_1", episodes=2)) == 2  # 1 configuration x 2 seeds
    assert cli.main(["train", "--resume", str(sweep_dir / "group_0")]) == 2
    assert "pureeqxrl sweep --resume" in capsys.readouterr().out

    # Ctrl-C after the first chunk stops the same sweep in its first group, at a checkpoint, with
    # its second group not started. `sweep --resume` goes on from the checkpoint, says that the
    # process runs on other cores than the one that saved it (edited in: the arithmetic is the
    # same here), trains the second group, and ends with the uninterrupted sweep's results.
    log = loggers.Loggers.log

    def log_then_stop(self, rows, first_row):
        log(self, rows, first_row)
        signal.raise_signal(signal.SIGINT)

    stopped = tmp_path / "stopped"
    with monkeypatch.context() as patch:
        patch.setattr(loggers.Loggers, "log", log_then_stop)
        assert cli.main([*args, "--sweep-dir", str(stopped), "--max-group-configs", "3"]) == 130
    assert f"pureeqxrl sweep --resume {stopped}" in capsys.readouterr().out
    assert not (stopped / "group_1").exists()
    saved = runs.read_checkpoint_header(runs.latest_checkpoint(stopped / "group_0"))["updates_done"]
    assert saved == 4  # one row of 4 updates
    config = json.loads((stopped / "group_0" / "config.json").read_text())
    config["versions"]["cpu_cores"] = 64
    (stopped / "group_0" / "config.json").write_text(json.dumps(config))
    assert cli.main(["sweep", "--resume", str(stopped)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "group_0: resuming from update 4 (it ran with 64 CPU cores, this process has" in out
    assert "float rounding, not bit for bit" in out and "group_1: resuming" not in out
    resumed = json.loads((stopped / "results.json").read_text())
    assert [e["final_return_per_seed"] for e in resumed] == [e["final_return_per_seed"] for e in results]
    assert (stopped / "table.md").read_text() == (sweep_dir / "table.md").read_text()


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--learning-rate", "1e-3", "-1"],
            "configuration 1 (learning_rate=-1): Invalid PPOConfig: learning_rate must be positive",
        ),
        ([], "a sweep needs values for at least one of --learning-rate"),
        (
            ["--learning-rate", "1e-3", "--random", "4"],
            "--random takes LOW HIGH per swept flag: --learning-rate has 1",
        ),
        (["--ent-coef", "0", "0.1", "--log-uniform", "ent-coef"], "--log-uniform needs --random N"),
        (
            ["--ent-coef", "0", "0.1", "--random", "3", "--log-uniform", "ent-coef"],
            "log-uniform but its range",
        ),
        (["--learning-rate", "1e-3", "--num-seeds", "0"], "num_seeds must be positive"),
        (
            ["--learning-rate", "1e-3", "--seed", "100000000000000000000000"],
            "seed (100000000000000000000000) is past",
        ),
        (["--learning-rate", "1e-3", "--num-minibatches", "3"], "num_minibatches (3) does not divide"),
    ],
)
def test_bad_sweeps_get_one_line_and_no_folder(args, message, tmp_path, capsys, no_compile):
    target = tmp_path / "never"
    assert cli.main(["sweep", "ppo", "--sweep-dir", str(target), *args]) == 2
    assert message in capsys.readouterr().out
    assert not target.exists()


def test_a_sweep_that_does_not_fit_runs_in_groups_and_says_so(monkeypatch, capsys, no_compile):
    from rich.console import Console

    learner = ppo.make_learner(PPO_TINY)
    options = sweep.SweepOptions(num_seeds=4)
    per_configuration = sum(estimate_bytes(learner, 4).values())
    # Room for 3 configurations in half the memory: 10 configurations run as 3 + 3 + 3 + 1 (one
    # configuration is still checked against the device's real memory, where it fits).
    monkeypatch.setattr(
        sweep.parallel, "memory_limit", lambda: (2 * 3 * per_configuration + 1, "the cpu device has")
    )
    groups = sweep.sweep_groups(learner, PPO_TINY, options, 10, Console(soft_wrap=True))
    assert groups == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]
    assert "10 configurations x 4 seeds need about" in capsys.readouterr().out
    # --max-group-configs caps a group further.
    capped = sweep.sweep_groups(
        learner, PPO_TINY, dataclasses.replace(options, max_group_configs=2), 5, Console()
    )
    assert capped == [[0, 1], [2, 3], [4]]
