"""Flax Linen control versions of the algorithms: same algorithm code, same init, same
hyperparameters; only the network library differs. They exist to be benchmarked against."""
