import equinox as eqx
import jax
import jax.numpy as jnp
import pytest

from pureeqxrl import ppo, registry
from pureeqxrl.envs import make_env
from pureeqxrl.evaluate import RecurrentPolicy


@pytest.mark.parametrize("name", sorted(registry.ALGORITHMS))
def test_every_algorithm_builds_its_network_and_acts(name, key):
    algorithm = registry.get(name)
    config = algorithm.config_cls()
    env = make_env(config.env, 3, config.max_episode_steps)
    network = algorithm.network(linen=False)(config, env, key)
    act = algorithm.policy(network, env, None, True)
    obs, _ = env.reset(key)
    if isinstance(act, RecurrentPolicy):
        action, hidden = act.act(key, obs, act.initial_hidden(3), jnp.ones(3, bool))
        assert jax.tree.leaves(hidden)[0].shape[0] == 3
    else:
        action = act(key, obs)
    assert action.shape == (3, *env.action_shape)
    if not algorithm.stochastic:
        with pytest.raises(ValueError, match="no stochastic policy"):
            algorithm.policy(network, env, None, False)


@pytest.mark.parametrize("name", ["dqn", "ppo", "ppo_continuous", "ppo_rnn"])
def test_linen_twins_have_the_equinox_parameters(name, key):
    pytest.importorskip("flax")
    algorithm = registry.get(name)
    config = algorithm.config_cls()
    env = make_env(config.env, 1)
    ours, theirs = (
        jax.tree.leaves(eqx.filter_eval_shape(lambda k: algorithm.network(linen)(config, env, k), key))  # noqa: B023
        for linen in (False, True)
    )
    assert sum(leaf.size for leaf in ours) == sum(leaf.size for leaf in theirs)
    if name != "ppo_rnn":  # the Equinox GRU stores its three gates' kernels side by side
        assert sorted(leaf.shape for leaf in ours) == sorted(leaf.shape for leaf in theirs)


def test_both_ppo_entries_run_the_one_ppo():
    assert registry.get("ppo").make_train is registry.get("ppo_continuous").make_train is ppo.make_train
    assert registry.get("ppo_continuous").config_cls is ppo.PPOContinuousConfig


def test_unknown_algorithm_names_the_known_ones():
    with pytest.raises(ValueError, match="unknown algorithm 'sarsa': one of dqn, pqn, sac, ppo"):
        registry.get("sarsa")
