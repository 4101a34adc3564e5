"""The `pureeqxrl` command (and `python -m pureeqxrl`): joins the other processes of a multi-process
run first, if the flags name one, or else gives JAX a CPU device per core; compiles JAX's threefry
without loops on CPU for the algorithms that gain by it (`pureeqxrl.cpu`); then runs the command
line (`pureeqxrl.cli`).

The order matters: `jax.distributed.initialize` and the CPU devices' count must be set before JAX
starts its backend, and importing the environments (gymnax builds arrays at import) starts it.
"""

import json
import os
import sys
from pathlib import Path

# These import JAX only, which does not start its backend.
from pureeqxrl import cpu, parallel
from pureeqxrl.flags import flag_value


def joins_processes(argv: list[str]) -> bool:
    """Whether the flags of `argv` name a multi-process run."""
    return any(flag_value(argv, flag) is not None for flag in ("--coordinator", "--num-processes")) or (
        "--cluster" in argv
    )


def join_processes(argv: list[str]) -> str | None:
    """`pureeqxrl.parallel.initialize` from the flags of `argv` (`--coordinator HOST:PORT
    --num-processes N --process-id I`, or `--cluster`; `--distributed-timeout S`), if given; the
    error message if the processes could not join. Values that are not numbers are left to the
    command line's own parser to reject."""
    if not joins_processes(argv):
        return None
    coordinator = flag_value(argv, "--coordinator")
    try:
        num_processes = flag_value(argv, "--num-processes")
        process_id = flag_value(argv, "--process-id")
        timeout = int(flag_value(argv, "--distributed-timeout") or 300)
        num_processes = None if num_processes is None else int(num_processes)
        process_id = None if process_id is None else int(process_id)
    except ValueError:
        return None
    try:
        parallel.initialize(coordinator, num_processes, process_id, timeout)
    except (ValueError, RuntimeError) as error:
        return str(error)
    return None


def backend_error() -> str | None:
    """Why JAX cannot start its backend (JAX_PLATFORMS names a platform that this machine or this
    jax cannot run: jax's own error is then a bare AssertionError), or None."""
    import jax

    try:
        jax.devices()
    except Exception as error:  # jaxlib's error types differ by platform and version
        platforms = os.environ.get("JAX_PLATFORMS")
        return (
            f"JAX could not start {f'the platform JAX_PLATFORMS={platforms}' if platforms else 'its backend'} "
            f"({type(error).__name__}{f': {str(error).splitlines()[0]}' if str(error).strip() else ''}); "
            "for a GPU, install jax with its CUDA plugin (pip install -U 'jax[cuda12]'); to train on the CPU, "
            "unset JAX_PLATFORMS"
        )
    return None


def algorithm_of(argv: list[str]) -> str | None:
    """The algorithm a `train` or `sweep` command line runs (read from the folder it resumes), if
    it names one; what is wrong with it is left to the command line to say."""
    if len(argv) < 2 or argv[0] not in ("train", "sweep"):
        return None
    if argv[1] != "--resume":
        return argv[1]
    if len(argv) < 3:
        return None
    for saved in ("config.json", "sweep.json"):
        try:
            return json.loads((Path(argv[2]) / saved).read_text())["algorithm"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not joins_processes(argv):
        cpu.use_cpu_cores()  # each process of a multi-process run keeps JAX's own count
    error = join_processes(argv) or backend_error()
    if error is not None:
        print(f"error: {error}", file=sys.stderr)
        return 2
    cpu.unroll_threefry_for(algorithm_of(argv))  # (its registry's imports start JAX's backend)
    from pureeqxrl import cli

    return cli.main(argv)


def run() -> int:
    """`main`, with Ctrl-C before the command has started (while JAX loads) said in one word."""
    try:
        return main()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(run())
