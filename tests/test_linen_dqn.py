import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from pureeqxrl import dqn
from pureeqxrl.envs import make_env
from pureeqxrl.linen import dqn as linen_dqn


def _batch(key, size=128):
    keys = jax.random.split(key, 5)
    return dqn.Transition(
        obs=jax.random.normal(keys[0], (size, 4)),
        action=jax.random.randint(keys[1], (size,), 0, 2),
        reward=jax.random.uniform(keys[2], (size,)),
        next_obs=jax.random.normal(keys[3], (size, 4)),
        terminated=jax.random.bernoulli(keys[4], 0.2, (size,)),
    )


def test_loss_and_gradients_match_linen(key, assert_same_gradients):
    config = dqn.DQNConfig()
    env = make_env("CartPole-v1", 1)
    online_key, target_key, batch_key = jax.random.split(key, 3)
    online, target = dqn.q_network(config, env, online_key), dqn.q_network(config, env, target_key)
    module = linen_dqn.linen_q_network(config, env, key).module
    batch = _batch(batch_key)

    @jax.jit
    def loss_and_grads(network, target_network):
        return jax.value_and_grad(dqn.q_loss, has_aux=True)(network, target_network, batch, config)

    (eqx_loss, eqx_q_mean), eqx_grads = loss_and_grads(online, target)
    (linen_loss, linen_q_mean), linen_grads = loss_and_grads(
        linen_dqn.LinenQ(linen_dqn.params_from_equinox(online), module),
        linen_dqn.LinenQ(linen_dqn.params_from_equinox(target), module),
    )
    assert float(eqx_loss) > 0.01
    np.testing.assert_allclose(eqx_loss, linen_loss, rtol=1e-6)
    np.testing.assert_allclose(eqx_q_mean, linen_q_mean, rtol=1e-6)
    assert_same_gradients(linen_dqn.params_from_equinox(eqx_grads), linen_grads.variables)


def test_linen_param_layout_matches_its_own_init(key):
    config = dqn.DQNConfig()
    env = make_env("CartPole-v1", 1)
    own = linen_dqn.linen_q_network(config, env, key).variables
    converted = linen_dqn.params_from_equinox(dqn.q_network(config, env, key))
    assert jax.tree.structure(own) == jax.tree.structure(converted)
    assert [x.shape for x in jax.tree.leaves(own)] == [x.shape for x in jax.tree.leaves(converted)]
    # Same init distribution: zero biases, kernels with lecun-normal scale (std ~ 1/sqrt(fan_in)).
    for theirs, ours in zip(own["params"].values(), converted["params"].values(), strict=True):
        np.testing.assert_array_equal(theirs["bias"], 0.0)
        np.testing.assert_array_equal(ours["bias"], 0.0)
        expected_std = 1 / np.sqrt(theirs["kernel"].shape[0])
        for kernel in (theirs["kernel"], ours["kernel"]):
            if kernel.size >= 200:
                np.testing.assert_allclose(np.std(kernel), expected_std, rtol=0.15)


def test_linen_twin_learns_the_probe_too():
    config = dataclasses.replace(
        dqn.DQNConfig(),
        env="ObsReward-probe",
        total_timesteps=24_000,
        num_envs=4,
        buffer_size=2_000,
        batch_size=64,
        learning_rate=1e-3,
        learning_starts=500,
        epsilon_anneal_time=4_000,
        training_interval=4,
        target_update_interval=100,
        hidden_sizes=(32, 32),
        log_interval=1_000,
    )
    result = jax.jit(linen_dqn.make_train(config))(jax.random.key(0))
    assert isinstance(result.params, linen_dqn.LinenQ)
    q = jax.vmap(result.params)(jnp.array([[1.0], [-1.0]]))
    np.testing.assert_allclose(q[:, 0], [1.0, -1.0], atol=0.05)
