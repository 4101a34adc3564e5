#!/usr/bin/env bash
# Issue 18's checks for a GPU session, in order of importance, each step under a time limit that
# the session's budget caps. The GPU profile left 3.6 of PPO's 7.9 ms per update outside its
# collection and learning: first a profiler trace of PPO's updates, summed per kernel (where the
# device's time goes, and how long it waits between kernels), then what each loop feature costs
# PPO on the GPU (the ablation), then this version against 717c28d. Results go to RESULTS; with $OUT set (the device tool), RESULTS is
# packed into $OUT/session.tar.gz after every step (RESULTS must not lie under $OUT).
#
#     bash benchmarks/gpu_session_speed.sh [RESULTS] [BUDGET_SECONDS]
#
# The device machines have no git history: make the baseline's checkout here first and carry it
# (with the wheels), e.g. `git worktree add --detach .baseline-717c28d 717c28d` and
# `echo /.baseline-717c28d/ >> .git/info/exclude`, then run with carry [".whl", ".baseline-717c28d"].
set -u
RESULTS=${1:-/tmp/gpu_speed}
BUDGET=${2:-540}
START=$(date +%s)
mkdir -p "$RESULTS"
export PYTHONUNBUFFERED=1
LOG="$RESULTS/session.log"
source "$(dirname "$0")/gpu_steps.sh"

step 30 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
step 60 python3 -c "import jax, equinox, pureeqxrl; print(jax.__version__, equinox.__version__, jax.devices())" || exit 1
step 120 python3 benchmarks/trace_update.py --algo ppo --seeds 8 --updates 50 --out "$RESULTS/trace_ppo_gpu"
# PPO's switches, and two candidates that make fewer kernels, which a GPU bound by kernel launches
# may reward where the CPU did not: actor and critic fused, and the optimizer on one flat vector
step 360 python3 benchmarks/ablation.py --algos ppo --seeds 8 --repeats 2 --out "$RESULTS/ablation_ppo_gpu" \
  --variants no_episode_stats no_diagnostics no_bootstrap_value no_reset_every_step one_log_row bare fused_actor_critic \
  flat_optimizer
step 400 python3 benchmarks/versions.py --baseline 717c28d --baseline-tree .baseline-717c28d \
  --algos dqn ppo ppo_continuous --seeds 1 8 --repeats 2 --out "$RESULTS/versions_gpu"
echo "== done in $(($(date +%s) - START))s" | tee -a "$LOG"
pack
