"""PPO with memory in Equinox: PureJaxRL's `ppo_rnn.py` (a GRU) and `experimental/s5/ppo_s5.py`
(a stack of S5 state-space layers), one `jax.jit` per training run.

Read top to bottom: the config, the recurrent actor-critic (dense encoder -> GRU or S5 core ->
separate actor and critic heads), then `make_train`. Training is PPO's recipe (the config, GAE,
loss, optimizer and metrics of `pureeqxrl.ppo`) with
what memory changes:

- the rollout carries each environment's hidden state and a `reset` flag (the step starts a new
  episode); the hidden state is zeroed at episode starts inside the scan, before the core reads it;
- the hidden state the rollout started from is stored, and the update re-runs the network over
  whole sequences from it, so minibatches are groups of environments with all their steps (the
  order of steps, and the episode boundaries inside a sequence, are kept);
- a truncated step is bootstrapped from `V(next_obs)`, the pre-reset observation, read with the
  hidden state that step led to: one more core step per transition, batched over the whole rollout
  once it is collected (not a second sequential pass);
- the GRU projects a sequence's inputs for all steps before its loop (`pureeqxrl.recurrent.GRU`),
  and S5 runs its sequences as a parallel scan; acting uses their one-step modes.

`make_learner(config, make_network)` trains any Module with `RecurrentActorCritic`'s methods
(`pureeqxrl.linen.ppo_rnn` passes the Flax Linen control group's). `PPOS5Config` holds the S5
run's settings (`pureeqxrl train ppo_s5`).
"""

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from distreqx.distributions import Categorical
from jaxtyping import Array, Bool, Float, PRNGKeyArray

from pureeqxrl import loop
from pureeqxrl.config import ConfigChecks
from pureeqxrl.envs import Step, VecEnv, run_rollout
from pureeqxrl.evaluate import RecurrentPolicy, training_evaluator
from pureeqxrl.heads import mode, sample
from pureeqxrl.loop import Learner, LogCallback, TrainResult, environment_field
from pureeqxrl.minibatch import epoch_orders, split_batch
from pureeqxrl.nets import ACTIVATIONS, MLP, NetworkBuilder, NetworkKey, ParamKeys, orthogonal
from pureeqxrl.normalize import RunningStats
from pureeqxrl.ppo import (
    Batch,
    LossInfo,
    PPOConfig,
    Transition,
    loss_terms,
    make_environment,
    make_optimizer,
    rollout_advantages,
    update_stats,
)
from pureeqxrl.recurrent import GRU, S5


@dataclass(frozen=True)
class PPORNNConfig(PPOConfig):
    """Recurrent PPO; defaults are PureJaxRL's `ppo_rnn.py` (CartPole-v1, 4 envs x 128 steps, 5e5
    steps, lr 2.5e-4 annealed, 4 epochs x 4 minibatches of whole environments, Dense 128 relu ->
    GRU 128 -> heads of 128 relu). The other PPO settings mean what they mean in `PPOConfig`."""

    activation: Literal["tanh", "relu", "leaky_relu"] = "relu"
    cell: Literal["gru", "s5"] = "gru"
    """The recurrent core: a GRU, or a stack of S5 layers (`s5_layers`, `s5_state_size`)."""
    encoder_sizes: tuple[int, ...] = (128,)
    """Dense layers (each followed by `activation`) before the core; the last one is the core's
    width (the GRU's hidden size, S5's model width)."""
    hidden_sizes: tuple[int, ...] = (128,)
    """Hidden widths of the actor head and of the critic head, after the core."""
    s5_layers: int = 4
    s5_state_size: int = 128
    """Complex states per S5 layer. With conjugate symmetry they stand for twice as many real
    ones: PureJaxRL's `ssm_size=256` is 128 here."""

    def check(self, checks: ConfigChecks) -> None:
        super().check(checks)
        checks.positive("s5_layers", "s5_state_size")
        checks.require(self.cell in ("gru", "s5"), f"cell must be 'gru' or 's5', got {self.cell!r}")
        checks.require(
            len(self.encoder_sizes) > 0 and all(s > 0 for s in self.encoder_sizes),
            f"encoder_sizes must be one or more positive widths, got {self.encoder_sizes}",
        )
        if self.num_envs > 0 and self.num_minibatches > 0:
            checks.require(
                self.num_envs % self.num_minibatches == 0,
                f"num_minibatches ({self.num_minibatches}) does not divide num_envs "
                f"({self.num_envs}): recurrent minibatches are groups of whole environments",
            )


@dataclass(frozen=True)
class PPOS5Config(PPORNNConfig):
    """PureJaxRL's `ppo_s5.py`: Dense 128 -> Dense 256 (leaky relu) -> 4 S5 layers of width 256
    with 128 conjugate-symmetric complex states -> heads of 128-128 leaky relu."""

    cell: Literal["gru", "s5"] = "s5"
    activation: Literal["tanh", "relu", "leaky_relu"] = "leaky_relu"
    encoder_sizes: tuple[int, ...] = (128, 256)
    hidden_sizes: tuple[int, ...] = (128, 128)


# NETWORK


class RecurrentActorCritic(eqx.Module):
    """Dense encoder -> recurrent core -> separate actor and critic MLP heads, for one environment.

    PureJaxRL's init: encoder kernels orthogonal(sqrt 2), head hidden kernels orthogonal(2), actor
    output orthogonal(0.01), critic output orthogonal(1.0), zero biases; the core has its own (Flax
    `GRUCell`'s, or S5's HiPPO-based one). Parameter keys follow `pureeqxrl.nets.ParamKeys`: the
    encoder's, then the core's, the actor's and the critic's.
    """

    encoder: MLP
    core: GRU | S5
    actor: MLP
    critic: MLP
    activation: Callable[[Array], Array] = eqx.field(static=True)

    def __init__(
        self,
        obs_size: int,
        num_actions: int,
        config: PPORNNConfig,
        *,
        key: NetworkKey,
    ):
        keys = ParamKeys.of(key)
        *encoder_hidden, width = config.encoder_sizes
        self.activation = ACTIVATIONS[config.activation]
        self.encoder = MLP(
            obs_size,
            encoder_hidden,
            width,
            key=keys,
            activation=self.activation,
            hidden_init=orthogonal(math.sqrt(2)),
            output_init=orthogonal(math.sqrt(2)),
        )
        if config.cell == "s5":
            self.core = S5(width, config.s5_state_size, config.s5_layers, key=keys)
        else:
            self.core = GRU(width, width, key=keys)
        self.actor = MLP(
            width,
            config.hidden_sizes,
            num_actions,
            key=keys,
            activation=self.activation,
            hidden_init=orthogonal(2.0),
            output_init=orthogonal(0.01),
        )
        self.critic = MLP(
            width,
            config.hidden_sizes,
            1,
            key=keys,
            activation=self.activation,
            hidden_init=orthogonal(2.0),
            output_init=orthogonal(1.0),
        )

    def initial_hidden(self) -> Array:
        return self.core.initial_hidden()

    def _embed(self, obs: Float[Array, "..."]) -> Float[Array, " width"]:
        return self.activation(self.encoder(obs.reshape(-1)))

    def _heads(self, x: Float[Array, " width"]) -> tuple[Categorical, Float[Array, ""]]:
        return Categorical(logits=self.actor(x)), self.critic(x)[0]

    def step(
        self, hidden: Array, obs: Float[Array, "..."], reset: Bool[Array, ""]
    ) -> tuple[Array, Categorical, Float[Array, ""]]:
        """One time step: `(hidden, policy, value)`; `reset` zeroes the state first."""
        hidden, x = self.core.step(hidden, self._embed(obs), reset)
        return hidden, *self._heads(x)

    def __call__(
        self, hidden: Array, obs: Float[Array, "time ..."], resets: Bool[Array, " time"]
    ) -> tuple[Array, Categorical, Float[Array, " time"]]:
        """A whole sequence from `hidden`: `(final hidden, policies, values)`, a step each."""
        hidden, xs = self.core(hidden, jax.vmap(self._embed)(obs), resets)
        policies, values = jax.vmap(self._heads)(xs)
        return hidden, policies, values


def recurrent_actor_critic(config: PPORNNConfig, env: VecEnv, key: PRNGKeyArray) -> RecurrentActorCritic:
    """The `RecurrentActorCritic` of the config for the environment (`make_learner`'s default)."""
    return RecurrentActorCritic(int(np.prod(env.observation_shape)), env.num_actions, config, key=key)


def initial_hidden(network: RecurrentActorCritic, num_envs: int) -> Array:
    """The hidden state of `num_envs` environments before their first step."""
    hidden = network.initial_hidden()
    return jnp.broadcast_to(hidden, (num_envs, *hidden.shape))


# TRAINING


class RecurrentTransition(Transition):
    """`pureeqxrl.ppo.Transition` plus what the recurrent update needs."""

    reset: Bool[Array, " num_envs"]
    """Whether this step started a new episode (the state was zeroed before it)."""
    hidden: Array
    """Hidden state after the step: what `next_obs` would be read with."""


class SequenceBatch(eqx.Module):
    """Whole sequences of some environments: their hidden state before the rollout, the reset
    flags, and the steps (leaves `(time, envs, ...)`)."""

    hidden: Array
    reset: Bool[Array, "time envs"]
    steps: Batch


def sequence_loss(
    network: RecurrentActorCritic, minibatch: SequenceBatch, config: PPORNNConfig
) -> tuple[Float[Array, ""], LossInfo]:
    """`pureeqxrl.ppo.ppo_loss` on whole sequences: the network re-runs them from their stored
    hidden state (resetting where episodes start), then every step counts as one example."""
    # time-major (time, envs, ...) sequences, one environment's per vmapped call
    _, policy, value = jax.vmap(network, in_axes=(0, 1, 1), out_axes=(0, 1, 1))(
        minibatch.hidden, minibatch.steps.obs, minibatch.reset
    )
    policy, value, steps = jax.tree.map(
        lambda x: x.reshape(-1, *x.shape[2:]), (policy, value, minibatch.steps)
    )
    return loss_terms(policy, value, steps, config)


class RecurrentPPOState(eqx.Module):
    params: Any
    opt_state: Any
    env_state: Any = environment_field()
    obs: Array = environment_field()
    reset: Bool[Array, " num_envs"] = environment_field()
    hidden: Array = environment_field()
    key: PRNGKeyArray


def make_train(
    config: PPORNNConfig,
    make_network: NetworkBuilder = recurrent_actor_critic,
    on_log: LogCallback | None = None,
) -> Callable[[PRNGKeyArray], TrainResult]:
    """Validate `config` and return `train(key) -> TrainResult`, pure and jittable.

    **Arguments:**

    - `make_network`: `(config, env, key) -> network`, a Module with `RecurrentActorCritic`'s
      `initial_hidden`, `step` and call; defaults to `recurrent_actor_critic`.
    - `on_log`: host function `(row_index, row)` called after each metrics row (see `scan_logged`).

    `jax.jit(jax.vmap(train))(jax.random.split(key, n))` trains `n` independent seeds at once.
    """
    return loop.make_train(make_learner(config, make_network), config, on_log)


def make_learner(config: PPORNNConfig, make_network: NetworkBuilder = recurrent_actor_critic) -> Learner:
    """Validate `config` and build its `pureeqxrl.loop.Learner`: `init(key)`, and `update(state)`,
    which steps every environment `num_steps` times from the hidden state it had, computes
    advantages and runs the epochs over whole sequences."""
    config.validate()
    env = make_environment(config)
    if not env.discrete:  # whatever the network library: the heads are categorical
        raise ValueError(f"ppo_rnn supports discrete actions only; {config.env} has continuous ones")
    optimizer = make_optimizer(config)
    num_steps, num_envs = config.num_steps, config.num_envs

    def env_step(state: RecurrentPPOState) -> tuple[RecurrentPPOState, RecurrentTransition, Step]:
        key, action_key, step_key = jax.random.split(state.key, 3)
        hidden, policy, value = jax.vmap(state.params.step)(state.hidden, state.obs, state.reset)
        action = sample(policy, action_key)
        obs, env_state, step = env.step(step_key, state.env_state, env.to_env_action(action))
        transition = RecurrentTransition.of_step(
            state.obs, action, policy, value, step, reset=state.reset, hidden=hidden
        )
        state = dataclasses.replace(
            state, env_state=env_state, obs=obs, reset=step.done, hidden=hidden, key=key
        )
        return state, transition, step

    def gradient_step(network_and_opt, minibatch: SequenceBatch):
        network, opt_state = network_and_opt
        # data parallel: each device's share of the sequences (axis 1 of the steps), gradients summed
        minibatch = SequenceBatch(
            hidden=split_batch(minibatch.hidden),
            reset=split_batch(minibatch.reset, axis=1),
            steps=split_batch(minibatch.steps, axis=1),
        )
        (total, info), grads = jax.value_and_grad(sequence_loss, has_aux=True)(network, minibatch, config)
        updates, opt_state = optimizer.update(grads, opt_state, network)
        return (optax.apply_updates(network, updates), opt_state), (total, info)

    def epoch(network_and_opt, order: Array, batch: SequenceBatch):
        def by_environment(x: Array, axis: int) -> Array:
            # (..., envs, ...) -> (minibatches, ..., envs per minibatch, ...)
            x = jnp.take(x, order, axis=axis)
            x = x.reshape(*x.shape[:axis], config.num_minibatches, -1, *x.shape[axis + 1 :])
            return jnp.moveaxis(x, axis, 0)

        minibatches = SequenceBatch(
            hidden=by_environment(batch.hidden, 0),
            reset=by_environment(batch.reset, 1),
            steps=jax.tree.map(lambda x: by_environment(x, 1), batch.steps),
        )
        return jax.lax.scan(gradient_step, network_and_opt, minibatches)

    def collect(state: RecurrentPPOState):
        initial_hidden = state.hidden  # stored: the update re-runs the sequences from it
        state, transitions, episodes = run_rollout(env_step, state, num_steps, num_envs)
        return state, (initial_hidden, transitions), episodes

    def learn(state: RecurrentPPOState, experience: tuple[Array, RecurrentTransition]):
        initial_hidden, rollout = experience

        # ADVANTAGES: V(pre-reset next obs) with the hidden state it follows, one batched core step
        flat = lambda x: x.reshape(num_steps * num_envs, *x.shape[2:])  # noqa: E731
        _, _, next_value = jax.vmap(state.params.step)(
            flat(rollout.hidden),
            flat(rollout.next_obs),
            jnp.zeros(num_steps * num_envs, bool),
        )
        advantages, targets = rollout_advantages(rollout, next_value, config)

        # UPDATE EPOCHS OF MINIBATCHES OF WHOLE SEQUENCES
        batch = SequenceBatch(
            hidden=initial_hidden,
            reset=rollout.reset,
            steps=Batch(
                obs=rollout.obs,
                action=rollout.action,
                log_prob=rollout.log_prob,
                value=rollout.value,
                advantage=advantages,
                target=targets,
            ),
        )
        key, epochs_key = jax.random.split(state.key)
        (params, opt_state), (total, info) = jax.lax.scan(
            lambda network_and_opt, order: epoch(network_and_opt, order, batch),
            (state.params, state.opt_state),
            epoch_orders(epochs_key, config.update_epochs, num_envs),  # whole environments' sequences
        )
        state = dataclasses.replace(state, params=params, opt_state=opt_state, key=key)
        return state, total, info

    def update(state: RecurrentPPOState):
        state, experience, episodes = collect(state)  # COLLECT TRAJECTORIES
        state, total, info = learn(state, experience)  # ADVANTAGES AND UPDATE EPOCHS
        return state, update_stats(episodes, total, info)

    def init(key: PRNGKeyArray) -> RecurrentPPOState:
        env_key, init_key, loop_key = jax.random.split(key, 3)
        obs, env_state = env.reset(env_key)
        network = make_network(config, env, init_key)
        return RecurrentPPOState(
            params=network,
            opt_state=optimizer.init(network),
            env_state=env_state,
            obs=obs,
            reset=jnp.ones(num_envs, bool),
            hidden=initial_hidden(network, num_envs),
            key=loop_key,
        )

    # EVALUATION: the greedy and the sampled policy on fresh episodes (`config.eval_interval`)
    evaluate = training_evaluator(config, policy, stochastic=True)
    return Learner(init, update, evaluate)


# USING A TRAINED AGENT


def policy(
    network: RecurrentActorCritic,
    env: VecEnv,
    obs_stats: RunningStats | None = None,
    greedy: bool = True,
) -> RecurrentPolicy:
    """The trained agent as a `RecurrentPolicy` for `pureeqxrl.evaluate.evaluate` (what `pureeqxrl
    eval` runs): the hidden state is carried from step to step and zeroed at episode starts;
    actions are the most likely ones (`greedy`) or sampled as in training."""

    def act(key: PRNGKeyArray, obs: Array, hidden: Array, reset: Array):
        if obs_stats is not None:
            obs = obs_stats.normalize(obs)
        hidden, distribution, _ = jax.vmap(network.step)(hidden, obs, reset)
        action = jnp.where(greedy, mode(distribution), sample(distribution, key))
        return action.astype(jnp.int32), hidden

    return RecurrentPolicy(initial_hidden=lambda num_envs: initial_hidden(network, num_envs), act=act)
