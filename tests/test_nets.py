import subprocess
import sys
import textwrap

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pureeqxrl import nets
from pureeqxrl.nets import MLP, Dense, ParamKeys, orthogonal

pytestmark = pytest.mark.usefixtures("strict_promotion")


@pytest.mark.parametrize("shape", [(4, 64), (64, 64), (256, 3), (3, 256)])
@pytest.mark.parametrize("scale", [1.0, 0.01, float(np.sqrt(2))])
def test_orthogonal_matches_jax_initializer(shape, scale, key):
    ours = orthogonal(scale)(key, shape, jnp.float32)
    reference = jax.nn.initializers.orthogonal(scale)(key, shape, jnp.float32)
    np.testing.assert_allclose(ours, reference, rtol=1e-6, atol=1e-6)


def test_orthogonal_under_vmap_matches_unbatched(key):
    keys = jax.random.split(key, 3)
    batched = jax.vmap(lambda k: orthogonal(2.0)(k, (32, 16), jnp.float32))(keys)
    for i, k in enumerate(keys):
        np.testing.assert_allclose(batched[i], orthogonal(2.0)(k, (32, 16), jnp.float32), atol=1e-6)
    gram = jnp.einsum("bij,bik->bjk", batched, batched)
    np.testing.assert_allclose(gram, 4.0 * jnp.broadcast_to(jnp.eye(16), gram.shape), atol=1e-4)


def test_dense_defaults_to_flax_dense_init_and_keeps_its_saved_leaf_order(key):
    layer = Dense(5, 7, key=key)
    kernel_key = jax.random.fold_in(key, 0)  # the kernel draws first, the bias second
    np.testing.assert_array_equal(
        layer.kernel, jax.nn.initializers.lecun_normal()(kernel_key, (5, 7), jnp.float32)
    )
    np.testing.assert_array_equal(layer.bias, jnp.zeros(7))
    x = jnp.arange(5.0)
    np.testing.assert_allclose(layer(x), x @ layer.kernel, rtol=1e-6)
    # Bias, then kernel: the order agent files and checkpoints of every release store them in.
    assert [leaf.shape for leaf in jax.tree.leaves(layer)] == [(7,), (5, 7)]


def test_param_keys_number_every_parameter_of_a_network_in_creation_order(key):
    normal = jax.nn.initializers.normal(1.0)
    keys = ParamKeys(key)
    first = MLP(3, (8,), 2, key=keys, hidden_init=normal, output_init=normal)
    second = MLP(3, (8,), 2, key=keys, hidden_init=normal, output_init=normal)
    assert keys.count == 8  # kernel and bias of 2 layers, twice
    # Parameter i of the network is drawn with fold_in(key, i): kernels at 0, 2 | 4, 6.
    for mlp, start in ((first, 0), (second, 4)):
        for layer, index, shape in zip(mlp.layers, (start, start + 2), [(3, 8), (8, 2)], strict=True):
            expected = normal(jax.random.fold_in(key, index), shape, jnp.float32)
            np.testing.assert_array_equal(layer.kernel, expected)
            np.testing.assert_array_equal(layer.bias, jnp.zeros(shape[1]))
    kernels = np.concatenate([np.ravel(layer.kernel) for mlp in (first, second) for layer in mlp.layers])
    assert len(np.unique(kernels)) == kernels.size  # no two parameters share a stream
    # A whole network given a plain key starts at 0: the same numbers as the first part above.
    alone = MLP(3, (8,), 2, key=key, hidden_init=normal, output_init=normal)
    assert jax.tree.all(jax.tree.map(np.array_equal, alone, first))
    assert ParamKeys.of(keys) is keys


def test_mlp_layers_and_inits(key):
    mlp = MLP(
        3,
        (8, 8),
        2,
        key=key,
        activation=jnp.tanh,
        hidden_init=orthogonal(np.sqrt(2)),
        output_init=orthogonal(0.01),
    )
    assert all(isinstance(layer, Dense) for layer in mlp.layers)
    assert [layer.kernel.shape for layer in mlp.layers] == [(3, 8), (8, 8), (8, 2)]
    assert float(jnp.abs(mlp.layers[-1].kernel).max()) < 0.02
    x = jnp.ones(3)
    hidden = jnp.tanh(mlp.layers[1](jnp.tanh(mlp.layers[0](x))))
    np.testing.assert_allclose(mlp(x), mlp.layers[2](hidden), rtol=1e-6)
    # Array-only: every leaf is an array, so plain jax.jit takes the Module.
    assert all(isinstance(leaf, jax.Array) for leaf in jax.tree.leaves(mlp))


def test_vmapped_orthogonal_training_does_not_hang():
    # Batched QR at width 256 inside jit(vmap(...)) deadlocks XLA:CPU on 2 cores with
    # jax.nn.initializers.orthogonal. Run in a subprocess so a regression fails instead of hanging.
    script = textwrap.dedent("""
        import jax, jax.numpy as jnp
        from pureeqxrl.nets import MLP, orthogonal
        def train(key):
            init_key, data_key = jax.random.split(key)
            mlp = MLP(256, (256, 256, 256), 256, key=init_key, activation=jnp.tanh,
                      hidden_init=orthogonal(2 ** 0.5), output_init=orthogonal(1.0))
            def body(x, _):
                x = jax.vmap(mlp)(x)
                return x, x.sum()
            _, sums = jax.lax.scan(body, jax.random.normal(data_key, (4, 256)), None, 50)
            return sums.sum()
        out = jax.jit(jax.vmap(train))(jax.random.split(jax.random.key(0), 8))
        print("finished", out.shape)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    assert "finished (8,)" in done.stdout


# CONVOLUTIONS: grid observations (MinAtar, navix)


def test_conv_is_flax_conv_with_the_same_numbers(key):
    linen = pytest.importorskip("flax.linen")
    conv = nets.Conv(4, 16, 3, key=key)
    conv = eqx.tree_at(lambda c: c.bias, conv, jax.random.normal(jax.random.key(2), (16,)))  # not zeros
    x = jax.random.normal(jax.random.key(1), (10, 10, 4))
    theirs = linen.Conv(16, (3, 3), padding="VALID").apply(
        {"params": {"kernel": conv.kernel, "bias": conv.bias}}, x[None]
    )[0]
    np.testing.assert_allclose(conv(x), theirs, rtol=1e-5, atol=1e-5)
    assert conv(x).shape == (8, 8, 16)
    # One output cell by hand: the 3x3 window at (2, 5) against every filter.
    by_hand = jnp.einsum("hwc,hwco->o", x[2:5, 5:8], conv.kernel) + conv.bias
    np.testing.assert_allclose(conv(x)[2, 5], by_hand, rtol=1e-5, atol=1e-5)


def test_cnn_torso_is_purejaxqls_minatar_cnn(key):
    """Same parameters in a Flax version of purejaxql's MinAtar CNN (conv 16 3x3 VALID, LayerNorm,
    relu, Dense 128, LayerNorm, relu; inputs / 255): the same features."""
    linen = pytest.importorskip("flax.linen")

    class TheirCNN(linen.Module):
        @linen.compact
        def __call__(self, x):
            x = linen.relu(linen.LayerNorm()(linen.Conv(16, (3, 3), padding="VALID")(x / 255.0)))
            x = x.reshape((x.shape[0], -1))
            return linen.relu(linen.LayerNorm()(linen.Dense(128)(x)))

    torso = nets.CNNTorso((10, 10, 4), 16, (128,), layer_norm=True, input_scale=1 / 255, key=key)
    # Non-zero biases and LayerNorm parameters, so that every one of them must be where Flax has it.
    leaves = lambda t: [t.conv.bias, t.dense[0].bias, *[p for n in t.norms for p in (n.weight, n.bias)]]  # noqa: E731
    noise = [0.5 * jax.random.normal(jax.random.key(i), x.shape) for i, x in enumerate(leaves(torso))]
    torso = eqx.tree_at(leaves, torso, [x + n for x, n in zip(leaves(torso), noise, strict=True)])
    conv, dense = torso.conv, torso.dense[0]
    variables = {
        "params": {
            "Conv_0": {"kernel": conv.kernel, "bias": conv.bias},
            "LayerNorm_0": {"scale": torso.norms[0].weight, "bias": torso.norms[0].bias},
            "Dense_0": {"kernel": dense.kernel, "bias": dense.bias},
            "LayerNorm_1": {"scale": torso.norms[1].weight, "bias": torso.norms[1].bias},
        }
    }
    grids = jax.random.bernoulli(jax.random.key(3), 0.3, (5, 10, 10, 4)).astype(jnp.float32)
    np.testing.assert_allclose(
        jax.vmap(torso)(grids), TheirCNN().apply(variables, grids), rtol=1e-4, atol=1e-5
    )
    ours = sum(leaf.size for leaf in jax.tree.leaves(torso))
    theirs = sum(leaf.size for leaf in jax.tree.leaves(jax.eval_shape(TheirCNN().init, key, grids)))
    assert ours == theirs == 3 * 3 * 4 * 16 + 16 + 2 * 16 + 8 * 8 * 16 * 128 + 128 + 2 * 128


def test_cnn_torso_without_hidden_layers_hands_out_the_flattened_convolution(key):
    torso = nets.CNNTorso((10, 10, 4), 8, (), key=key)
    assert torso.out_features == 8 * 8 * 8 == torso(jnp.ones((10, 10, 4))).shape[0]


def test_cnn_torso_draws_he_normal_kernels_and_refuses_flat_observations(key):
    torso = nets.CNNTorso((10, 10, 4), 16, (128,), key=key)
    # He-normal: standard deviation sqrt(2 / fan_in) (fan_in 36 for the convolution, 1024 for Dense)
    np.testing.assert_allclose(torso.conv.kernel.std(), np.sqrt(2 / 36), rtol=0.1)
    np.testing.assert_allclose(torso.dense[0].kernel.std(), np.sqrt(2 / 1024), rtol=0.05)
    with pytest.raises(
        ValueError, match="needs \\(height, width, channels\\) observations, got shape \\(4,\\)"
    ):
        nets.CNNTorso((4,), 16, (128,), key=key)
