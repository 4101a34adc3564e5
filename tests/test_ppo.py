import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from pureeqxrl import heads, ppo
from pureeqxrl.envs import make_env
from pureeqxrl.evaluate import evaluate
from pureeqxrl.loop import final_return
from pureeqxrl.normalize import Normalize
from pureeqxrl.ppo import PPOConfig, dpo_drift, gae, make_environment, make_optimizer

PROBE = ppo.PPOConfig(
    total_timesteps=16_384,
    num_envs=8,
    num_steps=16,
    learning_rate=3e-3,
    hidden_sizes=(32, 32),
    log_interval=16,
)


def _train(config, seeds=2, key=0):
    train = jax.jit(jax.vmap(ppo.make_train(config)))
    return train(jax.random.split(jax.random.key(key), seeds))


def _policy_and_value(result, obs):
    """Action probabilities and values of each seed's trained network at one observation."""
    policy, value = jax.vmap(lambda net: net(jnp.asarray(obs, jnp.float32)))(result.params)
    return policy.probs, value


# PROBES: values known in closed form


def test_constant_reward_probe():
    _, value = _policy_and_value(_train(dataclasses.replace(PROBE, env="ConstantReward-probe")), [0.0])
    np.testing.assert_allclose(value, 1.0, atol=0.05)


def test_obs_reward_probe():
    result = _train(dataclasses.replace(PROBE, env="ObsReward-probe"))
    np.testing.assert_allclose(_policy_and_value(result, [1.0])[1], 1.0, atol=0.05)
    np.testing.assert_allclose(_policy_and_value(result, [-1.0])[1], -1.0, atol=0.05)


def test_discount_probe_bootstraps():
    result = _train(dataclasses.replace(PROBE, env="Discount-probe", gamma=0.5))
    np.testing.assert_allclose(_policy_and_value(result, [0.0])[1], 0.5, atol=0.05)
    np.testing.assert_allclose(_policy_and_value(result, [1.0])[1], 1.0, atol=0.05)


def test_action_reward_probe_learns_the_policy():
    result = _train(dataclasses.replace(PROBE, env="ActionReward-probe"))
    for obs, correct in (([1.0], 1), ([-1.0], 0)):
        probs, value = _policy_and_value(result, obs)
        assert (probs[:, correct] > 0.95).all(), probs
        np.testing.assert_allclose(value, 1.0, atol=0.1)


def test_evaluation_during_training_takes_nothing_from_training():
    config = dataclasses.replace(PROBE, env="ActionReward-probe", total_timesteps=4096, log_interval=4)
    with_eval = _train(dataclasses.replace(config, eval_interval=8))  # 32 updates: rows 1, 3, 5, 7
    without = _train(dataclasses.replace(config, eval_interval=0))
    assert "eval_return" not in without.metrics
    for name, values in without.metrics.items():  # the same training, bit for bit
        np.testing.assert_array_equal(with_eval.metrics[name], values, err_msg=name)
    assert jax.tree.all(jax.tree.map(lambda a, b: bool((a == b).all()), with_eval.params, without.params))
    greedy, sampled = with_eval.metrics["eval_return"], with_eval.metrics["eval_return_sampled"]
    np.testing.assert_array_equal(np.isnan(greedy), [[True, False] * 4] * 2)
    np.testing.assert_array_equal(greedy[:, -1], [1.0, 1.0])  # ActionReward's best return, greedy
    assert (sampled[:, -1] > 0.8).all()  # the sampled policy, nearly deterministic by now


def test_truncation_is_bootstrapped_and_termination_is_not():
    # Reward 1 forever, truncated after every step: the value is 1 / (1 - gamma) = 2, not 1.
    result = _train(dataclasses.replace(PROBE, env="TimeLimit-probe", gamma=0.5))
    np.testing.assert_allclose(_policy_and_value(result, [0.0])[1], 2.0, atol=0.1)


@pytest.mark.parametrize("env_name", ["CartPole-v1", "Breakout-MinAtar"])  # vector and grid observations
def test_rollout_values_are_the_critics_values_of_each_step(env_name):
    """The values computed after the rollout, in one batch, are those of each step's observation
    and of its pre-reset next observation, in the rollout's (steps, envs) order."""
    config = dataclasses.replace(PROBE, env=env_name)
    env = ppo.make_environment(config)
    network = heads.actor_critic(config, env, jax.random.key(0))
    obs, next_obs = jax.random.normal(jax.random.key(1), (2, 5, 3, *env.observation_shape))
    zeros = jnp.zeros((5, 3))
    rollout = ppo.Transition(
        obs=obs, action=zeros, log_prob=zeros, value=None, reward=zeros,
        terminated=zeros.astype(bool), done=zeros.astype(bool), next_obs=next_obs,
    )  # fmt: skip
    value, next_value = ppo.rollout_values(network, rollout)
    per_step = jax.vmap(jax.vmap(lambda o: network(o)[1]))  # the critic in each step, as before
    np.testing.assert_allclose(value, per_step(obs), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(next_value, per_step(next_obs), rtol=1e-5, atol=1e-6)
    assert not np.allclose(value, next_value)


# SEEDS


def test_seeds_are_independent_and_runs_reproducible():
    config = dataclasses.replace(PROBE, env="CartPole-v1", total_timesteps=8_192)
    train = jax.jit(jax.vmap(ppo.make_train(config)))
    keys = jax.random.split(jax.random.key(3), 2)
    first, second = train(keys), train(keys)
    kernels = first.params.actor.layers[0].kernel
    assert not np.allclose(kernels[0], kernels[1])
    returns = first.metrics["episode_return"]
    assert not np.allclose(returns[0], returns[1])
    np.testing.assert_array_equal(returns, second.metrics["episode_return"])


# CONFIG ERRORS: raised by make_train, before anything is traced or compiled


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"env": "Acrobot-v2"}, "Unknown environment 'Acrobot-v2'. Did you mean Acrobot-v1"),
        ({"num_minibatches": 3}, r"num_minibatches \(3\) does not divide num_envs \* num_steps"),
        ({"num_envs": 0}, "num_envs must be positive"),
        ({"learning_rate": -2.5e-4}, "learning_rate must be positive"),
        ({"clip_eps": 0.0}, "clip_eps must be positive"),
        ({"ent_coef": -0.01}, "ent_coef must be >= 0"),
        ({"gae_lambda": 1.5}, "gae_lambda must be in"),
        ({"total_timesteps": 100}, "smaller than one rollout"),
        ({"activation": "gelu"}, "activation must be one of tanh, relu"),
        ({"hidden_sizes": (0,)}, "hidden_sizes must be positive"),
        ({"objective": "trpo"}, "objective must be 'ppo' or 'dpo'"),
        ({"dpo_alpha": -2.0}, "dpo_alpha must be positive"),
    ],
)
def test_impossible_configs_fail_before_compiling(change, message, no_compile):
    with pytest.raises(ValueError, match=message):
        ppo.make_train(dataclasses.replace(ppo.PPOConfig(), **change))


# THE REFERENCE TASKS


@pytest.mark.slow
def test_cartpole_reaches_475_with_default_config():
    result = _train(ppo.PPOConfig(), seeds=2, key=0)
    finals = final_return(np.asarray(result.metrics["episode_return"]))
    assert finals.mean() >= 475, finals  # last 5% of training, mean over both seeds
    env = make_env("CartPole-v1", 16)

    def greedy(network, key):
        return evaluate(env, ppo.policy(network, env), key)

    returns = jax.jit(jax.vmap(greedy))(result.params, jax.random.split(jax.random.key(1), 2))
    assert float(returns.mean()) >= 475, returns


@pytest.mark.slow
def test_acrobot_beats_minus_100_with_default_config():
    result = _train(ppo.PPOConfig(env="Acrobot-v1"), seeds=2, key=0)
    finals = final_return(np.asarray(result.metrics["episode_return"]))
    assert finals.mean() > -100, finals


@pytest.mark.slow
def test_navix_doorkey_trains_and_improves():
    pytest.importorskip("navix", reason="needs the navix extra: pip install 'pureeqxrl[navix]'")
    # PureJaxRL's ppo_minigrid settings: 16 envs x 128 steps, 1e6 steps, 1 epoch of 8 minibatches.
    config = ppo.PPOConfig(
        env="Navix-DoorKey-5x5-v0",
        num_envs=16,
        total_timesteps=1_000_000,
        update_epochs=1,
        num_minibatches=8,
    )
    returns = np.asarray(_train(config, seeds=2, key=0).metrics["episode_return"])
    # Reward 1 for reaching the goal within 100 steps: a random start rarely does, training does.
    assert np.nanmean(returns[:, :3]) < 0.1, returns
    assert final_return(returns).mean() >= 0.5, returns


# ADVANTAGES


def test_gae_cuts_at_episode_ends_and_bootstraps_truncations(strict_promotion):
    # One env, four steps: step 1 terminates, step 3 is truncated (its final obs has value 7).
    column = lambda *xs: jnp.array(xs, jnp.float32)[:, None]  # noqa: E731
    advantages, targets = gae(
        reward=column(1, 2, 3, 4),
        value=column(0.5, 1.0, 1.5, 2.0),
        next_value=column(1.0, 9.0, 2.0, 7.0),  # 9.0 follows a termination: never used
        terminated=jnp.array([[False], [True], [False], [False]]),
        done=jnp.array([[False], [True], [False], [True]]),
        gamma=0.9,
        gae_lambda=0.5,
    )
    # deltas: 1 + .9 * 1 - .5 = 1.4;  2 - 1 = 1;  3 + .9 * 2 - 1.5 = 3.3;  4 + .9 * 7 - 2 = 8.3
    expected = np.array([1.4 + 0.45 * 1.0, 1.0, 3.3 + 0.45 * 8.3, 8.3])
    np.testing.assert_allclose(advantages[:, 0], expected, rtol=1e-6)
    np.testing.assert_allclose(targets[:, 0], expected + [0.5, 1.0, 1.5, 2.0], rtol=1e-6)


def test_gae_with_lambda_one_is_the_bootstrapped_return(strict_promotion):
    key_r, key_v = jax.random.split(jax.random.key(1))
    reward, value = jax.random.normal(key_r, (6, 3)), jax.random.normal(key_v, (6, 3))
    next_value = jnp.concatenate([value[1:], jnp.ones((1, 3))])
    never = jnp.zeros((6, 3), bool)
    _, targets = gae(reward, value, next_value, never, never, 0.9, 1.0)
    discounts = 0.9 ** np.arange(6)
    expected = [(reward[t:] * discounts[: 6 - t, None]).sum(0) + 0.9 ** (6 - t) for t in range(6)]
    np.testing.assert_allclose(targets, np.stack(expected), rtol=1e-5, atol=1e-6)


# LOSS


def test_dpo_drift_matches_hand_computed_values():
    ratio = jnp.array([1.5, 1.5, 0.5, 1.0])
    advantage = jnp.array([2.0, -1.0, -1.0, 3.0])
    drift = dpo_drift(ratio, jnp.log(ratio), advantage, alpha=2.0, beta=0.6)
    # A >= 0: relu((r - 1) A - alpha tanh((r - 1) A / alpha)); A < 0: the same on log r with beta.
    expected = [
        max(0.0, 0.5 * 2.0 - 2.0 * np.tanh(0.5 * 2.0 / 2.0)),  # 1 - 2 tanh(0.5) = 0.0758
        max(0.0, np.log(1.5) * -1.0 - 0.6 * np.tanh(np.log(1.5) * -1.0 / 0.6)),  # 0 (negative)
        max(0.0, np.log(0.5) * -1.0 - 0.6 * np.tanh(np.log(0.5) * -1.0 / 0.6)),  # 0.693 - 0.6 tanh(1.155)
        0.0,  # ratio 1: no drift
    ]
    np.testing.assert_allclose(drift, expected, rtol=1e-5, atol=1e-7)
    assert float(drift[0]) > 0.07 and float(drift[2]) > 0.2


# OPTIMIZER AND ENVIRONMENT


@pytest.mark.parametrize("anneal_lr", [True, False])
def test_learning_rate_is_constant_within_an_update_and_annealed_after_each(anneal_lr):
    # 4 updates of 2 gradient steps each. Adam's step on a constant gradient is the learning rate.
    config = PPOConfig(
        total_timesteps=4 * 512, update_epochs=1, num_minibatches=2, learning_rate=0.1, anneal_lr=anneal_lr
    )
    optimizer = make_optimizer(config)
    params = jnp.zeros(())
    state = optimizer.init(params)
    steps = []
    for _ in range(8):
        updates, state = optimizer.update(jnp.array(0.25), state, params)  # below the 0.5 clip
        params = optax.apply_updates(params, updates)
        steps.append(-float(updates))
    expected = [0.1, 0.1, 0.075, 0.075, 0.05, 0.05, 0.025, 0.025] if anneal_lr else [0.1] * 8
    np.testing.assert_allclose(steps, expected, rtol=1e-3)


def test_environment_is_normalised_only_when_asked():
    plain = make_environment(PPOConfig(num_envs=3))
    assert not isinstance(plain, Normalize) and plain.num_envs == 3
    wrapped = make_environment(PPOConfig(env="Pendulum-v1", normalize_reward=True, gamma=0.9))
    assert isinstance(wrapped, Normalize)
    assert (wrapped.observations, wrapped.rewards, wrapped.gamma) == (False, True, 0.9)
    _, state = wrapped.reset(jax.random.key(0))
    assert state.obs_stats is None  # what `loop.train_from_steps` returns as `obs_stats`
