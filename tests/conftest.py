import jax
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
