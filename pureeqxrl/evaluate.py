"""Evaluating a trained policy on fresh episodes, inside one `lax.while_loop`."""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from pureeqxrl.envs import VecEnv, make_env


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

    `act(key, obs_batch) -> action_batch`, or a `RecurrentPolicy`. Steps every environment inside
    one `lax.while_loop` until each has finished an episode, or for `max_steps` steps (default: the
    environment's time limit); an episode still running then gives NaN, never a partial return.
    """
    if not isinstance(act, RecurrentPolicy):
        memoryless = act
        act = RecurrentPolicy(
            initial_hidden=lambda num_envs: None,
            act=lambda key, obs, hidden, reset: (memoryless(key, obs), hidden),
        )
    max_steps = int(env.params.max_steps_in_episode) if max_steps is None else max_steps
    reset_key, key = jax.random.split(key)
    obs, state = env.reset(reset_key)
    nan = jnp.full(env.num_envs, jnp.nan, jnp.float32)
    starts = jnp.ones(env.num_envs, bool)

    def unfinished(carry) -> Array:
        time, *_, returns = carry
        return (time < max_steps) & jnp.isnan(returns).any()

    def one_step(carry):
        time, obs, state, hidden, reset, returns = carry
        act_key, step_key = jax.random.split(jax.random.fold_in(key, time))
        action, hidden = act.act(act_key, obs, hidden, reset)
        obs, state, step = env.step(step_key, state, action)
        first_end = step.done & jnp.isnan(returns)
        returns = jnp.where(first_end, step.episode_return, returns)
        return time + 1, obs, state, hidden, step.done, returns

    carry = (jnp.int32(0), obs, state, act.initial_hidden(env.num_envs), starts, nan)
    *_, returns = jax.lax.while_loop(unfinished, one_step, carry)
    return returns


EVAL_STREAM = 0x6576616C
"""Folded into a training state's key to draw its evaluation's key: evaluating takes nothing from
the training's random stream, so a run trains the same with evaluation on or off."""


@dataclass(frozen=True, eq=False)
class Evaluator:
    """`evaluator(state) -> {"eval_return": ...}` (see `make_evaluator`), and the environments it
    plays (`env`, whose size `pureeqxrl.loop.estimate_bytes` counts)."""

    env: VecEnv
    run: Callable[[Any], dict[str, Array]]

    def __call__(self, state: Any) -> dict[str, Array]:
        return self.run(state)


def make_evaluator(
    env: VecEnv,
    policy: Callable[[Any, Any, bool], Callable[[PRNGKeyArray, Array], Array] | RecurrentPolicy],
    stochastic: bool,
) -> Evaluator:
    """`evaluate(state) -> {"eval_return": ...}` for a training state (fields `params`, `env_state`
    and `key`): the mean return of the greedy policy over `env.num_envs` fresh episodes and, if
    `stochastic`, of the sampled policy on the same episodes (`"eval_return_sampled"`).

    `policy(network, obs_stats, greedy) -> act` (`greedy` a bool, or a traced one for a stochastic
    policy), where `network` is the state's `params` and `obs_stats` the observation statistics of a
    normalising environment (`state.env_state.obs_stats`), or None.
    """

    def run(state: Any) -> dict[str, Array]:
        key = jax.random.fold_in(state.key, EVAL_STREAM)
        obs_stats = getattr(state.env_state, "obs_stats", None)

        def mean_return(greedy: bool | Array) -> Array:
            return jnp.nanmean(evaluate(env, policy(state.params, obs_stats, greedy), key))

        if not stochastic:
            return {"eval_return": mean_return(True)}
        # Both policies as one batch of two: one traced evaluation loop, half the compile time.
        greedy, sampled = jax.vmap(mean_return)(jnp.array([True, False]))
        return {"eval_return": greedy, "eval_return_sampled": sampled}

    return Evaluator(env, run)


def training_evaluator(config: Any, policy: Callable[..., Any], stochastic: bool) -> Evaluator:
    """The evaluation during training of an algorithm (`config.eval_interval`): its `policy(network,
    env, obs_stats, greedy)` on `config.eval_episodes` fresh episodes of the config's environment."""
    env = make_env(config.env, config.eval_episodes, config.max_episode_steps)
    return make_evaluator(
        env, lambda network, obs_stats, greedy: policy(network, env, obs_stats, greedy), stochastic
    )
