import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pureeqxrl import heads, ppo
from pureeqxrl.envs import make_env
from pureeqxrl.evaluate import evaluate
from pureeqxrl.loop import final_return

PROBE = ppo.PPOConfig(
    total_timesteps=16_384,
    num_envs=8,
    num_steps=16,
    learning_rate=3e-3,
    hidden_sizes=(32, 32),
    log_interval=16,
)


def _train(config, seeds=2, key=0):
    train = jax.jit(jax.vmap(ppo.make_train(config)))
    return train(jax.random.split(jax.random.key(key), seeds))


def _policy_and_value(result, obs):
    """Action probabilities and values of each seed's trained network at one observation."""
    logits, value = jax.vmap(lambda net: net(jnp.asarray(obs, jnp.float32)))(result.params)
    return jax.nn.softmax(logits), value


# PROBES: values known in closed form


def test_constant_reward_probe():
    _, value = _policy_and_value(_train(dataclasses.replace(PROBE, env="ConstantReward-probe")), [0.0])
    np.testing.assert_allclose(value, 1.0, atol=0.05)


def test_obs_reward_probe():
    result = _train(dataclasses.replace(PROBE, env="ObsReward-probe"))
    np.testing.assert_allclose(_policy_and_value(result, [1.0])[1], 1.0, atol=0.05)
    np.testing.assert_allclose(_policy_and_value(result, [-1.0])[1], -1.0, atol=0.05)


def test_discount_probe_bootstraps():
    result = _train(dataclasses.replace(PROBE, env="Discount-probe", gamma=0.5))
    np.testing.assert_allclose(_policy_and_value(result, [0.0])[1], 0.5, atol=0.05)
    np.testing.assert_allclose(_policy_and_value(result, [1.0])[1], 1.0, atol=0.05)


def test_action_reward_probe_learns_the_policy():
    result = _train(dataclasses.replace(PROBE, env="ActionReward-probe"))
    for obs, correct in (([1.0], 1), ([-1.0], 0)):
        probs, value = _policy_and_value(result, obs)
        assert (probs[:, correct] > 0.95).all(), probs
        np.testing.assert_allclose(value, 1.0, atol=0.1)


def test_evaluation_during_training_takes_nothing_from_training():
    config = dataclasses.replace(PROBE, env="ActionReward-probe", total_timesteps=4096, log_interval=4)
    with_eval = _train(dataclasses.replace(config, eval_interval=8))  # 32 updates: rows 1, 3, 5, 7
    without = _train(dataclasses.replace(config, eval_interval=0))
    assert "eval_return" not in without.metrics
    for name, values in without.metrics.items():  # the same training, bit for bit
        np.testing.assert_array_equal(with_eval.metrics[name], values, err_msg=name)
    assert jax.tree.all(jax.tree.map(lambda a, b: bool((a == b).all()), with_eval.params, without.params))
    greedy, sampled = with_eval.metrics["eval_return"], with_eval.metrics["eval_return_sampled"]
    np.testing.assert_array_equal(np.isnan(greedy), [[True, False] * 4] * 2)
    np.testing.assert_array_equal(greedy[:, -1], [1.0, 1.0])  # ActionReward's best return, greedy
    assert (sampled[:, -1] > 0.8).all()  # the sampled policy, nearly deterministic by now


def test_truncation_is_bootstrapped_and_termination_is_not():
    # Reward 1 forever, truncated after every step: the value is 1 / (1 - gamma) = 2, not 1.
    result = _train(dataclasses.replace(PROBE, env="TimeLimit-probe", gamma=0.5))
    np.testing.assert_allclose(_policy_and_value(result, [0.0])[1], 2.0, atol=0.1)


@pytest.mark.parametrize("env_name", ["CartPole-v1", "Breakout-MinAtar"])  # vector and grid observations
def test_rollout_values_are_the_critics_values_of_each_step(env_name):
    """The values computed after the rollout, in one batch, are those of each step's observation
    and of its pre-reset next observation, in the rollout's (steps, envs) order."""
    config = dataclasses.replace(PROBE, env=env_name)
    env = ppo.make_environment(config)
    network = heads.actor_critic(config, env)
    params = network.init(jax.random.key(0))
    obs, next_obs = jax.random.normal(jax.random.key(1), (2, 5, 3, *env.observation_shape))
    zeros = jnp.zeros((5, 3))
    rollout = ppo.Transition(
        obs=obs, action=zeros, log_prob=zeros, value=None, reward=zeros,
        terminated=zeros.astype(bool), done=zeros.astype(bool), next_obs=next_obs,
    )  # fmt: skip
    value, next_value = ppo.rollout_values(network, params, rollout)
    per_step = jax.vmap(lambda o: network.apply(params, o)[1])  # the critic in each step, as before
    np.testing.assert_allclose(value, per_step(obs), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(next_value, per_step(next_obs), rtol=1e-5, atol=1e-6)
    assert not np.allclose(value, next_value)


# SEEDS


def test_seeds_are_independent_and_runs_reproducible():
    config = dataclasses.replace(PROBE, env="CartPole-v1", total_timesteps=8_192)
    train = jax.jit(jax.vmap(ppo.make_train(config)))
    keys = jax.random.split(jax.random.key(3), 2)
    first, second = train(keys), train(keys)
    kernels = first.params.actor.layers[0].kernel
    assert not np.allclose(kernels[0], kernels[1])
    returns = first.metrics["episode_return"]
    assert not np.allclose(returns[0], returns[1])
    np.testing.assert_array_equal(returns, second.metrics["episode_return"])


# CONFIG ERRORS: raised by make_train, before anything is traced or compiled


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"env": "Acrobot-v2"}, "Unknown environment 'Acrobot-v2'. Did you mean Acrobot-v1"),
        ({"num_minibatches": 3}, r"num_minibatches \(3\) does not divide num_envs \* num_steps"),
        ({"num_envs": 0}, "num_envs must be positive"),
        ({"learning_rate": -2.5e-4}, "learning_rate must be positive"),
        ({"clip_eps": 0.0}, "clip_eps must be positive"),
        ({"ent_coef": -0.01}, "ent_coef must be >= 0"),
        ({"gae_lambda": 1.5}, "gae_lambda must be in"),
        ({"total_timesteps": 100}, "smaller than one rollout"),
        ({"activation": "gelu"}, "activation must be one of tanh, relu"),
        ({"hidden_sizes": (0,)}, "hidden_sizes must be positive"),
        ({"objective": "trpo"}, "objective must be 'ppo' or 'dpo'"),
        ({"dpo_alpha": -2.0}, "dpo_alpha must be positive"),
    ],
)
def test_impossible_configs_fail_before_compiling(change, message, no_compile):
    with pytest.raises(ValueError, match=message):
        ppo.make_train(dataclasses.replace(ppo.PPOConfig(), **change))


# THE REFERENCE TASKS


@pytest.mark.slow
def test_cartpole_reaches_475_with_default_config():
    result = _train(ppo.PPOConfig(), seeds=2, key=0)
    finals = final_return(np.asarray(result.metrics["episode_return"]))
    assert finals.mean() >= 475, finals  # last 5% of training, mean over both seeds
    env = make_env("CartPole-v1", 16)
    network = heads.categorical_actor_critic(ppo.PPOConfig(), env)

    def greedy(params, key):
        return evaluate(env, ppo.policy(network, params, env), key)

    returns = jax.jit(jax.vmap(greedy))(result.params, jax.random.split(jax.random.key(1), 2))
    assert float(returns.mean()) >= 475, returns


@pytest.mark.slow
def test_acrobot_beats_minus_100_with_default_config():
    result = _train(ppo.PPOConfig(env="Acrobot-v1"), seeds=2, key=0)
    finals = final_return(np.asarray(result.metrics["episode_return"]))
    assert finals.mean() > -100, finals


@pytest.mark.slow
def test_navix_doorkey_trains_and_improves():
    pytest.importorskip("navix", reason="needs the navix extra: pip install 'pureeqxrl[navix]'")
    # PureJaxRL's ppo_minigrid settings: 16 envs x 128 steps, 1e6 steps, 1 epoch of 8 minibatches.
    config = ppo.PPOConfig(
        env="Navix-DoorKey-5x5-v0",
        num_envs=16,
        total_timesteps=1_000_000,
        update_epochs=1,
        num_minibatches=8,
    )
    returns = np.asarray(_train(config, seeds=2, key=0).metrics["episode_return"])
    # Reward 1 for reaching the goal within 100 steps: a random start rarely does, training does.
    assert np.nanmean(returns[:, :3]) < 0.1, returns
    assert final_return(returns).mean() >= 0.5, returns
