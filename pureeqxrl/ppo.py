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
`make_train` runs the Flax Linen control version of `pureeqxrl.linen.ppo`. The policy is a batch of
distreqx distributions (a `Categorical` here, a diagonal Gaussian in `pureeqxrl.ppo_continuous`),
so nothing below depends on the action space, except that continuous actions are clipped to the
environment's bounds when stepping (the stored action and its log-probability stay unclipped).
`objective="dpo"` swaps the clipped surrogate for DPO's drift objective (Lu et al., 2022), and
`normalize_obs`/`normalize_reward` wrap the environment in `pureeqxrl.normalize.Normalize`.
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
from pureeqxrl.metrics import LogCallback, TrainResult, UpdateSteps, scan_logged
from pureeqxrl.nets import MLP, Functional, orthogonal
from pureeqxrl.normalize import Normalize, RunningStats

ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "tanh": jax.nn.tanh, "relu": jax.nn.relu, "leaky_relu": jax.nn.leaky_relu,
}


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
    activation: Literal["tanh", "relu", "leaky_relu"] = "tanh"
    hidden_sizes: tuple[int, ...] = (64, 64)
    """Hidden widths of the actor and of the critic (two separate MLPs)."""
    normalize_obs: bool = False
    """Normalise observations with running statistics (saved with the agent, used at evaluation)."""
    normalize_reward: bool = False
    """Divide rewards by the running std of the discounted return (the learner's view only)."""
    objective: Literal["ppo", "dpo"] = "ppo"
    """Policy objective: PPO's clipped surrogate, or DPO's drift-penalised one."""
    dpo_alpha: float = 2.0
    """DPO drift scale where the advantage is positive."""
    dpo_beta: float = 0.6
    """DPO drift scale where the advantage is negative."""
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
        self._checks().raise_if_any()

    def _checks(self) -> ConfigChecks:
        checks = ConfigChecks(self)
        checks.positive(
            "total_timesteps", "num_envs", "num_steps", "update_epochs", "num_minibatches",
            "log_interval", "learning_rate", "clip_eps", "max_grad_norm", "dpo_alpha", "dpo_beta",
        )
        checks.non_negative("ent_coef", "vf_coef")
        checks.in_unit_interval("gamma", "gae_lambda")
        checks.require(self.activation in ACTIVATIONS, f"activation must be one of "
                       f"{', '.join(ACTIVATIONS)}, got {self.activation!r}")
        checks.require(self.objective in ("ppo", "dpo"),
                       f"objective must be 'ppo' or 'dpo', got {self.objective!r}")
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
        return checks

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# NETWORK


def actor_and_critic_mlps(
    obs_size: int,
    actor_outputs: int,
    hidden_sizes: tuple[int, ...],
    activation: Callable[[Array], Array],
    *,
    key: PRNGKeyArray,
) -> tuple[MLP, MLP]:
    """PureJaxRL's separate actor and critic MLPs: hidden kernels orthogonal(sqrt 2), actor head
    orthogonal(0.01) (a near-uniform / near-zero-mean first policy), critic head orthogonal(1.0),
    zero biases."""
    hidden_init = orthogonal(math.sqrt(2))
    actor = MLP(obs_size, hidden_sizes, actor_outputs, key=key, activation=activation,
                hidden_init=hidden_init, output_init=orthogonal(0.01))
    critic = MLP(obs_size, hidden_sizes, 1, key=key, activation=activation, hidden_init=hidden_init,
                 output_init=orthogonal(1.0), key_start=2 * (len(hidden_sizes) + 1))  # after the actor's
    return actor, critic


class ActorCritic(eqx.Module):
    """Separate actor and critic MLPs on the flattened observation, PureJaxRL's init
    (`actor_and_critic_mlps`)."""

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
        self.actor, self.critic = actor_and_critic_mlps(
            obs_size, num_actions, hidden_sizes, activation, key=key
        )

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


# POLICIES: a batch of distreqx distributions (each describes one example; vmap over the batch)


def sample(policy: AbstractDistribution, key: PRNGKeyArray) -> Array:
    keys = jax.random.split(key, jax.tree.leaves(policy)[0].shape[0])
    return jax.vmap(lambda p, k: p.sample(k))(policy, keys)


def log_prob(policy: AbstractDistribution, action: Array) -> Float[Array, " batch"]:
    return jax.vmap(lambda p, a: p.log_prob(a))(policy, action)


def entropy(policy: AbstractDistribution) -> Float[Array, " batch"]:
    return jax.vmap(lambda p: p.entropy())(policy)


def mode(policy: AbstractDistribution) -> Array:
    return jax.vmap(lambda p: p.mode())(policy)


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
    config: "PPOConfig",
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
    config: "PPOConfig",
) -> tuple[Float[Array, ""], LossInfo]:
    """`ppo_loss` given the network's outputs on `batch.obs` (a batch of distributions, values)."""
    clip_eps = config.clip_eps
    new_log_prob = log_prob(policy, batch.action)

    value_clipped = batch.value + jnp.clip(value - batch.value, -clip_eps, clip_eps)
    value_loss = 0.5 * jnp.maximum(
        (value - batch.target) ** 2, (value_clipped - batch.target) ** 2
    ).mean()

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


# TRAINING


class Transition(eqx.Module):
    """One step of the rollout for all environments (a leading time axis once stacked)."""

    obs: Array
    action: Array
    """As sampled: unclipped for continuous actions."""
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
    network_fn: Callable[[PPOConfig, VecEnv | Normalize], Functional] | None = None,
    on_log: LogCallback | None = None,
) -> Callable[[PRNGKeyArray], TrainResult]:
    """Validate `config` and return `train(key) -> TrainResult`, pure and jittable.

    **Arguments:**

    - `network_fn`: builds the actor-critic's `Functional` (`apply(params, obs_batch) ->
      (batch of policy distributions, values)`); defaults to `default_network`, the Equinox
      actor-critic for the environment's action space.
    - `on_log`: host function `(row_index, row)` called after each metrics row (see `scan_logged`).

    `jax.jit(jax.vmap(train))(jax.random.split(key, n))` trains `n` independent seeds at once.
    """
    return train_from_steps(make_update_steps(config, network_fn), config, on_log)


def train_from_steps(
    steps: UpdateSteps, config: PPOConfig, on_log: LogCallback | None = None
) -> Callable[[PRNGKeyArray], TrainResult]:
    """`train(key)`: `steps.init`, then `num_updates` of `steps.update` logged by `scan_logged`;
    the trained params and, if observations were normalised, their statistics. (Also
    `pureeqxrl.ppo_rnn`'s loop.)"""

    def train(key: PRNGKeyArray) -> TrainResult:
        state = steps.init(key)
        state, metrics = scan_logged(steps.update, state, config.num_updates, config.log_interval, on_log)
        obs_stats = state.env_state.obs_stats if config.normalize_obs else None
        return TrainResult(params=state.params, metrics=metrics, obs_stats=obs_stats)

    return train


def make_update_steps(
    config: PPOConfig,
    network_fn: Callable[[PPOConfig, VecEnv | Normalize], Functional] | None = None,
) -> UpdateSteps:
    """Validate `config` and build the pieces of one update (`pureeqxrl.metrics.UpdateSteps`):
    `collect(state) -> (state, rollout, episodes)` steps every environment `num_steps` times;
    `learn(state, rollout) -> (state, loss, info)` computes advantages and runs `update_epochs`
    epochs of `num_minibatches` gradient steps."""
    config.validate()
    env = make_environment(config)
    network = (network_fn or default_network)(config, env)
    to_env_action = _action_for_env(env)
    optimizer = make_optimizer(config)

    def env_step(state: PPOState, _) -> tuple[PPOState, tuple[Transition, dict]]:
        key, action_key, step_key = jax.random.split(state.key, 3)
        policy, value = network.apply(state.params, state.obs)
        action = sample(policy, action_key)
        obs, env_state, step = env.step(step_key, state.env_state, to_env_action(action))
        transition = Transition(
            state.obs, action, log_prob(policy, action), value, step.reward, step.terminated,
            step.done, step.next_obs,
        )
        state = PPOState(state.params, state.opt_state, env_state, obs, key)
        return state, (transition, episode_stats(step))

    def gradient_step(params_and_opt, minibatch: Batch):
        params, opt_state = params_and_opt
        (loss, info), grads = jax.value_and_grad(ppo_loss, argnums=1, has_aux=True)(
            network.apply, params, minibatch, config
        )
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), (loss, info)

    def epoch(params_and_opt, key: PRNGKeyArray, batch: Batch):
        order = jax.random.permutation(key, config.steps_per_update)
        minibatches = jax.tree.map(
            lambda x: x[order].reshape(config.num_minibatches, config.minibatch_size, *x.shape[1:]),
            batch,
        )
        return jax.lax.scan(gradient_step, params_and_opt, minibatches)

    def collect(state: PPOState) -> tuple[PPOState, Transition, dict]:
        state, (rollout, episodes) = jax.lax.scan(env_step, state, None, config.num_steps)
        return state, rollout, episodes

    def learn(state: PPOState, rollout: Transition) -> tuple[PPOState, Array, LossInfo]:
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
        (params, opt_state), (loss, info) = jax.lax.scan(
            lambda params_and_opt, key: epoch(params_and_opt, key, batch),
            (state.params, state.opt_state),
            jax.random.split(epochs_key, config.update_epochs),
        )
        return PPOState(params, opt_state, state.env_state, state.obs, key), loss, info

    def update(state: PPOState) -> tuple[PPOState, dict]:
        state, rollout, episodes = collect(state)  # COLLECT TRAJECTORIES
        state, loss, info = learn(state, rollout)  # ADVANTAGES AND UPDATE EPOCHS
        return state, update_stats(episodes, loss, info)

    def init(key: PRNGKeyArray) -> PPOState:
        env_key, init_key, loop_key = jax.random.split(key, 3)
        obs, env_state = env.reset(env_key)
        params = network.init(init_key)
        return PPOState(params, optimizer.init(params), env_state, obs, loop_key)

    return UpdateSteps(network=network, init=init, collect=collect, learn=learn, update=update)


def make_environment(config: PPOConfig) -> VecEnv | Normalize:
    """`num_envs` copies of the configured environment, in `Normalize` if the config asks for it."""
    env = make_env(config.env, config.num_envs, config.max_episode_steps)
    if config.normalize_obs or config.normalize_reward:
        env = Normalize(env, config.normalize_obs, config.normalize_reward, config.gamma)
    return env


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


def default_network(config: PPOConfig, env: VecEnv) -> Functional:
    """The Equinox actor-critic for the action space: `ActorCritic` for discrete actions,
    `pureeqxrl.ppo_continuous.GaussianActorCritic` for continuous ones."""
    if env.discrete:
        return equinox_actor_critic(config, env)
    from pureeqxrl.ppo_continuous import gaussian_actor_critic  # it builds on this module

    return gaussian_actor_critic(config, env)


def _action_for_env(env: VecEnv) -> Callable[[Array], Array]:
    """Integer actions as they are; continuous ones clipped to the environment's bounds."""
    if env.discrete:
        return lambda action: action.astype(jnp.int32)
    low, high = env.action_bounds
    return lambda action: jnp.clip(action, low, high)


# USING A TRAINED AGENT


def greedy_action(network: ActorCritic, obs: Float[Array, "..."]) -> Int[Array, ""]:
    """Most likely action of a trained `ActorCritic` for one observation."""
    logits, _ = network(obs)
    return logits.argmax()


def policy(
    network: Functional,
    params: Any,
    env: VecEnv,
    obs_stats: RunningStats | None = None,
    greedy: bool = True,
) -> Callable[[PRNGKeyArray, Array], Array]:
    """`act(key, obs_batch)` of trained params, as `pureeqxrl eval` runs it.

    Observations are normalised with the frozen training statistics `obs_stats` (if any); actions
    are the policy's most likely ones (`greedy`) or sampled as in training, continuous ones clipped
    to the environment's bounds. Greedy play can fail where the stochastic policy succeeds: on
    navix DoorKey-5x5 trained policies reach the goal ~70% of the time sampled, and loop greedy.
    """
    to_env_action = _action_for_env(env)

    def act(key: PRNGKeyArray, obs: Array) -> Array:
        if obs_stats is not None:
            obs = obs_stats.normalize(obs)
        distribution, _ = network.apply(params, obs)
        return to_env_action(mode(distribution) if greedy else sample(distribution, key))

    return act
