"""The replay buffer of the off-policy algorithms (DQN, SAC): a fixed-capacity circular store of
transitions in the training state, sampled uniformly.

A transition keeps the observation its step led to *before* any auto-reset (`next_obs`) and whether
the episode *terminated* there: a truncated episode (time limit) is bootstrapped from where it
stopped, a terminated one is not. Actions are stored as the algorithm hands them over (DQN's
integers, SAC's squashed vectors in [-1, 1]).
"""

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

from pureeqxrl.loop import counter_field
from pureeqxrl.minibatch import split_batch


class Transition(eqx.Module):
    obs: Float[Array, "..."]
    action: Array
    reward: Float[Array, "*batch"]
    next_obs: Float[Array, "..."]
    """Observation the step led to, before any auto-reset."""
    terminated: Bool[Array, "*batch"]
    """True only for real terminal states; truncations stay False and are bootstrapped."""


class ReplayBuffer(eqx.Module):
    """Fixed-capacity circular buffer of transitions with uniform sampling.

    The data has a leading axis of `capacity`; `add` writes a batch of transitions after the newest
    ones (overwriting the oldest once full) and `sample` draws uniformly among those stored.
    """

    data: Transition
    position: Int[Array, ""] = counter_field()
    size: Int[Array, ""] = counter_field()

    @staticmethod
    def empty(example: Transition, capacity: int) -> "ReplayBuffer":
        """A buffer of `capacity` transitions shaped like `example` (one transition, no batch axis)."""
        data = jax.tree.map(lambda x: jnp.zeros((capacity, *x.shape), x.dtype), example)
        return ReplayBuffer(data=data, position=jnp.array(0), size=jnp.array(0))

    @staticmethod
    def for_steps(obs: Array, action: Array, capacity: int) -> "ReplayBuffer":
        """An empty buffer for the steps of environments whose observations are like `obs[0]`
        (a batch of them) and whose actions are like `action` (one of them)."""
        example = Transition(
            obs=obs[0], action=action, reward=jnp.array(0.0), next_obs=obs[0], terminated=jnp.array(False)
        )
        return ReplayBuffer.empty(example, capacity)

    def add(self, batch: Transition) -> "ReplayBuffer":
        capacity, count = self.data.reward.shape[0], batch.reward.shape[0]
        index = (self.position + jnp.arange(count)) % capacity
        data = jax.tree.map(lambda stored, new: stored.at[index].set(new), self.data, batch)
        return ReplayBuffer(
            data=data,
            position=(self.position + count) % capacity,
            size=jnp.minimum(self.size + count, capacity),
        )

    def sample(self, key: PRNGKeyArray, batch_size: int) -> Transition:
        """`batch_size` transitions drawn uniformly among those stored, split over the `envs`
        devices of a data-parallel run (`pureeqxrl.minibatch.split_batch`)."""
        index = jax.random.randint(key, (batch_size,), 0, self.size)
        return split_batch(jax.tree.map(lambda stored: stored[index], self.data))


def ready_to_learn(stored: Any, timesteps: Any, config: Any) -> Any:
    """Whether an off-policy learner may take gradient steps after `timesteps` environment steps
    with `stored` transitions in its buffer: a batch's worth stored (`config.batch_size`) and
    `config.learning_starts` passed. Works on numpy arrays (counting a run's gradient steps ahead)
    and on traced ones (inside the update)."""
    return (stored >= config.batch_size) & (timesteps > config.learning_starts)


def stored_after(timesteps: np.ndarray, config: Any) -> np.ndarray:
    """Transitions in a buffer of `config.buffer_size` after `timesteps` environment steps."""
    return np.minimum(timesteps, config.buffer_size)
