import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pureeqxrl import adapters, ppo
from pureeqxrl.envs import make_env

# NAVIX


def test_navix_resets_at_once_and_keeps_the_final_observation(key):
    navix = pytest.importorskip("navix", reason="needs the navix extra")
    env = make_env("Navix-Empty-5x5-v0", 16, max_episode_steps=30)
    assert env.num_actions == int(navix.make("Navix-Empty-5x5-v0").action_space.maximum) + 1
    obs, state = env.reset(key)
    assert obs.dtype == jnp.float32 and obs.shape == (16, *env.observation_shape)

    def random_step(carry, step_key):
        obs, state = carry
        action_key, step_key = jax.random.split(step_key)
        action = jax.random.randint(action_key, (16,), 0, env.num_actions)
        new_obs, state, step = env.step(step_key, state, action)
        return (new_obs, state), (new_obs, step, state.env_state.t)

    _, (obs_after, steps, t) = jax.lax.scan(random_step, (obs, state), jax.random.split(key, 200))
    terminated, truncated = np.asarray(steps.terminated), np.asarray(steps.truncated)
    assert terminated.any() and truncated.any()  # random walks reach the goal, or time out
    # Reaching the goal pays, and no episode outlives the 30-step limit (navix's own lazy reset
    # would insert a 31st, action-less step after every ending).
    assert (np.asarray(steps.reward)[terminated] > 0).all()
    np.testing.assert_array_equal(np.asarray(steps.episode_length)[truncated], 30)
    assert (np.asarray(steps.episode_length)[terminated] <= 30).all()
    # After an ending the next observation to act on is already a new episode's first one.
    np.testing.assert_array_equal(np.asarray(t)[terminated | truncated], 0)
    done = terminated | truncated
    assert not np.allclose(np.asarray(obs_after)[done], np.asarray(steps.next_obs)[done])
    np.testing.assert_array_equal(np.asarray(obs_after)[~done], np.asarray(steps.next_obs)[~done])


def test_navix_transition_used_never_resets_and_navixs_own_step_resets_lazily(key):
    """What the adapter relies on, on whichever navix is installed: its transition (navix's `step`
    with `disable_autoreset`, or `_step` on releases without it) applies the action even after the
    episode ended, and navix's default `step` instead resets one call late (the lazy reset the
    adapter replaces with gymnax's immediate one)."""
    navix = pytest.importorskip("navix", reason="needs the navix extra")
    env = adapters.make_navix("Navix-Empty-5x5-v0", max_steps=3)
    timestep = env.navix_env.reset(key)
    for t in range(1, 5):  # the 3-step limit ends the episode at t = 3; the transition goes on
        timestep = env.transition(timestep, jnp.asarray(2))  # 2: forward
        assert int(timestep.t) == t
        assert bool(timestep.is_truncation()) == (t >= 3) and not bool(timestep.is_termination())
    lazy = navix.make("Navix-Empty-5x5-v0", max_steps=3)
    timestep = lazy.reset(key)
    for _ in range(3):
        timestep = lazy.step(timestep, jnp.asarray(2))
    assert bool(timestep.is_truncation())
    assert int(lazy.step(timestep, jnp.asarray(2)).t) == 0  # the action-less reset step


def test_navix_names_are_known_and_suggested():
    pytest.importorskip("navix", reason="needs the navix extra")
    with pytest.raises(ValueError, match="Did you mean Navix-DoorKey-5x5-v0"):
        make_env("Navix-Doorkey-5x5-v0", 2)


# BRAX


@pytest.mark.slow
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
    config = ppo.PPOContinuousConfig(
        env="brax-hopper",
        num_envs=8,
        num_steps=16,
        total_timesteps=512,
        num_minibatches=4,
        hidden_sizes=(32, 32),
        log_interval=1,
        eval_interval=0,  # an evaluation would compile a second Brax step
    )
    result = jax.jit(ppo.make_train(config))(key)
    assert np.isfinite(np.asarray(result.metrics["loss"])).all()
    assert result.obs_stats.mean.shape == (11,)
