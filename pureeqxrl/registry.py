"""The algorithms by name: what the CLI, `pureeqxrl.runs.load_agent` and the benchmarks need to
know about each (config class, `make_train`, networks, evaluation policy)."""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pureeqxrl import dqn, heads, ppo, ppo_rnn


@dataclass(frozen=True)
class Algorithm:
    """What the CLI and `load_agent` need to know about one algorithm."""

    config_cls: type
    make_train: Callable[..., Callable]
    network_fn: Callable[[Any, Any], Any]
    linen_network_fn: Callable[[], Callable[[Any, Any], Any]]
    """Imported lazily: flax is only needed for Linen runs."""
    policy: Callable[..., Callable[[Any, Any], Any]]
    """`(network, params, env, obs_stats, greedy) -> act(key, obs_batch)` (or a
    `pureeqxrl.evaluate.RecurrentPolicy`): the evaluation policy."""
    stochastic: bool = True
    """Whether `policy(..., greedy=False)` samples a stochastic policy (not for DQN)."""

    def network(self, linen: bool) -> Callable[[Any, Any], Any]:
        """The network builder of the Equinox version, or of the Linen control version."""
        return self.linen_network_fn() if linen else self.network_fn


def _linen_dqn():
    from pureeqxrl.linen.dqn import linen_q_function

    return linen_q_function


def _linen_ppo():
    from pureeqxrl.linen.ppo import linen_network

    return linen_network


def _linen_ppo_rnn():
    from pureeqxrl.linen.ppo_rnn import linen_recurrent_actor_critic

    return linen_recurrent_actor_critic


ALGORITHMS: dict[str, Algorithm] = {
    "dqn": Algorithm(
        dqn.DQNConfig,
        dqn.make_train,
        dqn.equinox_q_function,
        _linen_dqn,
        dqn.policy,
        stochastic=False,
    ),
    # Both PPO entries pick the actor-critic from the environment's action space; they differ in
    # their config's defaults (PureJaxRL's discrete CartPole vs continuous-control settings).
    "ppo": Algorithm(ppo.PPOConfig, ppo.make_train, heads.actor_critic, _linen_ppo, ppo.policy),
    "ppo_continuous": Algorithm(
        ppo.PPOContinuousConfig, ppo.make_train, heads.actor_critic, _linen_ppo, ppo.policy
    ),
    # Recurrent PPO: a GRU core (`ppo_rnn`) or S5 layers (`ppo_s5`, Equinox only).
    "ppo_rnn": Algorithm(
        ppo_rnn.PPORNNConfig,
        ppo_rnn.make_train,
        ppo_rnn.equinox_recurrent_actor_critic,
        _linen_ppo_rnn,
        ppo_rnn.policy,
    ),
    "ppo_s5": Algorithm(
        ppo_rnn.PPOS5Config,
        ppo_rnn.make_train,
        ppo_rnn.equinox_recurrent_actor_critic,
        _linen_ppo_rnn,
        ppo_rnn.policy,
    ),
}


def get(name: str) -> Algorithm:
    """The algorithm called `name`, or a `ValueError` listing the known ones."""
    if name not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {name!r}: one of {', '.join(ALGORITHMS)}")
    return ALGORITHMS[name]
