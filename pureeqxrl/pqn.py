"""PQN (Gallici et al., 2024, "Simplifying Deep Temporal Difference Learning") in Equinox:
purejaxql's `pqn_gymnax.py`, one `jax.jit` per training run.

Q-learning without a replay buffer or a target network: many parallel environments collect a short
rollout with epsilon-greedy actions, Q(lambda) returns are computed backwards over it, and a few
epochs of minibatch regression onto them follow, as in PPO. LayerNorm in the Q-network keeps the
bootstrapped targets stable without a target network.

Read top to bottom: the config (purejaxql's CartPole defaults), the Q-network, the Q(lambda)
returns, then `make_learner`, whose update collects `num_steps` steps in `num_envs`
environments, computes the returns, and runs `update_epochs` epochs of `num_minibatches` gradient
steps.

Where this differs from purejaxql, on purpose: a *truncated* episode (time limit) is bootstrapped
from `max Q(next_obs)` of the observation before the auto-reset; only a *terminated* one has value
0 after its last step (purejaxql treats both as terminal and bootstraps the last step of the
rollout from the next episode's first observation when an episode just ended).
"""

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

from pureeqxrl import loop
from pureeqxrl.config import ConfigChecks, RolloutConfig
from pureeqxrl.envs import Step, VecEnv, make_env, run_rollout
from pureeqxrl.evaluate import training_evaluator
from pureeqxrl.heads import epsilon_greedy, q_policy
from pureeqxrl.loop import Learner, LogCallback, TrainResult, counter_field, environment_field
from pureeqxrl.minibatch import shuffled_epochs
from pureeqxrl.nets import CNNTorso, Dense, NetworkBuilder, NetworkKey, ParamKeys

__all__ = ["PQNConfig", "make_learner", "make_train", "policy", "q_lambda_returns"]


@dataclass(frozen=True)
class PQNConfig(RolloutConfig):
    """PQN hyperparameters; defaults are purejaxql's CartPole-v1 ones (`pqn_cartpole.yaml`), and
    `--preset minatar` gives its MinAtar ones (`pqn_minatar.yaml`, with its CNN)."""

    total_timesteps: int = 500_000
    num_envs: int = 32
    num_steps: int = 64
    epsilon_start: float = 1.0
    epsilon_finish: float = 0.2
    epsilon_anneal_fraction: float = 0.2
    """Fraction of the updates over which epsilon goes linearly from start to finish."""
    update_epochs: int = 4
    num_minibatches: int = 16
    hidden_sizes: tuple[int, ...] = (256, 256)
    layer_norm: bool = True
    """LayerNorm after every hidden layer (PQN's stabiliser in place of a target network)."""
    learning_rate: float = 1e-4
    anneal_lr: bool = True
    """Anneal the learning rate linearly to zero over the run's gradient steps."""
    max_grad_norm: float = 10.0
    reward_scale: float = 0.1
    """Rewards are multiplied by this for learning (episode returns are reported unscaled)."""
    q_lambda: float = 0.95
    """Q(lambda)'s trace decay: 0 gives one-step targets, 1 Monte Carlo returns to the rollout's end."""
    torso: Literal["mlp", "cnn"] = "mlp"
    """The Q-network's body: "mlp" flattens the observation into `hidden_sizes`; "cnn" is
    `pureeqxrl.nets.CNNTorso` for (height, width, channels) grids (MinAtar, navix): a 3x3
    convolution of `conv_channels` filters, then `hidden_sizes`."""
    conv_channels: int = 16
    obs_scale: float = 1.0
    """Observations are multiplied by this before the network (purejaxql's MinAtar CNN divides its
    0/1 grids by 255, and its LayerNorms undo the scale)."""

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "minatar": {
            "env": "Breakout-MinAtar",
            "total_timesteps": 10_000_000,
            "num_envs": 128,
            "num_steps": 32,
            "epsilon_finish": 0.05,
            "epsilon_anneal_fraction": 0.1,
            "update_epochs": 2,
            "num_minibatches": 32,
            "learning_rate": 5e-4,
            "reward_scale": 1.0,
            "q_lambda": 0.65,
            "torso": "cnn",
            "hidden_sizes": (128,),
            "obs_scale": 1 / 255,
            "log_interval": 50,
        }
    }
    """Named settings (`pureeqxrl train pqn --preset minatar --env Asterix-MinAtar`)."""

    def check(self, checks: ConfigChecks) -> None:
        super().check(checks)
        checks.positive("max_grad_norm", "conv_channels")
        checks.require(self.torso in ("mlp", "cnn"), f"torso must be 'mlp' or 'cnn', got {self.torso!r}")
        checks.non_negative("reward_scale")
        checks.in_unit_interval("epsilon_start", "epsilon_finish", "epsilon_anneal_fraction", "q_lambda")


# NETWORK


class QNetwork(eqx.Module):
    """MLP from a (flattened) observation to one Q-value per action: Dense, LayerNorm (if asked),
    relu per hidden layer, then a Dense head; Flax's initialisation, as purejaxql's network."""

    layers: tuple[Dense, ...]
    norms: tuple[eqx.nn.LayerNorm, ...] | None
    scale: float = eqx.field(static=True)

    def __init__(
        self,
        obs_size: int,
        num_actions: int,
        hidden_sizes,
        layer_norm: bool,
        *,
        key: NetworkKey,
        scale: float = 1.0,
    ):
        keys = ParamKeys.of(key)
        self.scale = scale
        sizes = [obs_size, *hidden_sizes, num_actions]
        self.layers = tuple(
            Dense(n_in, n_out, key=keys) for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True)
        )
        # Flax's LayerNorm: epsilon 1e-6, scale 1 and bias 0 to start with.
        self.norms = tuple(eqx.nn.LayerNorm(size, eps=1e-6) for size in hidden_sizes) if layer_norm else None

    def __call__(self, obs: Float[Array, "..."]) -> Float[Array, " num_actions"]:
        x = obs.reshape(-1) * self.scale
        for i, layer in enumerate(self.layers[:-1]):
            x = layer(x)
            if self.norms is not None:
                x = self.norms[i](x)
            x = jax.nn.relu(x)
        return self.layers[-1](x)


class CNNQNetwork(eqx.Module):
    """A `CNNTorso` then a Dense head to one Q-value per action (purejaxql's MinAtar network)."""

    torso: CNNTorso
    head: Dense

    def __init__(self, obs_shape, num_actions: int, config: PQNConfig, *, key: NetworkKey):
        keys = ParamKeys.of(key)
        self.torso = CNNTorso(
            obs_shape,
            config.conv_channels,
            config.hidden_sizes,
            config.layer_norm,
            config.obs_scale,
            key=keys,
        )
        self.head = Dense(self.torso.out_features, num_actions, key=keys)

    def __call__(self, obs: Float[Array, "height width channels"]) -> Float[Array, " num_actions"]:
        return self.head(self.torso(obs))


def q_network(config: PQNConfig, env: VecEnv, key: PRNGKeyArray) -> QNetwork | CNNQNetwork:
    """The Q-network of `config.torso` (a `QNetwork` or a `CNNQNetwork`) for the environment
    (`make_learner`'s default)."""
    if config.torso == "cnn":
        return CNNQNetwork(env.observation_shape, env.num_actions, config, key=key)
    obs_size = int(np.prod(env.observation_shape))
    return QNetwork(
        obs_size, env.num_actions, config.hidden_sizes, config.layer_norm, key=key, scale=config.obs_scale
    )


# Q(LAMBDA) RETURNS


def q_lambda_returns(
    reward: Float[Array, "num_steps num_envs"],
    next_value: Float[Array, "num_steps num_envs"],
    terminated: Bool[Array, "num_steps num_envs"],
    done: Bool[Array, "num_steps num_envs"],
    gamma: float,
    q_lambda: float,
) -> Float[Array, "num_steps num_envs"]:
    """Peng's Q(lambda) returns of one rollout, computed backwards:

        G_t = r_t + gamma * (1 - terminated_t) * ((1 - lambda_t) * next_value_t + lambda_t * G_{t+1})

    where `next_value[t]` is `max_a Q(next_obs_t, a)` of the observation step `t` led to, before
    any auto-reset, and `lambda_t` is `q_lambda` except 0 where the episode ended at `t` (the trace
    does not run into the next episode: a truncated step bootstraps from its own next value) and
    at the rollout's last step (nothing follows it)."""

    def backwards(later_return, step):
        reward, next_value, terminated, done = step
        blended = jnp.where(done, next_value, (1.0 - q_lambda) * next_value + q_lambda * later_return)
        value = reward + gamma * (1.0 - terminated.astype(reward.dtype)) * blended
        return value, value

    # Starting from the last next value makes the last step's blend that value itself.
    _, returns = jax.lax.scan(backwards, next_value[-1], (reward, next_value, terminated, done), reverse=True)
    return returns


# TRAINING


class PQNState(eqx.Module):
    params: Any
    opt_state: Any
    env_state: Any = environment_field()
    obs: Array = environment_field()
    updates: Int[Array, ""] = counter_field()
    key: PRNGKeyArray


class Rollout(eqx.Module):
    obs: Array
    action: Int[Array, "num_steps num_envs"]
    reward: Float[Array, "num_steps num_envs"]
    """Scaled by `reward_scale`."""
    terminated: Bool[Array, "num_steps num_envs"]
    done: Bool[Array, "num_steps num_envs"]
    next_obs: Array
    """Observation each step led to, before any auto-reset."""


class Batch(eqx.Module):
    obs: Array
    action: Int[Array, " batch"]
    target: Float[Array, " batch"]


def make_train(
    config: PQNConfig,
    make_network: NetworkBuilder = q_network,
    on_log: LogCallback | None = None,
) -> Callable[[PRNGKeyArray], TrainResult]:
    """Validate `config` and return `train(key) -> TrainResult`, pure and jittable.

    `make_network(config, env, key)` builds the Q-network (default `q_network`); `on_log` is
    called with each metrics row (see `pureeqxrl.loop.scan_logged`).
    `jax.jit(jax.vmap(train))(jax.random.split(key, n))` trains `n` independent seeds at once.
    """
    return loop.make_train(make_learner(config, make_network), config, on_log)


def make_learner(config: PQNConfig, make_network: NetworkBuilder = q_network) -> Learner:
    """Validate `config` and build its `pureeqxrl.loop.Learner`: `init(key)`, and `update(state)`,
    which steps every environment `num_steps` times with epsilon-greedy actions, computes the
    Q(lambda) returns and runs `update_epochs` epochs of `num_minibatches` gradient steps."""
    config.validate()
    env = make_env(config.env, config.num_envs, config.max_episode_steps)
    if not env.discrete:
        raise ValueError(f"PQN needs discrete actions; {config.env} has continuous actions (a Box)")
    if config.torso == "cnn" and len(env.observation_shape) != 3:
        raise ValueError(
            f"torso 'cnn' needs (height, width, channels) observations; {config.env}'s have shape "
            f"{env.observation_shape} (use torso 'mlp')"
        )
    learning_rate = config.learning_rate
    if config.anneal_lr:
        learning_rate = optax.linear_schedule(config.learning_rate, 0.0, config.num_gradient_steps)
    optimizer = optax.chain(optax.clip_by_global_norm(config.max_grad_norm), optax.radam(learning_rate))
    anneal_updates = max(config.epsilon_anneal_fraction * config.num_updates, 1.0)

    def epsilon_at(updates: Int[Array, ""]) -> Float[Array, ""]:
        fraction = jnp.minimum(updates / anneal_updates, 1.0)
        return config.epsilon_start + fraction * (config.epsilon_finish - config.epsilon_start)

    def env_step(state: PQNState) -> tuple[PQNState, Rollout, Step]:
        key, act_key, step_key = jax.random.split(state.key, 3)
        q = jax.vmap(state.params)(state.obs)
        action = epsilon_greedy(act_key, q, epsilon_at(state.updates))
        obs, env_state, step = env.step(step_key, state.env_state, action)
        transition = Rollout(
            obs=state.obs,
            action=action,
            reward=config.reward_scale * step.reward,
            terminated=step.terminated,
            done=step.done,
            next_obs=step.next_obs,
        )
        state = dataclasses.replace(state, env_state=env_state, obs=obs, key=key)
        return state, transition, step

    def loss_fn(network, minibatch: Batch) -> tuple[Float[Array, ""], Float[Array, ""]]:
        q = jax.vmap(network)(minibatch.obs)
        chosen = jnp.take_along_axis(q, minibatch.action[:, None], axis=-1)[:, 0]
        return 0.5 * ((chosen - minibatch.target) ** 2).mean(), chosen.mean()

    def gradient_step(network_and_opt, minibatch: Batch):
        network, opt_state = network_and_opt
        (loss, q_value), grads = jax.value_and_grad(loss_fn, has_aux=True)(network, minibatch)
        updates, opt_state = optimizer.update(grads, opt_state, network)
        return (optax.apply_updates(network, updates), opt_state), (loss, q_value)

    def collect(state: PQNState) -> tuple[PQNState, Rollout, dict]:
        return run_rollout(env_step, state, config.num_steps, config.num_envs)

    def learn(state: PQNState, rollout: Rollout) -> tuple[PQNState, Array, Array]:
        # Q(LAMBDA) RETURNS: max Q of every pre-reset next observation, with the acting params
        flat = lambda x: x.reshape(config.steps_per_update, *x.shape[2:])  # noqa: E731
        next_value = jax.vmap(state.params)(flat(rollout.next_obs)).max(-1).reshape(rollout.reward.shape)
        returns = q_lambda_returns(
            rollout.reward, next_value, rollout.terminated, rollout.done, config.gamma, config.q_lambda
        )

        # UPDATE EPOCHS OF MINIBATCHES
        batch = Batch(obs=flat(rollout.obs), action=flat(rollout.action), target=flat(returns))
        key, epochs_key = jax.random.split(state.key)
        (params, opt_state), (loss, q_value) = shuffled_epochs(
            gradient_step,
            (state.params, state.opt_state),
            batch,
            epochs_key,
            config.update_epochs,
            config.num_minibatches,
        )
        state = dataclasses.replace(state, params=params, opt_state=opt_state, key=key)
        return state, loss, q_value

    def update(state: PQNState) -> tuple[PQNState, dict]:
        epsilon = epsilon_at(state.updates)
        state, rollout, episodes = collect(state)  # COLLECT TRAJECTORIES
        state, loss, q_value = learn(state, rollout)  # Q(LAMBDA) RETURNS AND UPDATE EPOCHS
        state = dataclasses.replace(state, updates=state.updates + 1)
        one = jnp.array(1.0)
        stats = {
            **jax.tree.map(jnp.sum, episodes),
            "loss": (loss.mean(), one),
            "q_value": (q_value.mean(), one),
            "epsilon": (epsilon, one),
        }
        return state, stats

    def init(key: PRNGKeyArray) -> PQNState:
        env_key, init_key, loop_key = jax.random.split(key, 3)
        obs, env_state = env.reset(env_key)
        network = make_network(config, env, init_key)
        return PQNState(
            params=network,
            opt_state=optimizer.init(network),
            env_state=env_state,
            obs=obs,
            updates=jnp.array(0),
            key=loop_key,
        )

    # EVALUATION: the greedy policy on fresh episodes (`config.eval_interval`)
    evaluate = training_evaluator(config, policy, stochastic=False)
    return Learner(init, update, evaluate)


# USING A TRAINED AGENT

# `policy(network, env, obs_stats, greedy)`: the argmax of Q, what `pureeqxrl eval` runs.
policy = q_policy
