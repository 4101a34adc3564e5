import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pureeqxrl.nets import MLP, Linear, orthogonal

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


def test_linear_defaults_to_flax_dense_init(key):
    layer = Linear(5, 7, key=key)
    kernel_key = jax.random.fold_in(key, 0)
    np.testing.assert_array_equal(
        layer.kernel, jax.nn.initializers.lecun_normal()(kernel_key, (5, 7), jnp.float32)
    )
    np.testing.assert_array_equal(layer.bias, jnp.zeros(7))
    x = jnp.arange(5.0)
    np.testing.assert_allclose(layer(x), x @ layer.kernel, rtol=1e-6)


def test_mlp_draws_every_kernel_and_bias_from_its_own_key(key):
    normal = jax.nn.initializers.normal(1.0)
    mlp = MLP(3, (8,), 2, key=key, hidden_init=normal, output_init=normal)
    kernel_keys = [jax.random.fold_in(key, 0), jax.random.fold_in(key, 2)]
    for (bias, kernel), kernel_key, shape in zip(mlp.layers, kernel_keys, [(3, 8), (8, 2)]):
        np.testing.assert_array_equal(kernel, normal(kernel_key, shape, jnp.float32))
        np.testing.assert_array_equal(bias, jnp.zeros(shape[1]))
    kernels = np.concatenate([np.ravel(kernel) for _, kernel in mlp.layers])
    assert len(np.unique(kernels)) == kernels.size  # no two layers share a stream
    # A second MLP on the same key, from the next free index, draws from the next streams.
    second = MLP(3, (8,), 2, key=key, hidden_init=normal, output_init=normal, key_start=4)
    np.testing.assert_array_equal(second.layers[0][1], normal(jax.random.fold_in(key, 4), (3, 8), jnp.float32))
    np.testing.assert_array_equal(second.layers[1][1], normal(jax.random.fold_in(key, 6), (8, 2), jnp.float32))


def test_mlp_layers_and_inits(key):
    mlp = MLP(3, (8, 8), 2, key=key, activation=jnp.tanh,
              hidden_init=orthogonal(np.sqrt(2)), output_init=orthogonal(0.01))
    assert [kernel.shape for _, kernel in mlp.layers] == [(3, 8), (8, 8), (8, 2)]
    assert float(jnp.abs(mlp.layers[-1][1]).max()) < 0.02
    assert mlp(jnp.ones(3)).shape == (2,)
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
