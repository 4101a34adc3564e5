"""Flax Linen control versions of the algorithms: same algorithm code, same init, same
hyperparameters; only the network library differs. They exist to be benchmarked against."""


def dense_params(names, layers) -> dict:
    """Linen `Dense` variables `{name: {"kernel": ..., "bias": ...}}`, one per name, holding the
    numbers of Equinox `pureeqxrl.nets.Dense` layers (e.g. an `MLP`'s `layers`)."""
    return {
        name: {"kernel": layer.kernel, "bias": layer.bias} for name, layer in zip(names, layers, strict=True)
    }
