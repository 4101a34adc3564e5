"""Recurrent PPO with a Flax Linen GRU actor-critic: the control group for `pureeqxrl.ppo_rnn`.

Everything but the network is `pureeqxrl.ppo_rnn.make_train` itself (`make_network=
linen_recurrent_actor_critic`). The network is written the
way Linen users write it (PureJaxRL's `ppo_rnn.py` does the same): Flax's own `nn.GRUCell`, scanned
over time with `nn.scan`, the hidden state zeroed where an episode starts. Initialisation matches
the Equinox `RecurrentActorCritic` (encoder orthogonal sqrt 2, GRU lecun-normal / orthogonal, heads
orthogonal 2 / 0.01 / 1.0, zero biases). Only the GRU core has a twin; S5 is Equinox-only.
"""

import math
from collections.abc import Callable

import equinox as eqx
import flax.linen as nn
import jax.numpy as jnp
import numpy as np
from distreqx.distributions import Categorical
from jaxtyping import Array, PRNGKeyArray

from pureeqxrl.envs import VecEnv
from pureeqxrl.linen import LinenNetwork, dense_params, mlp_params
from pureeqxrl.loop import TrainResult
from pureeqxrl.nets import ACTIVATIONS, orthogonal
from pureeqxrl.ppo_rnn import PPORNNConfig, RecurrentActorCritic
from pureeqxrl.ppo_rnn import make_train as _make_train
from pureeqxrl.recurrent import GRU


class ResetGRU(nn.Module):
    """One GRU step that first zeroes the hidden state of environments starting an episode."""

    features: int

    @nn.compact
    def __call__(self, hidden, inputs):
        x, reset = inputs
        hidden = jnp.where(reset[:, None], 0.0, hidden)
        # Flax's own orthogonal init can deadlock XLA:CPU under vmapped seeds; ours gives the
        # same numbers without batched QR (`pureeqxrl.nets.orthogonal`).
        cell = nn.GRUCell(self.features, recurrent_kernel_init=orthogonal(1.0), name="cell")
        return cell(hidden, x)


class LinenRecurrentActorCritic(nn.Module):
    """Dense encoder -> GRU scanned over time -> actor and critic Dense heads, on `(time, envs)`."""

    encoder_sizes: tuple[int, ...]
    hidden_sizes: tuple[int, ...]
    num_actions: int
    activation: Callable = nn.relu

    @nn.compact
    def __call__(self, hidden, obs, resets):
        x = obs.reshape(*obs.shape[:2], -1)
        for i, width in enumerate(self.encoder_sizes):
            x = self.activation(nn.Dense(width, kernel_init=orthogonal(math.sqrt(2)), name=f"encoder_{i}")(x))
        scan = nn.scan(ResetGRU, variable_broadcast="params", split_rngs={"params": False})
        hidden, x = scan(self.encoder_sizes[-1], name="gru")(hidden, (x, resets))
        outputs = []
        for name, size, head_scale in (("actor", self.num_actions, 0.01), ("critic", 1, 1.0)):
            h = x
            for i, width in enumerate(self.hidden_sizes):
                h = self.activation(nn.Dense(width, kernel_init=orthogonal(2.0), name=f"{name}_{i}")(h))
            outputs.append(nn.Dense(size, kernel_init=orthogonal(head_scale), name=f"{name}_head")(h))
        logits, value = outputs
        return hidden, logits, value[..., 0]


class LinenRecurrent(LinenNetwork):
    """`LinenRecurrentActorCritic` as recurrent PPO calls its network, for one environment: the
    methods of `pureeqxrl.ppo_rnn.RecurrentActorCritic`."""

    width: int = eqx.field(static=True)

    def initial_hidden(self) -> Array:
        return jnp.zeros(self.width)

    def _sequence(self, hidden: Array, obs: Array, resets: Array) -> tuple[Array, Array, Array]:
        """`(final hidden, logits, values)` of one environment's sequence (a batch of one)."""
        hidden, logits, values = self.module.apply(
            self.variables, hidden[None], obs[:, None], resets[:, None]
        )
        return hidden[0], logits[:, 0], values[:, 0]

    def step(self, hidden: Array, obs: Array, reset: Array):
        """One time step: `(hidden, policy, value)` (a sequence of one)."""
        hidden, logits, value = self._sequence(hidden, obs[None], reset[None])
        return hidden, Categorical(logits=logits[0]), value[0]

    def __call__(self, hidden: Array, obs: Array, resets: Array):
        """A whole sequence from `hidden`: `(final hidden, policies, values)`."""
        hidden, logits, values = self._sequence(hidden, obs, resets)
        return hidden, Categorical(logits=logits), values


def linen_recurrent_actor_critic(config: PPORNNConfig, env: VecEnv, key: PRNGKeyArray) -> LinenRecurrent:
    """The Linen twin of `pureeqxrl.ppo_rnn.recurrent_actor_critic` (a GRU core only)."""
    check_gru(config)
    module = LinenRecurrentActorCritic(
        tuple(config.encoder_sizes),
        tuple(config.hidden_sizes),
        env.num_actions,
        ACTIVATIONS[config.activation],
    )
    width = config.encoder_sizes[-1]
    dummy_obs = jnp.zeros((1, 1, int(np.prod(env.observation_shape))))
    variables = module.init(key, jnp.zeros((1, width)), dummy_obs, jnp.zeros((1, 1), bool))
    return LinenRecurrent(variables, module, width)


def check_gru(config: PPORNNConfig) -> None:
    """The Linen twin's core is a GRU: an S5 config is refused."""
    if config.cell != "gru":
        raise ValueError(f"the Linen twin has a GRU core only, got cell={config.cell!r}")


def make_train(config: PPORNNConfig, on_log=None) -> Callable[[PRNGKeyArray], TrainResult]:
    """`pureeqxrl.ppo_rnn.make_train` with the Linen network (an S5 config refused at once)."""
    check_gru(config)
    return _make_train(config, make_network=linen_recurrent_actor_critic, on_log=on_log)


def params_from_equinox_gru(gru: GRU) -> dict:
    """The parameters of a Flax `nn.GRUCell` holding exactly the numbers of an Equinox `GRU`."""
    cell = {}
    for gate, kernel, bias, hidden_kernel in zip(
        "rzn",
        jnp.split(gru.input_kernel, 3, axis=1),
        jnp.split(gru.input_bias, 3),
        jnp.split(gru.hidden_kernel, 3, axis=1),
        strict=True,
    ):
        cell[f"i{gate}"] = {"kernel": kernel, "bias": bias}
        cell[f"h{gate}"] = {"kernel": hidden_kernel}
    cell["hn"]["bias"] = gru.hidden_bias
    return cell


def params_from_equinox(network: RecurrentActorCritic) -> dict:
    """The Linen variables holding exactly the numbers of an Equinox GRU `RecurrentActorCritic`."""
    encoder = network.encoder.layers
    params = dense_params([f"encoder_{i}" for i in range(len(encoder))], encoder)
    params["gru"] = {"cell": params_from_equinox_gru(network.core)}
    return {"params": params | mlp_params("actor", network.actor) | mlp_params("critic", network.critic)}
