"""What the PPO family shares (`pureeqxrl.ppo`, `pureeqxrl.ppo_rnn`): the config, the rollout's
transitions, GAE, the clipped (or DPO) loss, the optimizer with the reference's learning-rate
schedule, the environment (normalised if asked), and the metrics of one update.

Where this differs from PureJaxRL, on purpose: a *truncated* episode (time limit) is bootstrapped
from the value of the observation it stopped at, `V(next_obs)` before the auto-reset; only a
*terminated* one has value 0 after its last step. Both cut the GAE trace, so no advantage leaks from
one episode into the next.
"""

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from distreqx.distributions import AbstractDistribution
from jaxtyping import Array, Bool, Float, Int

from pureeqxrl.config import ConfigChecks, RolloutConfig
from pureeqxrl.envs import VecEnv, make_env
from pureeqxrl.heads import entropy, log_prob
from pureeqxrl.nets import ACTIVATIONS
from pureeqxrl.normalize import Normalize


@dataclass(frozen=True)
class PPOConfig(RolloutConfig):
    """PPO hyperparameters; defaults are PureJaxRL's CartPole-v1 settings (`ppo.py`): 4
    environments (`TrainConfig`'s default), 128-step rollouts and 4 epochs of 4 minibatches
    (`RolloutConfig`'s)."""

    anneal_lr: bool = True
    """Anneal the learning rate linearly to zero, one decrement per update (as the reference)."""
    gae_lambda: float = 0.95
    clip_eps: float = 0.2
    """Clip range of the probability ratio and of the value change."""
    ent_coef: float = 0.01
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    activation: Literal["tanh", "relu", "leaky_relu"] = "tanh"
    hidden_sizes: tuple[int, ...] = (64, 64)
    """Hidden widths of the actor and of the critic (two separate MLPs)."""
    normalize_obs: bool = False
    """Normalise observations with running statistics (saved with the agent, used at evaluation)."""
    normalize_reward: bool = False
    """Divide rewards by the running std of the discounted return (the learner's view only)."""
    objective: Literal["ppo", "dpo"] = "ppo"
    """Policy objective: PPO's clipped surrogate, or DPO's drift-penalised one (Lu et al., 2022)."""
    dpo_alpha: float = 2.0
    """DPO drift scale where the advantage is positive."""
    dpo_beta: float = 0.6
    """DPO drift scale where the advantage is negative."""

    def check(self, checks: ConfigChecks) -> None:
        super().check(checks)
        checks.positive(
            "clip_eps",
            "max_grad_norm",
            "dpo_alpha",
            "dpo_beta",
        )
        checks.non_negative("ent_coef", "vf_coef")
        checks.in_unit_interval("gae_lambda")
        checks.require(
            self.activation in ACTIVATIONS,
            f"activation must be one of {', '.join(ACTIVATIONS)}, got {self.activation!r}",
        )
        checks.require(
            self.objective in ("ppo", "dpo"), f"objective must be 'ppo' or 'dpo', got {self.objective!r}"
        )


def make_environment(config: PPOConfig) -> VecEnv | Normalize:
    """`num_envs` copies of the configured environment, in `Normalize` if the config asks for it."""
    env = make_env(config.env, config.num_envs, config.max_episode_steps)
    if config.normalize_obs or config.normalize_reward:
        env = Normalize(
            env, observations=config.normalize_obs, rewards=config.normalize_reward, gamma=config.gamma
        )
    return env


class Transition(eqx.Module):
    """One step of the rollout for all environments (a leading time axis once stacked)."""

    obs: Array
    action: Array
    """As sampled: unclipped for continuous actions."""
    log_prob: Float[Array, " num_envs"]
    value: Float[Array, " num_envs"] | None
    """`V(obs)`. PPO's rollout leaves it `None` and computes it after the rollout, for all the steps
    in one batch: the parameters do not change while it collects, and the step is then the actor's
    alone (recurrent PPO's GRU computes it in the rollout)."""
    reward: Float[Array, " num_envs"]
    terminated: Bool[Array, " num_envs"]
    done: Bool[Array, " num_envs"]
    next_obs: Array
    """Observation the step led to, before any auto-reset."""

    @classmethod
    def of_step(
        cls, obs: Array, action: Array, policy: AbstractDistribution, value: Array | None, step: Any, **extra
    ):
        """The transition of acting `action` (drawn from `policy`) on `obs` into the environment's
        `step` (a `pureeqxrl.envs.Step`); a subclass's own fields come as `extra`."""
        return cls(
            obs=obs,
            action=action,
            log_prob=log_prob(policy, action),
            value=value,
            reward=step.reward,
            terminated=step.terminated,
            done=step.done,
            next_obs=step.next_obs,
            **extra,
        )


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


def rollout_advantages(
    rollout: Transition, next_value: Float[Array, "..."], config: PPOConfig
) -> tuple[Float[Array, "num_steps num_envs"], Float[Array, "num_steps num_envs"]]:
    """`gae` of a stacked rollout, given `next_value`: the value of every step's pre-reset next
    observation, in the rollout's `(num_steps, num_envs)` order (flattened or not)."""
    return gae(
        rollout.reward,
        rollout.value,
        next_value.reshape(rollout.reward.shape),
        rollout.terminated,
        rollout.done,
        config.gamma,
        config.gae_lambda,
    )


# LOSS


class Batch(eqx.Module):
    """Transitions for the update, flattened to one batch axis."""

    obs: Float[Array, "batch ..."]
    action: Array
    log_prob: Float[Array, " batch"]
    """Log-probability of `action` under the policy that collected it."""
    value: Float[Array, " batch"]
    """Value estimate at collection time (the centre of the value clip)."""
    advantage: Float[Array, " batch"]
    target: Float[Array, " batch"]


def dpo_drift(
    ratio: Float[Array, " batch"],
    log_ratio: Float[Array, " batch"],
    advantage: Float[Array, " batch"],
    alpha: float,
    beta: float,
) -> Float[Array, " batch"]:
    """DPO's drift penalty: zero near ratio 1, growing once the policy moves far in the
    advantage's direction; measured on `ratio - 1` (scale `alpha`) where the advantage is
    positive and on `log ratio` (scale `beta`) where it is negative."""
    positive = jax.nn.relu((ratio - 1.0) * advantage - alpha * jnp.tanh((ratio - 1.0) * advantage / alpha))
    negative = jax.nn.relu(log_ratio * advantage - beta * jnp.tanh(log_ratio * advantage / beta))
    return jnp.where(advantage >= 0.0, positive, negative)


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
    config: PPOConfig,
) -> tuple[Float[Array, ""], LossInfo]:
    """Actor loss + `vf_coef` * clipped value loss - `ent_coef` * entropy, on one minibatch.

    The actor loss is PPO's clipped surrogate, or with `objective="dpo"` the advantage-weighted
    ratio minus DPO's drift (`dpo_drift`). Advantages are normalised over the minibatch, as in the
    reference.
    """
    policy, value = apply(params, batch.obs)
    return loss_terms(policy, value, batch, config)


def loss_terms(
    policy: AbstractDistribution,
    value: Float[Array, " batch"],
    batch: Batch,
    config: PPOConfig,
) -> tuple[Float[Array, ""], LossInfo]:
    """`ppo_loss` given the network's outputs on `batch.obs` (a batch of distributions, values)."""
    clip_eps = config.clip_eps
    new_log_prob = log_prob(policy, batch.action)

    value_clipped = batch.value + jnp.clip(value - batch.value, -clip_eps, clip_eps)
    value_loss = 0.5 * jnp.maximum((value - batch.target) ** 2, (value_clipped - batch.target) ** 2).mean()

    log_ratio = new_log_prob - batch.log_prob
    ratio = jnp.exp(log_ratio)
    advantage = (batch.advantage - batch.advantage.mean()) / (batch.advantage.std() + 1e-8)
    if config.objective == "dpo":
        drift = dpo_drift(ratio, log_ratio, advantage, config.dpo_alpha, config.dpo_beta)
        actor_loss = -(ratio * advantage - drift).mean()
    else:
        actor_loss = -jnp.minimum(
            ratio * advantage, jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * advantage
        ).mean()
    mean_entropy = entropy(policy).mean()

    total = actor_loss + config.vf_coef * value_loss - config.ent_coef * mean_entropy
    info = LossInfo(
        value_loss=value_loss,
        actor_loss=actor_loss,
        entropy=mean_entropy,
        approx_kl=((ratio - 1.0) - log_ratio).mean(),
        clip_fraction=(jnp.abs(ratio - 1.0) > clip_eps).mean(),
    )
    return total, info


# OPTIMIZER AND METRICS


def make_optimizer(config: PPOConfig) -> optax.GradientTransformation:
    """Global-norm clipping, then Adam (eps 1e-5) with the reference's learning-rate schedule."""
    gradient_steps_per_update = config.update_epochs * config.num_minibatches

    def learning_rate(count: Int[Array, ""]) -> Float[Array, ""]:
        # Constant within an update, decreasing by 1/num_updates after each.
        fraction = 1.0 - (count // gradient_steps_per_update) / config.num_updates
        return config.learning_rate * fraction

    return optax.chain(
        optax.clip_by_global_norm(config.max_grad_norm),
        optax.adam(learning_rate if config.anneal_lr else config.learning_rate, eps=1e-5),
    )


def update_stats(episodes: dict, loss: Float[Array, "..."], info: LossInfo) -> dict:
    """One update's metrics as `scan_logged` sums them: the episodes that ended in the rollout,
    and the loss terms averaged over the update's gradient steps."""
    one = jnp.array(1.0)
    return {
        **jax.tree.map(jnp.sum, episodes),  # over the rollout's steps
        "loss": (loss.mean(), one),
        **{field.name: (getattr(info, field.name).mean(), one) for field in fields(info)},
    }
