"""XLA:CPU's own switches against its defaults, on whole training runs of this version: whether
a library for the matrix products (XNNPACK, oneDNN, YNNPACK), an optimisation preset, another
scheduler, another copy-insertion analysis, matrix products on one thread, or 512-bit vectors
asked of LLVM trains or compiles faster than what the command runs.

Each run is a fresh process set up as the `pureeqxrl` command sets up JAX
(`benchmarks/versions.py`'s `measure`, `--layout command`), with the variant's `XLA_FLAGS`. Each
repeat runs every variant once per algorithm, the default among them, in an order that reverses
from one repeat to the next; a row reports the median and min-max of the per-repeat
variant/default ratios of train and compile time, and whether the variant's final returns are
those of the default's run of the same key (a variant that changes them changes the float
arithmetic of training, not only its speed).

    python benchmarks/xla_flags.py --seeds 1 --repeats 2 --out benchmarks/results/xla_flags_cpu
    python benchmarks/xla_flags.py --algos dqn ppo ppo_continuous ppo_rnn pqn --seeds 8 \
        --variants "512-bit vectors" --out benchmarks/results/xla_flags_vector_width8_cpu
"""

import argparse
from pathlib import Path

from versions import ROOT, SETTINGS, measure, ratio_text, ratios  # benchmarks/versions.py

from pureeqxrl.cpu import usable_cores

import bench_io  # benchmarks/bench_io.py (a script's folder is on its path)

# Variant -> XLA_FLAGS. "default" sets none; the others are XLA:CPU flags of jaxlib 0.10.2, whose
# XLA_FLAGS has no --helpfull: `strings jaxlib/libjax_common.so | grep '^xla_cpu_'` lists them. A
# flag that a jaxlib does not know aborts the process that sets it.
VARIANTS: dict[str, str] = {
    "default": "",
    "XNNPACK dots": "--xla_cpu_experimental_xnn_fusion_type=dot",
    "XNNPACK graph fusion": "--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY",
    "YNNPACK dots": "--xla_cpu_experimental_ynn_fusion_type=dot",
    "oneDNN dots": "--xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_fusion_type=dot",
    "fast-compile preset": "--xla_cpu_opt_preset=CPU_OPT_PRESET_FAST_COMPILE",
    "fast-runtime preset": "--xla_cpu_opt_preset=CPU_OPT_PRESET_FAST_RUNTIME",
    "concurrency-optimised scheduler": "--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_CONCURRENCY_OPTIMIZED",
    "region-based copy insertion": "--xla_cpu_copy_insertion_use_region_analysis=true",
    "single-threaded Eigen": "--xla_cpu_multi_thread_eigen=false",
    "512-bit vectors": "--xla_cpu_prefer_vector_width=512",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--algos", nargs="+", choices=sorted(SETTINGS), default=["dqn", "ppo", "ppo_continuous"]
    )
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--total-timesteps", type=int, default=None, help="every algorithm's budget (a quick check)"
    )
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS)[1:], default=list(VARIANTS)[1:])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    names = ["default", *args.variants]
    budget = {} if args.total_timesteps is None else {"total_timesteps": args.total_timesteps}
    samples: dict[str, list[dict]] = {}
    for repeat in range(args.repeats):
        for algo in args.algos:
            for name in names if repeat % 2 == 0 else names[::-1]:
                sample = measure(
                    ROOT,
                    algo,
                    args.seeds,
                    repeat,
                    SETTINGS[algo] | budget,
                    "command",
                    xla_flags=VARIANTS[name],
                )
                samples.setdefault(f"{algo}/{name}", []).append(sample)
                shown = {k: round(v, 2) for k, v in sample.items() if k != "returns"}
                print(repeat, algo, name, shown, flush=True)

    rows = []
    for algo in args.algos:
        default = samples[f"{algo}/default"]
        for name in args.variants:
            runs = samples[f"{algo}/{name}"]
            row = {"algo": algo, "variant": name, "xla_flags": VARIANTS[name]}
            for quantity in ("train_s", "compile_s"):
                row |= ratios(quantity, runs, default)
            row["same_returns"] = all(
                v["returns"] == d["returns"] for v, d in zip(runs, default, strict=True)
            )
            rows.append(row)

    machine = bench_io.machine()
    command = (
        f"python benchmarks/xla_flags.py --algos {' '.join(args.algos)} --seeds {args.seeds} "
        f"--repeats {args.repeats} --out {args.out}"
        + (f" --total-timesteps {args.total_timesteps}" if args.total_timesteps else "")
        + (
            f" --variants {' '.join(repr(v) for v in args.variants)}"
            if args.variants != list(VARIANTS)[1:]
            else ""
        )
    )
    lines = [
        f"# XLA:CPU's switches against its defaults: {args.seeds} seed(s), medians of {args.repeats} repeats",
        "",
        f"`{command}`",
        "",
        f"{bench_io.machine_line(machine)} Each run set up as the `pureeqxrl` command sets up JAX "
        f"({usable_cores()} CPU devices, threefry as the algorithm's registry entry says); settings per "
        "algorithm: `SETTINGS` in `benchmarks/versions.py`; evaluation off. Ratios are variant/default "
        "(below 1.00: faster), min-max over the repeats. Same returns: the variant's final returns are "
        "the default's, bit for bit, in every repeat.",
        "",
        "| variant | XLA_FLAGS | algorithm | train variant/default (min-max) "
        "| compile variant/default (min-max) | same returns |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['variant']} | `{row['xla_flags']}` | {row['algo']} | {ratio_text(row, 'train_s')} | "
            f"{ratio_text(row, 'compile_s')} | {'yes' if row['same_returns'] else 'no'} |"
        )
    data = {"command": command, "machine": machine, "rows": rows, "samples": samples}
    bench_io.write_results(args.out, data, lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
