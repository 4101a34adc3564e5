"""Flax Linen control versions of the algorithms: same algorithm code, same init, same
hyperparameters; only the network library differs. They exist to be benchmarked against."""


def dense_params(names, layers) -> dict:
    """Linen `Dense` variables `{name: {"kernel": ..., "bias": ...}}`, one per name, holding the
    numbers of an Equinox `MLP`'s `(bias, kernel)` layers (`pureeqxrl.nets.MLP.layers`)."""
    return {name: {"kernel": kernel, "bias": bias} for name, (bias, kernel) in zip(names, layers, strict=True)}
