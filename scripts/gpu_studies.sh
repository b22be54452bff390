#!/usr/bin/env bash
# Issue 15's GPU check: the five studies at the `gpu` budget (3 seeds each, data on the device),
# each under its own time limit, in one call on one GPU; then their reports. Studies that do
# not finish in time keep their finished runs (a rerun resumes them).
#
#   OUT=/tmp/studies STUDY_LIMIT=300 JOBS=4 bash scripts/gpu_studies.sh [study ...]
#
# JOBS runs share the GPU at once (`deitkit study --jobs`): at 32 px a DeiT-Tiny run alone is
# launch-bound and leaves the GPU mostly idle. JOBS=4 is a plan, not yet measured on a GPU.
#
# Default order: aug-strength aug-ablation distill-heads data-scale teacher-kind. Copy
# $OUT/<study>-gpu-cifar10/ (results.json, report.md, report.html, PNGs) into docs/studies/.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/deitkit-studies}; mkdir -p "$OUT"; PY=${PY:-python3}
STUDY_LIMIT=${STUDY_LIMIT:-300}; SEEDS=${SEEDS:-3}; JOBS=${JOBS:-4}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
DATA=${DATA:-$OUT/cifar10}; BUDGET=${BUDGET:-gpu}  # BUDGET=tiny DATA=digits: a CPU dry run
[ "$DATA" = digits ] || [ -d "$DATA/train" ] || { mkdir -p "$DATA"; tar xzf "${CIFAR_TAR:-../shared/data/cifar10-jpg.tar.gz}" -C "$DATA"; }
studies=("$@"); [ ${#studies[@]} -gt 0 ] || studies=(aug-strength aug-ablation distill-heads data-scale teacher-kind)
for s in "${studies[@]}"; do
  t0=$(date +%s)
  timeout "$STUDY_LIMIT" $PY -m deitkit study "$s" --budget "$BUDGET" --seeds "$SEEDS" --data "$DATA" \
    --root "$OUT" --jobs "$JOBS" > "$OUT/$s.log" 2>&1
  rc=$?
  echo "$s: exit $rc after $(( $(date +%s) - t0 )) s"; tail -3 "$OUT/$s.log"
  report=$(ls "$OUT/$s-$BUDGET-"*/report.md 2>/dev/null | head -1)
  [ -n "$report" ] && sed -n 1,8p "$report"
done
