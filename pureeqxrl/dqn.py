"""DQN (Mnih et al., 2015) in Equinox: PureJaxRL's `dqn.py`, one `jax.jit` per training run.

Read top to bottom: the config (PureJaxRL's defaults), the Q-network, the loss, then `make_train`,
whose `train(key)` collects experience with epsilon-greedy actions, stores it in the replay buffer
(`pureeqxrl.replay`, shared with SAC), learns from uniform replay, and copies the online network
into the target network.

Where this differs from PureJaxRL, on purpose:

- each seed's key really is used (the reference overwrites it with a fixed key, so vmapped seeds
  were identical runs);
- transitions store the pre-reset next observation and the *terminated* flag, so a truncated episode
  is bootstrapped from where it stopped, while a terminated one is not;
- metrics are one row per `log_interval` updates, not one per environment step;
- "every N steps" triggers whenever N is crossed, so any `num_envs` works (same schedule as the
  reference whenever `num_envs` divides N).

`make_learner(config, make_network)` trains any Module mapping one observation to Q-values
(`pureeqxrl.linen.dqn` passes the Flax Linen control group's).
"""

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

from pureeqxrl import loop
from pureeqxrl.config import ConfigChecks, TrainConfig, check_replay
from pureeqxrl.envs import Step, VecEnv, episode_stats, make_env
from pureeqxrl.evaluate import training_evaluator
from pureeqxrl.heads import epsilon_greedy, q_policy
from pureeqxrl.loop import Learner, LogCallback, TrainResult, counter_field, environment_field
from pureeqxrl.nets import MLP, NetworkBuilder
from pureeqxrl.replay import ReplayBuffer, Transition, ready_to_learn, stored_after


@dataclass(frozen=True)
class DQNConfig(TrainConfig):
    """DQN hyperparameters; defaults are PureJaxRL's CartPole-v1 settings, except Double DQN at half
    its learning rate (`PRESETS["purejaxrl"]` restores them)."""

    num_envs: int = 10
    """Parallel environments; one update steps each of them once."""
    buffer_size: int = 10_000
    """Replay capacity in transitions."""
    batch_size: int = 128
    """Transitions per gradient step."""
    epsilon_start: float = 1.0
    epsilon_finish: float = 0.05
    epsilon_anneal_time: int = 250_000
    """Environment steps over which epsilon goes linearly from start to finish."""
    learning_starts: int = 10_000
    """Environment steps of pure collection before the first gradient step."""
    training_interval: int = 10
    """One gradient step every this many environment steps."""
    target_update_interval: int = 500
    """Environment steps between target-network updates."""
    tau: float = 1.0
    """Target update rate (1.0 = hard copy)."""
    learning_rate: float = 1.25e-4
    """Adam's step size. Half the reference's 2.5e-4 (see `double_dqn`)."""
    double_dqn: bool = True
    """Double DQN (van Hasselt et al., 2016): the online network picks the next action, the target
    network values it. With it and half the reference's learning rate, every one of 32 CartPole
    seeds ended with its greedy policy at 497-500; PureJaxRL's settings (`--preset purejaxrl`:
    plain DQN, 2.5e-4) lost 5 of the same 32 seeds to late collapses (docs/dqn_settings.md)."""
    loss: Literal["mse", "huber"] = "mse"
    """TD-error loss: squared (the reference) or Huber with delta 1 (Mnih et al., 2015)."""
    max_grad_norm: float | None = None
    """Clip each gradient to this global norm (None: no clipping, as the reference)."""

    hidden_sizes: tuple[int, ...] = (120, 84)
    log_interval: int = 500

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "purejaxrl": {"learning_rate": 2.5e-4, "double_dqn": False}
    }
    """Named settings (`pureeqxrl train dqn --preset purejaxrl`): PureJaxRL's exact DQN."""

    def check(self, checks: ConfigChecks) -> None:
        super().check(checks)
        check_replay(checks, self)
        checks.positive("epsilon_anneal_time", "training_interval", "target_update_interval")
        checks.in_unit_interval("epsilon_start", "epsilon_finish")
        checks.require(0 < self.tau <= 1, f"tau must be in (0, 1], got {self.tau}")
        checks.require(self.loss in ("mse", "huber"), f"loss must be 'mse' or 'huber', got {self.loss!r}")
        if self.max_grad_norm is not None:
            checks.positive("max_grad_norm")


# NETWORK


class QNetwork(MLP):
    """MLP from a (flattened) observation to one Q-value per action: relu, Flax Dense init.

    An `MLP` itself rather than a Module holding one: every Module in a pytree costs a Python call
    to flatten it and another to rebuild it each time it crosses `jax.jit` from Python, and a DQN
    state holds the network four times (online, target, Adam's two moments).
    """

    def __init__(self, obs_size: int, num_actions: int, hidden_sizes, *, key: PRNGKeyArray):
        super().__init__(obs_size, hidden_sizes, num_actions, key=key, activation=jax.nn.relu)

    def __call__(self, obs: Float[Array, "..."]) -> Float[Array, " num_actions"]:
        return super().__call__(obs.reshape(-1))


def q_network(config: DQNConfig, env: VecEnv, key: PRNGKeyArray) -> QNetwork:
    """The `QNetwork` of the config's hidden sizes for the environment (`make_learner`'s default)."""
    return QNetwork(int(np.prod(env.observation_shape)), env.num_actions, config.hidden_sizes, key=key)


# LOSS


def td_target(
    next_q_target: Float[Array, "batch num_actions"],
    reward: Float[Array, " batch"],
    terminated: Bool[Array, " batch"],
    gamma: float,
    next_q_online: Float[Array, "batch num_actions"] | None = None,
) -> Float[Array, " batch"]:
    """One-step Q-learning target; bootstraps unless the episode *terminated* at this step.

    The next state's value is the target network's best Q-value, or with `next_q_online` (Double
    DQN) the target network's Q-value of the online network's best action."""
    if next_q_online is None:
        next_value = next_q_target.max(axis=-1)
    else:
        best = next_q_online.argmax(axis=-1, keepdims=True)
        next_value = jnp.take_along_axis(next_q_target, best, axis=-1)[:, 0]
    return reward + gamma * (1.0 - terminated.astype(reward.dtype)) * next_value


def q_loss(
    network: Callable[[Array], Array],
    target_network: Callable[[Array], Array],
    batch: Transition,
    config: DQNConfig,
) -> tuple[Float[Array, ""], Float[Array, ""]]:
    """Mean TD loss of a batch: squared error (as the reference: no 1/2) or Huber (`config.loss`),
    against `td_target` (Double DQN's if `config.double_dqn`). Returns (loss, mean chosen Q)."""
    next_q_online = jax.vmap(network)(batch.next_obs) if config.double_dqn else None
    target = td_target(
        jax.vmap(target_network)(batch.next_obs), batch.reward, batch.terminated, config.gamma, next_q_online
    )
    q = jax.vmap(network)(batch.obs)
    chosen_q = jnp.take_along_axis(q, batch.action[:, None], axis=-1)[:, 0]
    error = chosen_q - jax.lax.stop_gradient(target)
    loss = optax.huber_loss(error) if config.loss == "huber" else error**2
    return loss.mean(), chosen_q.mean()


# ACTING


def epsilon_at(config: DQNConfig, timesteps: Int[Array, ""]) -> Float[Array, ""]:
    fraction = jnp.minimum(timesteps / config.epsilon_anneal_time, 1.0)
    return config.epsilon_start + fraction * (config.epsilon_finish - config.epsilon_start)


def _crossed(timesteps: Int[Array, ""], step: int, interval: int) -> Bool[Array, ""]:
    """Whether the last `step` environment steps crossed a multiple of `interval`."""
    return timesteps // interval != (timesteps - step) // interval


def num_gradient_steps(config: DQNConfig) -> int:
    """How many gradient steps a run takes: the updates at which the `update`
    learns (enough transitions stored, past `learning_starts`, a `training_interval` crossed)."""
    timesteps = np.arange(1, config.num_updates + 1) * config.num_envs  # after each update
    learns = ready_to_learn(stored_after(timesteps, config), timesteps, config) & _crossed(
        timesteps, config.num_envs, config.training_interval
    )
    return int(learns.sum())


# TRAINING


class DQNState(eqx.Module):
    params: Any
    target_params: Any
    opt_state: Any
    buffer: ReplayBuffer
    env_state: Any = environment_field()
    obs: Array = environment_field()
    timesteps: Int[Array, ""] = counter_field()
    key: PRNGKeyArray


def make_train(
    config: DQNConfig,
    make_network: NetworkBuilder = q_network,
    on_log: LogCallback | None = None,
) -> Callable[[PRNGKeyArray], TrainResult]:
    """Validate `config` and return `train(key) -> TrainResult`, pure and jittable.

    **Arguments:**

    - `make_network`: `(config, env, key) -> network`, a Module mapping one observation to its
      Q-values; defaults to `q_network`.
    - `on_log`: host function `(row_index, row)` called after each metrics row (see `scan_logged`).

    `jax.jit(jax.vmap(train))(jax.random.split(key, n))` trains `n` independent seeds at once.
    """
    return loop.make_train(make_learner(config, make_network), config, on_log)


def make_learner(config: DQNConfig, make_network: NetworkBuilder = q_network) -> Learner:
    """Validate `config` and build its `pureeqxrl.loop.Learner`: `init(key)`, and `update(state)`,
    which takes one epsilon-greedy step in every environment, stores it, takes a gradient step on a
    sampled batch when it is time, and updates the target network when it is time."""
    config.validate()
    env = make_env(config.env, config.num_envs, config.max_episode_steps)
    if not env.discrete:  # a Q-value per action needs a finite set of actions
        raise ValueError(f"DQN needs discrete actions; {config.env} has continuous actions (a Box)")
    learning_rate = config.learning_rate
    if config.anneal_lr:  # the schedule counts gradient steps: zero at the run's last one
        learning_rate = optax.linear_schedule(config.learning_rate, 0.0, num_gradient_steps(config))
    optimizer = optax.adam(learning_rate)
    if config.max_grad_norm is not None:
        optimizer = optax.chain(optax.clip_by_global_norm(config.max_grad_norm), optimizer)

    def learn(state: DQNState, key: PRNGKeyArray) -> tuple[DQNState, Array, Array]:
        batch = state.buffer.sample(key, config.batch_size)
        (loss, q_value), grads = jax.value_and_grad(q_loss, has_aux=True)(
            state.params, state.target_params, batch, config
        )
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return dataclasses.replace(state, params=params, opt_state=opt_state), loss, q_value

    def step_environments(state: DQNState, key, act_key, step_key) -> tuple[DQNState, Step, Array]:
        epsilon = epsilon_at(config, state.timesteps)
        action = epsilon_greedy(act_key, jax.vmap(state.params)(state.obs), epsilon)
        obs, env_state, step = env.step(step_key, state.env_state, action)
        buffer = state.buffer.add(
            Transition(
                obs=state.obs,
                action=action,
                reward=step.reward,
                next_obs=step.next_obs,
                terminated=step.terminated,
            )
        )
        state = dataclasses.replace(
            state,
            buffer=buffer,
            env_state=env_state,
            obs=obs,
            timesteps=state.timesteps + config.num_envs,
            key=key,
        )
        return state, step, epsilon

    def update(state: DQNState) -> tuple[DQNState, dict]:
        key, act_key, step_key, learn_key = jax.random.split(state.key, 4)

        # COLLECT ONE STEP PER ENVIRONMENT
        state, step, epsilon = step_environments(state, key, act_key, step_key)
        buffer, timesteps = state.buffer, state.timesteps

        # LEARN
        is_learn_time = ready_to_learn(buffer.size, timesteps, config) & _crossed(
            timesteps, config.num_envs, config.training_interval
        )
        state, loss, q_value = jax.lax.cond(
            is_learn_time,
            learn,
            lambda state, key: (state, jnp.array(0.0), jnp.array(0.0)),
            state,
            learn_key,
        )

        # UPDATE TARGET NETWORK
        target_params = jax.lax.cond(
            _crossed(timesteps, config.num_envs, config.target_update_interval),
            lambda: optax.incremental_update(state.params, state.target_params, config.tau),
            lambda: state.target_params,
        )
        state = dataclasses.replace(state, target_params=target_params)

        learned = is_learn_time.astype(jnp.float32)
        stats = {
            **episode_stats(step),
            "loss": (loss * learned, learned),
            "q_value": (q_value * learned, learned),
            "epsilon": (epsilon, jnp.array(1.0)),
        }
        return state, stats

    def init(key: PRNGKeyArray) -> DQNState:
        env_key, init_key, loop_key = jax.random.split(key, 3)
        obs, env_state = env.reset(env_key)
        network = make_network(config, env, init_key)
        return DQNState(
            params=network,
            target_params=network,
            opt_state=optimizer.init(network),
            buffer=ReplayBuffer.for_steps(obs, jnp.array(0, jnp.int32), config.buffer_size),
            env_state=env_state,
            obs=obs,
            timesteps=jnp.array(0),
            key=loop_key,
        )

    # EVALUATION: the greedy policy on fresh episodes (`config.eval_interval`)
    evaluate = training_evaluator(config, policy, stochastic=False)
    return Learner(init, update, evaluate)


# USING A TRAINED AGENT


def greedy_action(network: QNetwork, obs: Float[Array, "..."]) -> Int[Array, ""]:
    """Action a trained `QNetwork` takes for one observation."""
    return network(obs).argmax()


# `policy(network, env, obs_stats, greedy)`: the argmax of Q, what `pureeqxrl eval` runs.
policy = q_policy
