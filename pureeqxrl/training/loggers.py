"""Live loggers: the metrics rows of a run as each compiled chunk hands them back, per seed and as
the mean over seeds, at their environment step.

- `csv` (always on): `metrics.csv` in the run folder grows chunk by chunk (`pureeqxrl.runs`
  rewrites it whole, seed by seed, when the run stops);
- `tensorboard`: event files in `RUN_DIR/tensorboard/{seed0,seed1,...,mean}` (tensorboardX, the
  writer without TensorFlow or PyTorch; extra `pureeqxrl[tensorboard]`), the config as text;
- `wandb`: one Weights & Biases run named after the run folder, keys `seed{i}/NAME` and
  `mean/NAME`, the config attached (extra `pureeqxrl[wandb]`). `--wandb-mode offline` writes it to
  `RUN_DIR/wandb` with no network (`wandb sync` uploads it later); a resumed run continues the same
  W&B run.

A NaN (no episode finished in a row, no evaluation at a row) is left out, never logged as a value.
"""

import csv
import io
import json
import uuid
import warnings
from pathlib import Path
from typing import Any, Literal

import numpy as np

from pureeqxrl.files import atomic_write_text, metrics_table

LoggerName = Literal["csv", "tensorboard", "wandb"]
EXTRAS = {"tensorboard": ("tensorboardX", "tensorboard"), "wandb": ("wandb", "wandb")}
"""Logger -> (the module it needs, the pureeqxrl extra that installs it)."""
SKIPPED = ("nonfinite_stats",)


def check_available(names: tuple[str, ...]) -> None:
    """A `ValueError` saying how to install a logger's package, if it is missing."""
    for name in names:
        if name in EXTRAS:
            module, extra = EXTRAS[name]
            try:
                __import__(module)
            except ImportError as error:
                raise ValueError(
                    f"--logger {name} needs {module} ({error}): pip install 'pureeqxrl[{extra}]'"
                ) from error


class Loggers:
    """The loggers of one run. `log(rows, first_row)` takes a chunk's rows (`name -> (num_seeds,
    rows)`, starting at metrics row `first_row`); `close()` flushes them."""

    def __init__(
        self,
        names: tuple[str, ...],
        run_dir: Path,
        saved_config: dict[str, Any],
        row_updates: np.ndarray,
        steps_per_update: int,
        history: dict[str, np.ndarray] | None = None,
        wandb_mode: str | None = None,
        wandb_project: str = "pureeqxrl",
    ):
        """`row_updates[i]`: updates done at the end of row i of the run; `history`: the rows a
        resumed run starts with (from its checkpoint)."""
        self.row_updates, self.steps_per_update = row_updates, steps_per_update
        self.csv = _CSV(run_dir / "metrics.csv", history, steps_per_update, row_updates)
        self.others: list[Any] = []
        config_text = json.dumps(saved_config, indent=2)
        num_seeds = int(saved_config["num_seeds"])
        if "tensorboard" in names:
            rows_kept = next(iter(history.values())).shape[1] if history else 0
            # A resumed run logs again the rows after its checkpoint that a killed run had logged:
            # TensorBoard drops what the folder holds from the first of those steps on.
            purge = int(row_updates[rows_kept - 1] * steps_per_update) + 1 if rows_kept else 0
            folder = run_dir / "tensorboard"
            self.others.append(
                _TensorBoard(folder, num_seeds, config_text, purge if folder.exists() else None)
            )
        if "wandb" in names:
            self.others.append(_WandB(run_dir, saved_config, wandb_mode, wandb_project))

    def log(self, rows: dict[str, np.ndarray], first_row: int) -> None:
        self.csv.log(rows, first_row)
        if not self.others:
            return
        num_rows = next(iter(rows.values())).shape[1]
        env_steps = self.row_updates[first_row : first_row + num_rows] * self.steps_per_update
        names = [name for name in sorted(rows) if name not in SKIPPED]
        for i, step in enumerate(env_steps):
            per_seed = {name: rows[name][:, i].astype(float) for name in names}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # a column with no finite seed: left out
                mean = {name: float(np.nanmean(values)) for name, values in per_seed.items()}
            for logger in self.others:
                logger.log(int(step), per_seed, {k: v for k, v in mean.items() if np.isfinite(v)})

    def finish(self, metrics: dict[str, np.ndarray]) -> None:
        """The run's rows are `metrics` (all of them, from row 0): `metrics.csv` is made to hold
        exactly those (see `_CSV.finish`)."""
        self.csv.finish(metrics)

    def close(self) -> None:
        for logger in self.others:
            logger.close()


class _CSV:
    """Appends each chunk's rows to `metrics.csv`; the first write also holds the header and the
    rows a resumed run starts with (replacing what a killed run may have appended after them)."""

    def __init__(self, path: Path, history, steps_per_update: int, row_updates: np.ndarray):
        self.path, self.history, self.started = path, history or {}, False
        self.steps_per_update, self.row_updates = steps_per_update, row_updates
        self.rows_written, self.appended = 0, False

    def _table(self, rows: dict[str, np.ndarray], first_row: int) -> tuple[list[str], list[list]]:
        num_rows = next(iter(rows.values())).shape[1]
        updates = self.row_updates[first_row : first_row + num_rows]
        return metrics_table(rows, updates, self.steps_per_update, first_row)

    def log(self, rows: dict[str, np.ndarray], first_row: int) -> None:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        num_rows = next(iter(rows.values())).shape[1]
        if self.started:
            writer.writerows(self._table(rows, first_row)[1])
            with open(self.path, "a", newline="") as f:
                f.write(buffer.getvalue())
            self.rows_written, self.appended = first_row + num_rows, True
            return
        if self.history:  # rows 0 to first_row - 1, from the checkpoint
            rows = {name: np.concatenate([self.history[name], rows[name]], axis=1) for name in rows}
            first_row = 0
        header, table = self._table(rows, first_row)
        writer.writerow(header)
        writer.writerows(table)
        atomic_write_text(self.path, buffer.getvalue())
        self.started, self.appended = True, False
        self.rows_written = first_row + next(iter(rows.values())).shape[1]

    def finish(self, metrics: dict[str, np.ndarray]) -> None:
        """Make the file hold exactly the rows of `metrics` (the run's, from row 0) in the order
        of a file written at once (seed by seed), rewriting it unless it was written at once with
        all of them: appended chunks interleave the seeds, a diverged chunk's rows are not logged
        live, and a resumed run stopped before its first chunk keeps its checkpoint's rows."""
        num_rows = next(iter(metrics.values())).shape[1]
        if self.started and not self.appended and self.rows_written == num_rows:
            return
        self.started, self.history = False, {}
        self.log(metrics, 0)


class _TensorBoard:
    def __init__(self, folder: Path, num_seeds: int, config_text: str, purge_step: int | None = None):
        from tensorboardX import SummaryWriter

        self.writers = {
            name: SummaryWriter(str(folder / name), purge_step=purge_step)
            for name in [*(f"seed{i}" for i in range(num_seeds)), "mean"]
        }
        if not purge_step:  # a resumed run's writers find the config there already (step 0)
            for writer in self.writers.values():
                writer.add_text("config", f"```\n{config_text}\n```")

    def log(self, step: int, per_seed: dict[str, np.ndarray], mean: dict[str, float]) -> None:
        for name, values in per_seed.items():
            for seed, value in enumerate(values):
                if np.isfinite(value):
                    self.writers[f"seed{seed}"].add_scalar(name, value, step)
        for name, value in mean.items():
            self.writers["mean"].add_scalar(name, value, step)

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()


class _WandB:
    def __init__(self, run_dir: Path, saved_config: dict[str, Any], mode: str | None, project: str):
        import wandb

        id_file = run_dir / "wandb_run_id"  # a resumed run continues the W&B run it started
        run_id = id_file.read_text().strip() if id_file.is_file() else uuid.uuid4().hex[:12]
        atomic_write_text(id_file, run_id)
        try:
            self.run = wandb.init(
                project=project,
                name=run_dir.name,
                id=run_id,
                resume="allow",
                dir=str(run_dir),
                config=saved_config,
                mode=mode,
            )
        except Exception as error:  # no network, not logged in, ...: W&B's own message, on one line
            raise ValueError(
                f"wandb could not start ({type(error).__name__}: {error}); --wandb-mode offline needs "
                f"no network. Resume with: pureeqxrl train --resume {run_dir}"
            ) from error

    def log(self, step: int, per_seed: dict[str, np.ndarray], mean: dict[str, float]) -> None:
        values = {
            f"seed{seed}/{name}": float(value)
            for name, seed_values in per_seed.items()
            for seed, value in enumerate(seed_values)
            if np.isfinite(value)
        }
        values.update({f"mean/{name}": value for name, value in mean.items()})
        self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish()
