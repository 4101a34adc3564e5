"""What training in chunks costs: the CLI's chunked host loop (`pureeqxrl.runner.run_chunks`, the
default chunk size, its checks between chunks and its final checkpoint) against the whole run as
one compiled call (`jax.jit(jax.vmap(make_train(config)))`), same config, same keys.

Interleaved repeats, which variant goes first alternates; medians, with the min-max of the
per-repeat chunked/single ratios of train time. Compilation is left out of both (each variant's
programs are compiled once, before the repeats).

    python benchmarks/chunks.py --algo dqn --repeats 3 --seeds 1 8 --out benchmarks/results/chunks_dqn_cpu
    python benchmarks/chunks.py --algo ppo --repeats 3 --seeds 1 8 --out benchmarks/results/chunks_ppo_cpu
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import jax

from pureeqxrl.loop import make_chunk_runner
from pureeqxrl.registry import ALGORITHMS
from pureeqxrl.runner import CheckpointSchedule, StopSignals, run_chunks

import bench_io  # benchmarks/bench_io.py (a script's folder is on its path)

VARIANTS = ("single", "chunked")


def measure(variant: str, single, keys, chunks, initial, config, schedule) -> float:
    """Train seconds of one whole run as one compiled call, or chunked."""
    if variant == "single":
        start = time.perf_counter()
        jax.block_until_ready(single(keys))
        return time.perf_counter() - start
    with tempfile.TemporaryDirectory() as run_dir:
        outcome = run_chunks(
            chunks,
            initial,
            {},
            0,
            config.num_updates,
            config.log_interval,
            schedule,
            run_dir=Path(run_dir),
            header={"benchmark": True},
            stop=StopSignals(),
        )
    return outcome.train_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algo", choices=sorted(ALGORITHMS), default="dqn")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    algorithm = ALGORITHMS[args.algo]
    config = algorithm.config_cls()
    schedule = CheckpointSchedule()
    samples = {(variant, n): [] for n in args.seeds for variant in VARIANTS}
    for num_seeds in args.seeds:
        keys = jax.random.split(jax.random.key(0), num_seeds)
        single = jax.jit(jax.vmap(algorithm.make_train(config))).lower(keys).compile()
        chunks = make_chunk_runner(
            algorithm.make_update_steps(config), config.num_updates, config.log_interval, config.eval_every
        )
        initial = chunks.init(keys)

        programs = (single, keys, chunks, initial, config, schedule)
        measure("chunked", *programs)  # compiles the chunk programs; not recorded
        for repeat in range(args.repeats):
            for variant in VARIANTS if repeat % 2 == 0 else VARIANTS[::-1]:
                seconds = measure(variant, *programs)
                samples[variant, num_seeds].append(seconds)
                print(repeat, variant, num_seeds, round(seconds, 3), flush=True)

    machine = bench_io.machine()
    command = (
        f"python benchmarks/chunks.py --algo {args.algo} --repeats {args.repeats} --seeds "
        f"{' '.join(map(str, args.seeds))} --out {args.out}"
    )
    lines = [
        f"{args.algo.upper()}, {config.env}, {config.total_timesteps:,} env steps per seed, chunks of "
        f"{schedule.chunk_rows} rows ({schedule.chunk_rows * config.log_interval} updates), medians of "
        f"{args.repeats} interleaved repeats. {bench_io.machine_line(machine)}",
        f"Command: `{command}`",
        "",
        "| seeds | one call, train s | chunked, train s | chunked / one call (min-max) |",
        "|---|---|---|---|",
    ]
    rows = []
    for n in args.seeds:
        single, chunked = samples["single", n], samples["chunked", n]
        ratios = [c / s for c, s in zip(chunked, single, strict=True)]
        row = {
            "num_seeds": n,
            "single_s": statistics.median(single),
            "chunked_s": statistics.median(chunked),
            "ratio_median": statistics.median(ratios),
            "ratio_min_max": [min(ratios), max(ratios)],
        }
        rows.append(row)
        lines.append(
            f"| {n} | {row['single_s']:.2f} | {row['chunked_s']:.2f} | **{row['ratio_median']:.3f}** "
            f"({min(ratios):.3f}-{max(ratios):.3f}) |"
        )
    data = {
        "command": command,
        "machine": machine,
        "rows": rows,
        "samples": {f"{v}/{n}": s for (v, n), s in samples.items()},
    }
    bench_io.write_results(args.out, data, lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
