# Sourced by the GPU scripts (gpu_first_call.sh, gpu_check.sh, gpu_job_check.sh): each step runs under a time limit
# inside the script's whole budget, its outcome is one JSON line in $STEPS_LOG, a failed or overrun step never stops
# the next one, and steps_verdict ends the script: exit 1, naming every step that failed or ran past its limit.
#
# The caller sets BUDGET (seconds for all steps), STEPS_LOG (a file) and, optionally, STEPS (the names to run; all
# when empty), LIMIT_SCALE (multiplies every limit: slow CPU dry runs), RESERVE (seconds kept for the summary) and
# BANNER_LOG (a file that also gets the "== step" lines). Banners go to file descriptor 3, which steps_start points
# at the console, so a step's own output may be redirected anywhere.

steps_start() {
  STEPS_STARTED=$(date +%s)
  STEPS_FAILED=()
  STEPS_SKIPPED=()
  : "${RESERVE:=20}" "${LIMIT_SCALE:=1}" "${STEPS:=}"
  : >"$STEPS_LOG"
  exec 3>&1
}

banner() {
  echo "== $*" >&3
  [ -z "${BANNER_LOG:-}" ] || echo "== $*" >>"$BANNER_LOG"
}

selected() {  # selected NAME: whether STEPS (empty: every step) names it
  [ -z "$STEPS" ] && return 0
  case " $STEPS " in *" $1 "*) return 0 ;; *) return 1 ;; esac
}

steps_left() {  # seconds of the budget left for steps (the reserve kept aside)
  echo $((STEPS_STARTED + BUDGET - RESERVE - $(date +%s)))
}

step() {  # step NAME LIMIT COMMAND...: COMMAND under min(LIMIT × LIMIT_SCALE, what the budget has left)
  local name=$1 asked=$(($2 * LIMIT_SCALE)) limit left code t0 t1 seconds
  shift 2
  limit=$asked
  selected "$name" || return 0
  left=$(steps_left)
  # Too little of the budget left to finish (under a quarter of what the step asks for, or 5 s): skip the step
  # rather than start it only to cut it off
  if [ "$left" -lt "$limit" ] && { [ "$left" -lt 5 ] || [ "$left" -lt $((asked / 4)) ]; }; then
    banner "$name skipped: $((left > 0 ? left : 0)) s of the budget left"
    STEPS_SKIPPED+=("$name")
    printf '{"step": "%s", "exit": "skipped", "seconds": 0, "limit": %d}\n' "$name" "$((left > 0 ? left : 0))" \
      >>"$STEPS_LOG"
    return 0
  fi
  [ "$left" -lt "$limit" ] && limit=$left
  banner "$name (limit $limit s, $(($(date +%s) - STEPS_STARTED)) s in)"
  t0=$(date +%s.%N)
  timeout --kill-after=10 "$limit" "$@"
  code=$?
  t1=$(date +%s.%N)
  seconds=$(awk "BEGIN {printf \"%.1f\", $t1 - $t0}")
  printf '{"step": "%s", "exit": %d, "seconds": %s, "limit": %d}\n' "$name" "$code" "$seconds" "$limit" >>"$STEPS_LOG"
  if [ "$code" -eq 0 ]; then
    banner "$name: done in $seconds s"
  elif [ "$code" -eq 124 ] || [ "$code" -eq 137 ]; then
    banner "$name FAILED: ran past its limit of $limit s"
    STEPS_FAILED+=("$name (past its $limit s limit)")
  else
    banner "$name FAILED: exit $code after $seconds s"
    STEPS_FAILED+=("$name (exit $code)")
  fi
  return 0
}

steps_verdict() {  # one line; returns 1 when a step failed or ran past its limit
  local skipped=""
  [ ${#STEPS_SKIPPED[@]} -eq 0 ] || skipped="; skipped for want of time: ${STEPS_SKIPPED[*]}"
  if [ ${#STEPS_FAILED[@]} -eq 0 ]; then
    banner "PASSED: every step that ran, in $(($(date +%s) - STEPS_STARTED)) s$skipped"
    return 0
  fi
  local joined
  joined=$(printf '%s, ' "${STEPS_FAILED[@]}")
  banner "FAILED: ${joined%, } ($(($(date +%s) - STEPS_STARTED)) s in all$skipped)"
  return 1
}
