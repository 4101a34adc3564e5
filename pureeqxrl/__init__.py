"""PureEqxRL: end-to-end reinforcement learning in JAX with Equinox.

One module per algorithm (`pureeqxrl.dqn`, ...), each with a typed config and `make_train(config)`
returning a pure `train(key)` to `jax.jit` and `jax.vmap` over seeds.
"""

__version__ = "0.2.0"
