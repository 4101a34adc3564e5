"""PPO with Flax Linen actor-critics: the control group for `pureeqxrl.ppo` (discrete and
continuous actions).

Everything but the network is `pureeqxrl.ppo` itself (`make_network=linen_network`), so a speed or
return difference between the two can only come from the network library. The layers
get the same initialisation as the Equinox `ActorCritic` and `GaussianActorCritic` (orthogonal
sqrt 2 / 0.01 / 1.0, zero bias, log-std 0).
"""

import math
from collections.abc import Callable

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
from distreqx.distributions import Categorical
from jaxtyping import Array, PRNGKeyArray

from pureeqxrl import ppo
from pureeqxrl.envs import VecEnv
from pureeqxrl.heads import ActorCritic, GaussianActorCritic, diagonal_gaussian
from pureeqxrl.linen import LinenNetwork, mlp_params
from pureeqxrl.loop import TrainResult
from pureeqxrl.nets import ACTIVATIONS, orthogonal
from pureeqxrl.ppo import PPOConfig


class LinenActorCritic(nn.Module):
    """PureJaxRL's ActorCritic: separate actor and critic Dense stacks on the flattened observation.

    With `free_log_std`, the actor's output is a Gaussian mean and a `log_std` parameter (zeros) is
    returned too, one row per observation (PureJaxRL's continuous ActorCritic).
    """

    hidden_sizes: tuple[int, ...]
    num_outputs: int
    activation: Callable = nn.tanh
    free_log_std: bool = False

    @nn.compact
    def __call__(self, obs: jnp.ndarray):
        x = obs.reshape(obs.shape[0], -1)
        outputs = []
        for name, size, head_scale in (("actor", self.num_outputs, 0.01), ("critic", 1, 1.0)):
            h = x
            for i, width in enumerate(self.hidden_sizes):
                h = nn.Dense(width, kernel_init=orthogonal(math.sqrt(2)), name=f"{name}_{i}")(h)
                h = self.activation(h)
            outputs.append(nn.Dense(size, kernel_init=orthogonal(head_scale), name=f"{name}_head")(h))
        actor_out, value = outputs
        if self.free_log_std:
            log_std = self.param("log_std", nn.initializers.zeros, (self.num_outputs,))
            return actor_out, jnp.broadcast_to(log_std, actor_out.shape), value[:, 0]
        return actor_out, value[:, 0]


class LinenCategorical(LinenNetwork):
    """`LinenActorCritic` as PPO calls its network: one observation to `(Categorical, value)`."""

    def __call__(self, obs: Array):
        logits, value = self.apply(obs)
        return Categorical(logits=logits), value


class LinenGaussian(LinenNetwork):
    """`LinenActorCritic(free_log_std=True)` as PPO calls its network: one observation to
    `(diagonal Gaussian, value)`."""

    def __call__(self, obs: Array):
        mean, log_std, value = self.apply(obs)
        return diagonal_gaussian(mean, log_std), value


def linen_network(config: PPOConfig, env: VecEnv, key: PRNGKeyArray) -> LinenCategorical | LinenGaussian:
    """The Linen twin of `pureeqxrl.heads.actor_critic`: the actor-critic for the env's action space."""
    activation = ACTIVATIONS[config.activation]
    dummy_obs = jnp.zeros((1, int(np.prod(env.observation_shape))), jnp.float32)
    if env.discrete:
        module = LinenActorCritic(tuple(config.hidden_sizes), env.num_actions, activation)
        return LinenCategorical(module.init(key, dummy_obs), module)
    (action_dim,) = env.action_shape
    module = LinenActorCritic(tuple(config.hidden_sizes), action_dim, activation, free_log_std=True)
    return LinenGaussian(module.init(key, dummy_obs), module)


def make_train(config: PPOConfig, on_log=None) -> Callable[[PRNGKeyArray], TrainResult]:
    """`pureeqxrl.ppo.make_train` with the Linen networks."""
    return ppo.make_train(config, make_network=linen_network, on_log=on_log)


def params_from_equinox(network: ActorCritic | GaussianActorCritic) -> dict:
    """The Linen variables holding exactly the numbers of an Equinox (Gaussian) actor-critic."""
    params = {}
    if isinstance(network, GaussianActorCritic):
        params["log_std"] = network.log_std
        actor = network.actor_mean
    else:
        actor = network.actor
    return {"params": params | mlp_params("actor", actor) | mlp_params("critic", network.critic)}
