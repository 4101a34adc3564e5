"""The gradient of a bare 128-step GRU sequence (width 128, one environment): four ways to write it.

Isolates why the Linen twin's gradient steps are slower (see `rnn_phases.py`): Flax's `nn.GRUCell`
(six Dense layers per step) against `pureeqxrl.recurrent.GRU` (gate kernels side by side), each
with its inputs projected inside or before the time loop, and Flax's cell under `nn.scan` or under a
plain `jax.lax.scan`. All four hold the same numbers. Microseconds per jitted call, medians.

    python benchmarks/gru_cell.py --out benchmarks/results/gru_cell_cpu
"""

import argparse
import statistics
import time
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp

from pureeqxrl.linen.ppo_rnn import params_from_equinox_gru
from pureeqxrl.recurrent import GRU

import bench_io  # benchmarks/bench_io.py (a script's folder is on its path)

WIDTH, TIME = 128, 128


class ScannedCell(nn.Module):
    @nn.compact
    def __call__(self, hidden, xs):
        scan = nn.scan(
            lambda cell, h, x: cell(h, x), variable_broadcast="params", split_rngs={"params": False}
        )
        return scan(nn.GRUCell(WIDTH, name="cell"), hidden, xs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    gru = GRU(WIDTH, WIDTH, key=jax.random.key(0))
    xs = jax.random.normal(jax.random.key(1), (TIME, 1, WIDTH))
    h0 = jnp.zeros((1, WIDTH))
    no_reset = jnp.zeros((TIME, 1), bool)
    cell_params = {"params": params_from_equinox_gru(gru)}
    scanned_params = {"params": {"cell": params_from_equinox_gru(gru)}}

    def ours_projected_before_loop(gru):
        return jax.vmap(gru, in_axes=(0, 1, 1))(h0, xs, no_reset)[1].sum()

    def ours_projected_in_loop(gru):
        step = jax.vmap(lambda h, x: gru.step(h, x, jnp.array(False))[0])
        return jax.lax.scan(lambda h, x: (step(h, x),) * 2, h0, xs)[1].sum()

    def flax_cell_lax_scan(params):
        cell = nn.GRUCell(WIDTH)
        return jax.lax.scan(lambda h, x: cell.apply(params, h, x), h0, xs)[1].sum()

    def flax_cell_nn_scan(params):
        return ScannedCell().apply(params, h0, xs)[1].sum()

    variants = {
        "pureeqxrl GRU, inputs projected before the loop": (ours_projected_before_loop, gru),
        "pureeqxrl GRU, inputs projected in the loop": (ours_projected_in_loop, gru),
        "flax nn.GRUCell under jax.lax.scan": (flax_cell_lax_scan, cell_params),
        "flax nn.GRUCell under nn.scan": (flax_cell_nn_scan, scanned_params),
    }
    compiled = {name: (jax.jit(jax.grad(fn)), params) for name, (fn, params) in variants.items()}
    samples = {name: [] for name in variants}
    for _ in range(args.repeats):  # interleaved
        for name, (grad, params) in compiled.items():
            jax.block_until_ready(grad(params))
            start = time.perf_counter()
            for _ in range(50):
                out = grad(params)
            jax.block_until_ready(out)
            samples[name].append((time.perf_counter() - start) / 50 * 1e6)
    medians = {name: statistics.median(s) for name, s in samples.items()}

    machine = bench_io.machine()
    command = f"python benchmarks/gru_cell.py --repeats {args.repeats} --out {args.out}"
    data = {"command": command, "machine": machine, "medians_us": medians, "samples_us": samples}
    lines = [
        f"Gradient of a {TIME}-step GRU sequence, width {WIDTH}, one environment; microseconds per jitted "
        f"call, medians of {args.repeats} interleaved repeats of 50 calls. {bench_io.machine_line(machine)}",
        f"Command: `{command}`",
        "",
        "| GRU | gradient us |",
        "|---|---|",
        *(f"| {name} | {m:,.0f} |" for name, m in medians.items()),
    ]
    bench_io.write_results(args.out, data, lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
