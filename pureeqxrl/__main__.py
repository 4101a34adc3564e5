"""The `pureeqxrl` command (and `python -m pureeqxrl`): joins the other processes of a multi-process
run first, if the flags name one, then runs the command line (`pureeqxrl.cli`).

The order matters: `jax.distributed.initialize` must run before JAX starts its backend, and
importing the environments (gymnax builds arrays at import) starts it.
"""

import sys

# Both import JAX only, which does not start its backend.
from pureeqxrl import parallel
from pureeqxrl.config import flag_value


def join_processes(argv: list[str]) -> str | None:
    """`pureeqxrl.parallel.initialize` from the flags of `argv` (`--coordinator HOST:PORT
    --num-processes N --process-id I`, or `--cluster`; `--distributed-timeout S`), if given; the
    error message if the processes could not join. Values that are not numbers are left to the
    command line's own parser to reject."""
    coordinator = flag_value(argv, "--coordinator")
    cluster = "--cluster" in argv
    if coordinator is None and not cluster and flag_value(argv, "--num-processes") is None:
        return None
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


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    error = join_processes(argv)
    if error is not None:
        print(f"error: {error}", file=sys.stderr)
        return 2
    from pureeqxrl import cli

    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
