"""What every benchmark script records and how it writes it: the machine and versions, then its
results as JSON and as a markdown table, each file written whole or not at all."""

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import equinox
import flax
import jax

from pureeqxrl.files import atomic_write_text


def machine() -> dict:
    """The machine, backend and library versions a result was measured with."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "backend": jax.default_backend(),
        "device": jax.devices()[0].device_kind,
        "jax": jax.__version__,
        "equinox": equinox.__version__,
        "flax": flax.__version__,
    }


def machine_line(info: dict) -> str:
    """`machine()` as the sentence every table's header ends with."""
    device = (
        f"{info['device']} ({info['cpu_count']} CPU cores)"
        if info.get("backend") != "cpu"
        else (f"{info['cpu_count']} CPU cores")
    )
    return f"{device}, {info['backend']}, jax {info['jax']}, equinox {info['equinox']}, flax {info['flax']}."


def median_seconds(call: Callable[[], Any], repeats: int) -> float:
    """Median wall time of `repeats` runs of `call()` (its results waited for), after one untimed
    run that pays for compiling and warming up."""
    jax.block_until_ready(call())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(call())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def write_results(out: Path, data: dict, table_lines: list[str]) -> None:
    """`out.json` (`data`) and `out.md` (the lines), each by an atomic rename, so an interrupted
    run never leaves a half-written result in place of a committed one."""
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out.with_suffix(".json"), json.dumps(data, indent=2))
    atomic_write_text(out.with_suffix(".md"), "\n".join(table_lines) + "\n")
