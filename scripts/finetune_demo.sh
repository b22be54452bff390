#!/usr/bin/env bash
# The measured example of docs/finetune.md: pretrain DeiT-Tiny (with distillation token) on the
# 25,000 CIFAR-10 training images of five classes, then fine-tune it with a CNN teacher on 500
# images of the other five classes; compare with the same student from scratch (same budget)
# and with no teacher. Every run's log and summary land in OUT, plus OUT/finetune.json.
#
#   bash scripts/finetune_demo.sh CIFAR_TAR WORK OUT [PRETRAIN_EPOCHS] [key=value ...]
#
# key=value overrides go to every run (e.g. data.num_workers=2 on a CPU). PYTHON picks the
# interpreter (default python3); LIMIT caps each run in seconds (default 420).
set -euo pipefail
tar=$1; work=$2; out=$3; pre_epochs=${4:-30}; shift $(( $# < 4 ? $# : 4 ))
extra=("$@")
py=${PYTHON:-python3}
mkdir -p "$work" "$out"
start=$(date +%s)
[ -d "$work/data/cifar5-finetune-500" ] || \
  "$py" scripts/imagefolder_subsets.py "$work/data" --finetune-split --cifar "$tar"
echo "data ready after $(( $(date +%s) - start )) s"

run() {  # name, then the deitkit command
  local name=$1; shift
  local s; s=$(date +%s)
  timeout "${LIMIT:-420}" "$py" -m deitkit "$@" --no-progress "${extra[@]}" > "$out/$name.log" 2>&1 \
    || { echo "$name failed or timed out; last lines:"; tail -5 "$out/$name.log"; }
  echo "$name: $(( $(date +%s) - s )) s"
}
ft=(--recipe finetune --data "$work/data/cifar5-finetune-500")
run pretrain train --recipe small-data-cpu --data "$work/data/cifar5-pretrain" --out "$work/pre" \
  --epochs "$pre_epochs" distill.kind=none data.batch_size=256 optim.lr=1e-3 \
  optim.warmup_epochs=3 eval_every=5 eval_train_images=1000 ema.decay=0.999
run teacher teacher --data "$work/data/cifar5-finetune-500" --out "$work/teacher" --epochs 30
run ft-pretrained-teacher train "${ft[@]}" --teacher "$work/teacher" --out "$work/ft-pre-t" \
  "model.weights=$work/pre/checkpoint-best.pt"
run ft-scratch-teacher train "${ft[@]}" --teacher "$work/teacher" --out "$work/ft-scratch-t"
run ft-pretrained-noteacher train "${ft[@]}" --out "$work/ft-pre-none" distill.kind=none \
  "model.weights=$work/pre/checkpoint-best.pt"
"$py" - "$work" "$out" <<'PY'
import json, sys
from pathlib import Path
work, out = Path(sys.argv[1]), Path(sys.argv[2])
res = {}
for name, d in (("pretrain", "pre"), ("teacher", "teacher"), ("ft-pretrained-teacher", "ft-pre-t"),
                ("ft-scratch-teacher", "ft-scratch-t"), ("ft-pretrained-noteacher", "ft-pre-none")):
    f = work / d / "summary.json"
    if f.is_file():
        s = json.loads(f.read_text())
        res[name] = {k: s.get(k) for k in ("fused_top1", "cls_top1", "dist_top1", "ema_fused_top1",
                                            "train_clean_top1", "teacher_top1", "epochs",
                                            "wall_seconds", "train_images", "eval_images", "regime")}
        (out / f"{name}-summary.json").write_text(json.dumps(s, indent=1))
(out / "finetune.json").write_text(json.dumps(res, indent=1))
print(json.dumps(res, indent=1))
PY
echo "all done after $(( $(date +%s) - start )) s"
