#!/usr/bin/env bash
# Issue 13's accuracy check: the cifar10-gpu recipe end to end (teacher included) on one GPU,
# on the CIFAR-10 JPEG ImageFolder of ../shared/data, within 10 minutes of wall time. Writes
# $OUT/cifar10-gpu/ (summary.json, metrics.jsonl, the teacher), $OUT/train.log and
# $OUT/recipe.json. Arguments go to `deitkit train` (the recipe's command passes
# --time-budget 9.5: teacher and student epochs scaled to fit, measured on the machine).
#
#   OUT=/tmp/recipe bash scripts/gpu_recipe.sh --time-budget 9.5
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/deitkit-recipe}; mkdir -p "$OUT"; PY=${PY:-python3}
LIMIT=${LIMIT:-590}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
if [ -z "${DATA:-}" ]; then
  DATA=$OUT/cifar10
  [ -d "$DATA/train" ] || { mkdir -p "$DATA"; tar xzf "${CIFAR_TAR:-../shared/data/cifar10-jpg.tar.gz}" -C "$DATA"; }
fi
s=$(date +%s.%N)
timeout "$LIMIT" $PY -m deitkit train --recipe cifar10-gpu --no-progress --data "$DATA" \
  --out "$OUT/cifar10-gpu" "$@" 2>&1 | tee "$OUT/train.log" | tail -25 || true
$PY - "$OUT" "$s" <<'PYEOF'
import json, sys, time
from pathlib import Path
out, start = Path(sys.argv[1]), float(sys.argv[2])
s = json.loads((out / "cifar10-gpu" / "summary.json").read_text()) \
    if (out / "cifar10-gpu" / "summary.json").is_file() else {}
t = json.loads((out / "cifar10-gpu" / "teacher" / "summary.json").read_text()) \
    if (out / "cifar10-gpu" / "teacher" / "summary.json").is_file() else {}
res = {"wall_seconds_script": round(time.time() - start, 1),
       "fused_top1": s.get("fused_top1"), "ema_fused_top1": s.get("ema_fused_top1"),
       "teacher_top1": t.get("fused_top1"), "wall_seconds": s.get("wall_seconds"),
       "finished": bool(s)}
(out / "recipe.json").write_text(json.dumps(res, indent=1) + "\n")
print(json.dumps(res, indent=1))
PYEOF
