#!/usr/bin/env bash
# GPU readiness check: tests/gpu, then the 224-px speed preset on CUDA, a profile of its stage-1 step against DeiT
# KD's (profile.log), and stage 1 from a teacher cache against the plain step with a RegNetY-16GF-sized teacher
# (timm regnety_160, random weights), in at most about 7 minutes.
#
#   bash tools/gpu_check.sh [--dry-run] [RESULTS_DIR]        # default RESULTS_DIR: benchmarks/results/gpu
#
# Each part runs under its own time limit; its exit status and seconds are recorded and a failing part never stops
# the others. tools/gpu_summary.py then writes RESULTS_DIR/gpu_check.json and gpu_check.md (versions, each
# test's outcome, the speed ratios against their targets) and strips machine paths from the logs.
# --dry-run (any machine, no GPU needed; the default test suite runs it): tests/gpu runs (it skips without CUDA),
# the speed preset only resolves and prints its CUDA settings, and the summary marks what did not run.
# PYTHON picks the interpreter (default python3).
set -u
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
DRY_RUN=0
if [ "${1:-}" = "--dry-run" ]; then
  DRY_RUN=1
  shift
fi
RESULTS=${1:-benchmarks/results/gpu}
CACHE_TEACHER=regnety_160  # the paper's RegNetY-16GF teacher, the most expensive forward a cache saves
mkdir -p "$RESULTS"
rm -f "$RESULTS/parts.tsv"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH="$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}"

# run_part NAME SECONDS COMMAND...: the command's output goes to RESULTS/NAME.log, its status to parts.tsv.
run_part() {
  local name=$1 limit=$2 start status
  shift 2
  start=$(date +%s)
  echo "== $name: $*"
  timeout --kill-after=10 "$limit" "$@" >"$RESULTS/$name.log" 2>&1
  status=$?
  printf '%s\t%s\t%s\n' "$name" "$status" "$(($(date +%s) - start))" >>"$RESULTS/parts.tsv"
  echo "   exit $status after $(($(date +%s) - start)) s"
}

"$PYTHON" -m tools.gpu_summary --versions
run_part tests 240 "$PYTHON" -m pytest tests/gpu -q -rfEs -p no:cacheprovider --junitxml="$RESULTS/tests.xml"
if [ "$DRY_RUN" = 1 ]; then
  run_part speed 60 "$PYTHON" -m benchmarks.speed --preset deit_tiny_224 --device cuda --dry_run \
    --output "$RESULTS/speed_224.json"
  run_part profile 60 "$PYTHON" -m tools.profile_step --preset deit_tiny_224 --device cuda --dry_run
  run_part teacher_cache 60 "$PYTHON" -m benchmarks.speed.teacher_cache --preset deit_tiny_224 --device cuda \
    --teacher "$CACHE_TEACHER" --dry_run --output "$RESULTS/teacher_cache_224.json"
else
  run_part speed 180 "$PYTHON" -m benchmarks.speed --preset deit_tiny_224 --device cuda \
    --output "$RESULTS/speed_224.json"
  run_part profile 90 "$PYTHON" -m tools.profile_step --preset deit_tiny_224 --device cuda
  run_part teacher_cache 150 "$PYTHON" -m benchmarks.speed.teacher_cache --preset deit_tiny_224 --device cuda \
    --teacher "$CACHE_TEACHER" --output "$RESULTS/teacher_cache_224.json"
fi
"$PYTHON" -m tools.gpu_summary "$RESULTS" $([ "$DRY_RUN" = 1 ] && echo --dry-run)
