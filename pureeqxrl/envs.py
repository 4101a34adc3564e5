"""Environments: a vectorised, logged view of gymnax >= 1.0 environments.

gymnax 1.0's `step` returns `(obs, state, reward, terminated, truncated, info)` and auto-resets: `obs`
is already the next episode's first observation when the episode ended, and the observation the
episode ended on is in `info["final_observation"]`. Algorithms need both: acting continues from
`obs`, while a bootstrapped target after a *truncation* must use the final observation (a time limit
is not a terminal state). `VecEnv.step` hands both out as `Step.next_obs` and the returned `obs`.

navix environments (`Navix-...` ids, optional extra `pureeqxrl[navix]`) and Brax environments
(`brax-...` ids, extra `pureeqxrl[brax]`) are put behind the same interface by
`pureeqxrl.adapters`, so every algorithm runs on them unchanged.
"""

import dataclasses
import difflib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import equinox as eqx
import gymnax
import jax
import jax.numpy as jnp
from gymnax.environments import spaces
from jaxtyping import Array, Bool, Float, PRNGKeyArray

from pureeqxrl import adapters, probes


class EpisodeState(eqx.Module):
    """The wrapped environment's state plus the running return and length of each episode."""

    env_state: Any
    episode_return: Float[Array, " num_envs"]
    episode_length: Float[Array, " num_envs"]


class Step(eqx.Module):
    """What one vectorised step reports, beyond the observation to act on next.

    `next_obs` is the observation the transition led to *before* any auto-reset: bootstrap from it.
    `episode_return`/`episode_length` are only meaningful where `done`; use `episode_stats` to
    aggregate them so that unfinished episodes are never reported.
    """

    reward: Float[Array, " num_envs"]
    terminated: Bool[Array, " num_envs"]
    truncated: Bool[Array, " num_envs"]
    next_obs: Array
    episode_return: Float[Array, " num_envs"]
    episode_length: Float[Array, " num_envs"]

    @property
    def done(self) -> Bool[Array, " num_envs"]:
        return self.terminated | self.truncated


@dataclass(frozen=True)
class VecEnv:
    """`num_envs` copies of a gymnax environment, stepped together, with episode bookkeeping.

    Not a pytree on purpose: the environment and its parameters are constants of the compiled
    training program, closed over by `make_train`.
    """

    env: Any
    params: Any
    num_envs: int
    name: str

    @property
    def observation_shape(self) -> tuple[int, ...]:
        return tuple(self.env.observation_space(self.params).shape)

    @property
    def action_space(self) -> Any:
        return self.env.action_space(self.params)

    @property
    def discrete(self) -> bool:
        return isinstance(self.action_space, spaces.Discrete)

    @property
    def num_actions(self) -> int:
        if not self.discrete:
            raise ValueError(f"{self.name} has continuous actions (a Box), not a Discrete space")
        return int(self.action_space.n)

    @property
    def action_shape(self) -> tuple[int, ...]:
        return tuple(self.action_space.shape)

    @property
    def action_bounds(self) -> tuple[Array, Array]:
        """`(low, high)` of a continuous (Box) action space, broadcast to `action_shape`."""
        if self.discrete:
            raise ValueError(f"{self.name} has discrete actions, not a Box")
        space = self.action_space
        low = jnp.broadcast_to(jnp.asarray(space.low, jnp.float32), self.action_shape)
        return low, jnp.broadcast_to(jnp.asarray(space.high, jnp.float32), self.action_shape)

    def to_env_action(self, action: Array) -> Array:
        """A policy's action as the environment takes it: integers for discrete actions;
        continuous ones clipped to the bounds (the policy's own sample stays unclipped)."""
        if self.discrete:
            return action.astype(jnp.int32)
        low, high = self.action_bounds
        return jnp.clip(action, low, high)

    def reset(self, key: PRNGKeyArray) -> tuple[Array, EpisodeState]:
        keys = jax.random.split(key, self.num_envs)
        obs, env_state = jax.vmap(self.env.reset, in_axes=(0, None))(keys, self.params)
        zeros = jnp.zeros(self.num_envs, jnp.float32)
        return obs.astype(jnp.float32), EpisodeState(
            env_state=env_state, episode_return=zeros, episode_length=zeros
        )

    def step(self, key: PRNGKeyArray, state: EpisodeState, action: Array) -> tuple[Array, EpisodeState, Step]:
        keys = jax.random.split(key, self.num_envs)
        obs, env_state, reward, terminated, truncated, info = jax.vmap(
            self.env.step, in_axes=(0, 0, 0, None)
        )(keys, state.env_state, action, self.params)
        reward = reward.astype(jnp.float32)
        terminated = terminated.astype(bool)
        truncated = truncated.astype(bool)
        done = terminated | truncated
        episode_return = state.episode_return + reward
        episode_length = state.episode_length + 1
        step = Step(
            reward=reward,
            terminated=terminated,
            truncated=truncated,
            next_obs=info["final_observation"].astype(jnp.float32),
            episode_return=episode_return,
            episode_length=episode_length,
        )
        state = EpisodeState(
            env_state=env_state,
            episode_return=jnp.where(done, 0.0, episode_return),
            episode_length=jnp.where(done, 0.0, episode_length),
        )
        return obs.astype(jnp.float32), state, step


def episode_stats(step: Step) -> dict[str, tuple[Array, Array]]:
    """Sums and counts of the returns/lengths of the episodes that *finished* in `step`."""
    done = step.done.astype(jnp.float32)
    count = done.sum()
    return {
        "episode_return": ((step.episode_return * done).sum(), count),
        "episode_length": ((step.episode_length * done).sum(), count),
    }


def run_rollout(
    env_step: Callable[[Any], tuple[Any, Any, Step]], state: Any, num_steps: int, num_envs: int
) -> tuple[Any, Any, dict[str, tuple[Array, Array]]]:
    """`env_step(state) -> (state, transition, step)` applied `num_steps` times in one `lax.scan`:
    the final state, the transitions stacked over the steps, and the episodes that finished in them
    as `episode_stats` reports them.

    The finished episodes' sums are carried per environment, as one array (return, length and count
    stacked), and summed over the environments once, at the end: a step adds to that array instead
    of summing over the environments and stacking each sum over the steps, which on a GPU, where
    each small operation is a kernel, cost PPO a fifth of its training on an H100.
    """

    def one_step(carry, _):
        state, totals = carry
        state, transition, step = env_step(state)
        return (state, add_finished_episodes(totals, step)), transition

    (state, totals), transitions = jax.lax.scan(
        one_step, (state, no_finished_episodes(num_envs)), None, num_steps
    )
    return state, transitions, finished_episode_stats(totals)


def no_finished_episodes(num_envs: int) -> Float[Array, "3 num_envs"]:
    """The sums of finished episodes' returns and lengths, and their count, per environment: zero."""
    return jnp.zeros((3, num_envs), jnp.float32)


def add_finished_episodes(totals: Float[Array, "3 num_envs"], step: Step) -> Float[Array, "3 num_envs"]:
    """`totals` plus the episodes that *finished* in `step`."""
    done = step.done.astype(jnp.float32)
    return totals + jnp.stack([step.episode_return * done, step.episode_length * done, done])


def finished_episode_stats(totals: Float[Array, "3 num_envs"]) -> dict[str, tuple[Array, Array]]:
    """`totals` as `episode_stats` reports them: sums and counts over all the environments."""
    returns, lengths, count = totals.sum(-1)
    return {"episode_return": (returns, count), "episode_length": (lengths, count)}


def env_names() -> list[str]:
    return sorted([*gymnax.registered_envs, *probes.PROBES, *adapters.navix_names(), *adapters.brax_names()])


def make_env(name: str, num_envs: int, max_episode_steps: int | None = None) -> VecEnv:
    """Build a `VecEnv` for a gymnax (or probe) environment, failing early with a readable error.

    **Arguments:**

    - `name`: a gymnax id such as `"CartPole-v1"`, a navix id such as `"Navix-DoorKey-5x5-v0"`
      (needs the `navix` extra), a Brax environment as `"brax-hopper"` (needs the `brax` extra;
      backend `adapters.BRAX_BACKEND`, 1000-step limit), or a probe from `pureeqxrl.probes`.
    - `num_envs`: number of parallel copies.
    - `max_episode_steps`: overrides the environment's time limit (episodes are then *truncated*).
    """
    if num_envs < 1:
        raise ValueError(f"num_envs must be positive, got {num_envs}")
    if max_episode_steps is not None and max_episode_steps < 1:
        raise ValueError(f"max_episode_steps must be positive, got {max_episode_steps}")
    if name.startswith("Navix-") and name in adapters.navix().registry():
        env = adapters.make_navix(name, max_episode_steps)
        return VecEnv(env=env, params=env.default_params, num_envs=num_envs, name=name)
    if name.startswith(adapters.BRAX_PREFIX) and name in adapters.brax_names():
        brax_env = adapters.brax_envs().get_environment(
            name[len(adapters.BRAX_PREFIX) :], backend=adapters.BRAX_BACKEND
        )
        env = adapters.BraxEnvironment(brax_env, max_episode_steps or 1000)
        return VecEnv(env=env, params=env.default_params, num_envs=num_envs, name=name)
    if name in probes.PROBES:
        env = probes.PROBES[name]()
        params = env.default_params
    elif name in gymnax.registered_envs:
        env, params = gymnax.make(name)
    else:
        close = difflib.get_close_matches(name, env_names(), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"Unknown environment {name!r}.{hint} Known: {', '.join(env_names())}")
    if max_episode_steps is not None:
        params = dataclasses.replace(params, max_steps_in_episode=max_episode_steps)
    return VecEnv(env=env, params=params, num_envs=num_envs, name=name)
