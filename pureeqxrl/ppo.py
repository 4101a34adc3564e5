"""PPO (Schulman et al., 2017) in Equinox: PureJaxRL's `ppo.py`, one `jax.jit` per training run.

Read top to bottom: the config (PureJaxRL's CartPole-v1 defaults), the actor-critic network, the
advantage estimate (GAE), the clipped loss, then `make_train`, whose `train(key)` repeats: collect
`num_steps` steps in `num_envs` environments, compute advantages, and run `update_epochs` epochs of
`num_minibatches` clipped policy-gradient steps.

Where this differs from PureJaxRL, on purpose:

- a *truncated* episode (time limit) is bootstrapped from the value of the observation it stopped
  at, `V(next_obs)` before the auto-reset; only a *terminated* one has value 0 after its last step.
  Both cut the GAE trace, so no advantage leaks from one episode into the next;
- metrics are one row per `log_interval` updates (episode returns of the episodes that finished,
  loss terms, KL and clip fraction), not every environment step's info;
- observations of any shape are flattened into the MLP (MinAtar grids and navix's symbolic grids
  included); `pureeqxrl.envs` also runs navix environments, which replaces `ppo_minigrid.py`.

The network library is a parameter (`network_fn`, see `pureeqxrl.nets.Functional`): the same
`make_train` runs the Flax Linen control version of `pureeqxrl.linen.ppo`. The policy is any
distreqx distribution (`Categorical` here), so the loss does not depend on the action space.
"""

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from distreqx.distributions import AbstractDistribution, Categorical
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

from pureeqxrl.configs import ConfigChecks
from pureeqxrl.envs import VecEnv, episode_stats, make_env
from pureeqxrl.metrics import LogCallback, TrainResult, scan_logged
from pureeqxrl.nets import MLP, Functional, orthogonal

ACTIVATIONS: dict[str, Callable[[Array], Array]] = {"tanh": jax.nn.tanh, "relu": jax.nn.relu}


@dataclass(frozen=True)
class PPOConfig:
    """PPO hyperparameters; defaults are PureJaxRL's CartPole-v1 settings."""

    env: str = "CartPole-v1"
    """gymnax or navix environment id (or a `pureeqxrl.probes` name)."""
    max_episode_steps: int | None = None
    """Override the environment's time limit; episodes are truncated (and bootstrapped) there."""
    total_timesteps: int = 500_000
    """Environment steps over all parallel environments."""
    num_envs: int = 4
    num_steps: int = 128
    """Steps per environment in one rollout; one update uses num_envs * num_steps transitions."""
    learning_rate: float = 2.5e-4
    anneal_lr: bool = True
    """Anneal the learning rate linearly to zero, one decrement per update (as the reference)."""
    update_epochs: int = 4
    num_minibatches: int = 4
    """Minibatches per epoch; must divide num_envs * num_steps."""
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_eps: float = 0.2
    """Clip range of the probability ratio and of the value change."""
    ent_coef: float = 0.01
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    activation: Literal["tanh", "relu"] = "tanh"
    hidden_sizes: tuple[int, ...] = (64, 64)
    """Hidden widths of the actor and of the critic (two separate MLPs)."""
    log_interval: int = 10
    """Updates per logged metrics row."""

    @property
    def steps_per_update(self) -> int:
        return self.num_envs * self.num_steps

    @property
    def num_updates(self) -> int:
        return self.total_timesteps // self.steps_per_update

    @property
    def minibatch_size(self) -> int:
        return self.steps_per_update // self.num_minibatches

    def validate(self) -> None:
        """Raise `ValueError` for settings that cannot train, before anything is compiled."""
        checks = ConfigChecks(self)
        checks.positive(
            "total_timesteps", "num_envs", "num_steps", "update_epochs", "num_minibatches",
            "log_interval", "learning_rate", "clip_eps", "max_grad_norm",
        )
        checks.non_negative("ent_coef", "vf_coef")
        checks.in_unit_interval("gamma", "gae_lambda")
        checks.require(self.activation in ACTIVATIONS, f"activation must be one of "
                       f"{', '.join(ACTIVATIONS)}, got {self.activation!r}")
        checks.require(all(size > 0 for size in self.hidden_sizes),
                       f"hidden_sizes must be positive, got {self.hidden_sizes}")
        if self.num_envs > 0 and self.num_steps > 0 and self.num_minibatches > 0:
            checks.require(
                self.steps_per_update % self.num_minibatches == 0,
                f"num_minibatches ({self.num_minibatches}) does not divide num_envs * num_steps "
                f"({self.num_envs} * {self.num_steps} = {self.steps_per_update})",
            )
            checks.require(
                self.total_timesteps <= 0 or self.num_updates > 0,
                f"total_timesteps ({self.total_timesteps}) is smaller than one rollout "
                f"(num_envs * num_steps = {self.steps_per_update}): not one update",
            )
        checks.raise_if_any()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# NETWORK


class ActorCritic(eqx.Module):
    """Separate actor and critic MLPs on the flattened observation, PureJaxRL's init.

    Hidden kernels orthogonal(sqrt 2), actor head orthogonal(0.01) (a near-uniform first policy),
    critic head orthogonal(1.0), zero biases.
    """

    actor: MLP
    critic: MLP

    def __init__(
        self,
        obs_size: int,
        num_actions: int,
        hidden_sizes: tuple[int, ...],
        activation: Callable[[Array], Array] = jax.nn.tanh,
        *,
        key: PRNGKeyArray,
    ):
        actor_key, critic_key = jax.random.split(key)
        hidden_init = orthogonal(math.sqrt(2))
        self.actor = MLP(obs_size, hidden_sizes, num_actions, key=actor_key, activation=activation,
                         hidden_init=hidden_init, output_init=orthogonal(0.01))
        self.critic = MLP(obs_size, hidden_sizes, 1, key=critic_key, activation=activation,
                          hidden_init=hidden_init, output_init=orthogonal(1.0))

    def __call__(self, obs: Float[Array, "..."]) -> tuple[Float[Array, " num_actions"], Float[Array, ""]]:
        """Action logits and state value of one observation."""
        x = obs.reshape(-1)
        return self.actor(x), self.critic(x)[0]


def equinox_actor_critic(config: PPOConfig, env: VecEnv) -> Functional:
    """The Equinox `ActorCritic` as a `Functional`: `apply(network, obs_batch) -> (policy, values)`."""
    obs_size = int(np.prod(env.observation_shape))
    activation = ACTIVATIONS[config.activation]

    def init(key: PRNGKeyArray) -> ActorCritic:
        return ActorCritic(obs_size, env.num_actions, config.hidden_sizes, activation, key=key)

    def apply(network: ActorCritic, obs: Array) -> tuple[Categorical, Float[Array, " batch"]]:
        logits, value = jax.vmap(network)(obs)
        return Categorical(logits=logits), value

    return Functional(init=init, apply=apply)


# ADVANTAGES


def gae(
    reward: Float[Array, "num_steps num_envs"],
    value: Float[Array, "num_steps num_envs"],
    next_value: Float[Array, "num_steps num_envs"],
    terminated: Bool[Array, "num_steps num_envs"],
    done: Bool[Array, "num_steps num_envs"],
    gamma: float,
    gae_lambda: float,
) -> tuple[Float[Array, "num_steps num_envs"], Float[Array, "num_steps num_envs"]]:
    """Generalised advantage estimates and value targets of one rollout.

    `next_value[t]` is the value of the observation step `t` led to, before any auto-reset. It is
    bootstrapped unless the episode `terminated` there; the trace is cut wherever the episode
    ended (`done`: terminated or truncated). Returns `(advantages, targets)`.
    """
    delta = reward + gamma * (1.0 - terminated.astype(reward.dtype)) * next_value - value

    def backwards(advantage, step):
        delta, done = step
        advantage = delta + gamma * gae_lambda * (1.0 - done) * advantage
        return advantage, advantage

    _, advantages = jax.lax.scan(
        backwards, jnp.zeros_like(delta[0]), (delta, done.astype(reward.dtype)), reverse=True
    )
    return advantages, advantages + value


# LOSS


class Batch(eqx.Module):
    """Transitions for the update, flattened to one batch axis."""

    obs: Float[Array, "batch ..."]
    action: Int[Array, " batch"]
    log_prob: Float[Array, " batch"]
    """Log-probability of `action` under the policy that collected it."""
    value: Float[Array, " batch"]
    """Value estimate at collection time (the centre of the value clip)."""
    advantage: Float[Array, " batch"]
    target: Float[Array, " batch"]


class LossInfo(eqx.Module):
    value_loss: Float[Array, ""]
    actor_loss: Float[Array, ""]
    entropy: Float[Array, ""]
    approx_kl: Float[Array, ""]
    """The `(ratio - 1) - log ratio` estimator of KL(old || new)."""
    clip_fraction: Float[Array, ""]


def ppo_loss(
    apply: Callable[[Any, Array], tuple[AbstractDistribution, Array]],
    params: Any,
    batch: Batch,
    clip_eps: float,
    vf_coef: float,
    ent_coef: float,
) -> tuple[Float[Array, ""], LossInfo]:
    """Clipped surrogate + `vf_coef` * clipped value loss - `ent_coef` * entropy, on one minibatch.

    Advantages are normalised over the minibatch, as in the reference.
    """
    policy, value = apply(params, batch.obs)
    log_prob = policy.log_prob(batch.action)

    value_clipped = batch.value + jnp.clip(value - batch.value, -clip_eps, clip_eps)
    value_loss = 0.5 * jnp.maximum(
        (value - batch.target) ** 2, (value_clipped - batch.target) ** 2
    ).mean()

    log_ratio = log_prob - batch.log_prob
    ratio = jnp.exp(log_ratio)
    advantage = (batch.advantage - batch.advantage.mean()) / (batch.advantage.std() + 1e-8)
    actor_loss = -jnp.minimum(
        ratio * advantage, jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * advantage
    ).mean()
    entropy = policy.entropy().mean()

    total = actor_loss + vf_coef * value_loss - ent_coef * entropy
    info = LossInfo(
        value_loss=value_loss,
        actor_loss=actor_loss,
        entropy=entropy,
        approx_kl=((ratio - 1.0) - log_ratio).mean(),
        clip_fraction=(jnp.abs(ratio - 1.0) > clip_eps).mean(),
    )
    return total, info


# TRAINING


class Transition(eqx.Module):
    """One step of the rollout for all environments (a leading time axis once stacked)."""

    obs: Array
    action: Int[Array, " num_envs"]
    log_prob: Float[Array, " num_envs"]
    value: Float[Array, " num_envs"]
    reward: Float[Array, " num_envs"]
    terminated: Bool[Array, " num_envs"]
    done: Bool[Array, " num_envs"]
    next_obs: Array
    """Observation the step led to, before any auto-reset."""


class PPOState(eqx.Module):
    params: Any
    opt_state: Any
    env_state: Any
    obs: Array
    key: PRNGKeyArray


def make_train(
    config: PPOConfig,
    network_fn: Callable[[PPOConfig, VecEnv], Functional] | None = None,
    on_log: LogCallback | None = None,
) -> Callable[[PRNGKeyArray], TrainResult]:
    """Validate `config` and return `train(key) -> TrainResult`, pure and jittable.

    **Arguments:**

    - `network_fn`: builds the actor-critic's `Functional` (`apply(params, obs_batch) ->
      (policy distribution, values)`); defaults to the Equinox `ActorCritic`.
    - `on_log`: host function `(row_index, row)` called after each metrics row (see `scan_logged`).

    `jax.jit(jax.vmap(train))(jax.random.split(key, n))` trains `n` independent seeds at once.
    """
    config.validate()
    env = make_env(config.env, config.num_envs, config.max_episode_steps)
    network = (network_fn or equinox_actor_critic)(config, env)
    gradient_steps_per_update = config.update_epochs * config.num_minibatches

    def learning_rate(count: Int[Array, ""]) -> Float[Array, ""]:
        # The reference's schedule: constant within an update, decreasing by 1/num_updates.
        fraction = 1.0 - (count // gradient_steps_per_update) / config.num_updates
        return config.learning_rate * fraction

    optimizer = optax.chain(
        optax.clip_by_global_norm(config.max_grad_norm),
        optax.adam(learning_rate if config.anneal_lr else config.learning_rate, eps=1e-5),
    )

    def env_step(state: PPOState, _) -> tuple[PPOState, tuple[Transition, dict]]:
        key, action_key, step_key = jax.random.split(state.key, 3)
        policy, value = network.apply(state.params, state.obs)
        action = policy.sample(action_key).astype(jnp.int32)
        obs, env_state, step = env.step(step_key, state.env_state, action)
        transition = Transition(
            state.obs, action, policy.log_prob(action), value, step.reward, step.terminated,
            step.done, step.next_obs,
        )
        state = PPOState(state.params, state.opt_state, env_state, obs, key)
        return state, (transition, episode_stats(step))

    def gradient_step(params_and_opt, minibatch: Batch):
        params, opt_state = params_and_opt
        (loss, info), grads = jax.value_and_grad(ppo_loss, argnums=1, has_aux=True)(
            network.apply, params, minibatch, config.clip_eps, config.vf_coef, config.ent_coef
        )
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), (loss, info)

    def epoch(carry, key: PRNGKeyArray):
        params_and_opt, batch = carry
        order = jax.random.permutation(key, config.steps_per_update)
        minibatches = jax.tree.map(
            lambda x: x[order].reshape(config.num_minibatches, config.minibatch_size, *x.shape[1:]),
            batch,
        )
        params_and_opt, losses = jax.lax.scan(gradient_step, params_and_opt, minibatches)
        return (params_and_opt, batch), losses

    def update(state: PPOState) -> tuple[PPOState, dict]:
        # COLLECT TRAJECTORIES
        state, (rollout, episodes) = jax.lax.scan(env_step, state, None, config.num_steps)

        # ADVANTAGES: bootstrap from the pre-reset next observation, cut at episode ends
        flat_next_obs = rollout.next_obs.reshape(config.steps_per_update, *env.observation_shape)
        _, next_value = network.apply(state.params, flat_next_obs)
        advantages, targets = gae(
            rollout.reward, rollout.value, next_value.reshape(rollout.reward.shape),
            rollout.terminated, rollout.done, config.gamma, config.gae_lambda,
        )

        # UPDATE EPOCHS OF MINIBATCHES
        flat = lambda x: x.reshape(config.steps_per_update, *x.shape[2:])  # noqa: E731
        batch = Batch(
            obs=flat(rollout.obs), action=flat(rollout.action), log_prob=flat(rollout.log_prob),
            value=flat(rollout.value), advantage=flat(advantages), target=flat(targets),
        )
        key, epochs_key = jax.random.split(state.key)
        ((params, opt_state), _), (loss, info) = jax.lax.scan(
            epoch, ((state.params, state.opt_state), batch),
            jax.random.split(epochs_key, config.update_epochs),
        )
        state = PPOState(params, opt_state, state.env_state, state.obs, key)

        one = jnp.array(1.0)
        stats = {
            **jax.tree.map(jnp.sum, episodes),  # over the rollout's steps
            "loss": (loss.mean(), one),
            **{field.name: (getattr(info, field.name).mean(), one) for field in fields(info)},
        }
        return state, stats

    def train(key: PRNGKeyArray) -> TrainResult:
        env_key, init_key, loop_key = jax.random.split(key, 3)
        obs, env_state = env.reset(env_key)
        params = network.init(init_key)
        state = PPOState(params, optimizer.init(params), env_state, obs, loop_key)
        state, metrics = scan_logged(update, state, config.num_updates, config.log_interval, on_log)
        return TrainResult(params=state.params, metrics=metrics)

    return train


# USING A TRAINED AGENT


def greedy_action(network: ActorCritic, obs: Float[Array, "..."]) -> Int[Array, ""]:
    """Most likely action of a trained `ActorCritic` for one observation."""
    logits, _ = network(obs)
    return logits.argmax()


def greedy_policy(network: Functional, params: Any) -> Callable[[PRNGKeyArray, Array], Array]:
    """`act(key, obs_batch)` taking the policy's most likely actions (what `pureeqxrl eval` runs)."""
    return lambda key, obs: network.apply(params, obs)[0].mode().astype(jnp.int32)


def sampling_policy(network: Functional, params: Any) -> Callable[[PRNGKeyArray, Array], Array]:
    """`act(key, obs_batch)` sampling from the policy, as in training (`pureeqxrl eval --sample`).

    Greedy play can fail where the stochastic policy succeeds: on navix DoorKey-5x5 the trained
    policies reach the goal ~70% of the time when sampled and get stuck in loops when greedy.
    """
    return lambda key, obs: network.apply(params, obs)[0].sample(key).astype(jnp.int32)
