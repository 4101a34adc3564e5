"""PPO (Schulman et al., 2017) in Equinox: PureJaxRL's `ppo.py`, `ppo_continuous_action.py` and
`dpo_continuous_action.py`, one `jax.jit` per training run.

Read top to bottom: the continuous-control defaults (`PPOContinuousConfig`; `PPOConfig` holds
PureJaxRL's CartPole-v1 ones), the training state, then `make_train`, whose `train(key)` repeats:
collect `num_steps` steps in `num_envs` environments, compute advantages, and run `update_epochs`
epochs of `num_minibatches` clipped policy-gradient steps. The config, GAE and the loss are in
`pureeqxrl.policy_gradient` (recurrent PPO uses them too); the actor-critics in `pureeqxrl.heads`.

Where this differs from PureJaxRL, on purpose:

- a *truncated* episode (time limit) is bootstrapped from `V(next_obs)` before the auto-reset; only
  a *terminated* one has value 0 after its last step;
- metrics are one row per `log_interval` updates (episode returns of the episodes that finished,
  loss terms, KL and clip fraction), not every environment step's info;
- observations of any shape are flattened into the MLP (MinAtar grids and navix's symbolic grids
  included); `pureeqxrl.envs` also runs navix environments, which replaces `ppo_minigrid.py`.

The policy is a batch of distreqx distributions (a `Categorical`, or a diagonal Gaussian for
continuous actions), so nothing below depends on the action space, except that continuous actions
are clipped to the environment's bounds when stepping (the stored action and its log-probability
stay unclipped, as the reference). `objective="dpo"` swaps the clipped surrogate for DPO's drift
objective, and `normalize_obs`/`normalize_reward` wrap the environment in
`pureeqxrl.normalize.Normalize`, whose observation statistics leave training with the agent.

The network library is a parameter (`network_fn`, see `pureeqxrl.nets.Functional`): the same
`make_train` runs the Flax Linen control version of `pureeqxrl.linen.ppo`.
"""

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Float, PRNGKeyArray

from pureeqxrl import loop
from pureeqxrl.envs import Step, VecEnv, run_rollout
from pureeqxrl.evaluate import training_evaluator
from pureeqxrl.heads import actor_critic, mode, sample
from pureeqxrl.loop import Learner, LogCallback, TrainResult, environment_field
from pureeqxrl.minibatch import shuffled_epochs
from pureeqxrl.nets import Functional
from pureeqxrl.normalize import Normalize, RunningStats
from pureeqxrl.policy_gradient import (
    Batch,
    LossInfo,
    PPOConfig,
    Transition,
    make_environment,
    make_optimizer,
    ppo_loss,
    rollout_advantages,
    update_stats,
)

__all__ = ["PPOConfig", "PPOContinuousConfig", "make_learner", "make_train", "policy", "rollout_values"]


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


# TRAINING


class PPOState(eqx.Module):
    params: Any
    opt_state: Any
    env_state: Any = environment_field()
    obs: Array = environment_field()
    key: PRNGKeyArray


def make_train(
    config: PPOConfig,
    network_fn: Callable[[PPOConfig, VecEnv | Normalize], Functional] | None = None,
    on_log: LogCallback | None = None,
) -> Callable[[PRNGKeyArray], TrainResult]:
    """Validate `config` and return `train(key) -> TrainResult`, pure and jittable.

    **Arguments:**

    - `network_fn`: builds the actor-critic's `Functional` (`apply(params, obs_batch) ->
      (batch of policy distributions, values)`); defaults to `pureeqxrl.heads.actor_critic`, the
      Equinox actor-critic for the environment's action space.
    - `on_log`: host function `(row_index, row)` called after each metrics row (see `scan_logged`).

    `jax.jit(jax.vmap(train))(jax.random.split(key, n))` trains `n` independent seeds at once.
    If observations are normalised, `train(key).obs_stats` holds the statistics to act with.
    """
    return loop.make_train(make_learner(config, network_fn), config, on_log)


def make_learner(
    config: PPOConfig,
    network_fn: Callable[[PPOConfig, VecEnv | Normalize], Functional] | None = None,
) -> Learner:
    """Validate `config` and build its `pureeqxrl.loop.Learner`: `init(key)`, and `update(state)`,
    which steps every environment `num_steps` times, computes the rollout's values and advantages
    and runs `update_epochs` epochs of `num_minibatches` gradient steps."""
    config.validate()
    env = make_environment(config)
    network = (network_fn or actor_critic)(config, env)
    optimizer = make_optimizer(config)

    def env_step(state: PPOState) -> tuple[PPOState, Transition, Step]:
        key, action_key, step_key = jax.random.split(state.key, 3)
        policy, _ = network.apply(state.params, state.obs)  # values: after the rollout, in one batch
        action = sample(policy, action_key)
        obs, env_state, step = env.step(step_key, state.env_state, env.to_env_action(action))
        transition = Transition.of_step(state.obs, action, policy, None, step)
        state = dataclasses.replace(state, env_state=env_state, obs=obs, key=key)
        return state, transition, step

    def gradient_step(params_and_opt, minibatch: Batch):
        params, opt_state = params_and_opt
        (loss, info), grads = jax.value_and_grad(ppo_loss, argnums=1, has_aux=True)(
            network.apply, params, minibatch, config
        )
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), (loss, info)

    def collect(state: PPOState) -> tuple[PPOState, Transition, dict]:
        return run_rollout(env_step, state, config.num_steps, config.num_envs)

    def learn(state: PPOState, rollout: Transition) -> tuple[PPOState, Array, LossInfo]:
        # VALUES: the critic's, with the parameters that collected the rollout
        value, next_value = rollout_values(network, state.params, rollout)
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
        params = network.init(init_key)
        return PPOState(
            params=params, opt_state=optimizer.init(params), env_state=env_state, obs=obs, key=loop_key
        )

    # EVALUATION: the greedy and the sampled policy on fresh episodes (`config.eval_interval`)
    evaluate = training_evaluator(config, network, policy, stochastic=True)
    return Learner(init, update, evaluate)


def rollout_values(
    network: Functional, params: Any, rollout: Transition
) -> tuple[Float[Array, "num_steps num_envs"], Float[Array, "num_steps num_envs"]]:
    """`V(obs)` and `V(next_obs)` (the pre-reset next observation) of every step of a stacked
    rollout, in one batch.

    The rollout's own step runs the actor alone: the parameters do not change while it collects,
    so these are the values it would have computed, and one batch of `2 * num_steps * num_envs`
    observations costs less than a critic in each of its steps.
    """
    num_steps, num_envs = rollout.reward.shape
    flat = lambda x: x.reshape(num_steps * num_envs, *x.shape[2:])  # noqa: E731
    _, values = network.apply(params, jnp.concatenate([flat(rollout.obs), flat(rollout.next_obs)]))
    value, next_value = values.reshape(2, num_steps, num_envs)
    return value, next_value


# USING A TRAINED AGENT


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

    def act(key: PRNGKeyArray, obs: Array) -> Array:
        if obs_stats is not None:
            obs = obs_stats.normalize(obs)
        distribution, _ = network.apply(params, obs)
        return env.to_env_action(jnp.where(greedy, mode(distribution), sample(distribution, key)))

    return act
