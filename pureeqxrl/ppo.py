"""PPO (Schulman et al., 2017) in Equinox: PureJaxRL's `ppo.py`, `ppo_continuous_action.py` and
`dpo_continuous_action.py`, one `jax.jit` per training run.

Read top to bottom: the configs (`PPOConfig` holds PureJaxRL's CartPole-v1 settings,
`PPOContinuousConfig` its continuous-control ones), the environment, a rollout's transitions, the
advantages (GAE), the loss (PPO's clipped surrogate or DPO's drift objective, the clipped value loss
and the entropy bonus), the optimizer, then `make_learner`, whose update collects `num_steps` steps
in `num_envs` environments, computes the values and advantages, and runs `update_epochs` epochs of
`num_minibatches` gradient steps. The actor-critics are in `pureeqxrl.heads`. Recurrent PPO
(`pureeqxrl.ppo_rnn`) is this recipe with memory, and uses the config, GAE and loss from here.

Where this differs from PureJaxRL, on purpose:

- a *truncated* episode (time limit) is bootstrapped from `V(next_obs)` before the auto-reset; only
  a *terminated* one has value 0 after its last step; both cut the GAE trace, so no advantage leaks
  from one episode into the next;
- metrics are one row per `log_interval` updates (episode returns of the episodes that finished,
  loss terms, KL and clip fraction), not every environment step's info;
- observations of any shape are flattened into the MLP (MinAtar grids and navix's symbolic grids
  included); `pureeqxrl.envs` also runs navix environments, which replaces `ppo_minigrid.py`.

The actor-critic maps an observation to a distreqx distribution (a `Categorical`, or a diagonal
Gaussian for continuous actions) and a value, so nothing below depends on the action space, except
that continuous actions
are clipped to the environment's bounds when stepping (the stored action and its log-probability
stay unclipped, as the reference). `objective="dpo"` swaps the clipped surrogate for DPO's drift
objective, and `normalize_obs`/`normalize_reward` wrap the environment in
`pureeqxrl.normalize.Normalize`, whose observation statistics leave training with the agent.
`make_learner(config, make_network)` trains any Module with the actor-critic's call
(`pureeqxrl.linen.ppo` passes the Flax Linen control group's).
"""

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from distreqx.distributions import AbstractDistribution
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

from pureeqxrl import loop
from pureeqxrl.config import ConfigChecks, RolloutConfig
from pureeqxrl.envs import Step, VecEnv, make_env, run_rollout
from pureeqxrl.evaluate import training_evaluator
from pureeqxrl.heads import actor_critic, entropy, log_prob, mode, sample
from pureeqxrl.loop import Learner, LogCallback, TrainResult, environment_field
from pureeqxrl.minibatch import shuffled_epochs
from pureeqxrl.nets import ACTIVATIONS, NetworkBuilder
from pureeqxrl.normalize import Normalize, RunningStats

__all__ = [
    "PPOConfig",
    "PPOContinuousConfig",
    "gae",
    "make_learner",
    "make_train",
    "policy",
    "ppo_loss",
    "rollout_values",
]


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


@dataclass(frozen=True)
class PPOContinuousConfig(PPOConfig):
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


# ENVIRONMENT AND ROLLOUT


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
    network: Callable[[Array], tuple[AbstractDistribution, Array]],
    batch: Batch,
    config: PPOConfig,
) -> tuple[Float[Array, ""], LossInfo]:
    """Actor loss + `vf_coef` * clipped value loss - `ent_coef` * entropy, on one minibatch.

    The actor loss is PPO's clipped surrogate, or with `objective="dpo"` the advantage-weighted
    ratio minus DPO's drift (`dpo_drift`). Advantages are normalised over the minibatch, as in the
    reference.
    """
    policy, value = jax.vmap(network)(batch.obs)
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


# TRAINING


class PPOState(eqx.Module):
    params: Any
    """The network (an `ActorCritic` or a `GaussianActorCritic` unless `make_network` says otherwise)."""
    opt_state: Any
    env_state: Any = environment_field()
    obs: Array = environment_field()
    key: PRNGKeyArray


def make_train(
    config: PPOConfig,
    make_network: NetworkBuilder = actor_critic,
    on_log: LogCallback | None = None,
) -> Callable[[PRNGKeyArray], TrainResult]:
    """Validate `config` and return `train(key) -> TrainResult`, pure and jittable.

    **Arguments:**

    - `make_network`: `(config, env, key) -> network`, a Module mapping one observation to
      `(policy distribution, value)`; defaults to `pureeqxrl.heads.actor_critic`, the actor-critic
      for the environment's action space.
    - `on_log`: host function `(row_index, row)` called after each metrics row (see `scan_logged`).

    `jax.jit(jax.vmap(train))(jax.random.split(key, n))` trains `n` independent seeds at once.
    If observations are normalised, `train(key).obs_stats` holds the statistics to act with.
    """
    return loop.make_train(make_learner(config, make_network), config, on_log)


def make_learner(config: PPOConfig, make_network: NetworkBuilder = actor_critic) -> Learner:
    """Validate `config` and build its `pureeqxrl.loop.Learner`: `init(key)`, and `update(state)`,
    which steps every environment `num_steps` times, computes the rollout's values and advantages
    and runs `update_epochs` epochs of `num_minibatches` gradient steps."""
    config.validate()
    env = make_environment(config)
    optimizer = make_optimizer(config)

    def env_step(state: PPOState) -> tuple[PPOState, Transition, Step]:
        key, action_key, step_key = jax.random.split(state.key, 3)
        policy, _ = jax.vmap(state.params)(state.obs)  # values: after the rollout, in one batch
        action = sample(policy, action_key)
        obs, env_state, step = env.step(step_key, state.env_state, env.to_env_action(action))
        transition = Transition.of_step(state.obs, action, policy, None, step)
        state = dataclasses.replace(state, env_state=env_state, obs=obs, key=key)
        return state, transition, step

    def gradient_step(network_and_opt, minibatch: Batch):
        network, opt_state = network_and_opt
        (loss, info), grads = jax.value_and_grad(ppo_loss, has_aux=True)(network, minibatch, config)
        updates, opt_state = optimizer.update(grads, opt_state, network)
        return (optax.apply_updates(network, updates), opt_state), (loss, info)

    def collect(state: PPOState) -> tuple[PPOState, Transition, dict]:
        return run_rollout(env_step, state, config.num_steps, config.num_envs)

    def learn(state: PPOState, rollout: Transition) -> tuple[PPOState, Array, LossInfo]:
        # VALUES: the critic's, with the parameters that collected the rollout
        value, next_value = rollout_values(state.params, rollout)
        rollout = dataclasses.replace(rollout, value=value)

        # ADVANTAGES: bootstrap from the pre-reset next observation, cut at episode ends
        advantages, targets = rollout_advantages(rollout, next_value, config)

        # UPDATE EPOCHS OF MINIBATCHES
        flat = lambda x: x.reshape(config.steps_per_update, *x.shape[2:])  # noqa: E731
        batch = Batch(
            obs=flat(rollout.obs),
            action=flat(rollout.action),
            log_prob=flat(rollout.log_prob),
            value=flat(rollout.value),
            advantage=flat(advantages),
            target=flat(targets),
        )
        key, epochs_key = jax.random.split(state.key)
        (params, opt_state), (loss, info) = shuffled_epochs(
            gradient_step,
            (state.params, state.opt_state),
            batch,
            epochs_key,
            config.update_epochs,
            config.num_minibatches,
        )
        state = dataclasses.replace(state, params=params, opt_state=opt_state, key=key)
        return state, loss, info

    def update(state: PPOState) -> tuple[PPOState, dict]:
        state, rollout, episodes = collect(state)  # COLLECT TRAJECTORIES
        state, loss, info = learn(state, rollout)  # ADVANTAGES AND UPDATE EPOCHS
        return state, update_stats(episodes, loss, info)

    def init(key: PRNGKeyArray) -> PPOState:
        env_key, init_key, loop_key = jax.random.split(key, 3)
        obs, env_state = env.reset(env_key)
        network = make_network(config, env, init_key)
        return PPOState(
            params=network, opt_state=optimizer.init(network), env_state=env_state, obs=obs, key=loop_key
        )

    # EVALUATION: the greedy and the sampled policy on fresh episodes (`config.eval_interval`)
    evaluate = training_evaluator(config, policy, stochastic=True)
    return Learner(init, update, evaluate)


def rollout_values(
    network: Callable[[Array], tuple[AbstractDistribution, Array]], rollout: Transition
) -> tuple[Float[Array, "num_steps num_envs"], Float[Array, "num_steps num_envs"]]:
    """`V(obs)` and `V(next_obs)` (the pre-reset next observation) of every step of a stacked
    rollout, in one batch.

    The rollout's own step runs the actor alone: the parameters do not change while it collects,
    so these are the values it would have computed, and one batch of `2 * num_steps * num_envs`
    observations costs less than a critic in each of its steps.
    """
    num_steps, num_envs = rollout.reward.shape
    flat = lambda x: x.reshape(num_steps * num_envs, *x.shape[2:])  # noqa: E731
    _, values = jax.vmap(network)(jnp.concatenate([flat(rollout.obs), flat(rollout.next_obs)]))
    value, next_value = values.reshape(2, num_steps, num_envs)
    return value, next_value


# USING A TRAINED AGENT


def policy(
    network: Callable[[Array], tuple[AbstractDistribution, Array]],
    env: VecEnv,
    obs_stats: RunningStats | None = None,
    greedy: bool = True,
) -> Callable[[PRNGKeyArray, Array], Array]:
    """`act(key, obs_batch)` of a trained actor-critic, as `pureeqxrl eval` runs it.

    Observations are normalised with the frozen training statistics `obs_stats` (if any); actions
    are the policy's most likely ones (`greedy`) or sampled as in training, continuous ones clipped
    to the environment's bounds. Greedy play can fail where the stochastic policy succeeds: on
    navix DoorKey-5x5 trained policies reach the goal ~70% of the time sampled, and loop greedy.
    """

    def act(key: PRNGKeyArray, obs: Array) -> Array:
        if obs_stats is not None:
            obs = obs_stats.normalize(obs)
        distribution, _ = jax.vmap(network)(obs)
        return env.to_env_action(jnp.where(greedy, mode(distribution), sample(distribution, key)))

    return act
