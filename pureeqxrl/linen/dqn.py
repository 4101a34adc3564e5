"""DQN with a Flax Linen Q-network: the control group for `pureeqxrl.dqn`.

Everything but the network is `pureeqxrl.dqn` itself (`make_network=linen_q_network`), so a speed or
return difference between the two can only come from the network library.
"""

from collections.abc import Callable

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, PRNGKeyArray

from pureeqxrl import dqn
from pureeqxrl.envs import VecEnv
from pureeqxrl.linen import LinenNetwork, dense_params
from pureeqxrl.loop import TrainResult


class LinenQNetwork(nn.Module):
    """PureJaxRL's QNetwork: Dense layers (lecun-normal kernel, zero bias) with relu."""

    hidden_sizes: tuple[int, ...]
    num_actions: int

    @nn.compact
    def __call__(self, obs: jnp.ndarray) -> jnp.ndarray:
        x = obs.reshape(obs.shape[0], -1)
        for size in self.hidden_sizes:
            x = nn.relu(nn.Dense(size)(x))
        return nn.Dense(self.num_actions)(x)


class LinenQ(LinenNetwork):
    """`LinenQNetwork` as DQN calls its network: one observation to its Q-values."""

    def __call__(self, obs: Array) -> Array:
        return self.apply(obs)


def linen_q_network(config: dqn.DQNConfig, env: VecEnv, key: PRNGKeyArray) -> LinenQ:
    """The Linen twin of `pureeqxrl.dqn.q_network`."""
    module = LinenQNetwork(tuple(config.hidden_sizes), env.num_actions)
    dummy_obs = jnp.zeros((1, int(np.prod(env.observation_shape))), jnp.float32)
    return LinenQ(module.init(key, dummy_obs), module)


def make_train(config: dqn.DQNConfig, on_log=None) -> Callable[[PRNGKeyArray], TrainResult]:
    """`pureeqxrl.dqn.make_train` with the Linen network."""
    return dqn.make_train(config, make_network=linen_q_network, on_log=on_log)


def params_from_equinox(network: dqn.QNetwork) -> dict:
    """The Linen variables holding exactly the numbers of an Equinox `QNetwork`."""
    return {"params": dense_params([f"Dense_{i}" for i in range(len(network.layers))], network.layers)}
