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


def fold_in_keys(key: PRNGKeyArray, num: int, start: int = 0) -> list[PRNGKeyArray]:
    """`num` independent keys `fold_in(key, i)`, `i` from `start`: this package's
    `jax.random.split` for parameters.

    Under `jax.vmap` (seeds), a split key array must be sliced apart, and each split is a threefry
    that is compiled even when its key goes unused (a zero bias). Folding in an index per
    parameter, as Linen folds in its name, compiles less: with splits, Equinox's vmapped network
    init compiled about 20% slower than Linen's; with `fold_in`, as fast. An unused key is dead code.
    """
    return [jax.random.fold_in(key, i) for i in range(start, start + num)]


def dense_init(
    in_features: int,
    out_features: int,
    kernel_key: PRNGKeyArray,
    bias_key: PRNGKeyArray,
    kernel_init: Initializer | None = None,
    bias_init: Initializer = zeros,
) -> tuple[Float[Array, "in_features out_features"], Float[Array, " out_features"]]:
    """`(kernel, bias)` of one affine layer; the kernel lecun-normal unless `kernel_init` is given."""
    kernel_init = lecun_normal() if kernel_init is None else kernel_init
    kernel = kernel_init(kernel_key, (in_features, out_features), jnp.float32)
    return kernel, bias_init(bias_key, (out_features,), jnp.float32)


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
        self.kernel, self.bias = dense_init(
            in_features, out_features, *fold_in_keys(key, 2), kernel_init, bias_init
        )

    def __call__(self, x: Float[Array, " in_features"]) -> Float[Array, " out_features"]:
        return x @ self.kernel + self.bias


class MLP(eqx.Module):
    """Multi-layer perceptron: hidden layers with `activation`, a linear output layer.

    **Arguments:**

    - `in_features`, `hidden_sizes`, `out_features`: layer widths.
    - `activation`: applied after every hidden layer (a static field, not a leaf).
    - `hidden_init`, `output_init`: kernel initializers (default lecun-normal); biases start at zero.
    - `key_start`: layer `i`'s kernel and bias keys are `fold_in(key, key_start + 2i)` and
      `fold_in(key, key_start + 2i + 1)`. Networks of several MLPs give each its own range of one
      key: under `vmap` every `fold_in` is a threefry loop XLA compiles, so a key per MLP would
      cost a loop more each (PPO: 8 loops where Linen, which folds each parameter's name in once, has 6).

    `layers` holds one `(bias, kernel)` pair of arrays per layer, not a `Linear` Module per layer.
    Each time a pytree crosses `jax.jit` from Python, every Module in it costs a Python call to
    flatten it and another to rebuild it (about 1.3 us together); tuples are handled in C++. With
    the optimizer's two copies of the network, a training state holds the network four times, so
    this keeps a jitted step called from Python close to Linen's dicts (`benchmarks/dispatch.py`).

    Bias first, because that is the order of a Linen `Dense`'s leaves (its dict's keys are sorted):
    the order of the leaves is the order of the training loop's carried buffers, and from it XLA
    schedules and fuses the step. In (kernel, bias) order, the vmapped DQN compiled to a different
    program that ran 1-3% slower than Linen's; in this order it is Linen's program, op for op.
    """

    layers: tuple[tuple[Float[Array, " out"], Float[Array, "in out"]], ...]
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
        key_start: int = 0,
    ):
        sizes = [in_features, *hidden_sizes, out_features]
        keys = fold_in_keys(key, 2 * (len(sizes) - 1), key_start)  # kernel, bias, kernel, bias, ...
        inits = [hidden_init] * len(hidden_sizes) + [output_init]
        layers = []
        for n_in, n_out, kernel_key, bias_key, init in zip(
            sizes[:-1], sizes[1:], keys[::2], keys[1::2], inits
        ):
            kernel, bias = dense_init(n_in, n_out, kernel_key, bias_key, init)
            layers.append((bias, kernel))
        self.layers = tuple(layers)
        self.activation = activation

    def __call__(self, x: Float[Array, " in_features"]) -> Float[Array, " out_features"]:
        for bias, kernel in self.layers[:-1]:
            x = self.activation(x @ kernel + bias)
        bias, kernel = self.layers[-1]
        return x @ kernel + bias
