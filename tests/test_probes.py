import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pureeqxrl.envs import make_env
from pureeqxrl.probes import PROBES


def _first_steps(name, actions, key, num_envs=64, **kwargs):
    """Observations, rewards, terminations and truncations of the first steps with `actions`."""
    env = make_env(name, num_envs, **kwargs)
    obs, state = env.reset(key)
    history = []
    for action, step_key in zip(actions, jax.random.split(key, len(actions)), strict=True):
        action = jnp.broadcast_to(jnp.asarray(action), (num_envs, *env.action_shape))
        next_obs, state, step = env.step(step_key, state, action)
        history.append((obs, step))
        obs = next_obs
    return history


def test_every_probe_is_known_to_make_env(key):
    for name in PROBES:
        env = make_env(name, 2)
        assert env.observation_shape == (1,)
        obs, _ = env.reset(key)
        assert obs.shape == (2, 1)


def test_constant_reward_pays_one_and_ends(key):
    ((obs, step),) = _first_steps("ConstantReward-probe", [0], key)
    np.testing.assert_array_equal(step.reward, 1.0)
    assert step.terminated.all()


def test_obs_reward_pays_the_observation_which_is_a_random_sign(key):
    ((obs, step),) = _first_steps("ObsReward-probe", [0], key)
    np.testing.assert_array_equal(step.reward, obs[:, 0])
    assert set(np.unique(obs)) == {-1.0, 1.0} and step.terminated.all()


def test_discount_pays_only_at_the_end_of_the_second_step(key):
    (obs_0, first), (obs_1, second) = _first_steps("Discount-probe", [0, 0], key)
    np.testing.assert_array_equal(obs_0, 0.0)
    np.testing.assert_array_equal(obs_1, 1.0)
    np.testing.assert_array_equal(first.reward, 0.0)
    assert not first.done.any()
    np.testing.assert_array_equal(second.reward, 1.0)
    assert second.terminated.all()


@pytest.mark.parametrize("action", [0, 1])
def test_action_reward_pays_the_action_matching_the_sign(action, key):
    ((obs, step),) = _first_steps("ActionReward-probe", [action], key)
    correct = (obs[:, 0] > 0).astype(np.int32) == action
    np.testing.assert_array_equal(step.reward, np.where(correct, 1.0, 0.0))
    assert 0 < correct.sum() < len(correct) and step.terminated.all()


def test_time_limit_never_terminates_and_truncates_at_the_limit(key):
    history = _first_steps("TimeLimit-probe", [0] * 4, key, max_episode_steps=2)
    for t, (_, step) in enumerate(history):
        np.testing.assert_array_equal(step.reward, 1.0)
        assert not step.terminated.any()
        assert step.truncated.all() == (t % 2 == 1) and step.truncated.any() == (t % 2 == 1)


def test_continuous_action_pays_minus_the_squared_distance_to_half_the_observation(key):
    ((obs, step),) = _first_steps("ContinuousAction-probe", [[0.25]], key)
    np.testing.assert_allclose(step.reward, -((0.25 - obs[:, 0] / 2) ** 2), rtol=1e-6)
    assert step.terminated.all()
