#!/usr/bin/env bash
# One short GPU session for PQN on MinAtar (issue 17) and the update profile (issue 18), in order
# of importance, each step under a time limit that the session's budget caps, so that a slow step
# costs only the steps after it. Results and run folders go to RESULTS; with $OUT set (the device
# tool), everything but the agents and checkpoints is packed into $OUT/session.tar.gz after every
# step (RESULTS must not lie under $OUT).
#
#     bash benchmarks/gpu_session_minatar.sh [RESULTS] [BUDGET_SECONDS]
#
# PQN_STEPS (digits; default 10000000, purejaxql's MinAtar budget) shortens the runs for a dry run
# on a CPU. A step stopped by its limit gets SIGTERM (a training run then saves a checkpoint, and
# `pureeqxrl train --resume` continues it) and is killed 20 s later.
set -u
RESULTS=${1:-/tmp/gpu_minatar}
BUDGET=${2:-540}
STEPS=${PQN_STEPS:-10000000}
START=$(date +%s)
mkdir -p "$RESULTS/runs"
export PYTHONUNBUFFERED=1
LOG="$RESULTS/session.log"
source "$(dirname "$0")/gpu_steps.sh"
pqn() { # pqn LIMIT NAME FLAGS...: 8 seeds of purejaxql's MinAtar settings
  local limit=$1 name=$2
  shift 2
  step "$limit" python3 -m pureeqxrl train pqn --preset minatar --num-seeds 8 --total-timesteps "$STEPS" \
    --eval-episodes 64 --run-dir "$RESULTS/runs/$name" "$@"
}

step 30 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
step 60 python3 -c "import jax, equinox, optax, gymnax, pureeqxrl; print(jax.__version__, equinox.__version__, optax.__version__, \
jax.devices())" || exit 1
pqn 150 pqn-breakout-cnn --env Breakout-MinAtar
pqn 150 pqn-asterix-cnn --env Asterix-MinAtar
pqn 120 pqn-breakout-mlp --env Breakout-MinAtar --torso mlp --hidden-sizes 256 256 --obs-scale 1.0
step 100 python3 benchmarks/throughput.py --algos pqn@minatar pqn@minatar,torso=mlp,hidden_sizes=256x256 dqn \
  --env Breakout-MinAtar --seeds 1 8 --repeats 3 --out "$RESULTS/throughput_minatar_gpu"
step 60 python3 benchmarks/throughput.py --algos pqn dqn --env CartPole-v1 --seeds 1 8 --repeats 3 \
  --out "$RESULTS/throughput_pqn_dqn_gpu"
step 100 python3 benchmarks/profile_update.py --algos dqn ppo ppo_continuous --seeds 1 8 --repeats 3 \
  --out "$RESULTS/profile_update_gpu"
pqn 120 pqn-spaceinvaders-cnn --env SpaceInvaders-MinAtar
pqn 120 pqn-freeway-cnn --env Freeway-MinAtar
echo "== done in $(($(date +%s) - START))s" | tee -a "$LOG"
pack
