"""Policy heads: the actor-critics of the PPO family, chosen by the environment's action space;
SAC's tanh-squashed Gaussian; the Q-value heads of DQN and PQN.

An actor-critic maps one observation to a policy and a value: the policy is a distreqx
distribution (a `Categorical` for discrete actions, a diagonal Gaussian for continuous ones).
`jax.vmap(network)(obs_batch)` gives a batch of them, so the training code samples, scores and
measures entropy the same way whatever the action space (`sample`, `log_prob`, `entropy`, `mode`).

The actor-critics are PureJaxRL's: separate actor and critic MLPs on the flattened observation,
hidden kernels orthogonal(sqrt 2), actor head orthogonal(0.01) (a near-uniform / near-zero-mean
first policy), critic head orthogonal(1.0), zero biases, and for continuous actions a free log-std
per action dimension that starts at 0.
"""

import math
from collections.abc import Callable
from typing import Protocol

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from distreqx.bijectors import Block, Tanh
from distreqx.distributions import AbstractDistribution, Categorical, Independent, Normal, Transformed
from jaxtyping import Array, Float, Int, PRNGKeyArray

from pureeqxrl.envs import VecEnv
from pureeqxrl.nets import ACTIVATIONS, MLP, NetworkKey, ParamKeys, orthogonal, zeros


class ActorCriticSettings(Protocol):
    """What the actor-critics read from a config (`pureeqxrl.ppo.PPOConfig` has it)."""

    hidden_sizes: tuple[int, ...]
    activation: str


# DISTRIBUTIONS: a batch of distreqx distributions (each describes one example; vmap over the batch)


def sample(policy: AbstractDistribution, key: PRNGKeyArray) -> Array:
    keys = jax.random.split(key, jax.tree.leaves(policy)[0].shape[0])
    return jax.vmap(lambda p, k: p.sample(k))(policy, keys)


def log_prob(policy: AbstractDistribution, action: Array) -> Float[Array, " batch"]:
    return jax.vmap(lambda p, a: p.log_prob(a))(policy, action)


def entropy(policy: AbstractDistribution) -> Float[Array, " batch"]:
    return jax.vmap(lambda p: p.entropy())(policy)


def mode(policy: AbstractDistribution) -> Array:
    return jax.vmap(lambda p: p.mode())(policy)


def diagonal_gaussian(mean: Float[Array, " action_dim"], log_std: Float[Array, " action_dim"]) -> Independent:
    """A diagonal Gaussian (a distreqx `Independent(Normal)`) of one example."""
    return Independent(Normal(mean, jnp.exp(log_std)))


def tanh_gaussian(mean: Float[Array, " action_dim"], log_std: Float[Array, " action_dim"]) -> Transformed:
    """A diagonal Gaussian squashed by tanh into [-1, 1] (SAC's policy, one example).

    Its `sample_and_log_prob` applies the change-of-variables correction `- sum log(1 - tanh(u)^2)`
    in distreqx's stable form; use it rather than `log_prob` of a sample, which would invert tanh
    where a float32 sample has rounded to +-1."""
    return Transformed(Independent(Normal(mean, jnp.exp(log_std))), Block(Tanh(), 1))


# ACTOR-CRITICS


def actor_and_critic_mlps(
    obs_size: int,
    actor_outputs: int,
    hidden_sizes: tuple[int, ...],
    activation: Callable[[Array], Array],
    *,
    key: NetworkKey,
) -> tuple[MLP, MLP]:
    """PureJaxRL's separate actor and critic MLPs (init in the module docstring); the critic's
    parameters draw their keys after the actor's (`pureeqxrl.nets.ParamKeys`)."""
    keys = ParamKeys.of(key)
    hidden_init = orthogonal(math.sqrt(2))
    actor = MLP(
        obs_size,
        hidden_sizes,
        actor_outputs,
        key=keys,
        activation=activation,
        hidden_init=hidden_init,
        output_init=orthogonal(0.01),
    )
    critic = MLP(
        obs_size,
        hidden_sizes,
        1,
        key=keys,
        activation=activation,
        hidden_init=hidden_init,
        output_init=orthogonal(1.0),
    )
    return actor, critic


class ActorCritic(eqx.Module):
    """The policy (a `Categorical` over the actor's logits) and the state value of one observation,
    from separate actor and critic MLPs."""

    actor: MLP
    critic: MLP

    def __init__(
        self,
        obs_size: int,
        num_actions: int,
        hidden_sizes: tuple[int, ...],
        activation: Callable[[Array], Array] = jax.nn.tanh,
        *,
        key: NetworkKey,
    ):
        self.actor, self.critic = actor_and_critic_mlps(
            obs_size, num_actions, hidden_sizes, activation, key=key
        )

    def __call__(self, obs: Float[Array, "..."]) -> tuple[Categorical, Float[Array, ""]]:
        x = obs.reshape(-1)
        return Categorical(logits=self.actor(x)), self.critic(x)[0]


class GaussianActorCritic(eqx.Module):
    """The policy (a diagonal Gaussian: the actor's mean, a free log-std per action dimension) and
    the state value of one observation."""

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
        key: NetworkKey,
    ):
        keys = ParamKeys.of(key)
        self.actor_mean, self.critic = actor_and_critic_mlps(
            obs_size, action_dim, hidden_sizes, activation, key=keys
        )
        self.log_std = zeros(keys(), (action_dim,), jnp.float32)  # a unit standard deviation

    def __call__(self, obs: Float[Array, "..."]) -> tuple[Independent, Float[Array, ""]]:
        x = obs.reshape(-1)
        return diagonal_gaussian(self.actor_mean(x), self.log_std), self.critic(x)[0]


def actor_critic(
    config: ActorCriticSettings, env: VecEnv, key: PRNGKeyArray
) -> ActorCritic | GaussianActorCritic:
    """The actor-critic for the environment's action space (`ppo.make_learner`'s default network)."""
    obs_size = int(np.prod(env.observation_shape))
    activation = ACTIVATIONS[config.activation]
    if env.discrete:
        return ActorCritic(obs_size, env.num_actions, config.hidden_sizes, activation, key=key)
    (action_dim,) = env.action_shape
    return GaussianActorCritic(obs_size, action_dim, config.hidden_sizes, activation, key=key)


def greedy_action(network: ActorCritic, obs: Float[Array, "..."]) -> Int[Array, ""]:
    """Most likely action of a trained `ActorCritic` for one observation."""
    return network.actor(obs.reshape(-1)).argmax()


# Q-VALUE HEADS (DQN, PQN): one value per discrete action


def epsilon_greedy(
    key: PRNGKeyArray, q: Float[Array, "batch num_actions"], epsilon: Float[Array, ""]
) -> Int[Array, " batch"]:
    """The argmax of `q` per row, or with probability `epsilon` a uniformly random action."""
    explore_key, action_key = jax.random.split(key)
    greedy = q.argmax(axis=-1)
    random = jax.random.randint(action_key, greedy.shape, 0, q.shape[-1])
    return jnp.where(jax.random.uniform(explore_key, greedy.shape) < epsilon, random, greedy)


def q_policy(
    network: Callable[[Array], Array], env: VecEnv, obs_stats: None = None, greedy: bool = True
) -> Callable[[PRNGKeyArray, Array], Array]:
    """`act(key, obs_batch)` taking the argmax of a Q-network's values, no exploration (what
    `pureeqxrl eval` runs for DQN and PQN)."""
    if not greedy:
        raise ValueError("a Q-network has no stochastic policy to sample from (its exploration is epsilon)")
    return lambda key, obs: jax.vmap(network)(obs).argmax(-1)
