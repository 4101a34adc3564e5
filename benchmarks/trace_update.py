"""A profiler trace of training updates, summed up per operation (issue 18, on a GPU).

This script says where an update's time goes on the device that runs it (docs/speed.md has what it
found for PPO on an H100): it takes a `jax.profiler` trace of `--updates` updates of the chunk
program `pureeqxrl train` runs (compiled and timed untraced before the trace starts), then reads
the trace's events back and writes, per update:

- the wall time, traced and untraced (tracing costs time of its own), and how much of it the
  device was busy (the union of its operations' intervals): a device that is idle most of the
  time is waiting for launches, host copies or the host;
- the operations (kernels on a GPU, XLA's thunks on a CPU), grouped by name: calls and time per
  update, the largest first; copies between host and device count as operations too;
- the same operations grouped by how often each runs per update, which tells the loops apart: in
  PPO, an operation of the rollout's step runs `num_steps` (128) times per update, one of a
  gradient step `update_epochs * num_minibatches` (16) times;
- on a GPU, grouped by the XLA operation that launched them (the trace's `hlo_op`): a loop's body
  runs as one command buffer (a CUDA graph), so this gives each loop's kernels and copies together.

On a GPU each operation counts its whole duration (the kernels of a CUDA graph can overlap); on a
CPU a loop's event counts its own time, less that of the body's events it holds.

    python benchmarks/trace_update.py --algo ppo --seeds 8 --updates 50 --out benchmarks/results/trace_ppo_gpu

The raw trace (`perfetto_trace.json.gz`, for https://ui.perfetto.dev) is kept next to the tables;
`--trace RAW` summarizes a kept one again (its wall times read from the JSON beside it) instead of
taking a new one.
"""

import argparse
import gzip
import json
import shutil
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import jax

from pureeqxrl import registry
from pureeqxrl.loop import make_chunk_runner

import bench_io  # benchmarks/bench_io.py (a script's folder is on its path)


def thread_names(trace: dict) -> dict[tuple, tuple[str, str]]:
    """`(pid, tid) -> (process name, thread name)` for every named thread of the trace."""
    metadata = [e for e in trace["traceEvents"] if e.get("ph") == "M"]
    processes = {e["pid"]: e["args"]["name"] for e in metadata if e.get("name") == "process_name"}
    return {
        (e["pid"], e["tid"]): (str(processes.get(e["pid"], e["pid"])), e["args"]["name"])
        for e in metadata
        if e.get("name") == "thread_name"
    }


def operation_events(trace: dict) -> tuple[list[dict], list[str]]:
    """The trace's complete events that are the program's operations, and the threads they lie on.

    On a GPU these are the kernels and copies on the device processes' streams (`/device:GPU:0`,
    threads `Stream #...`; the summary lines beside them, such as `XLA Modules` or `XLA Ops`, would
    count the same time twice). On a CPU, XLA's operations run on its Eigen threads (`tf_XLAEigen`)
    of the `/host:CPU` process, where a loop's event holds its body's events.
    """
    threads = thread_names(trace)
    on_device = {
        place: thread for place, (process, thread) in threads.items() if process.startswith("/device:")
    }
    chosen = {place for place, name in on_device.items() if name.startswith("Stream")} or {
        place for place, name in on_device.items() if not any(word in name for word in ("XLA", "Steps"))
    }
    if not on_device:
        chosen = {place for place, (_, thread) in threads.items() if thread.startswith("tf_XLAEigen")}
    events = [
        e for e in trace["traceEvents"] if e.get("ph") == "X" and (e.get("pid"), e.get("tid")) in chosen
    ]
    return events, sorted(" ".join(threads[place]) for place in chosen)


def self_times(events: list[dict]) -> list[float]:
    """Each event's duration less that of the events it holds on its own thread (a loop's body),
    in microseconds, in the order of `events`."""
    starts = [float(e["ts"]) for e in events]
    ends = [start + float(e.get("dur", 0.0)) for start, e in zip(starts, events, strict=True)]
    own = [end - start for start, end in zip(starts, ends, strict=True)]
    by_thread: dict[tuple, list[int]] = defaultdict(list)
    for index, event in enumerate(events):
        by_thread[event["pid"], event["tid"]].append(index)
    for indices in by_thread.values():
        stack: list[int] = []  # the events that hold the current one, innermost last
        for index in sorted(indices, key=lambda i: (starts[i], -ends[i])):  # holders before their body
            while stack and ends[stack[-1]] <= starts[index]:
                stack.pop()
            if stack:
                own[stack[-1]] -= ends[index] - starts[index]
            stack.append(index)
    return own


def busy_seconds(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of `(start, end)` intervals (microseconds in, seconds out)."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total * 1e-6


def summarize(trace: dict, num_updates: int, wall_s: float, top: int) -> dict:
    """Per update: the wall time, the time some operation was running, and the operations by
    their own time (on a CPU less the operations they hold), the largest first."""
    events, places = operation_events(trace)
    own_us: dict[str, float] = defaultdict(float)
    calls: dict[str, int] = defaultdict(int)
    # A device's kernels hold no others (those of a CUDA graph can overlap, on the same stream),
    # where a CPU loop's event holds its body's.
    on_device = all(place.startswith("/device:") for place in places)
    durations = [float(e.get("dur", 0.0)) for e in events] if on_device else self_times(events)
    for event, own in zip(events, durations, strict=True):
        own_us[event["name"]] += own
        calls[event["name"]] += 1
    operations = sorted(
        (
            {
                "name": name,
                "calls_per_update": calls[name] / num_updates,
                "us_per_update": own_us[name] / num_updates,
            }
            for name in own_us
        ),
        key=lambda row: -row["us_per_update"],
    )
    by_launcher: dict[str, dict] = {}
    for event, duration in zip(events, durations, strict=True):
        launcher = event.get("args", {}).get("hlo_op")
        if launcher is not None:
            group = by_launcher.setdefault(launcher, {"calls": 0.0, "us": 0.0})
            group["calls"] += 1 / num_updates
            group["us"] += duration / num_updates
    by_calls: dict[float, dict] = {}
    for row in operations:  # operations run the same number of times per update: one loop's
        group = by_calls.setdefault(
            round(row["calls_per_update"], 1), {"operations": 0, "calls": 0.0, "us": 0.0}
        )
        group["operations"] += 1
        group["calls"] += row["calls_per_update"]
        group["us"] += row["us_per_update"]
    intervals = [(float(e["ts"]), float(e["ts"]) + float(e.get("dur", 0.0))) for e in events]
    return {
        "threads": places,
        "all_threads": sorted(" ".join(names) for names in thread_names(trace).values()),
        "wall_ms_per_update": 1e3 * wall_s / num_updates,
        "busy_ms_per_update": 1e3 * busy_seconds(intervals) / num_updates,
        "operations_per_update": len(events) / num_updates,
        "distinct_operations": len(operations),
        "operations": operations[:top],
        "by_launcher": [
            {"launcher": name, **group}
            for name, group in sorted(by_launcher.items(), key=lambda kv: -kv[1]["us"])
        ],
        "by_calls_per_update": [
            {"calls_per_update": calls, **group}
            for calls, group in sorted(by_calls.items(), key=lambda kv: -kv[1]["us"])
        ],
    }


def trace_updates(algo: str, num_seeds: int, num_updates: int, trace_dir: Path) -> tuple[dict, float, float]:
    """Trace `num_updates` updates of `algo`'s chunk program (default settings, vmapped seeds):
    the trace's events, the traced run's wall time, and the median of 3 untraced runs' (the
    tracing's own cost is their difference)."""
    algorithm = registry.get(algo)
    config = algorithm.config_cls(eval_interval=0)
    steps = algorithm.make_update_steps(config)
    runner = make_chunk_runner(steps, config.num_updates, config.log_interval)
    state = runner.init(jax.random.split(jax.random.key(0), num_seeds))
    if algo == "dqn":  # past learning_starts, so that every update learns
        warmup = -(-config.learning_starts // config.num_envs) + 1
        state, _ = runner.run(state, warmup, 0)
    untraced_s = bench_io.median_seconds(lambda: runner.run(state, num_updates, 0), 3)  # compiled first
    with jax.profiler.trace(str(trace_dir), create_perfetto_trace=True):
        start = time.perf_counter()
        jax.block_until_ready(runner.run(state, num_updates, 0))
        wall_s = time.perf_counter() - start
    (path,) = trace_dir.rglob("perfetto_trace.json.gz")
    with gzip.open(path, "rt") as file:
        return json.load(file), wall_s, untraced_s


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--algo", default="ppo", choices=sorted(registry.ALGORITHMS))
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--updates", type=int, default=50)
    parser.add_argument("--top", type=int, default=25, help="operations listed, the largest first")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/trace_ppo"))
    parser.add_argument(
        "--trace", type=Path, help="a kept RAW.perfetto_trace.json.gz to summarize again, beside its RAW.json"
    )
    args = parser.parse_args()

    if args.trace is not None:  # the machine, the settings and the wall times of the run that took it
        taken = json.loads(
            args.trace.with_name(args.trace.name.replace(".perfetto_trace.json.gz", ".json")).read_text()
        )
        with gzip.open(args.trace, "rt") as file:
            summary = summarize(
                json.load(file),
                taken["updates"],
                taken["wall_ms_per_update"] * taken["updates"] / 1e3,
                args.top,
            )
        summary["untraced_ms_per_update"] = taken["untraced_ms_per_update"]
        info, command, args.seeds, args.updates = (
            taken["machine"],
            taken["command"],
            taken["seeds"],
            taken["updates"],
        )
        args.algo = command.split("--algo ")[1].split()[0]
        again = f"python benchmarks/trace_update.py --trace {args.trace} --out {args.out}"
        command += f"`, summarized again here by `{again}"
    else:
        with tempfile.TemporaryDirectory() as folder:
            trace, wall_s, untraced_s = trace_updates(args.algo, args.seeds, args.updates, Path(folder))
            summary = summarize(trace, args.updates, wall_s, args.top)
            summary["untraced_ms_per_update"] = 1e3 * untraced_s / args.updates
            args.out.parent.mkdir(parents=True, exist_ok=True)
            (raw,) = Path(folder).rglob("perfetto_trace.json.gz")
            shutil.copyfile(raw, args.out.with_suffix(".perfetto_trace.json.gz"))
        info = bench_io.machine()
        command = (
            f"python benchmarks/trace_update.py --algo {args.algo} --seeds {args.seeds} --updates {args.updates} "
            f"--top {args.top} --out {args.out}"
        )
    lines = [
        f"# A profiler trace of {args.algo}'s updates, per operation",
        "",
        f"`{command}`",
        "",
        f"{bench_io.machine_line(info)} {args.updates} updates of {args.seeds} vmapped seeds in the training "
        "program (default settings), traced after 4 untraced runs (the first compiles).",
        "",
        f"- wall time per update: {summary['wall_ms_per_update']:.3f} ms traced, "
        f"{summary['untraced_ms_per_update']:.3f} ms untraced (median of 3 runs)",
        f"- device busy per update: {summary['busy_ms_per_update']:.3f} ms "
        f"({summary['busy_ms_per_update'] / summary['wall_ms_per_update']:.0%} of the traced wall time, "
        f"{summary['busy_ms_per_update'] / summary['untraced_ms_per_update']:.0%} of the untraced), on "
        f"{len(summary['threads'])} threads of operations ({'; '.join(summary['threads']) or 'none found'})",
        f"- operations per update: {summary['operations_per_update']:.1f} "
        f"({summary['distinct_operations']} distinct); times are each operation's whole duration on a GPU "
        "(a CUDA graph's kernels can overlap), a loop's own time less its body's on a CPU",
        "",
        "| operation | calls per update | us per update | share of busy time |",
        "|---|---|---|---|",
    ]
    busy_us = 1e3 * summary["busy_ms_per_update"]
    for row in summary["operations"]:
        lines.append(
            f"| `{row['name'][:80]}` | {row['calls_per_update']:.1f} | {row['us_per_update']:.1f} "
            f"| {row['us_per_update'] / busy_us if busy_us else float('nan'):.1%} |"
        )
    lines += [
        "",
        "By how often an operation runs per update (the loops: in PPO, 128 calls are the rollout's steps, "
        "16 its gradient steps):",
        "",
        "| calls per update | operations | calls | us per update | share of busy time |",
        "|---|---|---|---|---|",
    ]
    for group in summary["by_calls_per_update"]:
        if group["us"] >= 0.005 * busy_us:
            lines.append(
                f"| {group['calls_per_update']:g} | {group['operations']} | {group['calls']:.0f} | {group['us']:.1f} "
                f"| {group['us'] / busy_us if busy_us else float('nan'):.1%} |"
            )
    lines.append(
        "\nGroups under 0.5% of the busy time left out (all in the JSON). Shares can add up to more than "
        "100%: the kernels of a CUDA graph can overlap."
    )
    if summary["by_launcher"]:
        lines += [
            "",
            "By the XLA operation that launched them (a command buffer is a CUDA graph: one loop body's "
            "kernels and copies), the 5 largest:",
            "",
            "| launched by | kernels and copies per update | us per update | share of busy time |",
            "|---|---|---|---|",
        ]
        for group in summary["by_launcher"][:5]:
            lines.append(
                f"| `{group['launcher']}` | {group['calls']:.1f} | {group['us']:.1f} "
                f"| {group['us'] / busy_us if busy_us else float('nan'):.1%} |"
            )
    data = {"machine": info, "command": command, "seeds": args.seeds, "updates": args.updates, **summary}
    bench_io.write_results(args.out, data, lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
