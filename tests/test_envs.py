import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pureeqxrl.envs import (
    add_finished_episodes,
    episode_stats,
    finished_episode_stats,
    make_env,
    no_finished_episodes,
    run_rollout,
)


def test_unknown_env_names_close_matches():
    with pytest.raises(ValueError, match="Did you mean CartPole-v1"):
        make_env("CartPole-v2", 4)


@pytest.mark.parametrize("kwargs", [{"num_envs": 0}, {"num_envs": 2, "max_episode_steps": 0}])
def test_bad_sizes_rejected(kwargs):
    with pytest.raises(ValueError, match="must be positive"):
        make_env("CartPole-v1", **kwargs)


def _rollout(env, key, num_steps, action=0):
    obs, state = env.reset(key)

    def one(carry, step_key):
        obs, state = carry
        new_obs, state, step = env.step(step_key, state, jnp.full(env.num_envs, action))
        return (new_obs, state), (obs, new_obs, step)

    _, (obs_before, obs_after, steps) = jax.lax.scan(one, (obs, state), jax.random.split(key, num_steps))
    return obs_before, obs_after, steps


def test_unfinished_episodes_are_never_reported(key):
    env = make_env("TimeLimit-probe", 3, max_episode_steps=5)
    _, _, steps = _rollout(env, key, 12)
    stats = jax.vmap(episode_stats)(steps)
    returns, counts = stats["episode_return"]
    # Episodes end at steps 5 and 10 (1-based), each with return 5, in all 3 envs; nothing else.
    np.testing.assert_array_equal(counts, [0, 0, 0, 0, 3, 0, 0, 0, 0, 3, 0, 0])
    np.testing.assert_array_equal(returns[counts > 0], [15.0, 15.0])
    assert not steps.terminated.any()
    np.testing.assert_array_equal(steps.truncated[:, 0], counts > 0)


def test_a_rollouts_carried_sums_count_what_the_steps_count(key):
    """What a rollout carries per environment (`add_finished_episodes`), summed over the
    environments at its end, is what the steps' own `episode_stats` sum to over the steps."""
    env = make_env("CartPole-v1", 5)
    _, _, steps = _rollout(env, key, 150)
    totals = no_finished_episodes(5)
    for t in range(150):
        totals = add_finished_episodes(totals, jax.tree.map(lambda x, t=t: x[t], steps))
    # each environment's own finished episodes: its count of `done`, its returns where done
    done = np.asarray(steps.done)
    np.testing.assert_array_equal(totals[2], done.sum(0))
    np.testing.assert_array_equal(totals[0], (np.asarray(steps.episode_return) * done).sum(0))
    per_step = jax.vmap(episode_stats)(steps)
    for name, (total, count) in finished_episode_stats(totals).items():
        step_total, step_count = per_step[name]
        assert float(count) == float(step_count.sum()) == done.sum() > 5
        np.testing.assert_allclose(float(total), float(step_total.sum()))

    # `run_rollout`, which the rollout algorithms collect with, carries the same sums
    def env_step(carry):
        state, step_key = carry
        step_key, now = jax.random.split(step_key)
        _, state, step = env.step(now, state, jnp.zeros(5, jnp.int32))
        return (state, step_key), step, step

    _, run_steps, stats = run_rollout(env_step, (env.reset(key)[1], key), 150, 5)
    run_per_step = jax.vmap(episode_stats)(run_steps)
    for name, (total, count) in stats.items():
        step_total, step_count = run_per_step[name]
        assert float(count) == float(step_count.sum()) == np.asarray(run_steps.done).sum() > 5
        np.testing.assert_allclose(float(total), float(step_total.sum()))


def test_cartpole_returns_equal_lengths_and_next_obs_is_pre_reset(key):
    env = make_env("CartPole-v1", 8)
    obs_before, obs_after, steps = _rollout(env, key, 200)
    done = np.asarray(steps.done)
    assert done.sum() > 8  # always pushing left ends episodes quickly
    np.testing.assert_array_equal(steps.episode_return[done], steps.episode_length[done])
    assert steps.terminated[done].all()  # CartPole falls long before its 500-step limit
    # Where the episode did not end, the observation to act on is the step's next observation;
    # where it ended, it is a fresh reset, and next_obs keeps the terminal observation.
    np.testing.assert_array_equal(obs_after[~done], steps.next_obs[~done])
    assert not np.allclose(obs_after[done], steps.next_obs[done])
    assert (np.abs(np.asarray(steps.next_obs)[done][:, 2]) > 0.2).all()  # pole angle past limit


def test_truncation_keeps_final_observation(key):
    env = make_env("CartPole-v1", 4, max_episode_steps=3)
    _, obs_after, steps = _rollout(env, key, 3, action=1)
    assert steps.truncated[2].all() and not steps.terminated[2].any()
    assert not steps.truncated[:2].any()
    # The bootstrap observation is the 3rd step's state, not the reset observation.
    assert not np.allclose(steps.next_obs[2], obs_after[2])
    np.testing.assert_array_equal(steps.next_obs[1], obs_after[1])


def test_actions_reach_the_environment_in_its_own_type_and_bounds():
    discrete = make_env("CartPole-v1", 2)
    assert discrete.to_env_action(jnp.array([0.0, 1.0])).dtype == jnp.int32
    continuous = make_env("Pendulum-v1", 2)  # torque in [-2, 2]
    np.testing.assert_array_equal(continuous.to_env_action(jnp.array([[-3.0], [1.5]])), [[-2.0], [1.5]])
