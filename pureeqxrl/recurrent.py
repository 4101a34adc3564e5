"""Recurrent cores for agents with memory: a GRU and a stack of S5 state-space layers.

Both follow one protocol, so `pureeqxrl.ppo_rnn` runs either, and both handle one environment (vmap
over environments at the call site):

- `initial_hidden()`: the zero state of one environment;
- `step(hidden, x, reset) -> (hidden, y)`: one time step, for acting;
- `__call__(hidden, xs, resets) -> (hidden, ys)`: a whole sequence, for the loss.

`reset[t]` says that step `t` starts a new episode: the state is zeroed *before* step `t` reads it,
so one sequence may hold several episodes without any leaking into the next.
"""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Complex, Float

from pureeqxrl.nets import Dense, NetworkKey, ParamKeys, lecun_normal, orthogonal, zeros


class GRU(eqx.Module):
    """Gated recurrent unit with Flax `GRUCell`'s equations and initialisation.

        r = sigmoid(x W_ir + b_ir + h W_hr)        z = sigmoid(x W_iz + b_iz + h W_hz)
        n = tanh(x W_in + b_in + r * (h W_hn + b_hn))        h' = (1 - z) * n + z * h

    Input kernels are lecun-normal, recurrent kernels orthogonal (one draw per gate), biases zero;
    keys (`pureeqxrl.nets.ParamKeys`) in the order input kernels r, z, n, input bias, recurrent
    kernels r, z, n, recurrent bias.
    The three gates' kernels are stored side by side, `(in, 3 * hidden)` and `(hidden, 3 * hidden)`:
    over a sequence, the input half is one matrix product for all steps before the loop, and only
    `h @ hidden_kernel` stays in the sequential part (`__call__`, whose gradient is `gru_sequence`'s).
    """

    input_kernel: Float[Array, "in_features 3*hidden"]
    input_bias: Float[Array, " 3*hidden"]
    hidden_kernel: Float[Array, "hidden 3*hidden"]
    hidden_bias: Float[Array, " hidden"]
    """The candidate gate's recurrent bias (`b_hn`): inside `r * (...)`, so not foldable into `b_in`."""

    def __init__(self, in_features: int, hidden_size: int, *, key: NetworkKey):
        keys = ParamKeys.of(key)
        input_init, hidden_init = lecun_normal(), orthogonal(1.0)
        self.input_kernel = jnp.concatenate(
            [input_init(keys(), (in_features, hidden_size), jnp.float32) for _ in "rzn"], axis=1
        )
        self.input_bias = zeros(keys(), (3 * hidden_size,), jnp.float32)
        self.hidden_kernel = jnp.concatenate(
            [hidden_init(keys(), (hidden_size, hidden_size), jnp.float32) for _ in "rzn"], axis=1
        )
        self.hidden_bias = zeros(keys(), (hidden_size,), jnp.float32)

    def initial_hidden(self) -> Float[Array, " hidden"]:
        return jnp.zeros(self.hidden_bias.shape)

    def step(
        self, hidden: Float[Array, " hidden"], x: Float[Array, " in_features"], reset: Bool[Array, ""]
    ) -> tuple[Float[Array, " hidden"], Float[Array, " hidden"]]:
        projected = x @ self.input_kernel + self.input_bias
        hidden, _ = gru_cell(self.hidden_kernel, self.hidden_bias, hidden, projected, reset)
        return hidden, hidden

    def __call__(
        self,
        hidden: Float[Array, " hidden"],
        xs: Float[Array, "time in_features"],
        resets: Bool[Array, " time"],
    ) -> tuple[Float[Array, " hidden"], Float[Array, "time hidden"]]:
        projected = xs @ self.input_kernel + self.input_bias  # every step at once
        return gru_sequence(self.hidden_kernel, self.hidden_bias, hidden, projected, resets)


def gru_cell(
    hidden_kernel: Float[Array, "hidden 3*hidden"],
    hidden_bias: Float[Array, " hidden"],
    hidden: Float[Array, " hidden"],
    projected: Float[Array, " 3*hidden"],
    reset: Bool[Array, ""],
) -> tuple[Float[Array, " hidden"], tuple[Float[Array, " hidden"], ...]]:
    """One GRU step from `hidden` (zeroed first where `reset`) and the step's input already
    projected (`x W_i + b_i`, the three gates side by side): the new hidden state, and what the
    step's gradient needs, `(h, r, z, n, h W_hn + b_hn)` with `h` the state after the reset."""
    hidden = jnp.where(reset, 0.0, hidden)
    x_r, x_z, x_n = jnp.split(projected, 3)
    h_r, h_z, h_n = jnp.split(hidden @ hidden_kernel, 3)
    r = jax.nn.sigmoid(x_r + h_r)
    z = jax.nn.sigmoid(x_z + h_z)
    candidate_input = h_n + hidden_bias
    n = jnp.tanh(x_n + r * candidate_input)
    return (1.0 - z) * n + z * hidden, (hidden, r, z, n, candidate_input)


# A sequence's gradient, written out. JAX's own gradient of the scan adds each step's outer product
# h_t^T dgates_t into the recurrent kernel's gradient inside the backward loop: a (hidden, 3*hidden)
# array carried and updated at every step. Here the backward loop only hands out each step's gate
# gradients, and the kernel's gradient is one matrix product of the whole sequence after it (the
# way cuDNN computes an RNN's weight gradients). The numbers are the same up to the order of the
# float sums: `tests/test_recurrent.py` checks them against JAX's gradient of the step-by-step loop.


@jax.custom_vjp
def gru_sequence(
    hidden_kernel: Float[Array, "hidden 3*hidden"],
    hidden_bias: Float[Array, " hidden"],
    hidden: Float[Array, " hidden"],
    projected: Float[Array, "time 3*hidden"],
    resets: Bool[Array, " time"],
) -> tuple[Float[Array, " hidden"], Float[Array, "time hidden"]]:
    """`gru_cell` over a sequence of projected inputs: `(final hidden, every step's hidden)`."""

    def one_step(hidden, inputs):
        hidden, _ = gru_cell(hidden_kernel, hidden_bias, hidden, *inputs)
        return hidden, hidden

    return jax.lax.scan(one_step, hidden, (projected, resets))


def _gru_sequence_forward(hidden_kernel, hidden_bias, hidden, projected, resets):
    def one_step(hidden, inputs):
        hidden, saved = gru_cell(hidden_kernel, hidden_bias, hidden, *inputs)
        return hidden, (hidden, saved)

    final, (hiddens, saved) = jax.lax.scan(one_step, hidden, (projected, resets))
    return (final, hiddens), (hidden_kernel, saved, resets)


def _gru_sequence_backward(residuals, cotangents):
    hidden_kernel, saved, resets = residuals
    final_cotangent, hiddens_cotangent = cotangents

    def one_step_back(d_hidden, inputs):
        d_output, (hidden, r, z, n, candidate_input), reset = inputs
        d_hidden = d_hidden + d_output  # the step's new state goes on and is an output
        d_n = d_hidden * (1.0 - z) * (1.0 - n * n)  # through tanh
        d_r = d_n * candidate_input * r * (1.0 - r)  # through the sigmoids
        d_z = d_hidden * (hidden - n) * z * (1.0 - z)
        d_recurrent = jnp.concatenate([d_r, d_z, d_n * r])  # of hidden @ hidden_kernel (+ b_hn)
        d_projected = jnp.concatenate([d_r, d_z, d_n])
        d_hidden = d_hidden * z + d_recurrent @ hidden_kernel.T
        return jnp.where(reset, 0.0, d_hidden), (d_recurrent, d_projected)

    d_start, (d_recurrent, d_projected) = jax.lax.scan(
        one_step_back, final_cotangent, (hiddens_cotangent, saved, resets), reverse=True
    )
    hiddens = saved[0]  # each step's state after its reset
    size = hidden_kernel.shape[0]
    return hiddens.T @ d_recurrent, d_recurrent[:, 2 * size :].sum(0), d_start, d_projected, None


gru_sequence.defvjp(_gru_sequence_forward, _gru_sequence_backward)


# S5 (Smith, Warrington & Linderman, 2023), as PureJaxRL's experimental/s5 uses it: a diagonal
# complex linear recurrence x_t = A x_{t-1} + B u_t, y_t = 2 Re(C x_t) + D u_t per layer,
# initialised from the HiPPO-LegS matrix, zero-order-hold discretised, run as a parallel scan.


def hippo_diagonal(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues and eigenvectors of the normal part of the HiPPO-LegS matrix of order `size`.

    HiPPO-LegS is `A[n, k] = -sqrt((2n+1)(2k+1))` below the diagonal and `-(n+1)` on it; adding
    `P P^T` with `P[n] = sqrt(n + 1/2)` makes it `-I/2` plus a skew-symmetric matrix, which is
    diagonalisable by a unitary `V`. Computed in numpy, once, outside any traced program.
    """
    n = np.arange(size)
    p = np.sqrt(n + 0.5)
    legs = -np.tril(np.sqrt(2 * n[:, None] + 1) * np.sqrt(2 * n[None, :] + 1)) + np.diag(n)
    normal = legs + p[:, None] * p[None, :]
    eigenvalues_imag, eigenvectors = np.linalg.eigh(-1j * (normal - np.diag(np.diag(normal))))
    eigenvalues = np.mean(np.diag(normal)) + 1j * eigenvalues_imag
    return eigenvalues.astype(np.complex64), eigenvectors.astype(np.complex64)


class S5Layer(eqx.Module):
    """One S5 layer: the state-space model, then GELU and a sigmoid gate, plus the residual
    (PureJaxRL's "half_glu1" layer, no normalisation).

    With conjugate symmetry, `state_size` complex states stand for `2 * state_size` real-valued
    ones: only one eigenvalue of each conjugate pair is kept and the output is `2 Re(C x)`.
    Parameters are real arrays (real and imaginary parts apart), so optax treats them as usual.
    The eigenvalues are computed, not drawn; the drawn parameters take their keys
    (`pureeqxrl.nets.ParamKeys`) in the order B, C, D, log step, then the gate's kernel and bias.
    """

    lambda_re: Float[Array, " state"]
    lambda_im: Float[Array, " state"]
    b_re: Float[Array, "state features"]
    b_im: Float[Array, "state features"]
    c_re: Float[Array, "features state"]
    c_im: Float[Array, "features state"]
    d: Float[Array, " features"]
    log_step: Float[Array, " state"]
    gate: Dense

    def __init__(
        self,
        features: int,
        state_size: int,
        *,
        key: NetworkKey,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
    ):
        keys = ParamKeys.of(key)
        eigenvalues, eigenvectors = hippo_diagonal(2 * state_size)
        eigenvalues, v = eigenvalues[:state_size], eigenvectors[:, :state_size]
        # B and C are drawn for the 2P real-valued states, then moved into the eigenbasis.
        b = lecun_normal()(keys(), (2 * state_size, features), jnp.float32)
        b_tilde = jnp.asarray(v.conj().T) @ b.astype(jnp.complex64)
        c = lecun_normal()(keys(), (features, 2 * state_size, 2), jnp.float32)
        c_tilde = (c[..., 0] + 1j * c[..., 1]).astype(jnp.complex64) @ jnp.asarray(v)
        self.lambda_re = jnp.asarray(eigenvalues.real)
        self.lambda_im = jnp.asarray(eigenvalues.imag)
        self.b_re, self.b_im = b_tilde.real, b_tilde.imag
        self.c_re, self.c_im = c_tilde.real, c_tilde.imag
        self.d = jax.random.normal(keys(), (features,))
        self.log_step = jax.random.uniform(
            keys(), (state_size,), minval=math.log(dt_min), maxval=math.log(dt_max)
        )
        self.gate = Dense(features, features, key=keys)

    def initial_hidden(self) -> Complex[Array, " state"]:
        return jnp.zeros(self.lambda_re.shape, jnp.complex64)

    def discretised(self) -> tuple[Complex[Array, " state"], Complex[Array, "state features"]]:
        """Zero-order hold: `A = exp(lambda dt)`, `B = (A - 1) / lambda * B~`."""
        lam = self.lambda_re + 1j * self.lambda_im
        a = jnp.exp(lam * jnp.exp(self.log_step))
        b = ((a - 1.0) / lam)[:, None] * (self.b_re + 1j * self.b_im)
        return a, b

    def _output(self, states: Complex[Array, "... state"], u: Float[Array, "... features"]):
        y = 2.0 * (states @ (self.c_re + 1j * self.c_im).T).real + self.d * u
        y = jax.nn.gelu(y)
        return u + y * jax.nn.sigmoid(self.gate(y))

    def step(
        self, hidden: Complex[Array, " state"], u: Float[Array, " features"], reset: Bool[Array, ""]
    ) -> tuple[Complex[Array, " state"], Float[Array, " features"]]:
        a, b = self.discretised()
        hidden = a * jnp.where(reset, 0.0, hidden) + b @ u.astype(jnp.complex64)
        return hidden, self._output(hidden, u)

    def __call__(
        self,
        hidden: Complex[Array, " state"],
        us: Float[Array, "time features"],
        resets: Bool[Array, " time"],
    ) -> tuple[Complex[Array, " state"], Float[Array, "time features"]]:
        a, b = self.discretised()
        # x_t = a_t x_{t-1} + b_t with a_t = 0 where an episode starts: a linear recurrence with a
        # time-varying diagonal, whose steps compose associatively, so it runs in log(time) depth.
        decay = jnp.where(resets[:, None], jnp.zeros_like(a), a)
        inputs = us.astype(jnp.complex64) @ b.T
        inputs = inputs.at[0].add(decay[0] * hidden)

        def compose(earlier, later):
            a_1, x_1 = earlier
            a_2, x_2 = later
            return a_2 * a_1, a_2 * x_1 + x_2

        _, states = jax.lax.associative_scan(compose, (decay, inputs))
        return states[-1], self._output(states, us)


class S5(eqx.Module):
    """A stack of `S5Layer`s of width `features`; the hidden state is `(layers, state_size)`."""

    layers: tuple[S5Layer, ...]

    def __init__(self, features: int, state_size: int, num_layers: int, *, key: NetworkKey):
        keys = ParamKeys.of(key)  # the layers draw one after another
        self.layers = tuple(S5Layer(features, state_size, key=keys) for _ in range(num_layers))

    def initial_hidden(self) -> Complex[Array, "layers state"]:
        return jnp.stack([layer.initial_hidden() for layer in self.layers])

    def step(self, hidden, x, reset):
        new_hidden = []
        for layer, layer_hidden in zip(self.layers, hidden, strict=True):
            layer_hidden, x = layer.step(layer_hidden, x, reset)
            new_hidden.append(layer_hidden)
        return jnp.stack(new_hidden), x

    def __call__(self, hidden, xs, resets):
        new_hidden = []
        for layer, layer_hidden in zip(self.layers, hidden, strict=True):
            layer_hidden, xs = layer(layer_hidden, xs, resets)
            new_hidden.append(layer_hidden)
        return jnp.stack(new_hidden), xs
