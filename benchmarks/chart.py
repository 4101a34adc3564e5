"""One PNG of every Equinox/Linen ratio the benchmarks measured, with their min-max bands.

Reads the JSON files `per_op.py`, `end_to_end.py` and `dispatch.py` wrote into `--results` and draws
two panels: per operation (called from Python, inside one jitted scan) and end to end (compile and
train time, 1 and N vmapped seeds). A bar below the dashed line at 1.0 means Equinox took less time.

    python benchmarks/chart.py --results benchmarks/results --suffix cpu
"""

import argparse
import io
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from pureeqxrl.runs import atomic_write_bytes  # noqa: E402

ALGOS = ("dqn", "ppo", "ppo_continuous", "ppo_rnn")


def bars(ax, groups: list[tuple[str, list[tuple[str, float, float, float]]]], title: str) -> None:
    """`groups`: `(group label, [(series label, median, low, high), ...])`; one colour per series."""
    series = list(dict.fromkeys(name for _, items in groups for name, *_ in items))
    if not series:
        ax.set_title(f"{title}: no results", fontsize=10)
        ax.set_axis_off()
        return
    width = 0.8 / len(series)
    colours = plt.get_cmap("tab10")
    for s, name in enumerate(series):
        xs, medians, errors = [], [], [[], []]
        for g, (_, items) in enumerate(groups):
            for item_name, median, low, high in items:
                if item_name == name:
                    xs.append(g + (s - (len(series) - 1) / 2) * width)
                    medians.append(median)
                    errors[0].append(median - low)
                    errors[1].append(high - median)
        ax.bar(xs, medians, width, yerr=errors, capsize=2, label=name, color=colours(s))
    ax.axhline(1.0, color="black", linestyle="--", linewidth=1)
    ax.set_xticks(range(len(groups)), [label for label, _ in groups], fontsize=8, rotation=30, ha="right")
    ax.set_ylabel("time Equinox / Linen (median, min-max)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--suffix", default="cpu")
    args = parser.parse_args()

    per_op, end_to_end, machine = [], [], None
    for algo in ALGOS:
        path = args.results / f"per_op_{algo}_{args.suffix}.json"
        if path.exists():
            data = json.loads(path.read_text())
            machine = machine or data["machine"]
            for row in data["rows"]:
                per_op.append(
                    (
                        f"{algo}: {row['operation']}",
                        [
                            (label, row[how]["ratio_median"], *row[how]["ratio_min_max"])
                            for how, label in (
                                ("loop", "called from Python"),
                                ("scan", "inside one jitted scan"),
                            )
                        ],
                    )
                )
        path = args.results / f"{algo}_{args.suffix}.json"
        if path.exists():
            data = json.loads(path.read_text())
            machine = machine or data["machine"]
            items = []
            for row in data["rows"]:
                seeds = f"{row['num_seeds']} seed" + ("s" if row["num_seeds"] > 1 else "")
                for quantity in ("compile", "train"):
                    if f"{quantity}_time_ratio_median" in row:
                        items.append(
                            (
                                f"{quantity}, {seeds}",
                                row[f"{quantity}_time_ratio_median"],
                                *row[f"{quantity}_time_ratio_min_max"],
                            )
                        )
            end_to_end.append((algo, items))
    if not per_op and not end_to_end:
        raise SystemExit(f"no benchmark JSON with suffix {args.suffix!r} in {args.results}")

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(16, 10), gridspec_kw={"height_ratios": [1, 1]})
    bars(top, per_op, "Per operation (benchmarks/per_op.py)")
    bars(bottom, end_to_end, "End to end (benchmarks/end_to_end.py)")
    versions = ", ".join(f"{k} {machine[k]}" for k in ("jax", "equinox", "flax") if k in machine)
    fig.suptitle(
        f"Equinox vs Flax Linen: {machine['cpu_count']} CPU cores, {machine['backend']} backend; "
        f"{versions}. Below 1.0: Equinox faster.",
        fontsize=11,
    )
    fig.tight_layout()
    out = args.results / f"ratios_{args.suffix}.png"
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    atomic_write_bytes(out, buffer.getvalue())  # never a half-written chart in place of the last one
    print(out)


if __name__ == "__main__":
    main()
