"""Flax Linen control versions of the algorithms: same algorithm code, same init, same
hyperparameters; only the network library differs. They exist to be benchmarked against."""

from pureeqxrl.nets import MLP


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
