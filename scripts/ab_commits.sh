#!/usr/bin/env bash
# Is a study's run slower because of the code or because of the machine? Trains the same
# short run (a quick-budget light-stack DeiT-Tiny student: 1,000 CIFAR-10 images, 6 blocks,
# patch 8, 32 px, bf16, one evaluation) at two commits, alternated ROUNDS times, one at a time,
# and prints each run's whole-process and summed epoch seconds and its top-1 (the same seed
# at both commits gives the same numbers where the training did not change).
#
#   DATA=/tmp/cifar bash scripts/ab_commits.sh OLD_COMMIT [NEW_COMMIT]   # about 5 minutes
#
# NEW_COMMIT defaults to the working tree. Each commit is checked out in a temporary git
# worktree and run with this venv's deitkit (PYTHONPATH first). Settings (env): DATA (an
# ImageFolder tree with train/ and val/ or test/), EPOCHS (15), ROUNDS (2), AMP (bf16), OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
OLD=${1:?usage: $0 OLD_COMMIT [NEW_COMMIT]}; NEW=${2:-}
DATA=${DATA:?DATA must name the CIFAR-10 ImageFolder tree}; EPOCHS=${EPOCHS:-15}
ROUNDS=${ROUNDS:-2}; AMP=${AMP:-bf16}; OUT=${OUT:-$(mktemp -d)}
DEITKIT=${DEITKIT:-$PWD/.venv/bin/deitkit}
trees=()
tree_of() {  # a worktree at commit $1 (or this checkout for the empty string)
  if [ -z "$1" ]; then echo "$PWD"; return; fi
  local t; t=$(mktemp -d); git worktree add -q --detach "$t" "$1"; trees+=("$t"); echo "$t"
}
cleanup() { for t in "${trees[@]}"; do git worktree remove --force "$t"; done; }
trap cleanup EXIT
old_tree=$(tree_of "$OLD"); new_tree=$(tree_of "$NEW")
args=(--recipe small-data-cpu --data "$DATA" --epochs "$EPOCHS" --no-progress
      model.name=deit_tiny_patch16_224 model.patch_size=8 "model.overrides={depth: 6}"
      data.train_fraction=0.02 optim.warmup_epochs=2 aug.stack=deit
      aug.rand_augment=rand-m9-mstd0.5-inc1 aug.mixup=0 aug.cutmix=0 aug.reprob=0
      aug.repeated_aug=1 model.drop_path=0 aug.smoothing=0.1 distill.kind=none
      eval_every="$EPOCHS" eval_train_images=1000 data.img_size=32 data.batch_size=64
      data.num_workers=2 ema.enabled=false amp="$AMP")
for i in $(seq "$ROUNDS"); do
  for side in old new; do
    tree=$old_tree; [ "$side" = new ] && tree=$new_tree
    run=$OUT/$side-$i
    t0=$(date +%s.%N)
    PYTHONPATH=$tree "$DEITKIT" train "${args[@]}" --out "$run" > "$run.log" 2>&1 \
      || { echo "$side round $i failed: see $run.log" >&2; exit 1; }
    t1=$(date +%s.%N)
    python3 - "$run" "$side" "$i" "$t0" "$t1" <<'PY'
import json, sys
run, side, i, t0, t1 = sys.argv[1:]
rows = [json.loads(line) for line in open(f"{run}/metrics.jsonl")]
print(f"{side} round {i}: {float(t1) - float(t0):.1f} s whole process, "
      f"{sum(r['epoch_seconds'] for r in rows):.1f} s of epochs, "
      f"top-1 {100 * rows[-1]['fused_top1']:.2f} %")
PY
  done
done
