"""Flax Linen control versions of the algorithms: same algorithm code, same init, same
hyperparameters; only the network library differs. They exist to be benchmarked against.

A Linen network enters an algorithm as `LinenNetwork`, an Equinox Module holding the Linen
variables: the algorithm calls it on one example like any of its own networks (and vmaps it over
a batch), and it applies the Linen module to a batch of one.
"""

import equinox as eqx
import flax.linen as nn
import jax
from jaxtyping import Array

from pureeqxrl.nets import MLP


class LinenNetwork(eqx.Module):
    """A Flax Linen module and its variables, called on one example (a batch axis of 1 added to
    every input and removed from every output)."""

    variables: dict
    module: nn.Module = eqx.field(static=True)

    def apply(self, *inputs: Array, method=None):
        """`module.apply(variables, *inputs)` on a batch of one: the outputs of one example."""
        outputs = self.module.apply(self.variables, *(x[None] for x in inputs), method=method)
        return jax.tree.map(lambda y: y[0], outputs)


def dense_params(names, layers) -> dict:
    """Linen `Dense` variables `{name: {"kernel": ..., "bias": ...}}`, one per name, holding the
    numbers of Equinox `pureeqxrl.nets.Dense` layers (e.g. an `MLP`'s `layers`)."""
    return {
        name: {"kernel": layer.kernel, "bias": layer.bias} for name, layer in zip(names, layers, strict=True)
    }


def mlp_params(name: str, mlp: MLP) -> dict:
    """The Linen Dense layers `{name}_0, {name}_1, ..., {name}_head` holding an Equinox `MLP`'s numbers."""
    names = [f"{name}_{i}" for i in range(len(mlp.layers) - 1)] + [f"{name}_head"]
    return dense_params(names, mlp.layers)
