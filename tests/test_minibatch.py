import jax
import jax.numpy as jnp
import numpy as np

from pureeqxrl.loop import hold_environments
from pureeqxrl.minibatch import epoch_orders, shuffled_epochs, split_batch


def test_shuffled_epochs_visit_every_example_once_per_epoch_in_each_epochs_own_order():
    key = jax.random.key(3)
    batch = {"x": jnp.arange(12.0), "y": 10.0 * jnp.arange(12.0)[:, None]}

    def gradient_step(count, minibatch):
        return count + 1, minibatch

    count, seen = shuffled_epochs(gradient_step, 0, batch, key, num_epochs=3, num_minibatches=4)
    assert count == 12  # 3 epochs x 4 minibatches, in order
    assert seen["x"].shape == (3, 4, 3) and seen["y"].shape == (3, 4, 3, 1)
    orders = epoch_orders(key, 3, 12)
    for epoch in range(3):
        # epoch i's order is the permutation of the i-th split key, as a per-epoch draw would give
        expected = jax.random.permutation(jax.random.split(key, 3)[epoch], 12)
        np.testing.assert_array_equal(orders[epoch], expected)
        np.testing.assert_array_equal(seen["x"][epoch].ravel(), expected)
        # the fields stay paired
        np.testing.assert_array_equal(seen["y"][epoch].ravel(), 10.0 * np.asarray(expected))
    assert len({tuple(np.asarray(order)) for order in orders}) == 3  # a new order every epoch


def test_split_batch_and_hold_do_nothing_outside_a_mesh():
    batch = {"x": jnp.arange(8.0)}
    assert split_batch(batch) is batch
    assert hold_environments(batch, 8) is batch
