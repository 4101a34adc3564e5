import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pureeqxrl import heads, ppo
from pureeqxrl.envs import make_env
from pureeqxrl.evaluate import evaluate
from pureeqxrl.loop import final_return

PROBE = ppo.PPOContinuousConfig(
    env="ContinuousAction-probe",
    total_timesteps=65_536,
    num_envs=16,
    num_steps=16,
    num_minibatches=4,
    learning_rate=3e-3,
    hidden_sizes=(32, 32),
    normalize_obs=False,
    normalize_reward=False,
    log_interval=32,
)


def _train(config, seeds=2, key=0):
    return jax.jit(jax.vmap(ppo.make_train(config)))(jax.random.split(jax.random.key(key), seeds))


# A CONTINUOUS PROBE: best mean action obs / 2; value = -(bias^2 + std^2)


@pytest.mark.parametrize("objective", ["ppo", "dpo"])
def test_gaussian_policy_learns_the_probe(objective):
    result = _train(dataclasses.replace(PROBE, objective=objective))
    std = np.exp(np.asarray(result.params.log_std[:, 0]))
    assert (std < 0.5).all(), std  # it became more certain than the initial std of 1
    for obs in (1.0, -1.0):
        policy, value = jax.vmap(lambda net: net(jnp.array([obs])))(result.params)
        mean = heads.mode(policy)
        np.testing.assert_allclose(mean[:, 0], obs / 2, atol=0.1)
        expected_value = -((np.asarray(mean[:, 0]) - obs / 2) ** 2 + std**2)
        np.testing.assert_allclose(value, expected_value, atol=0.05)


def test_dpo_actor_loss_on_a_minibatch():
    # One-example minibatches are normalised to advantage 0; use two examples with advantages +-1.
    env = make_env("Pendulum-v1", 1)
    config = ppo.PPOContinuousConfig(objective="dpo", vf_coef=0.0)
    network = heads.actor_critic(config, env, jax.random.key(0))
    obs = jnp.ones((2, 3))
    policy, value = jax.vmap(network)(obs)
    action = jnp.array([[0.3], [-0.2]])
    new_log_prob = heads.log_prob(policy, action)
    old_log_prob = new_log_prob - jnp.array([0.4, -0.5])  # ratios e^0.4 and e^-0.5
    batch = ppo.Batch(
        obs=obs,
        action=action,
        log_prob=old_log_prob,
        value=value,
        advantage=jnp.array([1.0, -1.0]),
        target=value,
    )
    loss, info = ppo.ppo_loss(network, batch, config)
    adv = np.array([1.0, -1.0]) / (np.std([1.0, -1.0]) + 1e-8)
    ratio = np.exp([0.4, -0.5])
    drift = [
        max(0, (ratio[0] - 1) * adv[0] - 2.0 * np.tanh((ratio[0] - 1) * adv[0] / 2.0)),
        max(0, -0.5 * adv[1] - 0.6 * np.tanh(-0.5 * adv[1] / 0.6)),
    ]
    np.testing.assert_allclose(info.actor_loss, -np.mean(ratio * adv - drift), rtol=1e-5)
    np.testing.assert_allclose(loss, info.actor_loss, rtol=1e-6)  # no value or entropy term


@pytest.mark.slow
def test_pendulum_beats_minus_250_and_statistics_are_used_at_evaluation():
    # PureJaxRL's continuous settings with layers of 64 units instead of 256: a sixth of the time
    # on a CPU (the default's reference run is the benchmarks').
    result = _train(ppo.PPOContinuousConfig(hidden_sizes=(64, 64)), seeds=2, key=0)
    finals = final_return(np.asarray(result.metrics["episode_return"]))
    assert finals.mean() > -250, finals
    assert result.obs_stats.mean.shape == (2, 3)  # per seed, one observation's shape
    env = make_env("Pendulum-v1", 8)

    def evaluate_seed(network, obs_stats, key, normalise):
        act = ppo.policy(network, env, obs_stats if normalise else None)
        return evaluate(env, act, key)

    keys = jax.random.split(jax.random.key(1), 2)
    with_stats = jax.vmap(lambda p, s, k: evaluate_seed(p, s, k, True))(result.params, result.obs_stats, keys)
    without = jax.vmap(lambda p, s, k: evaluate_seed(p, s, k, False))(result.params, result.obs_stats, keys)
    assert float(with_stats.mean()) > -250, with_stats
    assert float(without.mean()) < float(with_stats.mean()) - 100, without  # the stats matter
