#!/usr/bin/env bash
# The benchmarks of one short GPU session, each step under its own time limit so that a slow step
# cannot take the others' time; results go to RESULTS (default benchmarks/results), with the
# `_gpu` suffix the scripts add, and the whole log to RESULTS/gpu_session.log.
#
#     bash benchmarks/gpu_session.sh [RESULTS]
#
# Sized for a 10-minute slot: sweep vs separate programs (PPO, DQN), then Equinox vs Linen end to
# end (PPO, DQN; 1 and 8 seeds), 2 interleaved repeats each.
set -u
RESULTS=${1:-benchmarks/results}
mkdir -p "$RESULTS"
export PYTHONUNBUFFERED=1
LOG="$RESULTS/gpu_session.log"
step() {  # step SECONDS command...
  local limit=$1
  shift
  echo "== $(date +%T) $*" | tee -a "$LOG"
  timeout "$limit" "$@" 2>&1 | tee -a "$LOG"
  echo "== exit ${PIPESTATUS[0]}" | tee -a "$LOG"
}
step 30 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
step 30 python3 -c "import jax, equinox, flax; print(jax.__version__, equinox.__version__, flax.__version__, jax.devices())"
step 130 python3 benchmarks/sweeps.py --algo ppo --repeats 2 --total-timesteps 262144 --out "$RESULTS/sweeps_ppo_gpu"
step 130 python3 benchmarks/sweeps.py --algo dqn --repeats 2 --total-timesteps 100000 --out "$RESULTS/sweeps_dqn_gpu"
step 110 python3 benchmarks/end_to_end.py --algo ppo --repeats 2 --seeds 1 8 --total-timesteps 500000 --out "$RESULTS/ppo_gpu"
step 110 python3 benchmarks/end_to_end.py --algo dqn --repeats 2 --seeds 1 8 --total-timesteps 200000 --out "$RESULTS/dqn_gpu"
# Scaling over the machine's GPUs (1 device: a table of one row per mode, still the steps/s of one GPU).
step 90 python3 benchmarks/scaling.py --algo ppo --seeds-per-device 64 --envs-per-device 256 --out "$RESULTS/scaling_ppo_gpu"
