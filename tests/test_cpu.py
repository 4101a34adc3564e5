"""What the command sets up for XLA:CPU (`pureeqxrl.cpu`): a CPU device per core, and threefry
compiled without loops. What must happen before JAX starts, or changes the whole process, runs in
a subprocess."""

import json
import os
import subprocess
import sys

import jax
import pytest

from pureeqxrl import cpu
from pureeqxrl.training import run


def _python(code: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """`code` in a fresh Python, without a CPU device count set by the environment."""
    env = {key: value for key, value in os.environ.items() if key not in ("JAX_NUM_CPU_DEVICES", "XLA_FLAGS")}
    done = subprocess.run(
        [sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


# A CPU DEVICE PER CORE


def test_the_user_s_own_cpu_device_count_is_kept():
    assert cpu.cpu_devices_chosen({"XLA_FLAGS": "--xla_force_host_platform_device_count=4"})
    assert cpu.cpu_devices_chosen({"JAX_NUM_CPU_DEVICES": "2"})
    assert not cpu.cpu_devices_chosen({"XLA_FLAGS": "--xla_cpu_use_onednn=true"})
    # This process's backend has started: its devices stay what they are.
    devices = jax.device_count()
    assert cpu.use_cpu_cores({}) is None and jax.device_count() == devices


def test_a_process_gets_a_cpu_device_per_core_before_jax_starts():
    code = (
        "import json, os; os.sched_getaffinity = lambda pid: {0, 1, 2}\n"
        "from pureeqxrl import cpu\n"
        "given = cpu.use_cpu_cores()\n"
        "import jax\n"
        "print(json.dumps([given, jax.device_count(), cpu.use_cpu_cores()]))"
    )
    assert json.loads(_python(code).stdout.splitlines()[-1]) == [3, 3, None]


# Runs `pureeqxrl` as the command does, in a process that believes it may use 3 cores.
THREE_CORES = (
    "import os, sys; os.sched_getaffinity = lambda pid: {0, 1, 2}; "
    "from pureeqxrl.__main__ import main; sys.exit(main(sys.argv[1:]))"
)


def test_the_command_trains_seeds_on_a_cpu_device_per_core(tmp_path):
    run_dir = tmp_path / "run"
    flags = ["train", "ppo", "--num-seeds", "3", "--num-envs", "2", "--total-timesteps", "1024"]
    done = _python(THREE_CORES, *flags, "--run-dir", str(run_dir), "--no-compile-cache")
    assert "3 seed(s) on 3 cpu devices, 1 run(s) each" in done.stdout
    assert json.loads((run_dir / "config.json").read_text())["layout"] == [3, 1]


def test_a_resumed_run_keeps_the_devices_it_ran_on_unless_told_otherwise():
    options = run.RunOptions(num_seeds=4)
    kept = run.keep_saved_layout(options, [1, 1], devices_given=False)
    assert (kept.devices, kept.env_devices) == (1, 1)
    assert run.keep_saved_layout(options, [1, 1], devices_given=True) is options
    assert run.keep_saved_layout(options, None, False) is options  # saved before layouts were recorded
    too_many = [jax.device_count() + 1, 1]  # this process has fewer devices than the run had
    assert run.keep_saved_layout(options, too_many, False) is options


# THREEFRY WITHOUT LOOPS

# Draws of every kind, jitted, as hex digests of their bits; and the loops of a compiled split.
DRAWS = """
import hashlib, json, sys
import jax, jax.numpy as jnp, numpy as np
from pureeqxrl import cpu
if sys.argv[1] == "unrolled":
    cpu.unroll_threefry()

@jax.jit
def draws(key):
    keys = jax.random.split(key, 6)
    return [
        jax.random.key_data(keys),
        jax.random.key_data(jax.random.fold_in(key, 12345)),
        jax.random.uniform(keys[0], (7, 3)),
        jax.random.normal(keys[1], (5,)),
        jax.random.categorical(keys[2], jnp.zeros((4, 6))),
        jax.random.permutation(keys[3], 1000),
        jax.random.bits(keys[4], (3, 33), jnp.uint32),
        jax.random.bits(keys[5], (9,), jnp.uint8),
        jax.vmap(lambda k: jax.random.split(k, 3))(keys),
    ]

seeds = [
    jax.random.key(0),
    jax.random.key(2**31 - 1),
    jax.random.wrap_key_data(jnp.array([7, 2**32 - 1], jnp.uint32)),
]
def digest(x):
    bits = jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x
    return hashlib.sha256(np.asarray(bits).tobytes()).hexdigest()

digests = [digest(x) for seed in seeds for x in draws(seed)]
split = jax.jit(lambda key: jax.random.split(key, 4)).lower(jax.random.key(0)).compile().as_text()
print(json.dumps({"digests": digests, "loops": split.count(" while(")}))
"""


def test_threefry_without_loops_draws_the_same_bits():
    rolled = json.loads(_python(DRAWS, "rolled").stdout.splitlines()[-1])
    unrolled = json.loads(_python(DRAWS, "unrolled").stdout.splitlines()[-1])
    assert len(set(rolled["digests"])) == len(rolled["digests"])  # 27 different draws
    assert unrolled["digests"] == rolled["digests"]
    assert rolled["loops"] >= 1 and unrolled["loops"] == 0  # what it is for: no loop left


# Random123's known answers for Threefry-2x32 with 20 rounds: (key, counters) -> hash.
KNOWN_ANSWERS = [
    ((0x00000000, 0x00000000), (0x00000000, 0x00000000), (0x6B200159, 0x99BA4EFE)),
    ((0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF), (0x1CB996FC, 0xBB002BE7)),
    ((0x13198A2E, 0x03707344), (0x243F6A88, 0x85A308D3), (0xC4923A9C, 0x483DF7A0)),
]


@pytest.mark.parametrize(("key", "counters", "expected"), KNOWN_ANSWERS)
def test_the_hash_gives_the_published_answers(key, counters, expected):
    words = [jax.numpy.uint32(word) for word in (*key, *counters)]
    assert tuple(int(x) for x in cpu.threefry2x32(*words)) == expected


def test_the_command_unrolls_threefry_for_the_algorithm_it_runs_unless_that_is_sac(tmp_path):
    from pureeqxrl import __main__ as entry
    from pureeqxrl import registry

    assert entry.algorithm_of(["train", "ppo", "--num-seeds", "2"]) == "ppo"
    assert entry.algorithm_of(["sweep", "dqn", "--learning-rate", "1e-3", "3e-3"]) == "dqn"
    assert entry.algorithm_of(["eval", "runs/x"]) is None and entry.algorithm_of(["train"]) is None
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text(json.dumps({"algorithm": "sac"}))
    assert entry.algorithm_of(["train", "--resume", str(tmp_path / "run")]) == "sac"
    assert entry.algorithm_of(["sweep", "--resume", str(tmp_path / "missing")]) is None
    assert cpu.KEEP_THREEFRY_LOOPS == {"sac"} <= set(registry.ALGORITHMS)  # measured slower so
