"""SAC (Haarnoja et al., 2018, "Soft Actor-Critic Algorithms and Applications") in Equinox, one
`jax.jit` per training run.

Off-policy maximum-entropy actor-critic for continuous actions: a tanh-squashed Gaussian actor, twin
Q critics with Polyak-averaged target copies (the smaller of the two targets is bootstrapped from),
and an entropy temperature learned towards a target entropy of `-action_dim`. Experience goes to the
replay buffer DQN uses (`pureeqxrl.replay`); the first `learning_starts` steps act uniformly at
random.

Read top to bottom: the config (the usual defaults of rejax, sbx, CleanRL and SB3), the actor and
the critics, the losses, then `make_learner`, whose update steps every environment once,
stores the transitions, and takes `gradient_steps` gradient steps (critics, then actor, then
temperature, then the target critics).

Conventions (those of sbx and rejax):

- the actor's actions live in [-1, 1]; they are stored and fed to the critics as such, and mapped
  affinely onto the environment's bounds only when stepping it, so the log-probabilities and the
  target entropy are those of the squashed action in [-1, 1];
- the actor's log-std is squashed into [`LOG_STD_MIN`, `LOG_STD_MAX`] by a tanh (CleanRL's way);
- the temperature's loss is `-log_alpha * (log_prob + target_entropy)`, the critics' loss half the
  sum of their mean squared errors.

Where this goes beyond the textbook algorithm: a *truncated* episode (time limit) is bootstrapped
from the observation before the auto-reset; with `normalize_obs` the buffer holds raw observations,
normalised with the current running statistics whenever they are acted on or learnt from.
"""

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Float, Int, PRNGKeyArray

from pureeqxrl import loop
from pureeqxrl.config import ConfigChecks, TrainConfig, check_replay
from pureeqxrl.envs import VecEnv, episode_stats, make_env
from pureeqxrl.evaluate import training_evaluator
from pureeqxrl.heads import tanh_gaussian
from pureeqxrl.loop import Learner, LogCallback, TrainResult, counter_field, environment_field
from pureeqxrl.nets import MLP, NetworkBuilder, NetworkKey, ParamKeys
from pureeqxrl.normalize import Normalize, RunningStats
from pureeqxrl.replay import ReplayBuffer, Transition, ready_to_learn, stored_after

__all__ = ["SACConfig", "make_learner", "make_train", "policy"]


@dataclass(frozen=True)
class SACConfig(TrainConfig):
    """SAC hyperparameters: Adam 3e-4 for actor, critics and temperature, batch 256, tau 0.005,
    256-256 relu networks, target entropy -action_dim, temperature starting at 1 (rejax, sbx and
    CleanRL agree on these); one gradient step per environment step; Pendulum-v1 for 5e4 steps."""

    env: str = "Pendulum-v1"
    """A continuous-action environment: gymnax (Pendulum-v1, MountainCarContinuous-v0) or Brax."""
    total_timesteps: int = 50_000
    num_envs: int = 1
    """Parallel environments; one update steps each of them once."""
    buffer_size: int = 1_000_000
    """Replay capacity in transitions."""
    batch_size: int = 256
    learning_starts: int = 5_000
    """Environment steps of uniformly random actions before the first gradient step (CleanRL's)."""
    gradient_steps: int = 1
    """Gradient steps per update, i.e. per `num_envs` environment steps."""
    learning_rate: float = 3e-4
    """Adam's step size for the actor, the critics and the temperature."""
    tau: float = 0.005
    """Polyak rate of the target critics, applied after every gradient step."""
    hidden_sizes: tuple[int, ...] = (256, 256)
    """Hidden widths of the actor and of each critic (relu)."""
    initial_alpha: float = 1.0
    """The entropy temperature to start with (kept there if `learn_alpha` is off)."""
    learn_alpha: bool = True
    """Learn the temperature so that the policy's entropy approaches `target_entropy`."""
    target_entropy: float | None = None
    """Entropy of the squashed action the temperature steers towards (None: -action_dim)."""
    normalize_obs: bool = False
    """Normalise observations with running statistics (saved with the agent, used at evaluation)."""
    log_interval: int = 500

    @property
    def num_gradient_steps(self) -> int:
        """Gradient steps of the whole run (the `update` learns once enough
        transitions are stored and `learning_starts` is past)."""
        timesteps = np.arange(1, self.num_updates + 1) * self.num_envs  # after each update
        learns = ready_to_learn(stored_after(timesteps, self), timesteps, self)
        return int(learns.sum()) * self.gradient_steps

    def check(self, checks: ConfigChecks) -> None:
        super().check(checks)
        check_replay(checks, self)
        checks.positive("gradient_steps")
        checks.non_negative("initial_alpha")
        checks.require(0 < self.tau <= 1, f"tau must be in (0, 1], got {self.tau}")
        checks.require(
            not self.learn_alpha or self.initial_alpha > 0,
            f"initial_alpha must be positive to learn it (its log is learnt), got {self.initial_alpha}",
        )


# NETWORKS

LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0


class Actor(eqx.Module):
    """Mean and log-std of the pre-tanh Gaussian of one observation, from one MLP."""

    mlp: MLP

    def __init__(self, obs_size: int, action_dim: int, hidden_sizes, *, key: NetworkKey):
        self.mlp = MLP(obs_size, hidden_sizes, 2 * action_dim, key=key, activation=jax.nn.relu)

    def __call__(self, obs: Float[Array, "..."]) -> tuple[Float[Array, " a"], Float[Array, " a"]]:
        mean, log_std = jnp.split(self.mlp(obs.reshape(-1)), 2)
        log_std = LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (jnp.tanh(log_std) + 1.0)
        return mean, log_std


class Critics(eqx.Module):
    """`num_critics` Q-functions of (observation, action) as one MLP whose leaves have a leading
    axis of critics, so that both are one batched matmul per layer."""

    q: MLP

    def __init__(
        self, obs_size: int, action_dim: int, hidden_sizes, num_critics: int = 2, *, key: NetworkKey
    ):
        keys = ParamKeys.of(key)
        critic_keys = jnp.stack([keys() for _ in range(num_critics)])
        self.q = jax.vmap(lambda k: MLP(obs_size + action_dim, hidden_sizes, 1, key=k))(critic_keys)

    def __call__(self, obs: Float[Array, "..."], action: Float[Array, " a"]) -> Float[Array, " num_critics"]:
        x = jnp.concatenate([obs.reshape(-1), action])
        return jax.vmap(lambda q: q(x)[0])(self.q)


class Agent(eqx.Module):
    """What a run trains and saves: the actor and the twin critics."""

    actor: Actor
    critics: Critics


def actor_and_critics(config: SACConfig, env: VecEnv | Normalize, key: PRNGKeyArray) -> Agent:
    """The `Agent` of the config's hidden sizes for the environment (`make_learner`'s default)."""
    obs_size = int(np.prod(env.observation_shape))
    (action_dim,) = env.action_shape
    keys = ParamKeys(key)
    actor = Actor(obs_size, action_dim, config.hidden_sizes, key=keys)
    return Agent(actor=actor, critics=Critics(obs_size, action_dim, config.hidden_sizes, key=keys))


def sample_actions(
    actor: Actor, obs: Float[Array, "batch ..."], key: PRNGKeyArray
) -> tuple[Float[Array, "batch a"], Float[Array, " batch"]]:
    """Squashed actions in [-1, 1] sampled for a batch of observations, and their log-probabilities."""
    return squashed_samples(*jax.vmap(actor)(obs), key)


def squashed_samples(
    mean: Float[Array, "batch a"], log_std: Float[Array, "batch a"], key: PRNGKeyArray
) -> tuple[Float[Array, "batch a"], Float[Array, " batch"]]:
    """A sample of each example's tanh-squashed Gaussian (`heads.tanh_gaussian`), and its log-prob."""
    keys = jax.random.split(key, mean.shape[0])
    return jax.vmap(lambda m, s, k: tanh_gaussian(m, s).sample_and_log_prob(k))(mean, log_std, keys)


def q_values(critics: Critics, obs: Float[Array, "batch ..."], action: Float[Array, "batch a"]) -> Array:
    """`(num_critics, batch)` Q-values."""
    return jax.vmap(critics, out_axes=1)(obs, action)


# LOSSES


def critic_loss(
    critics: Critics,
    target_critics: Critics,
    actor: Actor,
    alpha: Float[Array, ""],
    batch: Transition,
    key: PRNGKeyArray,
    gamma: float,
) -> tuple[Float[Array, ""], Float[Array, ""]]:
    """Half the sum over critics of the mean squared soft TD error, and the mean Q-value.

    Target: `r + gamma * (1 - terminated) * (min_i Q_target_i(s', a') - alpha * log pi(a'|s'))`
    with `a' ~ pi(s')` the current actor's; a truncated step bootstraps (`terminated` is False)."""
    next_action, next_log_prob = sample_actions(actor, batch.next_obs, key)
    next_q = q_values(target_critics, batch.next_obs, next_action).min(axis=0)
    not_terminated = 1.0 - batch.terminated.astype(batch.reward.dtype)
    target = batch.reward + gamma * not_terminated * (next_q - alpha * next_log_prob)
    q = q_values(critics, batch.obs, batch.action)
    loss = 0.5 * ((q - jax.lax.stop_gradient(target)) ** 2).mean(axis=1).sum()
    return loss, q.mean()


def actor_loss(
    actor: Actor, critics: Critics, alpha: Float[Array, ""], obs: Array, key: PRNGKeyArray
) -> tuple[Float[Array, ""], Float[Array, " batch"]]:
    """`E[alpha * log pi(a|s) - min_i Q_i(s, a)]` over `a ~ pi(s)` (reparameterised), and the
    log-probabilities of those actions."""
    action, log_prob = sample_actions(actor, obs, key)
    q = q_values(critics, obs, action).min(axis=0)
    return (alpha * log_prob - q).mean(), log_prob


def temperature_loss(
    log_alpha: Float[Array, ""], log_prob: Float[Array, " batch"], target_entropy: float
) -> Float[Array, ""]:
    """Lowers the temperature while the policy's entropy (`-log_prob`) is above the target."""
    return -(log_alpha * jax.lax.stop_gradient(log_prob + target_entropy)).mean()


# TRAINING


class SACState(eqx.Module):
    params: Agent
    target_critics: Critics
    log_alpha: Float[Array, ""]
    opt_state: tuple[Any, Any, Any]
    """Adam's states of the actor, the critics and the temperature."""
    buffer: ReplayBuffer
    env_state: Any = environment_field()
    obs: Array = environment_field()
    """Raw observations (not normalised)."""
    timesteps: Int[Array, ""] = counter_field()
    key: PRNGKeyArray


def make_train(
    config: SACConfig,
    make_network: NetworkBuilder = actor_and_critics,
    on_log: LogCallback | None = None,
) -> Callable[[PRNGKeyArray], TrainResult]:
    """Validate `config` and return `train(key) -> TrainResult`, pure and jittable.

    `make_network(config, env, key)` builds the `Agent` (default `actor_and_critics`); `on_log` is called with
    each metrics row (see `pureeqxrl.loop.scan_logged`).
    `jax.jit(jax.vmap(train))(jax.random.split(key, n))` trains `n` independent seeds at once.
    """
    return loop.make_train(make_learner(config, make_network), config, on_log)


def make_learner(config: SACConfig, make_network: NetworkBuilder = actor_and_critics) -> Learner:
    """Validate `config` and build its `pureeqxrl.loop.Learner`: `init(key)`, and `update(state)`,
    which steps every environment once, stores the transitions and, once `learning_starts` is
    past, takes `gradient_steps` gradient steps on sampled batches."""
    config.validate()
    env: VecEnv | Normalize = make_env(config.env, config.num_envs, config.max_episode_steps)
    if env.discrete:
        raise ValueError(f"SAC needs continuous actions; {config.env} has discrete actions")
    low, high = env.action_bounds
    if not (np.isfinite(low).all() and np.isfinite(high).all()):
        raise ValueError(
            f"SAC squashes actions into the environment's bounds; {config.env} has unbounded ones"
        )
    if config.normalize_obs:
        env = Normalize(env, observations=True, statistics_only=True)
    (action_dim,) = env.action_shape
    target_entropy = -float(action_dim) if config.target_entropy is None else config.target_entropy
    learning_rate = config.learning_rate
    if config.anneal_lr:
        learning_rate = optax.linear_schedule(config.learning_rate, 0.0, config.num_gradient_steps)
    optimizer = optax.adam(learning_rate)

    def normalized(env_state: Any, obs: Array) -> Array:
        return env_state.obs_stats.normalize(obs) if config.normalize_obs else obs

    def alpha_of(log_alpha: Array) -> Array:
        return jnp.exp(log_alpha) if config.learn_alpha else jnp.asarray(config.initial_alpha, jnp.float32)

    def gradient_step(state: SACState, key: PRNGKeyArray) -> tuple[SACState, dict[str, Array]]:
        sample_key, critic_key, actor_key = jax.random.split(key, 3)
        batch = state.buffer.sample(sample_key, config.batch_size)
        batch = dataclasses.replace(
            batch,
            obs=normalized(state.env_state, batch.obs),
            next_obs=normalized(state.env_state, batch.next_obs),
        )
        agent, (actor_opt, critic_opt, alpha_opt) = state.params, state.opt_state
        alpha = alpha_of(state.log_alpha)

        # CRITICS: regress onto the soft TD target of the target critics
        (loss_q, q_value), grads = jax.value_and_grad(critic_loss, has_aux=True)(
            agent.critics, state.target_critics, agent.actor, alpha, batch, critic_key, config.gamma
        )
        updates, critic_opt = optimizer.update(grads, critic_opt, agent.critics)
        critics = optax.apply_updates(agent.critics, updates)

        # ACTOR: maximise the smaller Q-value plus the entropy bonus, through the new critics
        (loss_pi, log_prob), grads = jax.value_and_grad(actor_loss, has_aux=True)(
            agent.actor, critics, alpha, batch.obs, actor_key
        )
        updates, actor_opt = optimizer.update(grads, actor_opt, agent.actor)
        actor = optax.apply_updates(agent.actor, updates)

        # TEMPERATURE: towards the target entropy
        log_alpha = state.log_alpha
        if config.learn_alpha:
            grad = jax.grad(temperature_loss)(log_alpha, log_prob, target_entropy)
            updates, alpha_opt = optimizer.update(grad, alpha_opt, log_alpha)
            log_alpha = optax.apply_updates(log_alpha, updates)

        # TARGET CRITICS: Polyak averaging
        target_critics = optax.incremental_update(critics, state.target_critics, config.tau)
        state = dataclasses.replace(
            state,
            params=Agent(actor=actor, critics=critics),
            target_critics=target_critics,
            log_alpha=log_alpha,
            opt_state=(actor_opt, critic_opt, alpha_opt),
        )
        info = {
            "critic_loss": loss_q,
            "actor_loss": loss_pi,
            "q_value": q_value,
            "entropy": -log_prob.mean(),
            "alpha": alpha,
        }
        return state, info

    def learn(state: SACState) -> tuple[SACState, dict[str, Array]]:
        key, steps_key = jax.random.split(state.key)
        state, info = jax.lax.scan(
            gradient_step,
            dataclasses.replace(state, key=key),
            jax.random.split(steps_key, config.gradient_steps),
        )
        return state, jax.tree.map(jnp.mean, info)

    def collect(state: SACState):
        key, act_key, random_key, step_key = jax.random.split(state.key, 4)
        # ACT: uniformly at random until learning starts, then sample the squashed Gaussian
        policy_action, _ = sample_actions(state.params.actor, normalized(state.env_state, state.obs), act_key)
        random_action = jax.random.uniform(random_key, policy_action.shape, minval=-1.0, maxval=1.0)
        action = jnp.where(state.timesteps < config.learning_starts, random_action, policy_action)
        obs, env_state, step = env.step(step_key, state.env_state, to_bounds(action, low, high))
        transition = Transition(
            obs=state.obs,
            action=action,
            reward=step.reward,
            next_obs=step.next_obs,
            terminated=step.terminated,
        )
        state = dataclasses.replace(
            state,
            buffer=state.buffer.add(transition),
            env_state=env_state,
            obs=obs,
            timesteps=state.timesteps + config.num_envs,
            key=key,
        )
        return state, step

    def update(state: SACState) -> tuple[SACState, dict]:
        state, step = collect(state)  # ONE STEP PER ENVIRONMENT, STORED
        is_learn_time = ready_to_learn(state.buffer.size, state.timesteps, config)
        no_info = {
            name: jnp.array(0.0) for name in ("critic_loss", "actor_loss", "q_value", "entropy", "alpha")
        }
        state, info = jax.lax.cond(is_learn_time, learn, lambda state: (state, no_info), state)  # LEARN
        learned = is_learn_time.astype(jnp.float32)
        stats = {**episode_stats(step), **{name: (value * learned, learned) for name, value in info.items()}}
        return state, stats

    def init(key: PRNGKeyArray) -> SACState:
        env_key, init_key, loop_key = jax.random.split(key, 3)
        obs, env_state = env.reset(env_key)
        agent = make_network(config, env, init_key)
        log_alpha = jnp.log(jnp.asarray(config.initial_alpha, jnp.float32))
        return SACState(
            params=agent,
            target_critics=agent.critics,
            log_alpha=log_alpha,
            opt_state=(optimizer.init(agent.actor), optimizer.init(agent.critics), optimizer.init(log_alpha)),
            buffer=ReplayBuffer.for_steps(obs, jnp.zeros(action_dim, jnp.float32), config.buffer_size),
            env_state=env_state,
            obs=obs,
            timesteps=jnp.array(0),
            key=loop_key,
        )

    # EVALUATION: the deterministic (tanh of the mean) and the sampled policy on fresh episodes
    evaluate = training_evaluator(config, policy, stochastic=True)
    return Learner(init, update, evaluate)


def to_bounds(action: Float[Array, "... a"], low: Array, high: Array) -> Float[Array, "... a"]:
    """A squashed action in [-1, 1] mapped affinely onto the environment's `[low, high]`."""
    return low + 0.5 * (action + 1.0) * (high - low)


# USING A TRAINED AGENT


def policy(
    agent: Agent,
    env: VecEnv,
    obs_stats: RunningStats | None = None,
    greedy: bool | Array = True,
) -> Callable[[PRNGKeyArray, Array], Array]:
    """`act(key, obs_batch)` of a trained agent, as `pureeqxrl eval` runs it: the tanh of the
    Gaussian's mean (`greedy`) or a sample of the squashed Gaussian, in the environment's bounds.
    Observations are normalised with the frozen training statistics `obs_stats` (if any)."""
    low, high = env.action_bounds

    def act(key: PRNGKeyArray, obs: Array) -> Array:
        if obs_stats is not None:
            obs = obs_stats.normalize(obs)
        mean, log_std = jax.vmap(agent.actor)(obs)
        sampled, _ = squashed_samples(mean, log_std, key)
        return to_bounds(jnp.where(greedy, jnp.tanh(mean), sampled), low, high)

    return act
