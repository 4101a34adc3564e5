import jax
import jax.numpy as jnp
import numpy as np
import pytest


@pytest.fixture
def key():
    return jax.random.key(0)


@pytest.fixture
def strict_promotion():
    """Catch silent dtype promotions in our own code. Not global: gymnax's CartPole mixes bool and
    float arithmetic, which strict promotion rejects."""
    with jax.numpy_dtype_promotion("strict"):
        yield


@pytest.fixture
def no_compile(monkeypatch):
    """Make any `jax.jit` fail: a bad config must be rejected before anything is compiled.

    navix and brax (if installed) are imported first, since their modules call `jax.jit` at import
    time and the error message for an unknown environment lists their names.
    """
    for optional in ("navix", "brax.envs"):
        try:
            __import__(optional)
        except ImportError:
            pass
    monkeypatch.setattr(jax, "jit", lambda *a, **k: pytest.fail("compiled before rejecting"))


@pytest.fixture
def assert_same_gradients():
    """`check(ours, theirs)`: the Equinox gradients (converted to the Linen layout) have Linen's
    structure and equal Linen's leaf by leaf, and no Linen gradient is all zero (a parity test
    that compared zeros would prove nothing)."""

    def check(ours, theirs):
        assert jax.tree.structure(ours) == jax.tree.structure(theirs)
        for mine, other in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True):
            assert float(jnp.abs(other).max()) > 0
            np.testing.assert_allclose(mine, other, rtol=1e-5, atol=1e-7)

    return check


def pytest_configure(config):
    """A persistent XLA compilation cache under pytest's own cache folder: most of a test's time is
    compiling its training program, and an unchanged program need not be compiled again on the
    next run (the cache key covers the program, the jax version and the flags)."""
    cache = config.cache.mkdir("jax-compilation-cache") if getattr(config, "cache", None) else None
    if cache is not None:
        jax.config.update("jax_compilation_cache_dir", str(cache))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
