"""navix and Brax environments behind gymnax 1.0's interface (`reset`/`step` with terminated and
truncated, auto-reset, `info["final_observation"]`), so `pureeqxrl.envs.make_env` wraps them like any
gymnax environment. Both libraries are optional extras, imported only when one of their ids is used.
"""

import dataclasses
from typing import Any

import equinox as eqx
import jax.numpy as jnp
from gymnax.environments import environment, spaces
from jaxtyping import Array


class NavixEnvironment(environment.Environment):
    """A navix environment behind gymnax 1.0's interface, with immediate auto-reset.

    navix resets lazily: the step *after* an episode ends ignores the action and returns the first
    observation of the next episode with reward 0, a transition that belongs to no episode. Here the
    reset happens in the same step, as gymnax does, and the observation the episode ended on goes
    to `info["final_observation"]`. Termination and truncation come from navix's step type. The
    state is navix's `Timestep`; observations stay navix's (e.g. the symbolic `(H, W, 3)` grid) and
    are cast to float32 by `VecEnv`.

    The transition without navix's lazy reset is its public `step` on an environment made with
    `disable_autoreset=True` (navix 4.0; `make_navix` asks for it wherever the release has the
    field); releases without it (0.7.4, the last for Python 3.11) only have it as the private
    `_step`. `tests/test_adapters.py` checks, on whichever release is installed, that the transition
    used here never resets and that the one navix's `step` would use does.
    """

    def __init__(self, navix_env: Any):
        super().__init__()
        self.navix_env = navix_env

    @property
    def transition(self) -> Any:
        """navix's step without its lazy reset: `(timestep, action) -> timestep`."""
        if getattr(self.navix_env, "disable_autoreset", False):
            return self.navix_env.step
        return self.navix_env._step

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
        # gymnax's `step` resets right after this transition when the episode ended.
        timestep = self.transition(timestep, action).replace(info={})
        return timestep.observation, timestep, timestep.reward, timestep.is_termination(), {}

    def is_truncated(self, timestep, params):
        return timestep.is_truncation()


def make_navix(name: str, max_steps: int | None = None) -> NavixEnvironment:
    """The navix environment `name` (a `Navix-...` id), with its lazy auto-reset switched off where
    the installed navix can (`NavixEnvironment`), and `max_steps` as its time limit if given."""
    module = navix()
    kwargs: dict[str, Any] = {} if max_steps is None else {"max_steps": max_steps}
    if "disable_autoreset" in {field.name for field in dataclasses.fields(module.Environment)}:
        kwargs["disable_autoreset"] = True
    return NavixEnvironment(module.make(name, **kwargs))


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
        return pipeline.obs, BraxState(pipeline=pipeline, time=jnp.array(0, jnp.int32))

    def step_env(self, key, state, action, params):
        pipeline = self.brax_env.step(state.pipeline, action)
        terminated = pipeline.done.astype(bool)
        return (
            pipeline.obs,
            BraxState(pipeline=pipeline, time=state.time + 1),
            pipeline.reward,
            terminated,
            {},
        )


BRAX_PREFIX = "brax-"
BRAX_BACKEND = "positional"  # PureJaxRL's choice for its Brax runs


def brax_envs():
    try:
        from brax import envs
    except ImportError as error:
        raise ValueError(
            "Brax environments need the optional brax extra: pip install 'pureeqxrl[brax]'"
        ) from error
    return envs


def navix():
    try:
        import navix
    except ImportError as error:
        raise ValueError(
            "Navix environments need the optional navix extra: pip install 'pureeqxrl[navix]'"
        ) from error
    return navix


def navix_names() -> list[str]:
    try:
        return list(navix().registry())
    except ValueError:
        return []


def brax_names() -> list[str]:
    try:
        return [BRAX_PREFIX + name for name in brax_envs()._envs]
    except ValueError:
        return []
