"""Environments: a vectorised, logged view of gymnax >= 1.0 environments.

gymnax 1.0's `step` returns `(obs, state, reward, terminated, truncated, info)` and auto-resets: `obs`
is already the next episode's first observation when the episode ended, and the observation the
episode ended on is in `info["final_observation"]`. Algorithms need both: acting continues from
`obs`, while a bootstrapped target after a *truncation* must use the final observation (a time limit
is not a terminal state). `VecEnv.step` hands both out as `Step.next_obs` and the returned `obs`.

navix environments (`Navix-...` ids, optional extra `pureeqxrl[navix]`) and Brax environments
(`brax-...` ids, extra `pureeqxrl[brax]`) are put behind the same interface by `NavixEnvironment`
and `BraxEnvironment`, so every algorithm runs on them unchanged.
"""

import dataclasses
import difflib
from dataclasses import dataclass
from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import gymnax
import jax
import jax.numpy as jnp
from gymnax.environments import environment, spaces
from jaxtyping import Array, Bool, Float, PRNGKeyArray

from pureeqxrl import probes


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

    def reset(self, key: PRNGKeyArray) -> tuple[Array, EpisodeState]:
        keys = jax.random.split(key, self.num_envs)
        obs, env_state = jax.vmap(self.env.reset, in_axes=(0, None))(keys, self.params)
        zeros = jnp.zeros(self.num_envs, jnp.float32)
        return obs.astype(jnp.float32), EpisodeState(env_state, zeros, zeros)

    def step(
        self, key: PRNGKeyArray, state: EpisodeState, action: Array
    ) -> tuple[Array, EpisodeState, Step]:
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
            env_state,
            jnp.where(done, 0.0, episode_return),
            jnp.where(done, 0.0, episode_length),
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


class NavixEnvironment(environment.Environment):
    """A navix environment behind gymnax 1.0's interface, with immediate auto-reset.

    navix resets lazily: the step *after* an episode ends ignores the action and returns the first
    observation of the next episode with reward 0, a transition that belongs to no episode. Here the
    reset happens in the same step, as gymnax does, and the observation the episode ended on goes
    to `info["final_observation"]`. Termination and truncation come from navix's step type. The
    state is navix's `Timestep`; observations stay navix's (e.g. the symbolic `(H, W, 3)` grid) and
    are cast to float32 by `VecEnv`.
    """

    def __init__(self, navix_env: Any):
        super().__init__()
        self.navix_env = navix_env

    @property
    def default_params(self) -> environment.EnvParams:
        return environment.EnvParams(max_steps_in_episode=int(self.navix_env.max_steps))

    def action_space(self, params=None) -> spaces.Discrete:
        return spaces.Discrete(int(self.navix_env.action_space.maximum) + 1)

    def observation_space(self, params=None) -> spaces.Box:
        space = self.navix_env.observation_space
        return spaces.Box(space.minimum, space.maximum, space.shape, space.dtype)

    def reset_env(self, key, params):
        timestep = self.navix_env.reset(key).replace(info={})  # navix's running return: unused
        return timestep.observation, timestep

    def step_env(self, key, timestep, action, params):
        # `_step` is navix's step without its lazy reset; gymnax's `step` resets right after it.
        timestep = self.navix_env._step(timestep, action).replace(info={})
        return timestep.observation, timestep, timestep.reward, timestep.is_termination(), {}

    def is_truncated(self, timestep, params):
        return timestep.is_truncation()


class BraxState(eqx.Module):
    pipeline: Any
    """Brax's own `State` (physics state, obs, reward, done, metrics)."""
    time: Array


class BraxEnvironment(environment.Environment):
    """A Brax environment behind gymnax 1.0's interface, with its time limit as a *truncation*.

    Brax's `done` is termination only (e.g. hopper falling); the time limit (default 1000 steps)
    is counted here and reported as `truncated`, which PureJaxRL's Brax wrapper drops.
    """

    def __init__(self, brax_env: Any, max_steps: int = 1000):
        super().__init__()
        self.brax_env = brax_env
        self.max_steps = max_steps

    @property
    def default_params(self) -> environment.EnvParams:
        return environment.EnvParams(max_steps_in_episode=self.max_steps)

    def action_space(self, params=None) -> spaces.Box:
        return spaces.Box(-1.0, 1.0, (self.brax_env.action_size,), jnp.float32)

    def observation_space(self, params=None) -> spaces.Box:
        return spaces.Box(-jnp.inf, jnp.inf, (self.brax_env.observation_size,), jnp.float32)

    def reset_env(self, key, params):
        pipeline = self.brax_env.reset(key)
        return pipeline.obs, BraxState(pipeline, jnp.array(0, jnp.int32))

    def step_env(self, key, state, action, params):
        pipeline = self.brax_env.step(state.pipeline, action)
        terminated = pipeline.done.astype(bool)
        return pipeline.obs, BraxState(pipeline, state.time + 1), pipeline.reward, terminated, {}


BRAX_PREFIX = "brax-"
BRAX_BACKEND = "positional"  # PureJaxRL's choice for its Brax runs


def _brax_envs():
    try:
        from brax import envs
    except ImportError as error:
        raise ValueError(
            "Brax environments need the optional brax extra: pip install 'pureeqxrl[brax]'"
        ) from error
    return envs


def _navix():
    try:
        import navix
    except ImportError as error:
        raise ValueError(
            "Navix environments need the optional navix extra: pip install 'pureeqxrl[navix]'"
        ) from error
    return navix


def _navix_names() -> list[str]:
    try:
        return list(_navix().registry())
    except ValueError:
        return []


def _brax_names() -> list[str]:
    try:
        return [BRAX_PREFIX + name for name in _brax_envs()._envs]
    except ValueError:
        return []


def env_names() -> list[str]:
    return sorted([*gymnax.registered_envs, *probes.PROBES, *_navix_names(), *_brax_names()])


def make_env(name: str, num_envs: int, max_episode_steps: int | None = None) -> VecEnv:
    """Build a `VecEnv` for a gymnax (or probe) environment, failing early with a readable error.

    **Arguments:**

    - `name`: a gymnax id such as `"CartPole-v1"`, a navix id such as `"Navix-DoorKey-5x5-v0"`
      (needs the `navix` extra), a Brax environment as `"brax-hopper"` (needs the `brax` extra;
      backend `BRAX_BACKEND`, 1000-step limit), or a probe from `pureeqxrl.probes`.
    - `num_envs`: number of parallel copies.
    - `max_episode_steps`: overrides the environment's time limit (episodes are then *truncated*).
    """
    if num_envs < 1:
        raise ValueError(f"num_envs must be positive, got {num_envs}")
    if max_episode_steps is not None and max_episode_steps < 1:
        raise ValueError(f"max_episode_steps must be positive, got {max_episode_steps}")
    if name.startswith("Navix-") and name in _navix().registry():
        limit = {} if max_episode_steps is None else {"max_steps": max_episode_steps}
        env = NavixEnvironment(_navix().make(name, **limit))
        return VecEnv(env=env, params=env.default_params, num_envs=num_envs, name=name)
    if name.startswith(BRAX_PREFIX) and name in _brax_names():
        brax_env = _brax_envs().get_environment(name[len(BRAX_PREFIX):], backend=BRAX_BACKEND)
        env = BraxEnvironment(brax_env, max_episode_steps or 1000)
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


class RecurrentPolicy(NamedTuple):
    """A policy with memory: `initial_hidden(num_envs)`, and `act(key, obs_batch, hidden, reset)
    -> (action_batch, hidden)`, where `reset` marks the environments whose episode starts now."""

    initial_hidden: Callable[[int], Any]
    act: Callable[[PRNGKeyArray, Array, Any, Array], tuple[Array, Any]]


def evaluate(
    env: VecEnv,
    act: Callable[[PRNGKeyArray, Array], Array] | RecurrentPolicy,
    key: PRNGKeyArray,
    max_steps: int | None = None,
) -> Float[Array, " num_envs"]:
    """Return of the first episode of each of `env.num_envs` environments under policy `act`.

    `act(key, obs_batch) -> action_batch`, or a `RecurrentPolicy`. Runs `max_steps` steps (default:
    the environment's time limit) inside one `lax.scan`; an episode still running at the end gives
    NaN, never a partial return.
    """
    if not isinstance(act, RecurrentPolicy):
        memoryless = act
        act = RecurrentPolicy(lambda n: None, lambda k, obs, hidden, reset: (memoryless(k, obs), hidden))
    max_steps = int(env.params.max_steps_in_episode) if max_steps is None else max_steps
    reset_key, key = jax.random.split(key)
    obs, state = env.reset(reset_key)
    nan = jnp.full(env.num_envs, jnp.nan, jnp.float32)
    starts = jnp.ones(env.num_envs, bool)

    def one_step(carry, step_key):
        obs, state, hidden, reset, returns = carry
        act_key, step_key = jax.random.split(step_key)
        action, hidden = act.act(act_key, obs, hidden, reset)
        obs, state, step = env.step(step_key, state, action)
        first_end = step.done & jnp.isnan(returns)
        returns = jnp.where(first_end, step.episode_return, returns)
        return (obs, state, hidden, step.done, returns), None

    (*_, returns), _ = jax.lax.scan(
        one_step, (obs, state, act.initial_hidden(env.num_envs), starts, nan),
        jax.random.split(key, max_steps),
    )
    return returns
