"""The engine: what runs an algorithm's `pureeqxrl.loop.Learner` for a long time and many runs.

- `chunks`: the run as compiled chunks of updates over vmapped seeds, laid out on devices, and the
  memory it needs;
- `run`: a long run on the host: checkpoints, Ctrl-C and SIGTERM, divergence stops, live loggers,
  and the run folder's results;
- `sweep`: hyperparameter batches in one program, and a sweep folder's ranked results;
- `loggers`: metrics.csv, TensorBoard and Weights & Biases, fed between chunks.

The algorithms never import it: it works from their `Learner` and their state's type.
"""
