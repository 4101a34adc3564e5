"""Network building blocks shared by every algorithm: activations, the hang-free orthogonal
initializer, the parameter-key rule (`ParamKeys`), `Dense`, `MLP`, `Conv` and `CNNTorso` (for grid
observations).

Modules here act on one example (vmap them over a batch) and hold arrays only (activations are
static fields), so they cross `jax.jit`, sit in `lax.scan` carries and go through optax without
`eqx.filter`-ing. Kernels are stored `(in, out)` and applied as `x @ kernel + bias`.
"""

from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

Initializer = Callable[[PRNGKeyArray, tuple[int, ...], jnp.dtype], Array]

NetworkBuilder = Callable[[Any, Any, PRNGKeyArray], eqx.Module]
"""`make_network(config, env, key) -> network`: what an algorithm's `make_learner` takes to build the
Module it trains (by default its own network; `pureeqxrl.linen` passes the Flax Linen twins)."""

ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "tanh": jax.nn.tanh,
    "relu": jax.nn.relu,
    "leaky_relu": jax.nn.leaky_relu,
}


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


class ParamKeys:
    """The one rule by which every network here draws its parameters: the `i`-th initializer call
    of a network, counting the calls of all its parts in the order they are made (zero
    initializers included), gets the key `jax.random.fold_in(network_key, i)`. (An array made of
    several draws, such as the GRU's three gates' kernels side by side, takes one key per draw;
    a parameter computed rather than drawn, such as S5's HiPPO eigenvalues, takes none.)

    A Module takes `key=` either a key (it is then a whole network) or the `ParamKeys` of the
    network it is part of, and draws its parameters' keys by calling it. So a network's parts
    never derive keys of their own: under `jax.vmap` (seeds) every `fold_in` is a threefry loop that
    XLA compiles, and a key per part would cost a loop more each (8 more for PPO's actor-critic).
    Splitting keys costs more still (a
    split key array must be sliced apart under `vmap`, and each split compiles even when its key
    goes unused). A zero initializer takes a key too, which is dead code for XLA, so that changing
    it never shifts the keys of the parameters after it.
    """

    def __init__(self, key: PRNGKeyArray):
        self.key = key
        self.count = 0

    def __call__(self) -> PRNGKeyArray:
        """The next parameter's key."""
        key = jax.random.fold_in(self.key, self.count)
        self.count += 1
        return key

    @staticmethod
    def of(key: "PRNGKeyArray | ParamKeys") -> "ParamKeys":
        """`key` itself if it is a `ParamKeys` (a part of a network), else a new one (a network)."""
        return key if isinstance(key, ParamKeys) else ParamKeys(key)


NetworkKey = PRNGKeyArray | ParamKeys


class Dense(eqx.Module):
    """Affine layer `x @ kernel + bias` for one example (vmap it at the call site).

    Defaults to Flax `Dense`'s initialisation (lecun-normal kernel, zero bias) rather than
    `eqx.nn.Linear`'s uniform one: the reference algorithms were tuned with it. The kernel draws
    its key before the bias.

    `bias` is declared before `kernel` for speed: the order of the leaves is the order of the
    training loop's carried buffers, from which XLA schedules and fuses the step, and in (kernel,
    bias) order the vmapped DQN step ran 1-3% slower on CPU. It is also the
    order agent files and checkpoints store them in.
    """

    bias: Float[Array, " out_features"]
    kernel: Float[Array, "in_features out_features"]

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        key: NetworkKey,
        kernel_init: Initializer | None = None,
        bias_init: Initializer = zeros,
    ):
        keys = ParamKeys.of(key)
        kernel_init = lecun_normal() if kernel_init is None else kernel_init
        self.kernel = kernel_init(keys(), (in_features, out_features), jnp.float32)
        self.bias = bias_init(keys(), (out_features,), jnp.float32)

    def __call__(self, x: Float[Array, " in_features"]) -> Float[Array, " out_features"]:
        return x @ self.kernel + self.bias


class MLP(eqx.Module):
    """Multi-layer perceptron: `Dense` hidden layers with `activation`, a `Dense` output layer.

    **Arguments:**

    - `in_features`, `hidden_sizes`, `out_features`: layer widths.
    - `activation`: applied after every hidden layer (a static field, not a leaf).
    - `hidden_init`, `output_init`: kernel initializers (default lecun-normal); biases start at zero.
    - `key`: a key, or the `ParamKeys` of the network this MLP is part of.
    """

    layers: tuple[Dense, ...]
    activation: Callable[[Array], Array] = eqx.field(static=True)

    def __init__(
        self,
        in_features: int,
        hidden_sizes: Sequence[int],
        out_features: int,
        *,
        key: NetworkKey,
        activation: Callable[[Array], Array] = jax.nn.relu,
        hidden_init: Initializer | None = None,
        output_init: Initializer | None = None,
    ):
        keys = ParamKeys.of(key)
        sizes = [in_features, *hidden_sizes, out_features]
        inits = [hidden_init] * len(hidden_sizes) + [output_init]
        self.layers = tuple(
            Dense(n_in, n_out, key=keys, kernel_init=init)
            for n_in, n_out, init in zip(sizes[:-1], sizes[1:], inits, strict=True)
        )
        self.activation = activation

    def __call__(self, x: Float[Array, " in_features"]) -> Float[Array, " out_features"]:
        for layer in self.layers[:-1]:
            x = self.activation(layer(x))
        return self.layers[-1](x)


he_normal: Callable[[], Initializer] = jax.nn.initializers.he_normal


class Conv(eqx.Module):
    """2-D convolution of one `(height, width, channels)` example, stride 1, no padding ("VALID"):
    Flax `Conv`'s kernel layout `(kh, kw, in, out)` and initialisation (lecun-normal kernel, zero
    bias) unless told otherwise; the kernel draws its key before the bias, as `Dense`'s.

    Not `eqx.nn.Conv2d`, which is channels-first and initialised differently: grid environments
    (MinAtar, navix) hand out channels-last observations, and the references' CNNs are Flax's."""

    bias: Float[Array, " out_channels"]
    kernel: Float[Array, "kh kw in_channels out_channels"]

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        *,
        key: NetworkKey,
        kernel_init: Initializer | None = None,
        bias_init: Initializer = zeros,
    ):
        keys = ParamKeys.of(key)
        kernel_init = lecun_normal() if kernel_init is None else kernel_init
        shape = (kernel_size, kernel_size, in_channels, out_channels)
        self.kernel = kernel_init(keys(), shape, jnp.float32)
        self.bias = bias_init(keys(), (out_channels,), jnp.float32)

    def __call__(self, x: Float[Array, "height width in_channels"]) -> Float[Array, "h w out_channels"]:
        y = jax.lax.conv_general_dilated(
            x[None], self.kernel, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        return y[0] + self.bias


class CNNTorso(eqx.Module):
    """Grid observations to features: a `Conv` of `channels` 3x3 filters, then one hidden `Dense`
    layer per `hidden_sizes` entry, each followed by a LayerNorm (if `layer_norm`; over the channels
    at every pixel for the convolution) and a relu; He-normal kernels. With `channels=16`,
    `hidden_sizes=(128,)` it is purejaxql's MinAtar CNN (`pqn_minatar.py`).

    `input_scale` multiplies the observation first (purejaxql divides MinAtar's 0/1 grids by 255)."""

    conv: Conv
    dense: tuple[Dense, ...]
    norms: tuple[eqx.nn.LayerNorm, ...] | None
    input_scale: float = eqx.field(static=True)
    conv_size: int = eqx.field(static=True)
    """Features of the flattened convolution's output."""

    def __init__(
        self,
        obs_shape: tuple[int, ...],
        channels: int,
        hidden_sizes: Sequence[int],
        layer_norm: bool = True,
        input_scale: float = 1.0,
        *,
        key: NetworkKey,
    ):
        if len(obs_shape) != 3:
            raise ValueError(
                f"a CNN torso needs (height, width, channels) observations, got shape {obs_shape}"
            )
        keys = ParamKeys.of(key)
        height, width, in_channels = obs_shape
        if min(height, width) < 3:
            raise ValueError(f"a 3x3 convolution needs observations of at least 3x3 cells, got {obs_shape}")
        self.conv = Conv(in_channels, channels, 3, key=keys, kernel_init=he_normal())
        self.conv_size = (height - 2) * (width - 2) * channels
        sizes = [self.conv_size, *hidden_sizes]
        self.dense = tuple(
            Dense(n_in, n_out, key=keys, kernel_init=he_normal())
            for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True)
        )
        # Flax's LayerNorm: epsilon 1e-6, scale 1 and bias 0 to start with.
        widths = [channels, *hidden_sizes]
        self.norms = tuple(eqx.nn.LayerNorm(width, eps=1e-6) for width in widths) if layer_norm else None
        self.input_scale = input_scale

    @property
    def out_features(self) -> int:
        """Width of the features: the last hidden layer's, or the flattened convolution's."""
        return self.dense[-1].kernel.shape[-1] if self.dense else self.conv_size

    def __call__(self, obs: Float[Array, "height width channels"]) -> Float[Array, " features"]:
        x = self.conv(obs * self.input_scale)
        if self.norms is not None:
            x = jax.vmap(jax.vmap(self.norms[0]))(x)
        x = jax.nn.relu(x).reshape(-1)
        for i, layer in enumerate(self.dense):
            x = layer(x)
            if self.norms is not None:
                x = self.norms[i + 1](x)
            x = jax.nn.relu(x)
        return x
