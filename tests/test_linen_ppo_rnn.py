import equinox as eqx
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pureeqxrl import ppo, ppo_rnn
from pureeqxrl.envs import make_env
from pureeqxrl.linen import ppo_rnn as linen_ppo_rnn
from pureeqxrl.loop import final_return
from pureeqxrl.recurrent import GRU


def _sequences(key, obs_shape, num_actions, hidden_size, time=24, envs=3):
    keys = jax.random.split(key, 8)
    resets = jax.random.bernoulli(keys[7], 0.15, (time, envs)).at[0].set(jnp.array([True, False, False]))
    return ppo_rnn.SequenceBatch(
        hidden=jax.random.normal(keys[6], (envs, hidden_size)),
        reset=resets,
        steps=ppo.Batch(
            obs=jax.random.normal(keys[0], (time, envs, *obs_shape)),
            action=jax.random.randint(keys[1], (time, envs), 0, num_actions),
            log_prob=jnp.log(jax.random.uniform(keys[2], (time, envs), minval=0.2, maxval=0.8)),
            value=jax.random.normal(keys[3], (time, envs)),
            advantage=jax.random.normal(keys[4], (time, envs)),
            target=jax.random.normal(keys[5], (time, envs)),
        ),
    )


def _loss_and_grads(network, batch, config):
    loss = jax.value_and_grad(ppo_rnn.sequence_loss, has_aux=True)
    return jax.jit(loss, static_argnums=2)(network, batch, config)


def test_gru_matches_flax_gru_cell(key):
    gru = GRU(6, 10, key=key)
    # Non-zero biases, so that where each one enters (b_hn inside r * (...)) is checked too.
    bias_keys = jax.random.split(jax.random.key(3))
    gru = eqx.tree_at(
        lambda g: (g.input_bias, g.hidden_bias),
        gru,
        (jax.random.normal(bias_keys[0], (30,)), jax.random.normal(bias_keys[1], (10,))),
    )
    params = linen_ppo_rnn.params_from_equinox_gru(gru)
    hidden, x = jax.random.normal(jax.random.key(1), (10,)), jax.random.normal(jax.random.key(2), (6,))
    theirs, _ = nn.GRUCell(10).apply({"params": params}, hidden, x)
    ours, _ = gru.step(hidden, x, jnp.array(False))
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("objective", ["ppo", "dpo"])
def test_sequence_loss_and_gradients_match_linen(objective, key, strict_promotion, assert_same_gradients):
    config = ppo_rnn.PPORNNConfig(objective=objective, encoder_sizes=(32, 16), hidden_sizes=(24,))
    env = make_env("CartPole-v1", 1)
    params_key, batch_key = jax.random.split(key)
    params = ppo_rnn.recurrent_actor_critic(config, env, params_key)
    twin = linen_ppo_rnn.linen_recurrent_actor_critic(config, env, params_key)
    twin = eqx.tree_at(lambda n: n.variables, twin, linen_ppo_rnn.params_from_equinox(params))
    batch = _sequences(batch_key, env.observation_shape, env.num_actions, 16)

    (eqx_loss, eqx_info), eqx_grads = _loss_and_grads(params, batch, config)
    (linen_loss, linen_info), linen_grads = _loss_and_grads(twin, batch, config)
    assert abs(float(eqx_loss)) > 0.01
    np.testing.assert_allclose(eqx_loss, linen_loss, rtol=1e-6)
    for ours, theirs in zip(jax.tree.leaves(eqx_info), jax.tree.leaves(linen_info), strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-7)
    assert_same_gradients(linen_ppo_rnn.params_from_equinox(eqx_grads), linen_grads.variables)

    # The acting step agrees too (the first step of each sequence, from the stored hidden state).
    first = lambda net: jax.vmap(net.step)(batch.hidden, batch.steps.obs[0], batch.reset[0])  # noqa: E731
    eqx_hidden, eqx_policy, eqx_value = first(params)
    linen_hidden, linen_policy, linen_value = first(twin)
    np.testing.assert_allclose(eqx_hidden, linen_hidden, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(eqx_policy.logits, linen_policy.logits, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(eqx_value, linen_value, rtol=1e-5, atol=1e-6)


def test_linen_init_has_the_equinox_layout_and_scales(key):
    config = ppo_rnn.PPORNNConfig()
    env = make_env("CartPole-v1", 1)
    own = linen_ppo_rnn.linen_recurrent_actor_critic(config, env, key).variables
    converted = linen_ppo_rnn.params_from_equinox(ppo_rnn.recurrent_actor_critic(config, env, key))
    assert jax.tree.map(jnp.shape, own) == jax.tree.map(jnp.shape, converted)
    params = own["params"]
    for name, scale in (
        ("encoder_0", np.sqrt(2)),
        ("actor_0", 2.0),
        ("actor_head", 0.01),
        ("critic_head", 1.0),
    ):
        kernel = np.asarray(params[name]["kernel"])
        gram = kernel.T @ kernel if kernel.shape[0] >= kernel.shape[1] else kernel @ kernel.T
        np.testing.assert_allclose(gram, scale**2 * np.eye(len(gram)), atol=1e-4 * scale**2)


@pytest.mark.slow
def test_linen_twin_rejects_s5_and_learns_the_memory_task():
    with pytest.raises(ValueError, match="GRU core only"):
        linen_ppo_rnn.make_train(ppo_rnn.PPOS5Config())
    config = ppo_rnn.PPORNNConfig(env="MemoryChain-bsuite", total_timesteps=40_960, log_interval=4)
    train = jax.jit(jax.vmap(linen_ppo_rnn.make_train(config)))
    result = train(jax.random.split(jax.random.key(0), 2))
    assert final_return(np.asarray(result.metrics["episode_return"])).min() >= 0.9


def test_vmapped_init_has_no_batched_qr():
    # A batched QR inside jit(vmap(...)) can deadlock XLA:CPU on 2 cores (it did, with Flax's own
    # orthogonal init in the GRU cell). Check the programs instead of waiting for a rare hang.
    import re

    config = ppo_rnn.PPORNNConfig()
    env = make_env(config.env, 1)
    keys = jax.random.split(jax.random.key(0), 8)
    for build in (ppo_rnn.recurrent_actor_critic, linen_ppo_rnn.linen_recurrent_actor_critic):
        jaxpr = str(jax.make_jaxpr(jax.vmap(lambda k: build(config, env, k)))(keys))  # noqa: B023
        qr_outputs = re.findall(r"(\w+:f32\[[\d,]+\]) \w+:f32\[[\d,]+\] = qr\[", jaxpr)
        assert qr_outputs, "expected the orthogonal init's QR"
        assert all(output.count(",") == 1 for output in qr_outputs), qr_outputs  # matrices only
    flax_orthogonal = jax.vmap(lambda k: nn.initializers.orthogonal()(k, (128, 128)))
    batched = re.findall(
        r"(\w+:f32\[[\d,]+\]) \w+:f32\[[\d,]+\] = qr\[", str(jax.make_jaxpr(flax_orthogonal)(keys))
    )
    assert batched and batched[0].count(",") == 2  # the check does see a batched QR
