#!/usr/bin/env bash
# Same distribution, end to end: short CIFAR-10 runs through the worker loader (PIL, timm ops)
# and through the device pipeline, paired by seed, same everything else (DeiT stack:
# RandomResizedCrop, flip, rand-m9-mstd0.5-inc1, erasing 0.25, Mixup/CutMix; no teacher, so
# only the data path differs). Prints and writes $OUT/parity.json: accuracy per seed and
# pipeline, the paired differences, their mean and standard deviation.
#
#   DATA=/path/to/cifar10 OUT=/tmp/parity SEEDS="0 1 2" bash scripts/device_parity.sh [overrides]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/deitkit-parity}; SEEDS=${SEEDS:-0 1 2}; PY=${PY:-python3}
DATA=${DATA:?set DATA to a CIFAR-10 ImageFolder (train/ and test/)}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
for seed in $SEEDS; do
  for od in false true; do
    [ -f "$OUT/s$seed-$od/summary.json" ] && continue
    $PY -m deitkit train --no-progress --out "$OUT/s$seed-$od" data.name="$DATA" \
      data.train_fraction=0.1 seed="$seed" data.on_device=$od distill.kind=none \
      model.patch_size=8 'model.overrides={depth: 4}' data.batch_size=64 optim.lr=1e-3 \
      optim.warmup_epochs=2 aug.stack=deit aug.crop=rrc aug.hflip=0.5 aug.mixup=0.8 \
      aug.cutmix=1.0 aug.reprob=0.25 aug.smoothing=0.1 aug.repeated_aug=1 model.drop_path=0.1 \
      epochs=15 eval_every=15 "$@" 2>&1 | grep -E "^data:|best fused|wall time" || true
  done
done
$PY - "$OUT" $SEEDS <<'PYEOF'
import json, statistics, sys
from pathlib import Path
out, seeds = Path(sys.argv[1]), sys.argv[2:]
acc = lambda s, od: json.loads((out / f"s{s}-{od}" / "summary.json").read_text())["fused_top1"]
rows = {s: {"workers": acc(s, "false"), "device": acc(s, "true")} for s in seeds}
diffs = [r["device"] - r["workers"] for r in rows.values()]
res = {"per_seed": rows, "paired_diff_mean": statistics.mean(diffs),
       "paired_diff_std": statistics.stdev(diffs) if len(diffs) > 1 else None,
       "workers_mean": statistics.mean(r["workers"] for r in rows.values()),
       "device_mean": statistics.mean(r["device"] for r in rows.values())}
(out / "parity.json").write_text(json.dumps(res, indent=1) + "\n")
print(json.dumps(res, indent=1))
PYEOF
