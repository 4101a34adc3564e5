#!/usr/bin/env bash
# Issue 18's checks for a GPU session, in order of importance, each step under a time limit that
# the session's budget caps. The session of 2026-11-27 (docs/speed.md) found PPO's rollout step at
# 38 kernels and copies, 78% of the device's time, and a fifth of the update in the per-step episode
# statistics, which now are carried per environment and summed once per rollout. So: first a trace
# of PPO's updates at this version, then this version against 97eab10 (the one before that change)
# on PPO and PQN, then PPO's ablation at this version, then this version against 717c28d with
# whatever time is left (the default budget of 540 s leaves it about 30 s).
# Results go to RESULTS; with $OUT set (the device tool), RESULTS is packed into $OUT/session.tar.gz
# after every step (RESULTS must not lie under $OUT).
#
#     bash benchmarks/gpu_session_speed.sh [RESULTS] [BUDGET_SECONDS]
#
# The device machines have no git history: make the baselines' checkouts here first and carry them
# (with the wheels), e.g. `git worktree add --detach .baseline-97eab10 97eab10` and
# `echo /.baseline-97eab10/ >> .git/info/exclude` (the same for 717c28d), then run with carry
# [".whl", ".baseline-97eab10", ".baseline-717c28d"].
set -u
RESULTS=${1:-/tmp/gpu_speed}
BUDGET=${2:-540}
START=$(date +%s)
mkdir -p "$RESULTS"
export PYTHONUNBUFFERED=1
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # the benchmarks' parents hold JAX too: no 75% grab each
LOG="$RESULTS/session.log"
source "$(dirname "$0")/gpu_steps.sh"

step 30 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
step 60 python3 -c "import jax, equinox, pureeqxrl; print(jax.__version__, equinox.__version__, jax.devices())" || exit 1
step 120 python3 benchmarks/trace_update.py --algo ppo --seeds 8 --updates 50 --out "$RESULTS/trace_ppo_gpu"
# this version against the one before the carried episode sums: PPO and PQN, 8 seeds, 131,072
# steps each (a run is then mostly its compile, about 20 s on an H100)
step 180 python3 benchmarks/versions.py --baseline 97eab10 --baseline-tree .baseline-97eab10 \
  --algos ppo pqn --seeds 8 --repeats 2 --total-timesteps 131072 --out "$RESULTS/versions_97eab10_gpu"
# what is left of PPO's loop at this version, and two candidates that a GPU bound by its kernels'
# count may reward where the CPU did not: the rollout unrolled 4 steps per loop step, and XLA's
# double-buffered loops, which unroll each loop by 2 so that the state it carries needs no device
# copies (11 per rollout step in the trace; the CPU's compilation of the step copies the
# environment's state too). jaxlib 0.10.2's XLA knows the flag; one that a jaxlib does not know
# would stop the step, so it goes last.
step 240 python3 benchmarks/ablation.py --algos ppo --seeds 8 --repeats 2 --out "$RESULTS/ablation_ppo_gpu" \
  --variants no_episode_stats bare rollout_unroll_4 xla:xla_gpu_enable_while_loop_unrolling=WHILE_LOOP_UNROLLING_DOUBLE_BUFFER
step 400 python3 benchmarks/versions.py --baseline 717c28d --baseline-tree .baseline-717c28d \
  --algos ppo dqn ppo_continuous --seeds 8 1 --repeats 2 --out "$RESULTS/versions_gpu"
echo "== done in $(($(date +%s) - START))s" | tee -a "$LOG"
pack
