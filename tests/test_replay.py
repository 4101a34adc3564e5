import jax
import jax.numpy as jnp
import numpy as np

from pureeqxrl import dqn, replay, sac
from pureeqxrl.replay import ReplayBuffer, Transition


def _transitions(rewards, action_dim=2):
    rewards = jnp.asarray(rewards, jnp.float32)
    n = rewards.shape[0]
    return Transition(
        obs=rewards[:, None],
        action=jnp.zeros((n, action_dim)),
        reward=rewards,
        next_obs=rewards[:, None] + 1,
        terminated=jnp.zeros(n, bool),
    )


def test_off_policy_algorithms_share_one_replay_buffer():
    assert dqn.ReplayBuffer is sac.ReplayBuffer is replay.ReplayBuffer


def test_adding_wraps_around_and_overwrites_the_oldest():
    buffer = ReplayBuffer.empty(jax.tree.map(lambda x: x[0], _transitions([0.0])), capacity=3)
    buffer = buffer.add(_transitions([0.0, 1.0]))
    assert int(buffer.size) == 2 and int(buffer.position) == 2
    buffer = buffer.add(_transitions([2.0, 3.0]))  # the second batch overwrites transition 0
    np.testing.assert_array_equal(buffer.data.reward, [3.0, 1.0, 2.0])
    np.testing.assert_array_equal(buffer.data.next_obs[:, 0], [4.0, 2.0, 3.0])
    assert int(buffer.size) == 3 and int(buffer.position) == 1


def test_sampling_draws_only_stored_transitions_uniformly(key):
    buffer = ReplayBuffer.empty(jax.tree.map(lambda x: x[0], _transitions([0.0])), capacity=10)
    buffer = buffer.add(_transitions([5.0, 6.0, 7.0, 8.0]))
    batch = buffer.sample(key, 4_000)
    values, counts = np.unique(np.asarray(batch.reward), return_counts=True)
    np.testing.assert_array_equal(values, [5.0, 6.0, 7.0, 8.0])  # never an empty slot's zeros
    np.testing.assert_allclose(counts / 4_000, 0.25, atol=0.03)
    np.testing.assert_array_equal(batch.obs[:, 0], batch.reward)  # fields of one transition together
