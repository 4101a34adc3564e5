import json

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pureeqxrl import dqn, ppo, runs
from pureeqxrl.envs import make_env
from pureeqxrl.heads import actor_critic
from pureeqxrl.normalize import RunningStats


def test_run_folders_are_new_or_empty(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first = runs.prepare_run_dir(None, "dqn", "CartPole-v1")
    second = runs.prepare_run_dir(None, "dqn", "CartPole-v1")  # same second: a suffix, not a reuse
    assert first != second and first.parent.name == "runs" and second.is_dir()
    (first / "config.json").write_text("{}")
    with pytest.raises(FileExistsError, match="already exists"):
        runs.prepare_run_dir(first, "dqn", "CartPole-v1")
    (tmp_path / "a-file").write_text("")
    with pytest.raises(FileExistsError):
        runs.prepare_run_dir(tmp_path / "a-file", "dqn", "CartPole-v1")
    assert runs.prepare_run_dir(second, "dqn", "CartPole-v1") == second  # empty: fine


def test_a_resume_names_what_it_compiles_for_otherwise():
    # XLA:CPU compiles for the cores it may use: measured, continuous PPO's seed 0 (262,144 steps)
    # ends at -205.82 on 2 cores and -199.79 on either one alone. Same arithmetic, nothing named.
    saved = {"versions": {"pureeqxrl": "0.1.0", "jax": "0.10.2", "backend": "cpu", "cpu_cores": 2}}
    now = {"jax": "0.10.2", "backend": "cpu", "cpu_cores": 2}
    assert runs.compiled_otherwise(saved, now) == []
    assert runs.compiled_otherwise(saved, now | {"cpu_cores": 16, "jax": "0.11.0"}) == [
        "under jax 0.10.2, this process has 0.11.0",
        "with 2 CPU cores, this process has 16",
    ]
    assert runs.compiled_otherwise(saved, {"jax": "0.10.2", "backend": "gpu"}) == [
        "on cpu, this process on gpu"
    ]
    # A run saved before the cores were recorded (or on a GPU) is not taken to differ in them.
    assert (
        runs.compiled_otherwise({"versions": {"jax": "0.10.2", "backend": "cpu"}}, now | {"cpu_cores": 8})
        == []
    )
    assert (
        runs.compiled_otherwise({}, now) == [] and runs.compiled_otherwise({"versions": "edited"}, now) == []
    )
    written = runs.compiled_for()
    assert written["jax"] == jax.__version__ and written["backend"] == jax.default_backend()
    assert ("cpu_cores" in written) == (jax.default_backend() == "cpu")


def test_configs_come_back_from_json_with_renamed_fields_and_tuples():
    config = runs.config_from_dict(dqn.DQNConfig, {"lr_linear_decay": True, "hidden_sizes": [32, 16]})
    assert config.anneal_lr is True and config.hidden_sizes == (32, 16)
    with pytest.raises(ValueError, match="DQNConfig has no field clip_eps"):
        runs.config_from_dict(dqn.DQNConfig, {"clip_eps": 0.2})


def test_agent_and_its_observation_statistics_round_trip(tmp_path, key):
    config = ppo.PPOContinuousConfig(hidden_sizes=(8, 8))
    runs.write_config(tmp_path, "ppo_continuous", config, linen=False, num_seeds=1, seed=0)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["versions"]["pureeqxrl"] and saved["config"]["hidden_sizes"] == [8, 8]
    network = actor_critic(config, make_env(config.env, 1), key)
    stats = RunningStats.empty((3,)).update(jax.random.normal(key, (16, 3)))
    runs.save_agent(tmp_path / "agent_seed0.eqx", network, stats)
    loaded, loaded_stats = runs.load_agent_and_obs_stats(tmp_path, seed=0)
    assert jax.tree.all(jax.tree.map(np.array_equal, (loaded, loaded_stats), (network, stats)))
    with pytest.raises(FileNotFoundError, match=r"seeds 0..0"):
        runs.load_agent(tmp_path, seed=1)


def test_a_run_written_by_version_0_1_loads(tmp_path, key):
    # 0.1.0 wrote DQN's `anneal_lr` as `lr_linear_decay` and no package version; its MLP layers
    # were (bias, kernel) tuples, the same leaves as today's Dense layers.
    old_config = dqn.DQNConfig().to_dict()
    old_config["lr_linear_decay"] = old_config.pop("anneal_lr")
    (tmp_path / "config.json").write_text(
        json.dumps(
            {
                "algorithm": "dqn",
                "linen": False,
                "num_seeds": 1,
                "seed": 0,
                "config": old_config,
                "versions": {"jax": "0.10.2", "backend": "cpu"},
            }
        )
    )
    network = dqn.q_network(dqn.DQNConfig(), make_env("CartPole-v1", 1), key)
    as_tuples = tuple((layer.bias, layer.kernel) for layer in network.layers)
    eqx.tree_serialise_leaves(tmp_path / "agent_seed0.eqx", (as_tuples, None))
    loaded = runs.load_agent(tmp_path)
    np.testing.assert_array_equal(loaded(jnp.ones(4)), network(jnp.ones(4)))
