"""What the `pureeqxrl` command sets up for XLA:CPU before it compiles: a CPU device per core, and
JAX's random-number hash compiled without loops (for every algorithm but SAC). They speed up
training of several seeds and compilation on a CPU and change no random number; neither touches a
GPU or TPU.

The Python API leaves JAX as the user set it up; `prepare(algorithm)`, called before anything
starts JAX's backend (importing the algorithms does: gymnax builds arrays at import), does for a
script what the command does, and returns the CPU devices' count it set (`None` if it came too
late):

    import jax
    from pureeqxrl import cpu

    cpu.prepare("ppo")
    from pureeqxrl import parallel, ppo

    train = parallel.sharded(ppo.make_train(ppo.PPOConfig()), parallel.choose_layout(8))
    result = train(jax.random.split(jax.random.key(0), 8))
"""

import os
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.random import threefry2x32_p
from jax.interpreters import mlir

# A CPU DEVICE PER CORE


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity where the system tells it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS and Windows have no affinity call
        return os.cpu_count() or 1


def cpu_devices_chosen(environ: Mapping[str, str]) -> bool:
    """Whether the user already set how many CPU devices JAX makes: `JAX_NUM_CPU_DEVICES`, the
    `jax_num_cpu_devices` option, or XLA's `--xla_force_host_platform_device_count`."""
    return (
        "JAX_NUM_CPU_DEVICES" in environ
        or jax.config.jax_num_cpu_devices != -1
        or "xla_force_host_platform_device_count" in environ.get("XLA_FLAGS", "")
    )


def use_cpu_cores(environ: Mapping[str, str] = os.environ) -> int | None:
    """Give JAX one CPU device per usable core, unless the user chose a count; the count set, or
    `None` where it left JAX as it was.

    XLA:CPU runs a training program's many small operations one after another, and a second core
    does little for them: on 2 cores, 8 vmapped seeds of PPO on CartPole took 1.5 cores' time for
    the work that two devices, a core each, did in 56% of the wall time. Runs laid out over devices
    (seeds, a sweep's configurations; `pureeqxrl.parallel`) run side by side, a device per core.
    A GPU or TPU stays the default device, so this changes nothing there. It must run before JAX
    starts its backend; afterwards (or where the user set a count) it leaves JAX alone.
    """
    if cpu_devices_chosen(environ):
        return None
    cores = usable_cores()
    try:
        jax.config.update("jax_num_cpu_devices", cores)
    except RuntimeError:  # the backend already started: its devices are what they are
        return None
    return cores


# THREEFRY WITHOUT LOOPS

# Threefry-2x32's rotations (Salmon et al. 2011, "Parallel random numbers: as easy as 1, 2, 3"),
# alternating every 4 of its 20 rounds.
ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
KEY_PARITY = np.uint32(0x1BD11BDA)


def threefry2x32(key1, key2, x1, x2) -> list:
    """The Threefry-2x32 hash of the counters `(x1, x2)` under the key `(key1, key2)`, uint32
    arrays broadcast together: its 20 rounds in 5 groups of 4, each group followed by a key
    injection, as JAX computes it (the same bits)."""
    shape = jnp.broadcast_shapes(key1.shape, key2.shape, x1.shape, x2.shape)
    key1, key2, x1, x2 = (jnp.broadcast_to(v, shape) for v in (key1, key2, x1, x2))
    keys = (key1, key2, key1 ^ key2 ^ KEY_PARITY)
    x1, x2 = x1 + keys[0], x2 + keys[1]
    for group in range(5):
        for rotation in ROTATIONS[group % 2]:
            x1 = x1 + x2
            x2 = (x2 << np.uint32(rotation)) | (x2 >> np.uint32(32 - rotation))
            x2 = x1 ^ x2
        x1 = x1 + keys[(group + 1) % 3]
        x2 = x2 + keys[(group + 2) % 3] + np.uint32(group + 1)
    return [x1, x2]


def unroll_threefry() -> None:
    """Compile JAX's threefry hash (every `jax.random` draw and split) on CPU as straight-line
    code, as JAX does on GPU and TPU, instead of a loop over its rounds.

    JAX lowers it on CPU as a loop, one per draw: a PPO training program then holds 52 loops, 35
    of them threefry's, and XLA's copy insertion took 1.2 of its 4 s of compilation. Straight-line
    rounds compile it a fifth to a quarter faster, and the bits are the same (tests/test_cpu.py
    compares them). Registered for the CPU platform through JAX's interface for primitives'
    lowerings, for the whole process; programs already compiled keep their loops.
    """
    mlir.register_lowering(
        threefry2x32_p, mlir.lower_fun(threefry2x32, multiple_results=True), platform="cpu"
    )


KEEP_THREEFRY_LOOPS = frozenset({"sac"})
"""The algorithms that lose by `unroll_threefry`: SAC's 1-seed run (1e4 steps) trained 1.17x and
compiled 1.15x slower without the loops."""


def unroll_threefry_for(algorithm: str | None) -> None:
    """`unroll_threefry`, unless `algorithm` (a registry name) loses by it (`KEEP_THREEFRY_LOOPS`);
    for no algorithm, always."""
    if algorithm not in KEEP_THREEFRY_LOOPS:
        unroll_threefry()


def prepare(algorithm: str | None = None, environ: Mapping[str, str] = os.environ) -> int | None:
    """`use_cpu_cores`, then `unroll_threefry_for(algorithm)`, as the command does before it starts;
    the CPU devices' count set, or `None`."""
    cores = use_cpu_cores(environ)
    unroll_threefry_for(algorithm)
    return cores
