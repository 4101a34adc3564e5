"""Network building blocks shared by every algorithm.

Modules here hold arrays only (activations are static fields), so they cross `jax.jit`, sit in
`lax.scan` carries and go through optax without `eqx.filter`-ing. Kernels are stored `(in, out)` and
applied as `x @ kernel + bias`, exactly like `flax.linen.Dense`, so that a Linen twin given the same
numbers computes the same program.
"""

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

Initializer = Callable[[PRNGKeyArray, tuple[int, ...], jnp.dtype], Array]


class Functional(NamedTuple):
    """A network as an algorithm sees it, whatever library it comes from.

    `init(key) -> params` and `apply(params, obs_batch) -> outputs`. For Equinox the params *are*
    the Module; for Flax Linen they are its variables dict. Algorithms take a builder
    `network_fn(config, env) -> Functional`, so that a Linen twin runs the very same training code.
    """

    init: Callable[[PRNGKeyArray], Any]
    apply: Callable[[Any, Array], Any]


@jax.custom_batching.custom_vmap
def _qr_q(matrix: Float[Array, "m n"]) -> tuple[Array, Array]:
    q, r = jnp.linalg.qr(matrix)
    return q, jnp.diag(r)


@_qr_q.def_vmap
def _qr_q_vmap(axis_size, in_batched, matrix):
    # A batched QR custom call can deadlock XLA's CPU thread pool when two of them are scheduled at
    # once (vmapped seeds, widths >= 128). Factorising the matrices one after another never does.
    del axis_size
    (batched,) = in_batched
    if not batched:
        return _qr_q(matrix), (False, False)
    return jax.lax.map(lambda m: _qr_q(m), matrix), (True, True)


def orthogonal(scale: float = 1.0) -> Initializer:
    """Orthogonal initializer, numerically identical to `jax.nn.initializers.orthogonal(scale)`.

    The only difference is how it behaves under `jax.vmap`: the QR factorisations run one after
    another, which avoids a CPU deadlock of vmapped multi-seed training (see `_qr_q_vmap`).
    """

    def init(key: PRNGKeyArray, shape: tuple[int, ...], dtype=jnp.float32) -> Array:
        if len(shape) < 2:
            raise ValueError(f"orthogonal init needs a matrix shape, got {shape}")
        n_cols = shape[-1]
        n_rows = int(np.prod(shape)) // n_cols
        matrix_shape = (n_cols, n_rows) if n_rows < n_cols else (n_rows, n_cols)
        q, r_diag = _qr_q(jax.random.normal(key, matrix_shape, dtype))
        q = q * jnp.sign(r_diag)[None, :]
        if n_rows < n_cols:
            q = q.T
        return scale * q.reshape(shape)

    return init


lecun_normal: Callable[[], Initializer] = jax.nn.initializers.lecun_normal
zeros: Initializer = jax.nn.initializers.zeros


class Linear(eqx.Module):
    """Affine layer `x @ kernel + bias` for one example (vmap it at the call site).

    Defaults to Flax `Dense`'s initialisation (lecun-normal kernel, zero bias) rather than
    `eqx.nn.Linear`'s uniform one: the reference algorithms were tuned with it.
    """

    kernel: Float[Array, "in_features out_features"]
    bias: Float[Array, " out_features"]

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        key: PRNGKeyArray,
        kernel_init: Initializer | None = None,
        bias_init: Initializer = zeros,
    ):
        kernel_init = lecun_normal() if kernel_init is None else kernel_init
        kernel_key, bias_key = jax.random.split(key)
        self.kernel = kernel_init(kernel_key, (in_features, out_features), jnp.float32)
        self.bias = bias_init(bias_key, (out_features,), jnp.float32)

    def __call__(self, x: Float[Array, " in_features"]) -> Float[Array, " out_features"]:
        return x @ self.kernel + self.bias


class MLP(eqx.Module):
    """Multi-layer perceptron: hidden layers with `activation`, a linear output layer.

    **Arguments:**

    - `in_features`, `hidden_sizes`, `out_features`: layer widths.
    - `activation`: applied after every hidden layer (a static field, not a leaf).
    - `hidden_init`, `output_init`: kernel initializers (default lecun-normal); biases start at zero.
    """

    layers: tuple[Linear, ...]
    activation: Callable[[Array], Array] = eqx.field(static=True)

    def __init__(
        self,
        in_features: int,
        hidden_sizes: Sequence[int],
        out_features: int,
        *,
        key: PRNGKeyArray,
        activation: Callable[[Array], Array] = jax.nn.relu,
        hidden_init: Initializer | None = None,
        output_init: Initializer | None = None,
    ):
        sizes = [in_features, *hidden_sizes, out_features]
        keys = jax.random.split(key, len(sizes) - 1)
        inits = [hidden_init] * len(hidden_sizes) + [output_init]
        self.layers = tuple(
            Linear(n_in, n_out, key=k, kernel_init=init)
            for n_in, n_out, k, init in zip(sizes[:-1], sizes[1:], keys, inits)
        )
        self.activation = activation

    def __call__(self, x: Float[Array, " in_features"]) -> Float[Array, " out_features"]:
        for layer in self.layers[:-1]:
            x = self.activation(layer(x))
        return self.layers[-1](x)
