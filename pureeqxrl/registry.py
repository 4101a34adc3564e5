"""The algorithms by name: what the CLI, `pureeqxrl.runs.load_agent` and the benchmarks need to
know about each (config class, `make_train`, networks, evaluation policy)."""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pureeqxrl import dqn, heads, ppo, ppo_rnn, pqn, sac


@dataclass(frozen=True)
class Algorithm:
    """What the CLI and `load_agent` need to know about one algorithm."""

    config_cls: type
    make_train: Callable[..., Callable]
    make_learner: Callable[..., Any]
    """`(config, make_network) -> pureeqxrl.loop.Learner`: what `make_train` scans, and what the
    engine runs in chunks, sweeps and lays out on devices (`pureeqxrl.training`)."""
    make_network: Callable[[Any, Any, Any], Any]
    """`(config, env, key) -> network`: the algorithm's own network."""
    linen_make_network: Callable[[], Callable[[Any, Any, Any], Any]]
    """Imported lazily: flax is only needed for Linen runs."""
    policy: Callable[..., Callable[[Any, Any], Any]]
    """`(network, env, obs_stats, greedy) -> act(key, obs_batch)` (or a
    `pureeqxrl.evaluate.RecurrentPolicy`): the evaluation policy."""
    stochastic: bool = True
    """Whether `policy(..., greedy=False)` samples a stochastic policy (not for DQN)."""

    def network(self, linen: bool) -> Callable[[Any, Any, Any], Any]:
        """The network builder of the Equinox version, or of the Linen control version."""
        return self.linen_make_network() if linen else self.make_network


def _linen_dqn():
    from pureeqxrl.linen.dqn import linen_q_network

    return linen_q_network


def _linen_ppo():
    from pureeqxrl.linen.ppo import linen_network

    return linen_network


def _no_linen(name: str) -> Callable[[], Callable[[Any, Any, Any], Any]]:
    def refuse():
        raise ValueError(
            f"{name} has no Flax Linen version (the Linen twins are the control group of PureJaxRL's algorithms)"
        )

    return refuse


def _linen_ppo_rnn():
    from pureeqxrl.linen.ppo_rnn import linen_recurrent_actor_critic

    return linen_recurrent_actor_critic


ALGORITHMS: dict[str, Algorithm] = {
    "dqn": Algorithm(
        config_cls=dqn.DQNConfig,
        make_train=dqn.make_train,
        make_learner=dqn.make_learner,
        make_network=dqn.q_network,
        linen_make_network=_linen_dqn,
        policy=dqn.policy,
        stochastic=False,
    ),
    # PQN: Q(lambda) over many environments, no replay buffer or target network (no Linen twin).
    "pqn": Algorithm(
        config_cls=pqn.PQNConfig,
        make_train=pqn.make_train,
        make_learner=pqn.make_learner,
        make_network=pqn.q_network,
        linen_make_network=_no_linen("pqn"),
        policy=pqn.policy,
        stochastic=False,
    ),
    # SAC: continuous actions, twin critics, learned temperature (no Linen twin).
    "sac": Algorithm(
        config_cls=sac.SACConfig,
        make_train=sac.make_train,
        make_learner=sac.make_learner,
        make_network=sac.actor_and_critics,
        linen_make_network=_no_linen("sac"),
        policy=sac.policy,
    ),
    # Both PPO entries pick the actor-critic from the environment's action space; they differ in
    # their config's defaults (PureJaxRL's discrete CartPole vs continuous-control settings).
    **{
        name: Algorithm(
            config_cls=config_cls,
            make_train=ppo.make_train,
            make_learner=ppo.make_learner,
            make_network=heads.actor_critic,
            linen_make_network=_linen_ppo,
            policy=ppo.policy,
        )
        for name, config_cls in (("ppo", ppo.PPOConfig), ("ppo_continuous", ppo.PPOContinuousConfig))
    },
    # Recurrent PPO: a GRU core (`ppo_rnn`) or S5 layers (`ppo_s5`, Equinox only).
    **{
        name: Algorithm(
            config_cls=config_cls,
            make_train=ppo_rnn.make_train,
            make_learner=ppo_rnn.make_learner,
            make_network=ppo_rnn.recurrent_actor_critic,
            linen_make_network=_linen_ppo_rnn,
            policy=ppo_rnn.policy,
        )
        for name, config_cls in (("ppo_rnn", ppo_rnn.PPORNNConfig), ("ppo_s5", ppo_rnn.PPOS5Config))
    },
}


def get(name: str) -> Algorithm:
    """The algorithm called `name`, or a `ValueError` listing the known ones."""
    if name not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {name!r}: one of {', '.join(ALGORITHMS)}")
    return ALGORITHMS[name]
