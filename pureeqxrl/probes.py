"""Probe environments: tiny gymnax environments whose optimal values are known in closed form.

An algorithm that cannot learn these has a bug, and each probe isolates one part of it:

| probe | actions | what must be learnt | isolates |
|---|---|---|---|
| `ConstantReward-probe` | 1 | Q = 1 | the value loss itself |
| `ObsReward-probe` | 1 | Q(obs) = obs (obs is +-1) | using the observation |
| `Discount-probe` | 1 | Q(first) = gamma, Q(second) = 1 | bootstrapping and discounting |
| `ActionReward-probe` | 2 | Q(obs, a) = 1 if a matches the sign of obs else 0 | acting on the learnt values |
| `TimeLimit-probe` | 1 | Q = 1 / (1 - gamma) | bootstrapping through truncations |
| `ContinuousAction-probe` | Box [-1, 1] | mean action obs / 2; V = -E[(a - obs / 2)^2] | Gaussian policies |
| `ContinuousTimeLimit-probe` | Box [-1, 1] | Q = 1 / (1 - gamma) | truncations, continuous actions |

`TimeLimit-probe` never terminates; it is truncated after `max_steps_in_episode` steps (default 1).
An algorithm that treats truncation as termination learns Q = 1 there instead of 1 / (1 - gamma).
"""

import equinox as eqx
import jax
import jax.numpy as jnp
from gymnax.environments import environment, spaces
from jaxtyping import Array, Int, PRNGKeyArray


class ProbeState(eqx.Module):
    time: Int[Array, ""]
    obs: Array


class ProbeParams(eqx.Module):
    max_steps_in_episode: int = 1


class _Probe(environment.Environment):
    """One-dimensional observation; subclasses define the observation, reward and ending rules."""

    num_probe_actions: int = 1

    @property
    def default_params(self) -> ProbeParams:
        return ProbeParams()

    @property
    def num_actions(self) -> int:
        return self.num_probe_actions

    def action_space(self, params=None) -> spaces.Discrete:
        return spaces.Discrete(self.num_probe_actions)

    def observation_space(self, params=None) -> spaces.Box:
        return spaces.Box(-1.0, 1.0, (1,), jnp.float32)

    def first_obs(self, key: PRNGKeyArray) -> Array:
        return jnp.zeros((1,), jnp.float32)

    def reset_env(self, key: PRNGKeyArray, params: ProbeParams) -> tuple[Array, ProbeState]:
        obs = self.first_obs(key)
        return obs, ProbeState(time=jnp.array(0), obs=obs)

    def get_obs(self, state: ProbeState, params=None, key=None) -> Array:
        return state.obs

    def transition(self, state: ProbeState, action: Array) -> tuple[Array, Array, Array]:
        """Returns (next observation, reward, terminated)."""
        raise NotImplementedError

    def step_env(self, key, state: ProbeState, action, params: ProbeParams):
        obs, reward, terminated = self.transition(state, action)
        state = ProbeState(time=state.time + 1, obs=obs)
        return obs, state, reward.astype(jnp.float32), terminated, {}

    def is_terminated(self, state: ProbeState, params: ProbeParams) -> Array:
        return jnp.array(False)


class ConstantReward(_Probe):
    def transition(self, state, action):
        return state.obs, jnp.array(1.0), jnp.array(True)


def _random_sign(key: PRNGKeyArray) -> Array:
    return jnp.where(jax.random.bernoulli(key), 1.0, -1.0).reshape(1)


class ObsReward(_Probe):
    def first_obs(self, key):
        return _random_sign(key)

    def transition(self, state, action):
        return state.obs, state.obs[0], jnp.array(True)


class Discount(_Probe):
    """Two steps: observation 0 then 1; reward 1 only at the end of the second step."""

    @property
    def default_params(self) -> ProbeParams:
        return ProbeParams(max_steps_in_episode=10)

    def transition(self, state, action):
        last = state.time >= 1
        return jnp.ones((1,)), jnp.where(last, 1.0, 0.0), last


class ActionReward(_Probe):
    num_probe_actions = 2

    def first_obs(self, key):
        return _random_sign(key)

    def transition(self, state, action):
        correct = action == (state.obs[0] > 0).astype(action.dtype)
        return state.obs, jnp.where(correct, 1.0, 0.0), jnp.array(True)


class TimeLimit(_Probe):
    def transition(self, state, action):
        return state.obs, jnp.array(1.0), jnp.array(False)


class _ContinuousActions:
    """One action in [-1, 1] (a Box) instead of a Discrete space."""

    def action_space(self, params=None) -> spaces.Box:
        return spaces.Box(-1.0, 1.0, (1,), jnp.float32)


class ContinuousTimeLimit(_ContinuousActions, TimeLimit):
    """`TimeLimit-probe` with one continuous action, which changes nothing."""


class ContinuousAction(_ContinuousActions, _Probe):
    """One step, observation +-1, one action in [-1, 1]; reward -(action - obs / 2)^2."""

    def first_obs(self, key):
        return _random_sign(key)

    def transition(self, state, action):
        return state.obs, -((action[0] - state.obs[0] / 2) ** 2), jnp.array(True)


PROBES: dict[str, type[_Probe]] = {
    "ConstantReward-probe": ConstantReward,
    "ObsReward-probe": ObsReward,
    "Discount-probe": Discount,
    "ActionReward-probe": ActionReward,
    "TimeLimit-probe": TimeLimit,
    "ContinuousAction-probe": ContinuousAction,
    "ContinuousTimeLimit-probe": ContinuousTimeLimit,
}
