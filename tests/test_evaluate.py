from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from pureeqxrl.envs import make_env
from pureeqxrl.evaluate import RecurrentPolicy, evaluate, make_evaluator


def test_evaluate_reports_first_episode_and_nan_when_unfinished(key):
    env = make_env("TimeLimit-probe", 4, max_episode_steps=7)
    returns = evaluate(env, lambda k, obs: jnp.zeros(obs.shape[0], jnp.int32), key)
    np.testing.assert_array_equal(returns, np.full(4, 7.0))
    short = evaluate(env, lambda k, obs: jnp.zeros(obs.shape[0], jnp.int32), key, max_steps=6)
    assert np.isnan(short).all()


def test_recurrent_policy_carries_its_state_and_sees_episode_starts(key):
    # CartPole pushed always left: episodes of different lengths, so environments that finished
    # go on (and start again) while the others finish their first episode.
    env = make_env("CartPole-v1", 8)
    seen = []

    def act(key, obs, hidden, reset):
        hidden = jnp.where(reset, 0, hidden) + 1  # steps since the episode started
        jax.debug.callback(
            lambda r, h: seen.append((np.asarray(r), np.asarray(h))), reset, hidden, ordered=True
        )
        return jnp.zeros(obs.shape[0], jnp.int32), hidden

    policy = RecurrentPolicy(initial_hidden=lambda n: jnp.full(n, 100), act=act)
    returns = np.asarray(evaluate(env, policy, key))
    resets, hiddens = map(np.stack, zip(*seen, strict=True))
    # The step at which each environment starts again; the last to finish never does here.
    first_lengths = np.where(resets[1:].any(axis=0), np.argmax(resets[1:], axis=0) + 1, len(seen))
    np.testing.assert_array_equal(returns, first_lengths)  # reward 1 per step of the first episode
    assert len(seen) == returns.max() and returns.min() < returns.max()  # stops once all finished
    expected = np.zeros_like(hiddens)
    for t in range(len(hiddens)):
        expected[t] = np.where(resets[t], 1, expected[t - 1] + 1 if t else 1)
    np.testing.assert_array_equal(hiddens, expected)  # reset where, and only where, episodes start


class _TrainingState(eqx.Module):
    params: jax.Array
    env_state: Any
    key: jax.Array


def test_evaluator_plays_greedy_and_sampled_policies_on_fresh_episodes(key):
    # ActionReward-probe pays 1 for the action matching the observation's sign, else 0: the greedy
    # policy below always matches (return 1); the sampled one is a coin flip (return about 0.5).
    env = make_env("ActionReward-probe", 256)

    def policy(params, obs_stats, greedy):
        def act(key, obs):
            right = (obs[:, 0] * params > 0).astype(jnp.int32)
            coin = jax.random.bernoulli(key, 0.5, right.shape).astype(jnp.int32)
            return jnp.where(greedy, right, coin)

        return act

    state = _TrainingState(params=jnp.array(1.0), env_state=None, key=key)
    results = jax.jit(make_evaluator(env, policy, stochastic=True))(state)
    assert float(results["eval_return"]) == 1.0
    assert 0.4 < float(results["eval_return_sampled"]) < 0.6
    inverted = jax.jit(make_evaluator(env, policy, stochastic=False))(
        eqx.tree_at(lambda s: s.params, state, -1.0)
    )
    assert set(inverted) == {"eval_return"} and float(inverted["eval_return"]) == 0.0
