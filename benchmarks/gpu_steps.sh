# Sourced by the GPU session scripts (gpu_session_minatar.sh, gpu_session_speed.sh), which set
# RESULTS, BUDGET (seconds for the whole session), START (its `date +%s`) and LOG first.
#
# `step SECONDS command...` runs one step under a time limit that what is left of BUDGET caps
# (SIGTERM at the limit, so that a training run saves a checkpoint; killed 20 s later), skips it
# when under 30 s are left, logs it to LOG and then packs RESULTS. `pack` writes everything in
# RESULTS but the agents and checkpoints to $OUT/session.tar.gz when $OUT is set (the device tool;
# RESULTS must not lie under $OUT).

pack() {
  if [ -n "${OUT:-}" ]; then
    tar -czf "$OUT/session.tar.gz" --exclude='*.eqx' --exclude='checkpoints' -C "$RESULTS" .
  fi
}

step() {
  local limit=$1 left
  shift
  left=$((BUDGET - ($(date +%s) - START)))
  if ((left < 30)); then
    echo "== skipped, ${left}s left: $*" | tee -a "$LOG"
    return 1
  fi
  ((limit > left)) && limit=$left
  echo "== $(date +%T) limit ${limit}s: $*" | tee -a "$LOG"
  timeout -k 20 "$limit" "$@" 2>&1 | tee -a "$LOG"
  local code=${PIPESTATUS[0]}
  echo "== $(date +%T) exit $code" | tee -a "$LOG"
  pack
  return "$code"
}
