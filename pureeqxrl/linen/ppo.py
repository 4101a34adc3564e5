"""PPO with a Flax Linen actor-critic: the control group for `pureeqxrl.ppo`.

Everything but the network is `pureeqxrl.ppo` itself (passed a Linen network as a `Functional`), so
a speed or return difference between the two can only come from the network library. The layers
get the same initialisation as the Equinox `ActorCritic` (orthogonal sqrt 2 / 0.01 / 1.0, zero bias).
"""

import math
from collections.abc import Callable

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
from distreqx.distributions import Categorical
from jaxtyping import PRNGKeyArray

from pureeqxrl import ppo
from pureeqxrl.envs import VecEnv
from pureeqxrl.metrics import TrainResult
from pureeqxrl.nets import Functional, orthogonal


class LinenActorCritic(nn.Module):
    """PureJaxRL's ActorCritic: separate actor and critic Dense stacks on the flattened observation."""

    hidden_sizes: tuple[int, ...]
    num_actions: int
    activation: Callable = nn.tanh

    @nn.compact
    def __call__(self, obs: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
        x = obs.reshape(obs.shape[0], -1)
        outputs = []
        for name, size, head_scale in (("actor", self.num_actions, 0.01), ("critic", 1, 1.0)):
            h = x
            for i, width in enumerate(self.hidden_sizes):
                h = nn.Dense(width, kernel_init=orthogonal(math.sqrt(2)), name=f"{name}_{i}")(h)
                h = self.activation(h)
            outputs.append(nn.Dense(size, kernel_init=orthogonal(head_scale), name=f"{name}_head")(h))
        logits, value = outputs
        return logits, value[:, 0]


def linen_actor_critic(config: ppo.PPOConfig, env: VecEnv) -> Functional:
    module = LinenActorCritic(
        tuple(config.hidden_sizes), env.num_actions, ppo.ACTIVATIONS[config.activation]
    )
    dummy_obs = jnp.zeros((1, int(np.prod(env.observation_shape))), jnp.float32)

    def apply(params, obs):
        logits, value = module.apply(params, obs)
        return Categorical(logits=logits), value

    return Functional(init=lambda key: module.init(key, dummy_obs), apply=apply)


def make_train(
    config: ppo.PPOConfig, on_log=None
) -> Callable[[PRNGKeyArray], TrainResult]:
    """`pureeqxrl.ppo.make_train` with the Linen network."""
    return ppo.make_train(config, network_fn=linen_actor_critic, on_log=on_log)


def params_from_equinox(network: ppo.ActorCritic) -> dict:
    """The Linen variables holding exactly the numbers of an Equinox `ActorCritic`."""
    params = {}
    for name, mlp in (("actor", network.actor), ("critic", network.critic)):
        *hidden, head = mlp.layers
        for i, layer in enumerate(hidden):
            params[f"{name}_{i}"] = {"kernel": layer.kernel, "bias": layer.bias}
        params[f"{name}_head"] = {"kernel": head.kernel, "bias": head.bias}
    return {"params": params}
