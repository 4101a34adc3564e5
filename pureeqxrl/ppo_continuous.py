"""PPO (and DPO) for continuous actions: PureJaxRL's `ppo_continuous_action.py` and
`dpo_continuous_action.py`, on the training loop of `pureeqxrl.ppo`.

What is specific to continuous control lives here: the config's defaults and the Gaussian
actor-critic (256-256 tanh MLPs, a state-independent log-std that starts at 0). Everything else is
`pureeqxrl.ppo.make_train`, which already handles the rest of the reference's recipe:

- actions are sampled from the Gaussian and clipped to the environment's bounds only when stepping;
  the stored action and its log-probability stay unclipped (as the reference);
- `normalize_obs` / `normalize_reward` (on by default, as the reference's NormalizeVec wrappers) keep
  statistics of one observation's shape, and the observation statistics are saved with the agent
  and used at evaluation (`pureeqxrl.normalize`);
- `objective="dpo"` selects DPO's drift objective (alpha 2.0, beta 0.6);
- Brax environments (`brax-hopper`, ...) keep their time limit as a truncation and bootstrap it.
"""

from collections.abc import Callable
from dataclasses import dataclass

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from distreqx.distributions import Independent, Normal
from jaxtyping import Array, Float, PRNGKeyArray

from pureeqxrl import ppo
from pureeqxrl.envs import VecEnv
from pureeqxrl.nets import MLP, Functional


@dataclass(frozen=True)
class PPOContinuousConfig(ppo.PPOConfig):
    """Continuous-action PPO/DPO. Hyperparameters are PureJaxRL's `ppo_continuous_action.py` ones
    (lr 3e-4 constant, 4 epochs x 32 minibatches, no entropy bonus, 256-256 tanh, normalised
    observations and rewards); the environment and its sizes default to Pendulum-v1 with 64 envs x
    64 steps and 1e6 steps (PureJaxRL's Brax hopper runs use 2048 x 10 and 5e7)."""

    env: str = "Pendulum-v1"
    """gymnax (Pendulum-v1, MountainCarContinuous-v0) or Brax ("brax-hopper", ...) environment."""
    total_timesteps: int = 1_000_000
    num_envs: int = 64
    num_steps: int = 64
    learning_rate: float = 3e-4
    anneal_lr: bool = False
    num_minibatches: int = 32
    ent_coef: float = 0.0
    hidden_sizes: tuple[int, ...] = (256, 256)
    normalize_obs: bool = True
    normalize_reward: bool = True


# NETWORK


class GaussianActorCritic(eqx.Module):
    """Actor MLP for the action mean, a free log-std per action dimension, a separate critic MLP.

    PureJaxRL's init (`ppo.actor_and_critic_mlps`), and log-std 0 (a unit standard deviation).
    `log_std` is the last field, where the Linen twin's sorted parameter names put it, so that both
    training loops carry their buffers in one order (see `pureeqxrl.nets.MLP`).
    """

    actor_mean: MLP
    critic: MLP
    log_std: Float[Array, " action_dim"]

    def __init__(
        self,
        obs_size: int,
        action_dim: int,
        hidden_sizes: tuple[int, ...],
        activation: Callable[[Array], Array] = jax.nn.tanh,
        *,
        key: PRNGKeyArray,
    ):
        self.actor_mean, self.critic = ppo.actor_and_critic_mlps(
            obs_size, action_dim, hidden_sizes, activation, key=key
        )
        self.log_std = jnp.zeros(action_dim)

    def __call__(self, obs: Float[Array, "..."]) -> tuple[Float[Array, " action_dim"], Float[Array, ""]]:
        """Action mean and state value of one observation."""
        x = obs.reshape(-1)
        return self.actor_mean(x), self.critic(x)[0]


def diagonal_gaussian(mean: Float[Array, "batch action_dim"], log_std: Float[Array, " action_dim"]):
    """A batch of diagonal Gaussians (one distreqx `Independent(Normal)` per example)."""
    return Independent(Normal(mean, jnp.broadcast_to(jnp.exp(log_std), mean.shape)))


def gaussian_actor_critic(config: PPOContinuousConfig, env: VecEnv) -> Functional:
    """The Equinox `GaussianActorCritic` as a `Functional`: `apply -> (Gaussian policies, values)`."""
    obs_size = int(np.prod(env.observation_shape))
    (action_dim,) = env.action_shape
    activation = ppo.ACTIVATIONS[config.activation]

    def init(key: PRNGKeyArray) -> GaussianActorCritic:
        return GaussianActorCritic(obs_size, action_dim, config.hidden_sizes, activation, key=key)

    def apply(network: GaussianActorCritic, obs: Array):
        mean, value = jax.vmap(network)(obs)
        return diagonal_gaussian(mean, network.log_std), value

    return Functional(init=init, apply=apply)


# TRAINING: pureeqxrl.ppo's loop, which picks `GaussianActorCritic` for continuous actions and
# returns the observation statistics to evaluate the policy with as `train(key).obs_stats`.

make_train = ppo.make_train
