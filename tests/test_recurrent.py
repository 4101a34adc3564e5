import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pureeqxrl.recurrent import GRU, S5, S5Layer, hippo_diagonal


def _inputs(key, time, features, reset_at=(0, 5, 6, 13)):
    resets = np.zeros(time, bool)
    resets[list(reset_at)] = True
    return jax.random.normal(key, (time, features)), jnp.asarray(resets)


# GRU


def test_gru_sequence_equals_its_step_mode_and_resets_at_episode_starts(key, strict_promotion):
    gru_key, x_key, h_key = jax.random.split(key, 3)
    gru = GRU(5, 8, key=gru_key)
    xs, resets = _inputs(x_key, 20, 5, reset_at=(5, 6, 13))  # step 0 continues `hidden`
    hidden = jax.random.normal(h_key, (8,))

    final, ys = gru(hidden, xs, resets)
    h, stepped = hidden, []
    for x, reset in zip(xs, resets, strict=True):
        h, y = gru.step(h, x, reset)
        stepped.append(y)
    np.testing.assert_allclose(ys, jnp.stack(stepped), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(final, ys[-1])

    # Each episode alone, the first from `hidden` and the others from zeros, gives the same outputs:
    # nothing leaks over an episode boundary, and the state is zeroed before the new episode's step.
    bounds = [0, 5, 6, 13, 20]
    for start, end in zip(bounds[:-1], bounds[1:], strict=True):
        h0 = hidden if start == 0 else gru.initial_hidden()
        _, alone = gru(h0, xs[start:end], jnp.zeros(end - start, bool))
        np.testing.assert_allclose(ys[start:end], alone, rtol=1e-5, atol=1e-6)
    assert not np.allclose(ys[5], gru(ys[4], xs[5:6], jnp.zeros(1, bool))[1][0])


def test_gru_sequence_gradient_is_jaxs_gradient_of_the_step_loop(key, strict_promotion):
    """`GRU.__call__`'s hand-written backward pass (`gru_sequence`) against JAX's own gradient of
    the same steps as a plain loop of `GRU.step`, for every input: the parameters, the starting
    state, the inputs; with resets inside the sequence and at its first step, cotangents on the
    final state and on every step's output, vmapped over environments that share the parameters
    (their gradients summed), and vmapped again over agents (seeds) that do not."""
    gru_key, x_key, h_key, w_key = jax.random.split(key, 4)
    num_seeds, num_envs, time = 2, 3, 20
    grus = eqx.filter_vmap(lambda k: GRU(5, 8, key=k))(jax.random.split(gru_key, num_seeds))
    grus = eqx.tree_at(lambda g: g.hidden_bias, grus, jax.random.normal(w_key, (num_seeds, 8)))
    xs = jax.random.normal(x_key, (num_seeds, num_envs, time, 5))
    resets = np.zeros((num_envs, time), bool)
    resets[0, [5, 6, 13]] = resets[1, [0, 19]] = True  # env 2 never resets
    hidden = jax.random.normal(h_key, (num_seeds, num_envs, 8))
    weights = jnp.linspace(-1.0, 1.0, 8)

    def loss(sequence, gru, hidden, xs):
        final, ys = jax.vmap(sequence, in_axes=(None, 0, 0, 0))(gru, hidden, xs, jnp.asarray(resets))
        return jnp.sum(jnp.sin(ys) * weights) + jnp.sum(final**2)

    def step_loop(gru, hidden, xs, resets):
        return jax.lax.scan(lambda h, inputs: gru.step(h, *inputs), hidden, (xs, resets))

    def gradients(sequence):
        grad = jax.grad(lambda *args: loss(sequence, *args), argnums=(0, 1, 2))
        return jax.jit(jax.vmap(grad))(grus, hidden, xs)

    written, reference = gradients(GRU.__call__), gradients(step_loop)
    assert jax.tree.structure(written) == jax.tree.structure(reference)
    for ours, theirs in zip(jax.tree.leaves(written), jax.tree.leaves(reference), strict=True):
        assert np.abs(theirs).max() > 1e-3  # every gradient reaches its input
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)
    # A reset at step 0 cuts the starting state off: env 1's gradient is zero, the others' are not.
    start_gradient = np.abs(written[1]).max(axis=(0, 2))
    assert start_gradient[1] == 0.0 and start_gradient[0] > 0.0 and start_gradient[2] > 0.0


def test_gru_initialisation_follows_flax():
    gru = GRU(64, 128, key=jax.random.key(1))
    for kernel in jnp.split(gru.hidden_kernel, 3, axis=1):  # orthogonal per gate
        np.testing.assert_allclose(kernel.T @ kernel, np.eye(128), atol=1e-4)
    assert abs(float(gru.input_kernel.std()) - 1 / np.sqrt(64)) < 0.01  # lecun normal
    assert not gru.input_bias.any() and not gru.hidden_bias.any()


# S5


def test_hippo_diagonalisation_reconstructs_the_normal_hippo_matrix():
    eigenvalues, v = hippo_diagonal(16)
    n = np.arange(16)
    legs = -np.tril(np.sqrt(np.outer(2 * n + 1, 2 * n + 1))) + np.diag(n)
    normal = legs + np.outer(np.sqrt(n + 0.5), np.sqrt(n + 0.5))
    np.testing.assert_allclose(v @ np.diag(eigenvalues) @ v.conj().T, normal, atol=1e-4)
    np.testing.assert_allclose(eigenvalues.real, -0.5)
    # Conjugate pairs: the first half's conjugates are the second half.
    np.testing.assert_allclose(np.sort(eigenvalues[:8].conj().imag), np.sort(eigenvalues[8:].imag), atol=1e-4)


def _sequential_s5_layer(layer: S5Layer, hidden, us, resets):
    """The S5 layer as a plain loop in numpy (complex128), from its parameters."""
    lam = np.asarray(layer.lambda_re, np.float64) + 1j * np.asarray(layer.lambda_im, np.float64)
    step = np.exp(np.asarray(layer.log_step, np.float64))
    a = np.exp(lam * step)
    b = ((a - 1) / lam)[:, None] * (
        np.asarray(layer.b_re, np.float64) + 1j * np.asarray(layer.b_im, np.float64)
    )
    c = np.asarray(layer.c_re, np.float64) + 1j * np.asarray(layer.c_im, np.float64)
    d, w, bias = (np.asarray(x, np.float64) for x in (layer.d, layer.gate.kernel, layer.gate.bias))
    x, outputs = np.asarray(hidden, np.complex128), []
    for u, reset in zip(np.asarray(us, np.float64), np.asarray(resets), strict=True):
        x = (0.0 if reset else a * x) + b @ u
        y = 2 * (c @ x).real + d * u
        g = 0.5 * y * (1 + np.tanh(np.sqrt(2 / np.pi) * (y + 0.044715 * y**3)))  # tanh-GELU
        outputs.append(u + g / (1 + np.exp(-(g @ w + bias))))
    return x, np.stack(outputs)


@pytest.mark.parametrize("reset_at", [(7, 8, 21), (0, 7, 8, 21)])
def test_s5_parallel_scan_equals_the_sequential_recurrence(reset_at, key):
    layer_key, x_key, h_key = jax.random.split(key, 3)
    layer = S5Layer(16, 12, key=layer_key)
    # Larger steps than at init, so that the state carries a lot from step to step.
    layer = eqx.tree_at(lambda s5: s5.log_step, layer, jnp.linspace(-3.0, 0.0, 12))
    us, resets = _inputs(x_key, 40, 16, reset_at=reset_at)  # with and without a reset at step 0
    hidden = (jax.random.normal(h_key, (12,)) + 1j * jax.random.normal(h_key, (12,))).astype(jnp.complex64)

    final, ys = jax.jit(S5Layer.__call__)(layer, hidden, us, resets)
    expected_final, expected = _sequential_s5_layer(layer, hidden, us, resets)
    np.testing.assert_allclose(ys, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(final, expected_final, rtol=1e-4, atol=1e-4)
    assert np.abs(np.asarray(ys) - np.asarray(us)).max() > 0.1  # the layer does something

    h, stepped = hidden, []
    for u, reset in zip(us, resets, strict=True):
        h, y = layer.step(h, u, reset)
        stepped.append(y)
    np.testing.assert_allclose(jnp.stack(stepped), ys, rtol=1e-4, atol=1e-4)


def test_s5_stack_resets_every_layer_at_episode_starts(key):
    model_key, x_key = jax.random.split(key)
    s5 = S5(8, 6, num_layers=3, key=model_key)
    us, resets = _inputs(x_key, 12, 8, reset_at=(0, 4))
    hidden, ys = s5(s5.initial_hidden(), us, resets)
    assert hidden.shape == (3, 6) and hidden.dtype == jnp.complex64
    _, second_episode = s5(s5.initial_hidden(), us[4:], jnp.zeros(8, bool))
    np.testing.assert_allclose(ys[4:], second_episode, rtol=1e-5, atol=1e-5)

    h, stepped = s5.initial_hidden(), []
    for u, reset in zip(us, resets, strict=True):
        h, y = s5.step(h, u, reset)
        stepped.append(y)
    np.testing.assert_allclose(jnp.stack(stepped), ys, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(h, hidden, rtol=1e-4, atol=1e-5)
