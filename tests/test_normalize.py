import jax
import jax.numpy as jnp
import numpy as np

from pureeqxrl.envs import make_env
from pureeqxrl.normalize import Normalize, RunningStats


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
    env = Normalize(
        make_env("TimeLimit-probe", 4, max_episode_steps=3), observations=True, rewards=True, gamma=0.9
    )
    obs, state = env.reset(key)
    for step_key in jax.random.split(key, 3):
        obs, state, step = env.step(step_key, state, jnp.zeros(4, jnp.int32))
    assert state.obs_stats.mean.shape == (1,)
    assert step.done.all()
    np.testing.assert_array_equal(step.episode_return, 3.0)  # three raw rewards of 1
    assert not np.allclose(step.reward, 1.0)  # the learner sees a rescaled reward


def test_observations_and_bootstrap_observations_share_the_statistics(key):
    env = Normalize(make_env("Pendulum-v1", 8, max_episode_steps=5), observations=True)
    raw_env = make_env("Pendulum-v1", 8, max_episode_steps=5)
    obs, state = env.reset(key)
    raw_obs, raw_state = raw_env.reset(key)
    np.testing.assert_allclose(obs, state.obs_stats.normalize(raw_obs), rtol=1e-6)
    for step_key in jax.random.split(key, 5):  # the last step truncates every episode
        action = jnp.zeros((8, 1))
        obs, state, step = env.step(step_key, state, action)
        raw_obs, raw_state, raw_step = raw_env.step(step_key, raw_state, action)
    assert step.truncated.all()
    # Both the observation to act on (a reset one) and the pre-reset one are normalised with the
    # statistics that include this step.
    np.testing.assert_allclose(obs, state.obs_stats.normalize(raw_obs), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        step.next_obs, state.obs_stats.normalize(raw_step.next_obs), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(state.obs_stats.count, 8 * 6 + 1e-4, rtol=1e-6)  # reset + 5 steps
    np.testing.assert_array_equal(step.reward, raw_step.reward)  # rewards untouched unless asked
