"""Running observation and reward normalisation, as wrappers of a `VecEnv`.

Statistics have the shape of *one* observation (PureJaxRL keeps `(num_envs, obs)`-shaped ones, its
issue #21), live in the environment state so they are carried through `lax.scan` and vmapped over
seeds like everything else, and the observation statistics leave training with the agent: a policy
is evaluated on observations normalised exactly as during training (frozen, no further updates).

Reward normalisation divides rewards by the running standard deviation of a discounted return and
only changes what the learner sees: `Step.episode_return` stays the environment's own return.
"""

from dataclasses import dataclass
from typing import Any

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from pureeqxrl.envs import Step


class RunningStats(eqx.Module):
    """Mean and variance of a stream of batches (Chan et al.'s parallel update)."""

    mean: Float[Array, "..."]
    var: Float[Array, "..."]
    count: Float[Array, ""]

    @staticmethod
    def empty(shape: tuple[int, ...]) -> "RunningStats":
        # The small prior count avoids a division by zero before the first batch, as the reference.
        return RunningStats(mean=jnp.zeros(shape), var=jnp.ones(shape), count=jnp.array(1e-4))

    def update(self, batch: Float[Array, "batch ..."]) -> "RunningStats":
        batch_mean, batch_var, batch_count = batch.mean(0), batch.var(0), batch.shape[0]
        delta = batch_mean - self.mean
        total = self.count + batch_count
        mean = self.mean + delta * batch_count / total
        m2 = self.var * self.count + batch_var * batch_count + delta**2 * self.count * batch_count / total
        return RunningStats(mean=mean, var=m2 / total, count=total)

    def normalize(self, x: Array) -> Array:
        return (x - self.mean) / jnp.sqrt(self.var + 1e-8)


class NormalizedState(eqx.Module):
    inner: Any
    obs_stats: RunningStats | None
    reward_stats: RunningStats | None
    discounted_return: Float[Array, " num_envs"] | None


@dataclass(frozen=True)
class Normalize:
    """Wraps a `VecEnv` (same `reset`/`step` interface) to normalise observations and/or rewards.

    Observations (both the one to act on and `Step.next_obs`, the bootstrap observation) are
    normalised with statistics that include the current step. Rewards are divided by the running
    standard deviation of the `gamma`-discounted return of each environment.
    """

    env: Any
    observations: bool = True
    rewards: bool = False
    gamma: float = 0.99
    statistics_only: bool = False
    """Keep the observation statistics up to date but hand out the raw observations: an off-policy
    learner (SAC) stores raw observations and normalises them with the current statistics when it
    acts and when it samples them, so old transitions are not stuck with old statistics."""

    def __getattr__(self, name: str) -> Any:
        if name == "env":  # not set yet (copying, unpickling): no delegation loop
            raise AttributeError(name)
        return getattr(self.env, name)  # num_envs, observation_shape, action_space, ...

    def reset(self, key: PRNGKeyArray) -> tuple[Array, NormalizedState]:
        obs, inner = self.env.reset(key)
        obs_stats = reward_stats = discounted = None
        if self.observations:
            obs_stats = RunningStats.empty(obs.shape[1:]).update(obs)
            if not self.statistics_only:
                obs = obs_stats.normalize(obs)
        if self.rewards:
            reward_stats = RunningStats.empty(())
            discounted = jnp.zeros(self.env.num_envs)
        state = NormalizedState(
            inner=inner, obs_stats=obs_stats, reward_stats=reward_stats, discounted_return=discounted
        )
        return obs, state

    def step(
        self, key: PRNGKeyArray, state: NormalizedState, action: Array
    ) -> tuple[Array, NormalizedState, Step]:
        obs, inner, step = self.env.step(key, state.inner, action)
        obs_stats, reward_stats, discounted = state.obs_stats, state.reward_stats, state.discounted_return
        if self.observations:
            obs_stats = obs_stats.update(obs)
            if not self.statistics_only:
                obs = obs_stats.normalize(obs)
                step = eqx.tree_at(lambda s: s.next_obs, step, obs_stats.normalize(step.next_obs))
        if self.rewards:
            # The discounted return restarts after an episode ends (the reference's bookkeeping).
            discounted = discounted * self.gamma * (1.0 - step.done.astype(jnp.float32)) + step.reward
            reward_stats = reward_stats.update(discounted)
            reward = step.reward / jnp.sqrt(reward_stats.var + 1e-8)
            step = eqx.tree_at(lambda s: s.reward, step, reward)
        state = NormalizedState(
            inner=inner, obs_stats=obs_stats, reward_stats=reward_stats, discounted_return=discounted
        )
        return obs, state, step
