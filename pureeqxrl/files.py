"""Files, the bottom floor that anything may use: every file written whole or not at all (a
temporary file in the same folder, then an atomic rename), JSON that every parser reads, the
long-format CSV of metrics rows, and figures of curves over environment steps."""

import contextlib
import csv
import io
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np


@contextlib.contextmanager
def atomic_writer(path: Path) -> Iterator[BinaryIO]:
    """A binary file that becomes `path` when the block ends (a temporary file in the same folder,
    then an atomic rename), and is removed if the block raises: a large file (a checkpoint with its
    replay buffer) is streamed to disk, never held whole in memory."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would hide results from other users
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` via a temporary file in the same folder and an atomic rename."""
    with atomic_writer(path) as f:
        f.write(data)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def strict_json(value: Any) -> str:
    """JSON that every parser reads: NaN and infinities (a seed that finished no episode) as null."""

    def clean(item):
        if isinstance(item, float) and not np.isfinite(item):
            return None
        if isinstance(item, dict):
            return {key: clean(v) for key, v in item.items()}
        if isinstance(item, list | tuple):
            return [clean(v) for v in item]
        return item

    return json.dumps(clean(value), indent=2, allow_nan=False)


def metrics_table(
    metrics: dict[str, np.ndarray], updates: np.ndarray, steps_per_update: int, first_row: int = 0
) -> tuple[list[str], list[list]]:
    """Long-format rows (seed, row, update, env_steps, metric...) from `(num_seeds, num_rows)` arrays
    of the run's rows from `first_row` on.

    `updates[row]` is the number of updates done at the end of each row (`rows_update_counts`).
    """
    names = sorted(metrics)
    header = ["seed", "row", "update", "env_steps", *names]
    num_seeds = next(iter(metrics.values())).shape[0]
    rows = [
        [
            seed,
            first_row + row,
            int(updates[row]),
            int(updates[row]) * steps_per_update,
            *(float(metrics[name][seed, row]) for name in names),
        ]
        for seed in range(num_seeds)
        for row in range(len(updates))
    ]
    return header, rows


def write_metrics_csv(path: Path, header: list[str], rows: list[list]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def read_metrics_csv(path: Path) -> dict[str, np.ndarray]:
    """`metrics.csv` back as `name -> (num_seeds, num_rows)` arrays (plus `env_steps`), whatever
    the order of its lines (seed by seed when a run ends, chunk by chunk while it trains)."""
    with open(path) as f:
        records = list(csv.DictReader(f))
    seeds = np.array([int(r["seed"]) for r in records])
    rows = np.array([int(r["row"]) for r in records])
    columns = {}
    for name in records[0]:
        if name in ("seed", "row"):
            continue
        columns[name] = np.full((seeds.max() + 1, rows.max() + 1), np.nan)
        columns[name][seeds, rows] = [float(r[name]) for r in records]
    return columns


def curves_figure(size: tuple[float, float]):
    """A new matplotlib figure and axes (the Agg backend: no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=size, dpi=120)


def save_curves_figure(fig, ax, path: Path, title: str, ylabel: str, best_last: bool = False) -> None:
    """Label a figure of curves over environment steps, and write it as a PNG atomically.
    `best_last`: the legend lists the lines in the reverse of their drawing order."""
    import matplotlib.pyplot as plt

    ax.set_xlabel("environment steps")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if best_last:
        handles, labels = handles[::-1], labels[::-1]
    ax.legend(handles, labels, loc="best", fontsize="small" if len(labels) < 5 else "x-small")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
