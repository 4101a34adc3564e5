import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pureeqxrl import cli, pqn, registry, runs

PROBE = pqn.PQNConfig(
    total_timesteps=8 * 16 * 120,
    num_envs=8,
    num_steps=16,
    num_minibatches=4,
    update_epochs=2,
    hidden_sizes=(32, 32),
    learning_rate=1e-3,
    anneal_lr=False,
    reward_scale=1.0,
    epsilon_finish=0.2,
    log_interval=20,
)


def _train(config, seeds=2):
    train = jax.jit(jax.vmap(pqn.make_train(config)))
    return train(jax.random.split(jax.random.key(0), seeds))


def _q(result, obs):
    """Q-values of each seed's trained network at one observation: (seeds, actions)."""
    return jax.vmap(lambda net: net(jnp.asarray(obs, jnp.float32)))(result.params)


# Q(LAMBDA) RETURNS


def test_q_lambda_returns_by_hand():
    # One environment, 4 steps: a plain step, a truncation, a plain step, a termination... then the
    # rollout ends on a plain step (bootstrapped from its own next value).
    reward = jnp.array([1.0, 2.0, 3.0, 4.0, 5.0])[:, None]
    next_value = jnp.array([10.0, 20.0, 30.0, 40.0, 50.0])[:, None]
    terminated = jnp.array([False, False, False, True, False])[:, None]
    truncated = jnp.array([False, True, False, False, False])[:, None]
    done = terminated | truncated
    gamma, lam = 0.5, 0.8
    returns = pqn.q_lambda_returns(reward, next_value, terminated, done, gamma, lam)
    g4 = 5.0 + gamma * 50.0  # the rollout's last step: its next value
    g3 = 4.0  # terminated: the reward only
    g2 = 3.0 + gamma * ((1 - lam) * 30.0 + lam * g3)
    g1 = 2.0 + gamma * 20.0  # truncated: the trace stops, bootstrapped from the pre-reset next value
    g0 = 1.0 + gamma * ((1 - lam) * 10.0 + lam * g1)
    np.testing.assert_allclose(returns[:, 0], [g0, g1, g2, g3, g4], rtol=1e-6)


def test_q_lambda_returns_at_lambda_0_and_1():
    key_r, key_v, key_d = jax.random.split(jax.random.key(1), 3)
    reward = jax.random.normal(key_r, (6, 3))
    next_value = jax.random.normal(key_v, (6, 3))
    terminated = jax.random.uniform(key_d, (6, 3)) < 0.2
    done = terminated
    gamma = 0.9
    # lambda 0: one-step Q-learning targets.
    one_step = pqn.q_lambda_returns(reward, next_value, terminated, done, gamma, 0.0)
    np.testing.assert_allclose(one_step, reward + gamma * (1 - terminated) * next_value, rtol=1e-6)
    # lambda 1: discounted rewards to the episode's end, or to the rollout's end plus its bootstrap.
    monte_carlo = pqn.q_lambda_returns(reward, next_value, terminated, done, gamma, 1.0)
    expected = np.zeros((6, 3))
    for env in range(3):
        later = next_value[-1, env]
        for t in reversed(range(6)):
            later = reward[t, env] + gamma * (0.0 if terminated[t, env] else later)
            expected[t, env] = later
    np.testing.assert_allclose(monte_carlo, expected, rtol=1e-5)


# PROBES: values known in closed form


# The next two probes observe 0 at every step: a hidden layer's input is its bias alone, which
# LayerNorm maps to 0, so only the output layer's bias can learn the value, one Adam step at a time.
CONSTANT_OBS = dataclasses.replace(PROBE, learning_rate=1e-2)


def test_constant_reward_probe():
    result = _train(dataclasses.replace(CONSTANT_OBS, env="ConstantReward-probe"))
    np.testing.assert_allclose(_q(result, [0.0]), 1.0, atol=0.05)


def test_truncation_is_bootstrapped_and_termination_is_not():
    # Reward 1 forever, truncated after every step: the value is 1 / (1 - gamma) = 2, not 1.
    result = _train(dataclasses.replace(CONSTANT_OBS, env="TimeLimit-probe", gamma=0.5))
    np.testing.assert_allclose(_q(result, [0.0]), 2.0, atol=0.1)


def test_action_reward_probe_learns_values_and_the_greedy_policy():
    result = _train(dataclasses.replace(PROBE, env="ActionReward-probe"))
    np.testing.assert_allclose(_q(result, [1.0]), [[0.0, 1.0]] * 2, atol=0.1)
    np.testing.assert_allclose(_q(result, [-1.0]), [[1.0, 0.0]] * 2, atol=0.1)
    np.testing.assert_array_equal(result.metrics["eval_return"][:, -1], [1.0, 1.0])


# CONFIG AND COMMAND LINE


def test_bad_config_is_refused_before_compiling(no_compile):
    config = dataclasses.replace(PROBE, num_minibatches=5, q_lambda=1.5, epsilon_anneal_fraction=-0.1)
    with pytest.raises(ValueError) as error:
        pqn.make_train(config)
    message = str(error.value)
    assert message.startswith("Invalid PQNConfig: ")
    assert "q_lambda must be in [0, 1], got 1.5" in message
    assert "epsilon_anneal_fraction must be in [0, 1], got -0.1" in message
    assert "num_minibatches (5) does not divide num_envs * num_steps (8 * 16 = 128)" in message
    with pytest.raises(ValueError, match="PQN needs discrete actions"):
        pqn.make_train(dataclasses.replace(PROBE, env="Pendulum-v1"))


def test_pqn_has_no_linen_twin(tmp_path, capsys):
    assert cli.main(["train", "pqn", "--linen", "--run-dir", str(tmp_path / "no")]) == 2
    assert "pqn has no Flax Linen version" in capsys.readouterr().out
    assert not (tmp_path / "no").exists()
    assert registry.get("pqn").config_cls is pqn.PQNConfig


@pytest.mark.slow
def test_cartpole_reaches_475_with_the_default_config_in_half_its_steps():
    result = _train(pqn.PQNConfig(total_timesteps=250_000))  # purejaxql's CartPole settings, 2.5e5 steps
    # The greedy evaluation at the end of training, 16 episodes per seed.
    np.testing.assert_array_less(474.9, result.metrics["eval_return"][:, -1])


def test_train_and_eval_through_the_command_line(tmp_path, capsys):
    run_dir = tmp_path / "pqn"
    flags = ["--env", "CartPole-v1", "--total-timesteps", "8192", "--num-envs", "8", "--num-steps", "16"]
    assert cli.main(["train", "pqn", *flags, "--num-seeds", "2", "--run-dir", str(run_dir)]) == 0
    assert "final return" in capsys.readouterr().out
    network = runs.load_agent(run_dir, seed=1)
    assert isinstance(network, pqn.QNetwork) and network(jnp.zeros(4)).shape == (2,)
    assert cli.main(["eval", str(run_dir), "--episodes", "2"]) == 0
    assert cli.main(["eval", str(run_dir), "--sample"]) == 2
    assert "pqn has no stochastic policy" in capsys.readouterr().out


# THE CNN TORSO (MinAtar, navix grids)


def test_minatar_preset_is_purejaxqls_pqn_minatar(tmp_path, capsys):
    preset = pqn.PQNConfig(**pqn.PQNConfig.PRESETS["minatar"])
    assert (preset.num_envs, preset.num_steps, preset.num_minibatches, preset.update_epochs) == (
        128,
        32,
        32,
        2,
    )
    assert (preset.learning_rate, preset.q_lambda, preset.epsilon_finish, preset.total_timesteps) == (
        5e-4,
        0.65,
        0.05,
        10_000_000,
    )
    # The rest of purejaxql's pqn_minatar.yaml, and its network's input scaling and width.
    assert (preset.epsilon_start, preset.epsilon_anneal_fraction, preset.gamma, preset.max_grad_norm) == (
        1.0,
        0.1,
        0.99,
        10.0,
    )
    assert preset.anneal_lr and preset.layer_norm and preset.reward_scale == 1.0
    assert (preset.torso, preset.conv_channels, preset.hidden_sizes, preset.obs_scale) == (
        "cnn",
        16,
        (128,),
        1 / 255,
    )
    network = pqn.q_network(preset, pqn.make_env(preset.env, 1), jax.random.key(0))
    assert isinstance(network, pqn.CNNQNetwork)
    assert network(jnp.zeros((10, 10, 4))).shape == (3,)  # Breakout-MinAtar: 10x10x4 grid, 3 actions
    # The command line takes the preset, and its fields can still be overridden.
    run_dir = tmp_path / "minatar"
    small = "--total-timesteps 2048 --num-envs 8 --num-steps 16 --num-minibatches 4 --log-interval 4".split()
    assert cli.main(["train", "pqn", "--preset", "minatar", *small, "--run-dir", str(run_dir)]) == 0
    capsys.readouterr()
    agent = runs.load_agent(run_dir)
    assert isinstance(agent, pqn.CNNQNetwork) and agent.torso.conv.kernel.shape == (3, 3, 4, 16)


def test_cnn_torso_on_flat_observations_is_refused_before_compiling(no_compile):
    with pytest.raises(ValueError, match="torso 'cnn' needs \\(height, width, channels\\) observations"):
        pqn.make_train(dataclasses.replace(PROBE, env="CartPole-v1", torso="cnn"))
    with pytest.raises(ValueError, match="torso must be 'mlp' or 'cnn', got 'resnet'"):
        pqn.make_train(dataclasses.replace(PROBE, torso="resnet"))


def test_cnn_torso_takes_navix_grids(key):
    pytest.importorskip("navix", reason="needs the navix extra")
    config = dataclasses.replace(PROBE, env="Navix-Empty-5x5-v0", torso="cnn", hidden_sizes=(32,))
    env = pqn.make_env(config.env, 2)
    network = pqn.q_network(config, env, key)
    obs, _ = env.reset(key)  # navix's symbolic 5x5x3 grids
    assert jax.vmap(network)(obs).shape == (2, env.num_actions)
    assert network.torso.dense[0].kernel.shape == (3 * 3 * 16, 32)
