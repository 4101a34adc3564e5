import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from pureeqxrl.normalize import Normalize
from pureeqxrl.policy_gradient import PPOConfig, dpo_drift, gae, make_environment, make_optimizer

# ADVANTAGES


def test_gae_cuts_at_episode_ends_and_bootstraps_truncations(strict_promotion):
    # One env, four steps: step 1 terminates, step 3 is truncated (its final obs has value 7).
    column = lambda *xs: jnp.array(xs, jnp.float32)[:, None]  # noqa: E731
    advantages, targets = gae(
        reward=column(1, 2, 3, 4),
        value=column(0.5, 1.0, 1.5, 2.0),
        next_value=column(1.0, 9.0, 2.0, 7.0),  # 9.0 follows a termination: never used
        terminated=jnp.array([[False], [True], [False], [False]]),
        done=jnp.array([[False], [True], [False], [True]]),
        gamma=0.9,
        gae_lambda=0.5,
    )
    # deltas: 1 + .9 * 1 - .5 = 1.4;  2 - 1 = 1;  3 + .9 * 2 - 1.5 = 3.3;  4 + .9 * 7 - 2 = 8.3
    expected = np.array([1.4 + 0.45 * 1.0, 1.0, 3.3 + 0.45 * 8.3, 8.3])
    np.testing.assert_allclose(advantages[:, 0], expected, rtol=1e-6)
    np.testing.assert_allclose(targets[:, 0], expected + [0.5, 1.0, 1.5, 2.0], rtol=1e-6)


def test_gae_with_lambda_one_is_the_bootstrapped_return(strict_promotion):
    key_r, key_v = jax.random.split(jax.random.key(1))
    reward, value = jax.random.normal(key_r, (6, 3)), jax.random.normal(key_v, (6, 3))
    next_value = jnp.concatenate([value[1:], jnp.ones((1, 3))])
    never = jnp.zeros((6, 3), bool)
    _, targets = gae(reward, value, next_value, never, never, 0.9, 1.0)
    discounts = 0.9 ** np.arange(6)
    expected = [(reward[t:] * discounts[: 6 - t, None]).sum(0) + 0.9 ** (6 - t) for t in range(6)]
    np.testing.assert_allclose(targets, np.stack(expected), rtol=1e-5, atol=1e-6)


# LOSS


def test_dpo_drift_matches_hand_computed_values():
    ratio = jnp.array([1.5, 1.5, 0.5, 1.0])
    advantage = jnp.array([2.0, -1.0, -1.0, 3.0])
    drift = dpo_drift(ratio, jnp.log(ratio), advantage, alpha=2.0, beta=0.6)
    # A >= 0: relu((r - 1) A - alpha tanh((r - 1) A / alpha)); A < 0: the same on log r with beta.
    expected = [
        max(0.0, 0.5 * 2.0 - 2.0 * np.tanh(0.5 * 2.0 / 2.0)),  # 1 - 2 tanh(0.5) = 0.0758
        max(0.0, np.log(1.5) * -1.0 - 0.6 * np.tanh(np.log(1.5) * -1.0 / 0.6)),  # 0 (negative)
        max(0.0, np.log(0.5) * -1.0 - 0.6 * np.tanh(np.log(0.5) * -1.0 / 0.6)),  # 0.693 - 0.6 tanh(1.155)
        0.0,  # ratio 1: no drift
    ]
    np.testing.assert_allclose(drift, expected, rtol=1e-5, atol=1e-7)
    assert float(drift[0]) > 0.07 and float(drift[2]) > 0.2


# OPTIMIZER AND ENVIRONMENT


@pytest.mark.parametrize("anneal_lr", [True, False])
def test_learning_rate_is_constant_within_an_update_and_annealed_after_each(anneal_lr):
    # 4 updates of 2 gradient steps each. Adam's step on a constant gradient is the learning rate.
    config = PPOConfig(
        total_timesteps=4 * 512, update_epochs=1, num_minibatches=2, learning_rate=0.1, anneal_lr=anneal_lr
    )
    optimizer = make_optimizer(config)
    params = jnp.zeros(())
    state = optimizer.init(params)
    steps = []
    for _ in range(8):
        updates, state = optimizer.update(jnp.array(0.25), state, params)  # below the 0.5 clip
        params = optax.apply_updates(params, updates)
        steps.append(-float(updates))
    expected = [0.1, 0.1, 0.075, 0.075, 0.05, 0.05, 0.025, 0.025] if anneal_lr else [0.1] * 8
    np.testing.assert_allclose(steps, expected, rtol=1e-3)


def test_environment_is_normalised_only_when_asked():
    plain = make_environment(PPOConfig(num_envs=3))
    assert not isinstance(plain, Normalize) and plain.num_envs == 3
    wrapped = make_environment(PPOConfig(env="Pendulum-v1", normalize_reward=True, gamma=0.9))
    assert isinstance(wrapped, Normalize)
    assert (wrapped.observations, wrapped.rewards, wrapped.gamma) == (False, True, 0.9)
    _, state = wrapped.reset(jax.random.key(0))
    assert state.obs_stats is None  # what `loop.train_from_steps` returns as `obs_stats`
