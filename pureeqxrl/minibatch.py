"""Minibatches of one update's experience: shuffled epochs over a rollout (PPO, PQN, recurrent PPO)
and the data-parallel split of a minibatch (or of a replay sample) over devices.

A batch is split where it is cut into minibatches, so the algorithms need not know about devices:
under a mesh with an `envs` axis (an agent whose environments are spread over several devices,
`pureeqxrl.parallel`), each device computes the loss and gradient of its share of a minibatch and
XLA's partitioner sums the gradients; outside one, nothing happens.
"""

from collections.abc import Callable
from typing import Any, TypeVar

import jax
from jax.sharding import PartitionSpec
from jaxtyping import Array, PRNGKeyArray

Carry = TypeVar("Carry")

ENVS = "envs"
"""The mesh axis over which one agent's environments (and its minibatches) are split."""


def envs_devices() -> int:
    """Devices of the `envs` axis of the mesh being traced under (1 outside one)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or ENVS not in mesh.axis_names:
        return 1
    return mesh.shape[ENVS]


def split_batch(tree: Any, axis: int = 0) -> Any:
    """A batch split along `axis` over the `envs` devices of the mesh being traced under (the batch
    itself outside one): each device then computes the loss and gradient of its share and the
    partitioner sums them, instead of every device computing all of it. The result is the same up
    to the order of the sum."""
    devices = envs_devices()
    if devices == 1:
        return tree
    spec = PartitionSpec(*([None] * axis), ENVS)
    return jax.tree.map(
        lambda x: jax.lax.with_sharding_constraint(x, spec) if x.shape[axis] % devices == 0 else x, tree
    )


def epoch_orders(key: PRNGKeyArray, num_epochs: int, size: int) -> Array:
    """A random order of `size` examples for each of `num_epochs` epochs, `(num_epochs, size)`:
    epoch `i`'s is `jax.random.permutation(jax.random.split(key, num_epochs)[i], size)`, all drawn in
    one batched shuffle rather than one per epoch inside the loop of epochs."""
    return jax.vmap(lambda key: jax.random.permutation(key, size))(jax.random.split(key, num_epochs))


def shuffled_epochs(
    gradient_step: Callable[[Carry, Any], tuple[Carry, Any]],
    carry: Carry,
    batch: Any,
    key: PRNGKeyArray,
    num_epochs: int,
    num_minibatches: int,
) -> tuple[Carry, Any]:
    """`num_epochs` passes over `batch` (leaves with a leading axis of examples), each in a new
    random order (`epoch_orders`) cut into `num_minibatches` equal minibatches, with
    `gradient_step(carry, minibatch) -> (carry, out)` on each in turn (each minibatch split over
    the `envs` devices, `split_batch`). Returns the final carry and the outputs stacked
    `(num_epochs, num_minibatches, ...)`."""
    size = jax.tree.leaves(batch)[0].shape[0]

    def epoch(carry: Carry, order: Array) -> tuple[Carry, Any]:
        minibatches = jax.tree.map(lambda x: x[order].reshape(num_minibatches, -1, *x.shape[1:]), batch)
        return jax.lax.scan(
            lambda carry, minibatch: gradient_step(carry, split_batch(minibatch)), carry, minibatches
        )

    return jax.lax.scan(epoch, carry, epoch_orders(key, num_epochs, size))
