import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pureeqxrl import ppo, ppo_continuous
from pureeqxrl.envs import evaluate, make_env
from pureeqxrl.metrics import final_return
from pureeqxrl.normalize import Normalize, RunningStats

PROBE = ppo_continuous.PPOContinuousConfig(
    env="ContinuousAction-probe", total_timesteps=65_536, num_envs=16, num_steps=16,
    num_minibatches=4, learning_rate=3e-3, hidden_sizes=(32, 32), normalize_obs=False,
    normalize_reward=False, log_interval=32,
)


def _train(config, seeds=2, key=0):
    return jax.jit(jax.vmap(ppo_continuous.make_train(config)))(
        jax.random.split(jax.random.key(key), seeds)
    )


# A CONTINUOUS PROBE: best mean action obs / 2; value = -(bias^2 + std^2)


@pytest.mark.parametrize("objective", ["ppo", "dpo"])
def test_gaussian_policy_learns_the_probe(objective):
    result = _train(dataclasses.replace(PROBE, objective=objective))
    std = np.exp(np.asarray(result.params.log_std[:, 0]))
    assert (std < 0.5).all(), std  # it became more certain than the initial std of 1
    for obs in (1.0, -1.0):
        mean, value = jax.vmap(lambda net: net(jnp.array([obs])))(result.params)
        np.testing.assert_allclose(mean[:, 0], obs / 2, atol=0.1)
        expected_value = -((np.asarray(mean[:, 0]) - obs / 2) ** 2 + std**2)
        np.testing.assert_allclose(value, expected_value, atol=0.05)


def test_dpo_drift_matches_hand_computed_values():
    ratio = jnp.array([1.5, 1.5, 0.5, 1.0])
    advantage = jnp.array([2.0, -1.0, -1.0, 3.0])
    drift = ppo.dpo_drift(ratio, jnp.log(ratio), advantage, alpha=2.0, beta=0.6)
    # A >= 0: relu((r - 1) A - alpha tanh((r - 1) A / alpha)); A < 0: the same on log r with beta.
    expected = [
        max(0.0, 0.5 * 2.0 - 2.0 * np.tanh(0.5 * 2.0 / 2.0)),  # 1 - 2 tanh(0.5) = 0.0758
        max(0.0, np.log(1.5) * -1.0 - 0.6 * np.tanh(np.log(1.5) * -1.0 / 0.6)),  # 0 (negative)
        max(0.0, np.log(0.5) * -1.0 - 0.6 * np.tanh(np.log(0.5) * -1.0 / 0.6)),  # 0.693 - 0.6 tanh(1.155)
        0.0,  # ratio 1: no drift
    ]
    np.testing.assert_allclose(drift, expected, rtol=1e-5, atol=1e-7)
    assert float(drift[0]) > 0.07 and float(drift[2]) > 0.2


def test_dpo_actor_loss_on_a_minibatch():
    # One-example minibatches are normalised to advantage 0; use two examples with advantages +-1.
    env = make_env("Pendulum-v1", 1)
    config = ppo_continuous.PPOContinuousConfig(objective="dpo", vf_coef=0.0)
    network = ppo_continuous.gaussian_actor_critic(config, env)
    params = network.init(jax.random.key(0))
    obs = jnp.ones((2, 3))
    policy, value = network.apply(params, obs)
    action = jnp.array([[0.3], [-0.2]])
    new_log_prob = ppo.log_prob(policy, action)
    old_log_prob = new_log_prob - jnp.array([0.4, -0.5])  # ratios e^0.4 and e^-0.5
    batch = ppo.Batch(obs, action, old_log_prob, value, jnp.array([1.0, -1.0]), value)
    loss, info = ppo.ppo_loss(network.apply, params, batch, config)
    adv = np.array([1.0, -1.0]) / (np.std([1.0, -1.0]) + 1e-8)
    ratio = np.exp([0.4, -0.5])
    drift = [max(0, (ratio[0] - 1) * adv[0] - 2.0 * np.tanh((ratio[0] - 1) * adv[0] / 2.0)),
             max(0, -0.5 * adv[1] - 0.6 * np.tanh(-0.5 * adv[1] / 0.6))]
    np.testing.assert_allclose(info.actor_loss, -np.mean(ratio * adv - drift), rtol=1e-5)
    np.testing.assert_allclose(loss, info.actor_loss, rtol=1e-6)  # no value or entropy term


# NORMALISATION


def test_running_stats_match_numpy_and_have_the_observation_shape(key):
    batches = jax.random.normal(key, (5, 64, 3)) * jnp.array([1.0, 5.0, 0.1]) + 2.0
    stats = RunningStats.empty((3,))
    for batch in batches:
        stats = stats.update(batch)
    everything = np.asarray(batches).reshape(-1, 3)
    assert stats.mean.shape == (3,) and stats.var.shape == (3,)
    np.testing.assert_allclose(stats.mean, everything.mean(0), rtol=1e-3)
    np.testing.assert_allclose(stats.var, everything.var(0), rtol=1e-3)


def test_reward_normalisation_keeps_the_true_episode_return(key):
    env = Normalize(make_env("TimeLimit-probe", 4, max_episode_steps=3), observations=True,
                    rewards=True, gamma=0.9)
    obs, state = env.reset(key)
    for step_key in jax.random.split(key, 3):
        obs, state, step = env.step(step_key, state, jnp.zeros(4, jnp.int32))
    assert state.obs_stats.mean.shape == (1,)
    assert step.done.all()
    np.testing.assert_array_equal(step.episode_return, 3.0)  # three raw rewards of 1
    assert not np.allclose(step.reward, 1.0)  # the learner sees a rescaled reward


def test_pendulum_beats_minus_250_and_statistics_are_used_at_evaluation():
    result = _train(ppo_continuous.PPOContinuousConfig(), seeds=2, key=0)
    finals = final_return(np.asarray(result.metrics["episode_return"]))
    assert finals.mean() > -250, finals
    assert result.obs_stats.mean.shape == (2, 3)  # per seed, one observation's shape
    env = make_env("Pendulum-v1", 8)
    network = ppo_continuous.gaussian_actor_critic(ppo_continuous.PPOContinuousConfig(), env)

    def evaluate_seed(params, obs_stats, key, normalise):
        act = ppo.policy(network, params, env, obs_stats if normalise else None)
        return evaluate(env, act, key)

    keys = jax.random.split(jax.random.key(1), 2)
    with_stats = jax.vmap(lambda p, s, k: evaluate_seed(p, s, k, True))(
        result.params, result.obs_stats, keys)
    without = jax.vmap(lambda p, s, k: evaluate_seed(p, s, k, False))(
        result.params, result.obs_stats, keys)
    assert float(with_stats.mean()) > -250, with_stats
    assert float(without.mean()) < float(with_stats.mean()) - 100, without  # the stats matter


# BRAX


def test_brax_keeps_truncation_and_trains_a_few_updates(key):
    pytest.importorskip("brax", reason="needs the brax extra: pip install 'pureeqxrl[brax]'")
    env = make_env("brax-hopper", 2, max_episode_steps=4)
    obs, state = env.reset(key)
    for step_key in jax.random.split(key, 4):
        new_obs, state, step = env.step(step_key, state, jnp.zeros((2, 3)))
        if not step.done.any():
            np.testing.assert_array_equal(step.next_obs, new_obs)
    assert step.truncated.all() and not step.terminated.any()  # standing still: the limit ends it
    assert not np.allclose(step.next_obs, new_obs)  # bootstrap from the pre-reset observation
    config = ppo_continuous.PPOContinuousConfig(
        env="brax-hopper", num_envs=8, num_steps=16, total_timesteps=512, num_minibatches=4,
        hidden_sizes=(32, 32), log_interval=1,
    )
    result = jax.jit(ppo_continuous.make_train(config))(key)
    assert np.isfinite(np.asarray(result.metrics["loss"])).all()
    assert result.obs_stats.mean.shape == (11,)
