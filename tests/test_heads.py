import math

import jax
import jax.numpy as jnp
import numpy as np
from distreqx.distributions import Categorical, Independent

from pureeqxrl import heads
from pureeqxrl.envs import make_env
from pureeqxrl.nets import orthogonal
from pureeqxrl.ppo import PPOConfig, PPOContinuousConfig


def test_the_action_space_picks_the_head(key):
    obs = jnp.ones((5, 4))
    policy, value = jax.vmap(heads.actor_critic(PPOConfig(), make_env("CartPole-v1", 1), key))(obs)
    assert isinstance(policy, Categorical) and value.shape == (5,)
    assert heads.sample(policy, key).shape == (5,) and jnp.issubdtype(heads.mode(policy).dtype, jnp.integer)
    pendulum = heads.actor_critic(PPOConfig(), make_env("Pendulum-v1", 1), key)
    assert isinstance(pendulum, heads.GaussianActorCritic)
    policy, value = jax.vmap(pendulum)(jnp.ones((5, 3)))
    assert isinstance(policy, Independent) and value.shape == (5,)
    assert heads.sample(policy, key).shape == (5, 1) and heads.entropy(policy).shape == (5,)


def test_reference_init_and_the_critic_draws_after_the_actor(key):
    network = heads.ActorCritic(4, 2, (64, 64), key=key)
    # Parameter keys: actor kernel/bias of 3 layers (0..5), then the critic's (6..11).
    np.testing.assert_array_equal(
        network.actor.layers[0].kernel, orthogonal(math.sqrt(2))(jax.random.fold_in(key, 0), (4, 64))
    )
    np.testing.assert_array_equal(
        network.critic.layers[0].kernel, orthogonal(math.sqrt(2))(jax.random.fold_in(key, 6), (4, 64))
    )
    np.testing.assert_array_equal(
        network.actor.layers[2].kernel, orthogonal(0.01)(jax.random.fold_in(key, 4), (64, 2))
    )
    np.testing.assert_array_equal(
        network.critic.layers[2].kernel, orthogonal(1.0)(jax.random.fold_in(key, 10), (64, 1))
    )
    assert all(
        float(jnp.abs(layer.bias).max()) == 0
        for mlp in (network.actor, network.critic)
        for layer in mlp.layers
    )
    gaussian = heads.GaussianActorCritic(4, 2, (64, 64), key=key)
    np.testing.assert_array_equal(gaussian.log_std, jnp.zeros(2))  # a unit standard deviation
    # Same keys, same rule: the Gaussian's MLPs are the categorical one's numbers.
    assert jax.tree.all(jax.tree.map(np.array_equal, gaussian.actor_mean, network.actor))


def test_gaussian_log_prob_and_entropy_are_the_closed_forms():
    mean, log_std = jnp.array([[0.5, -1.0]]), jnp.array([0.0, math.log(2.0)])
    policy = jax.vmap(heads.diagonal_gaussian, (0, None))(mean, log_std)  # a batch of one
    action = jnp.array([[1.0, 1.0]])
    std = np.exp(np.asarray(log_std))
    expected = (-0.5 * ((np.asarray(action - mean) / std) ** 2) - np.log(std) - 0.5 * np.log(2 * np.pi)).sum()
    np.testing.assert_allclose(heads.log_prob(policy, action), [expected], rtol=1e-6)
    np.testing.assert_allclose(
        heads.entropy(policy), [(0.5 + 0.5 * np.log(2 * np.pi) + np.log(std)).sum()], rtol=1e-6
    )
    np.testing.assert_array_equal(heads.mode(policy), mean)


def test_greedy_action_is_the_most_likely(key):
    network = heads.ActorCritic(4, 3, (8,), key=key)
    obs = jax.random.normal(key, (20, 4))
    policy, _ = jax.vmap(network)(obs)
    np.testing.assert_array_equal(
        jax.vmap(heads.greedy_action, (None, 0))(network, obs), policy.logits.argmax(-1)
    )
    np.testing.assert_array_equal(heads.mode(policy), policy.logits.argmax(-1))


def test_initial_draws_are_those_of_version_0_1(key):
    # Sum of absolute parameter values and the first entry of the first kernels for key(0),
    # recorded with pureeqxrl 0.1.0 (commit 681fd9e): the re-layout kept every draw.
    cases = [
        (
            (PPOConfig(), make_env("CartPole-v1", 1)),
            1241.7116449168752,
            [0.14706063270568848, 0.22757123410701752, -0.00127403496298939],
        ),
        (
            (PPOContinuousConfig(), make_env("Pendulum-v1", 1)),
            9376.991038304006,
            [0.08422373235225677, 0.1157757043838501, -0.0006460475851781666],
        ),
    ]
    for (config, env), total, firsts in cases:
        leaves = [
            np.asarray(leaf, np.float64) for leaf in jax.tree.leaves(heads.actor_critic(config, env, key))
        ]
        np.testing.assert_allclose(sum(np.abs(leaf).sum() for leaf in leaves), total, rtol=1e-6)
        np.testing.assert_allclose(
            [leaf.ravel()[0] for leaf in leaves if leaf.ndim == 2][:3], firsts, rtol=1e-6
        )
