import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pureeqxrl import heads, ppo
from pureeqxrl.envs import make_env
from pureeqxrl.linen import ppo as linen_ppo


def _minibatch(key, obs_shape, num_actions, size=128):
    keys = jax.random.split(key, 6)
    return ppo.Batch(
        obs=jax.random.normal(keys[0], (size, *obs_shape)),
        action=jax.random.randint(keys[1], (size,), 0, num_actions),
        log_prob=jnp.log(jax.random.uniform(keys[2], (size,), minval=0.2, maxval=0.8)),
        value=jax.random.normal(keys[3], (size,)),
        advantage=jax.random.normal(keys[4], (size,)),
        target=jax.random.normal(keys[5], (size,)),
    )


def _loss_and_grads(network, batch, config):
    loss = jax.value_and_grad(ppo.ppo_loss, has_aux=True)
    return jax.jit(loss, static_argnums=2)(network, batch, config)


def _linen_twin(config, env, variables):
    """The Linen twin of the env's actor-critic holding `variables`."""
    twin = linen_ppo.linen_network(config, env, jax.random.key(0))
    return eqx.tree_at(lambda n: n.variables, twin, variables)


@pytest.mark.parametrize(("env_name", "activation"), [("CartPole-v1", "tanh"), ("Breakout-MinAtar", "relu")])
def test_loss_and_gradients_match_linen(env_name, activation, key, strict_promotion, assert_same_gradients):
    config = ppo.PPOConfig(env=env_name, activation=activation)
    env = make_env(env_name, 1)
    params_key, batch_key = jax.random.split(key)
    params = heads.actor_critic(config, env, params_key)
    batch = _minibatch(batch_key, env.observation_shape, env.num_actions)

    (eqx_loss, eqx_info), eqx_grads = _loss_and_grads(params, batch, config)
    (linen_loss, linen_info), linen_grads = _loss_and_grads(
        _linen_twin(config, env, linen_ppo.params_from_equinox(params)), batch, config
    )
    assert abs(float(eqx_loss)) > 0.01
    np.testing.assert_allclose(eqx_loss, linen_loss, rtol=1e-6)
    for ours, theirs in zip(jax.tree.leaves(eqx_info), jax.tree.leaves(linen_info), strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-7)
    assert_same_gradients(linen_ppo.params_from_equinox(eqx_grads), linen_grads.variables)


def test_linen_init_matches_the_reference_init(key):
    config = ppo.PPOConfig()
    env = make_env("CartPole-v1", 1)
    own = linen_ppo.linen_network(config, env, key).variables
    converted = linen_ppo.params_from_equinox(heads.actor_critic(config, env, key))
    assert jax.tree.structure(own) == jax.tree.structure(converted)
    for name in own["params"]:
        theirs, ours = own["params"][name], converted["params"][name]
        assert theirs["kernel"].shape == ours["kernel"].shape
        np.testing.assert_array_equal(theirs["bias"], 0.0)
        np.testing.assert_array_equal(ours["bias"], 0.0)
        scale = 0.01 if name == "actor_head" else 1.0 if name == "critic_head" else np.sqrt(2)
        for kernel in (theirs["kernel"], ours["kernel"]):
            # Orthogonal: the columns (the rows, for a wide matrix) are orthogonal with norm `scale`.
            k = np.asarray(kernel) / scale
            gram = k.T @ k if k.shape[0] >= k.shape[1] else k @ k.T
            np.testing.assert_allclose(gram, np.eye(len(gram)), atol=1e-5)


@pytest.mark.slow
def test_linen_twin_trains_cartpole_like_equinox():
    config = dataclasses.replace(ppo.PPOConfig(), total_timesteps=131_072)
    keys = jax.random.split(jax.random.key(0), 2)
    returns = {}
    for name, make_train in (("equinox", ppo.make_train), ("linen", linen_ppo.make_train)):
        result = jax.jit(jax.vmap(make_train(config)))(keys)
        returns[name] = np.asarray(result.metrics["episode_return"]).mean(axis=0)
    # Both improve from ~20 (random) to well above it in 1/4 of the default run.
    for name, curve in returns.items():
        assert curve[-3:].mean() > 100, (name, curve)


@pytest.mark.parametrize("objective", ["ppo", "dpo"])
def test_gaussian_loss_and_gradients_match_linen(objective, key, strict_promotion, assert_same_gradients):

    config = ppo.PPOContinuousConfig(objective=objective, ent_coef=0.01)
    env = make_env("Pendulum-v1", 1)
    params_key, batch_key, action_key, std_key = jax.random.split(key, 4)
    params = heads.actor_critic(config, env, params_key)
    params = eqx.tree_at(lambda n: n.log_std, params, jax.random.normal(std_key, (1,)) * 0.3)
    batch = _minibatch(batch_key, env.observation_shape, 2)
    batch = eqx.tree_at(lambda b: b.action, batch, jax.random.normal(action_key, (128, 1)))

    (eqx_loss, eqx_info), eqx_grads = _loss_and_grads(params, batch, config)
    (linen_loss, linen_info), linen_grads = _loss_and_grads(
        _linen_twin(config, env, linen_ppo.params_from_equinox(params)), batch, config
    )
    np.testing.assert_allclose(eqx_loss, linen_loss, rtol=1e-6)
    for ours, theirs in zip(jax.tree.leaves(eqx_info), jax.tree.leaves(linen_info), strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-7)
    ours = linen_ppo.params_from_equinox(eqx_grads)
    assert float(jnp.abs(ours["params"]["log_std"]).max()) > 0  # the log-std is learnt
    assert_same_gradients(ours, linen_grads.variables)
