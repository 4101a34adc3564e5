"""Training spread over devices and processes, with JAX's own machinery.

Two ways to spread a run, which combine on a 2-D `jax.sharding.Mesh` with axes `seeds` x `envs`:

- **over seeds**: the batch of independent runs (seeds, a sweep's configurations x seeds) is split
  over the `seeds` axis; each device trains its share of whole runs, and nothing crosses devices.
- **within one agent** (data parallel): each agent's environments are split over the `envs` axis;
  each device steps its share, and the gradient of every minibatch (and the normalisation
  statistics) is reduced over the devices, so the agent learns as one agent with `num_envs`
  environments.

Both are sharding annotations of the one jitted program, not a rewrite of the algorithm: XLA's
partitioner (GSPMD) inserts the collectives. The program computes what it computes on one device,
so a sharded run agrees with the single-device run of the same keys: bit for bit where no reduction
crosses devices (seeds), to float rounding where one does (the all-reduced gradients).

Several processes (hosts) join through `jax.distributed` (`initialize`); the mesh then spans every
process's devices, each process feeds and runs the same program, and only process 0 writes.
"""

import contextlib
import os
import resource
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from pureeqxrl.minibatch import ENVS

SEEDS = "seeds"
"""The mesh axis over which a batch of runs (seeds, a sweep's configurations) is split."""


# SEVERAL PROCESSES


def initialize(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    timeout_seconds: int = 300,
) -> None:
    """Join this process to a multi-process run (`jax.distributed.initialize`), before any JAX
    computation.

    With all three arguments, the processes meet at `coordinator` (`HOST:PORT`, served by process
    0); with none, JAX reads them from the cluster's environment (SLURM, Open MPI, ...). On CPU the
    processes exchange data through gloo. A process that cannot reach the others within
    `timeout_seconds` gets a `RuntimeError` naming the coordinator, not a hang: with the three
    arguments, `check_in` makes sure everyone is there first, since JAX's own join ends a process
    that times out with a fatal error and a C++ stack trace rather than an exception.
    """
    given = [coordinator is not None, num_processes is not None, process_id is not None]
    if any(given) and not all(given):
        raise ValueError("--coordinator, --num-processes and --process-id go together: give all three")
    if num_processes is not None and not 0 <= process_id < num_processes:
        raise ValueError(f"process_id must be in [0, {num_processes}), got {process_id}")
    if timeout_seconds < 1:
        raise ValueError(f"the distributed timeout must be at least 1 second, got {timeout_seconds}")
    if coordinator is not None:
        host, _, port = coordinator.rpartition(":")
        if not (host and port.isdigit() and 1 <= int(port) <= 65535):
            raise ValueError(f"--coordinator must be HOST:PORT with a port in 1-65535, got {coordinator!r}")
        check_in(coordinator, num_processes, process_id, timeout_seconds)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(
            coordinator, num_processes, process_id, initialization_timeout=int(timeout_seconds)
        )
    except Exception as error:  # jaxlib raises its own error types; what matters is the message
        where = f"the coordinator {coordinator}" if coordinator else "the cluster's coordinator"
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise RuntimeError(
            f"process {process_id if process_id is not None else '?'} could not join {where} "
            f"(timeout {timeout_seconds} s): {first_line}"
        ) from error


def check_in(coordinator: str, num_processes: int, process_id: int, timeout_seconds: float) -> None:
    """Make sure every process is there before JAX joins them: process 0 listens on the
    coordinator's port until the `num_processes - 1` others have checked in, each of them knocks
    until process 0 answers. A `RuntimeError` for whichever side waits past `timeout_seconds`."""
    host, _, port = coordinator.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"the coordinator must be HOST:PORT, got {coordinator!r}")
    deadline = time.monotonic() + timeout_seconds
    if process_id == 0:
        try:
            server = socket.create_server(("", int(port)))
        except OSError as error:
            raise RuntimeError(
                f"process 0 cannot serve the coordinator on port {port}: {error.strerror}"
            ) from None
        arrived = set()
        with server:
            while len(arrived) < num_processes - 1:
                server.settimeout(max(deadline - time.monotonic(), 0.01))
                try:
                    connection, _ = server.accept()
                except TimeoutError:
                    missing = sorted(set(range(1, num_processes)) - arrived)
                    raise RuntimeError(
                        f"process 0 could not join the coordinator {coordinator} (timeout {timeout_seconds} s): "
                        f"process(es) {', '.join(map(str, missing))} of {num_processes} did not check in"
                    ) from None
                with connection:
                    connection.settimeout(10)
                    with contextlib.suppress(OSError, ValueError):
                        arrived.add(int(connection.recv(16).decode()))
                        connection.sendall(b"ok")
                        connection.recv(1)  # until the other side closes: its port lingers, not ours
        return
    while True:
        try:
            with socket.create_connection(
                (host, int(port)), timeout=max(deadline - time.monotonic(), 0.01)
            ) as knock:
                knock.sendall(str(process_id).encode())
                if knock.recv(2) == b"ok":
                    return
        except OSError:
            pass
        if time.monotonic() >= deadline:
            raise RuntimeError(
                f"process {process_id} could not join the coordinator {coordinator} (timeout {timeout_seconds} s): "
                "nothing answered there; is process 0 running, and is HOST:PORT its address?"
            )
        time.sleep(0.2)


def is_main_process() -> bool:
    """Whether this process writes the run folder and shows progress (process 0)."""
    return jax.process_index() == 0


def any_process(flag: bool) -> bool:
    """Whether `flag` is set in any process: a collective, so every process must call it, and all
    get the same answer (a stop signal or a due checkpoint then stops or saves all of them)."""
    return any_process_each(flag)[0]


def any_process_each(*flags: bool) -> tuple[bool, ...]:
    """`any_process` of several flags in one collective (one round trip between the processes)."""
    return tuple(bool(value) for value in largest_over_processes(*(bool(flag) for flag in flags)))


def broadcast_text(text: str, size: int = 4096) -> str:
    """Process 0's `text` (at most `size` bytes of UTF-8), in every process: a collective."""
    if jax.process_count() == 1:
        return text
    data = np.zeros(size, np.uint8)
    encoded = np.frombuffer(text.encode()[:size], np.uint8)
    data[: encoded.size] = encoded
    received = np.asarray(multihost_utils.broadcast_one_to_all(data))
    return bytes(received).rstrip(b"\0").decode()


def largest_over_processes(*values: int) -> tuple[int, ...]:
    """The largest of each value over the processes, in one collective (every process calls it and
    gets the same answer): a stop signal's number, so that every process names the one received."""
    if jax.process_count() == 1:
        return tuple(int(value) for value in values)
    gathered = multihost_utils.process_allgather(np.array(values, dtype=np.int32)).reshape(-1, len(values))
    return tuple(int(column) for column in gathered.max(axis=0))


# LAYOUT: how a run's runs and environments lie on the devices


@dataclass(frozen=True)
class Layout:
    """`seed_devices` x `env_devices` devices: each group of `env_devices` devices trains whole
    runs, each run's environments split over the group's devices."""

    seed_devices: int = 1
    env_devices: int = 1

    @property
    def num_devices(self) -> int:
        return self.seed_devices * self.env_devices

    def errors(self, num_runs: int, num_envs: int) -> list[str]:
        """What stops `num_runs` runs of `num_envs` environments from being laid out so."""
        problems = []
        available = jax.device_count()
        if self.seed_devices < 1 or self.env_devices < 1:
            problems.append(f"device counts must be positive, got {self.seed_devices} x {self.env_devices}")
            return problems
        if self.num_devices > available:
            problems.append(
                f"{self.num_devices} devices requested ({self.seed_devices} for seeds x "
                f"{self.env_devices} for environments); {available} {platform()} device(s) exist"
            )
        if jax.process_count() > 1 and self.num_devices != available:
            problems.append(
                f"a run of {jax.process_count()} processes uses all {available} devices: "
                f"{self.num_devices} requested"
            )
        if num_runs % self.seed_devices:
            problems.append(f"{num_runs} runs do not divide over {self.seed_devices} devices")
        if num_envs % self.env_devices:
            problems.append(
                f"num_envs ({num_envs}) does not divide over {self.env_devices} devices for environments"
            )
        return problems

    def mesh(self) -> Mesh:
        devices = jax.devices()[: self.num_devices]
        return jax.make_mesh(
            (self.seed_devices, self.env_devices),
            (SEEDS, ENVS),
            axis_types=(AxisType.Auto, AxisType.Auto),
            devices=devices,
        )

    def describe(self, num_runs: int) -> str:
        if self.num_devices == 1:
            return f"1 {platform()} device"
        where = f"{self.num_devices} {platform()} devices"
        if jax.process_count() > 1:
            where += f" of {jax.process_count()} processes"
        if self.env_devices == 1:
            return f"{where}, {num_runs // self.seed_devices} run(s) each"
        return (
            f"{where}: {self.seed_devices} group(s) of {num_runs // self.seed_devices} run(s), each "
            f"run's environments over {self.env_devices} devices"
        )


def platform() -> str:
    return jax.devices()[0].platform


def choose_layout(num_runs: int, devices: int = 0, env_devices: int = 1) -> Layout:
    """The layout of `num_runs` runs on `devices` devices, `env_devices` of them per run. `devices`
    0 (the default): every device, or in a single process, if the runs do not divide over them,
    the most devices they divide over. A `ValueError` if the layout cannot be made."""
    if env_devices < 1 or devices < 0:
        raise ValueError(f"devices must be >= 0 and env_devices >= 1, got {devices} and {env_devices}")
    if devices % env_devices:
        raise ValueError(f"devices ({devices}) is not a multiple of env_devices ({env_devices})")
    if devices:
        layout = Layout(devices // env_devices, env_devices)
    else:
        groups = max(jax.device_count() // env_devices, 1)
        if jax.process_count() == 1:
            groups = max(g for g in range(1, groups + 1) if num_runs % g == 0)
        layout = Layout(groups, env_devices)
    return layout


# A WHOLE TRAINING RUN (the Python API's `make_train`) ON A LAYOUT


def manual_axes(layout: Layout) -> set[str]:
    """The mesh axes a `shard_map` over the runs takes into its own hands: `seeds` always, so that
    each group of devices compiles its runs as one device would, and `envs` too when there is no
    data parallelism (`envs` of size 1), leaving the partitioner nothing to do."""
    return {SEEDS} if layout.env_devices > 1 else {SEEDS, ENVS}


def over_runs(fn: Callable, mesh: Mesh, layout: Layout, num_args: int = 1) -> Callable:
    """`fn` of a batch of runs (leading axis of every argument and output) as a `shard_map` over
    the `seeds` devices of `mesh`: each group of devices runs its share of the runs."""
    runs = PartitionSpec(SEEDS)
    return jax.shard_map(
        fn,
        mesh=mesh,
        in_specs=(runs,) * num_args,
        out_specs=runs,
        axis_names=manual_axes(layout),
        check_vma=False,
    )


def sharded(train: Callable, layout: Layout) -> Callable:
    """`jax.jit(jax.vmap(train))` laid out on `layout`: the returned function takes the seeds' keys
    (the same in every process) and returns their `TrainResult`s, sharded over the seed devices
    (`gather` brings them whole to the host). `train` is an algorithm's `make_train(config)`, whose
    environments are split over the `envs` devices when `layout.env_devices > 1`."""
    mesh = layout.mesh()
    program = jax.jit(over_runs(jax.vmap(train), mesh, layout))

    def run(keys):
        with jax.set_mesh(mesh):  # the environments' and minibatches' shardings are traced in it
            return program(put(keys, NamedSharding(mesh, PartitionSpec(SEEDS))))

    return run


# SHARDINGS OF A TRAINING STATE (leading axis: the runs)


def batched_shardings(mesh: Mesh, specs: Any) -> Any:
    """The `NamedSharding`s of a batch of runs whose per-run specs are `specs`: the runs axis in
    front, over `SEEDS`."""
    return jax.tree.map(
        lambda spec: NamedSharding(mesh, PartitionSpec(SEEDS, *spec)),
        specs,
        is_leaf=lambda x: isinstance(x, PartitionSpec),
    )


# MOVING WHOLE STATES BETWEEN THE HOST AND THE DEVICES


def is_key(leaf: Any) -> bool:
    """Whether `leaf` is an array of typed random keys, which cross devices, processes and files as
    their raw data (`jax.random.key_data`) and are wrapped back with their implementation."""
    return hasattr(leaf, "dtype") and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key)


def put(tree: Any, shardings: Any) -> Any:
    """Host values (the same in every process) as global arrays with `shardings`: each process
    places only the shards of its own devices (`jax.make_array_from_callback`). Random keys stay
    keys of their implementation."""

    def place(leaf, sharding):
        if is_key(leaf):
            data = put(np.asarray(jax.random.key_data(leaf)), sharding)
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(leaf))
        value = np.asarray(leaf)
        return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])

    return jax.tree.map(place, tree, shardings)


def gather(tree: Any) -> Any:
    """A sharded tree whole on this host (numpy leaves, keys kept), in every process: a
    collective, so every process must call it."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    leaves, treedef = jax.tree.flatten(tree)
    keys = [jax.random.key_impl(leaf) if is_key(leaf) else None for leaf in leaves]
    data = [jax.random.key_data(leaf) if impl else leaf for leaf, impl in zip(leaves, keys, strict=True)]
    host = multihost_utils.process_allgather(data, tiled=True)
    restored = [
        jax.random.wrap_key_data(value, impl=impl) if impl else np.asarray(value)
        for value, impl in zip(host, keys, strict=True)
    ]
    return jax.tree.unflatten(treedef, restored)


# MEMORY


COMPILER_ADDRESS_SPACE = 2**30
"""Address space left to XLA's compiler and threads under `ulimit -v` (`memory_limit`)."""


def memory_limit() -> tuple[int, str]:
    """The memory a run may use on its device and what sets it: an accelerator's own; on a CPU the
    least of the host's physical memory, the container's or job's cgroup limit less what the
    cgroup uses already, and the address space this process may still map (`ulimit -v`; XLA
    stalls rather than fails when it runs out of it)."""
    device = jax.devices()[0]
    stats = device.memory_stats() if device.platform != "cpu" else None
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"]), f"the {device.platform} device has"
    limits = [(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "the host has")]
    cgroup = cgroup_memory_left()
    if cgroup is not None:
        limits.append(cgroup)
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        # Compiling maps more: with 3.3 GiB of a 5 GiB limit left, a DQN run (2 cores) whose arrays
        # needed 3.2 GiB stalled while it compiled its program, and ran with the program cached.
        left = max(soft - mapped_bytes() - COMPILER_ADDRESS_SPACE, 0)
        limits.append((left, "this process's address-space limit (ulimit -v) leaves"))
    return min(limits)


def cgroup_memory_left(
    membership: Path = Path("/proc/self/cgroup"), cgroups: Path = Path("/sys/fs/cgroup")
) -> tuple[int, str] | None:
    """What the memory limit of this process's own cgroup (a container's, a SLURM job's) leaves:
    the limit less the memory used, not counting the page cache the kernel reclaims first
    (`inactive_file`); None without a limit. cgroup v2, then v1."""
    with contextlib.suppress(OSError, ValueError):
        for line in membership.read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            if controllers == "":  # v2: "0::/path"
                root, names, cache = cgroups, ("memory.max", "memory.current"), "inactive_file"
            elif "memory" in controllers.split(","):  # v1
                root = cgroups / "memory"
                names, cache = ("memory.limit_in_bytes", "memory.usage_in_bytes"), "total_inactive_file"
            else:
                continue
            for folder in (root / path.lstrip("/"), root):  # its own, or the root a container shows
                try:
                    limit, used = (int((folder / name).read_text().strip()) for name in names)
                except (OSError, ValueError):  # absent, or "max": no limit
                    continue
                if limit >= 2**60:  # v1's "no limit"
                    return None
                stat = dict(line.split() for line in (folder / "memory.stat").read_text().splitlines())
                left = limit - used + int(stat.get(cache, 0))
                return max(left, 0), f"the cgroup's memory limit ({folder / names[0]}) leaves"
    return None


def mapped_bytes() -> int:
    """The address space this process has mapped (`VmSize`), 0 where the kernel does not say."""
    with contextlib.suppress(OSError, ValueError, StopIteration):
        lines = Path("/proc/self/status").read_text().splitlines()
        return 1024 * int(next(line for line in lines if line.startswith("VmSize:")).split()[1])
    return 0
