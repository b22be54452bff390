#!/usr/bin/env bash
# Issue 26's whole-epoch CPU comparison: a distilled DeiT-Tiny (patch 4, 32 px) with an online
# ResNet-18 teacher (hard token distillation) on a fixed CIFAR-10 subset, timm's train.py (its
# worker loader) against deitkit at the same settings, one run at a time on this CPU, fp32.
# Writes $OUT/cpu-e2e.json (and the logs); commit it as docs/bench/cpu-e2e.json and copy the
# table into docs/performance.md.
#
#   OUT=/tmp/cpu-e2e bash scripts/cpu_e2e.sh      # about 10 minutes on 2 cores
#
# Runs, each a whole process timed from outside:
#   timm        timm's train.py, WORKERS loader workers
#   device      deitkit, the images cached as tensors, the augmentation in the process
#               (data.on_device=true)
#   workers     deitkit with a worker loader like timm's (data.on_device=false)
#   store       deitkit training from stored teacher outputs (`deitkit store` first, timed
#               on its own as store_record_seconds)
# Settings (env): DATA (an ImageFolder with train/ and test/; default: PER_CLASS training and
# TEST_PER_CLASS test images per class of the shared cifar10-jpg.tar.gz, the first in file
# order, unpacked under $OUT), PER_CLASS (200), TEST_PER_CLASS (100), EPOCHS (2), BATCH (64),
# WORKERS (2), TEACHER_EPOCHS (1), STEP_TIMEOUT (600 s per run), RUNS ("timm device workers
# store": a subset reruns only those; the figures of the others are read from their folders),
# AMP (off: fp32 on both sides, the comparison that holds on every CPU; bf16: both sides
# under bf16 autocast, timm's `--amp --amp-dtype bfloat16`).
# Same on both sides: RandomResizedCrop + flip, rand-m9-mstd0.5-inc1, random erasing 0.25,
# Mixup 0.8 / CutMix 1.0, label smoothing 0.1, drop path 0.1, EMA 0.99, AdamW lr 5e-4 x
# batch/512, weight decay 0.05, cosine with 1 warm-up epoch, the AMP precision, hard token distillation from the same teacher weights (timm's plain `resnet18`, 7x7
# stem: timm's train.py builds its teacher from a timm name, which cannot express deitkit's
# CIFAR stem). Evaluation: timm's evaluates its model and its EMA after every epoch; deitkit
# after the last (eval_every=EPOCHS), both included in the whole-process time.
# timm's train.py is not part of this project: TIMM_TRAIN names it (default peers/timm/train.py,
# an ignored folder): git clone --depth 1 https://github.com/huggingface/pytorch-image-models
# peers/timm. Its one change, made on a copy under $OUT: `--kd-teacher-path FILE`, handed to
# TokenDistillationTask's `teacher_pretrained_path` (--kd-model-name alone loads hub weights).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/deitkit-cpu-e2e}; mkdir -p "$OUT"
EPOCHS=${EPOCHS:-2}; BATCH=${BATCH:-64}; WORKERS=${WORKERS:-2}; TEACHER_EPOCHS=${TEACHER_EPOCHS:-1}
PER_CLASS=${PER_CLASS:-200}; TEST_PER_CLASS=${TEST_PER_CLASS:-100}
STEP_TIMEOUT=${STEP_TIMEOUT:-600}; PY=${PY:-python3}; RUNS=${RUNS:-timm device workers store}
AMP=${AMP:-off}; amp_timm=(); [ "$AMP" = bf16 ] && amp_timm=(--amp --amp-dtype bfloat16)
[ "$AMP" = off ] || [ "$AMP" = bf16 ] || { echo "AMP must be off or bf16, got $AMP" >&2; exit 2; }
TIMM_TRAIN=${TIMM_TRAIN:-peers/timm/train.py}
[ -f "$TIMM_TRAIN" ] || { echo "timm's train.py not found at TIMM_TRAIN=$TIMM_TRAIN (see the" \
  "header of $0 for how to fetch it)" >&2; exit 2; }
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
wants() { [[ " $RUNS " == *" $1 "* ]]; }
now() { date +%s.%N; }
since() { $PY -c "print(round($(now) - $1, 1))"; }

if [ -z "${DATA:-}" ]; then
  DATA=$OUT/cifar10-sub
  tar_=${CIFAR_TAR:-../shared/data/cifar10-jpg.tar.gz}
  if [ ! -d "$DATA/train" ]; then
    [ -f "$tar_" ] || { echo "the CIFAR-10 archive is not at $tar_: set CIFAR_TAR to it, or DATA" \
      "to an ImageFolder with train/ and test/" >&2; exit 2; }
    $PY - "$tar_" "$DATA" "$PER_CLASS" "$TEST_PER_CLASS" <<'EOF'
import sys, tarfile
from collections import Counter
from pathlib import Path
tar_, out, per = sys.argv[1], Path(sys.argv[2]), {"train": int(sys.argv[3]), "test": int(sys.argv[4])}
seen = Counter()
with tarfile.open(tar_) as t:
    for m in t:
        parts = Path(m.name).parts
        split = next((p for p in parts if p in per), None)
        if not m.isfile() or split is None:
            continue
        cls = parts[parts.index(split) + 1]
        if seen[split, cls] >= per[split]:
            continue
        seen[split, cls] += 1
        dst = out / split / cls / Path(m.name).name
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(t.extractfile(m).read())
print(f"subset: {sum(v for (s, _), v in seen.items() if s == 'train')} training, "
      f"{sum(v for (s, _), v in seen.items() if s == 'test')} test images in {out}")
EOF
  fi
fi
$PY - <<'EOF' | tee "$OUT/machine.txt"
import platform, torch, timm
flags = open("/proc/cpuinfo").read()
model = next((l.split(":", 1)[1].strip() for l in flags.splitlines() if l.startswith("model name")), "?")
isa = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_tile") if f" {f}" in flags]
print(f"cpu: {model}, {torch.get_num_threads()} threads, {' '.join(isa)}; torch {torch.__version__}, "
      f"timm {timm.__version__}, python {platform.python_version()}")
from timm.task import TokenDistillationTask  # noqa: F401  (timm >= 1.0.25)
EOF

# 1. the teacher: deitkit trains it, then its weights go to a plain file for timm
if [ ! -f "$OUT/teacher/checkpoint-best.pt" ]; then
  rm -rf "$OUT/teacher"
  timeout "$STEP_TIMEOUT" $PY -m deitkit teacher --no-progress --out "$OUT/teacher" \
    --epochs "$TEACHER_EPOCHS" data.name="$DATA" model.name=resnet18 model.small_stem=false \
    data.img_size=32 amp=off device=cpu 2>&1 | tee "$OUT/teacher.log" | tail -2
fi
$PY scripts/timm_peer.py teacher-file "$OUT/teacher" "$OUT/teacher.safetensors"

# 2. timm's train.py with its one change
lr=$($PY -c "print(5e-4 * $BATCH / 512)")
if wants timm; then
  $PY scripts/timm_peer.py patch "$TIMM_TRAIN" "$OUT/timm_train.py"
  rm -rf "$OUT/timm-run"; t0=$(now)
  timeout "$STEP_TIMEOUT" $PY "$OUT/timm_train.py" --data-dir "$DATA" --train-split train \
    --val-split test --model deit_tiny_distilled_patch16_224 --model-kwargs patch_size=4 img_size=32 \
    --img-size 32 --num-classes 10 -b "$BATCH" --epochs "$EPOCHS" --lr "$lr" \
    --opt adamw --weight-decay 0.05 --sched cosine --warmup-epochs 1 --aa rand-m9-mstd0.5-inc1 \
    --reprob 0.25 --remode pixel --mixup 0.8 --cutmix 1.0 --smoothing 0.1 --drop-path 0.1 \
    --model-ema --model-ema-decay 0.99 --crop-pct 1.0 --interpolation bicubic \
    --workers "$WORKERS" --device cpu --log-interval 1000000 ${amp_timm[@]+"${amp_timm[@]}"} \
    --kd-model-name resnet18 --kd-distill-type token --kd-token-distill-type hard \
    --kd-teacher-path "$OUT/teacher.safetensors" --output "$OUT/timm-run" \
    --checkpoint-hist 1 > "$OUT/timm.log" 2>&1 || { tail -30 "$OUT/timm.log"; exit 1; }
  echo "$(since "$t0")" > "$OUT/timm.wall"; echo "timm train.py: $(cat "$OUT/timm.wall") s wall"
fi

# 3. deitkit, same settings
# small-data-cpu: the recipe for 32-px images on a CPU (no model overrides); every setting
# that differs from timm's is given here
common=(--recipe small-data-cpu --no-progress --teacher "$OUT/teacher" --epochs "$EPOCHS" data.name="$DATA"
  data.img_size=32 data.batch_size="$BATCH" data.num_workers="$WORKERS"
  model.name=deit_tiny_distilled_patch16_224 model.patch_size=4 model.drop_path=0.1
  aug.stack=deit aug.crop=rrc aug.hflip=0.5 aug.rand_augment=rand-m9-mstd0.5-inc1
  aug.reprob=0.25 aug.mixup=0.8 aug.cutmix=1.0 aug.smoothing=0.1 aug.repeated_aug=1
  distill.kind=hard optim.lr="$lr" optim.warmup_epochs=1 optim.weight_decay=0.05
  ema.decay=0.99 amp="$AMP" device=cpu eval_every="$EPOCHS")
ours() {  # ours NAME [overrides...]
  local name=$1; shift
  rm -rf "${OUT:?}/$name"; local s; s=$(now)
  timeout "$STEP_TIMEOUT" $PY -m deitkit train --out "$OUT/$name" "${common[@]}" "$@" \
    > "$OUT/$name.log" 2>&1 || { tail -30 "$OUT/$name.log"; return 1; }
  echo "$(since "$s")" > "$OUT/$name.wall"; echo "deitkit $name: $(cat "$OUT/$name.wall") s wall"
}
# a variant that fails or runs out of time is reported without its figures; the others stand
if wants device; then ours device data.on_device=true || echo "deitkit device: failed"; fi
if wants workers; then ours workers data.on_device=false || echo "deitkit workers: failed"; fi
if wants store; then
  rm -rf "$OUT/store-rec"; s=$(now)
  if timeout "$STEP_TIMEOUT" $PY -m deitkit store --out "$OUT/store-rec" "${common[@]}" \
      data.on_device=true > "$OUT/store-rec.log" 2>&1; then
    echo "$(since "$s")" > "$OUT/store-rec.wall"
    echo "deitkit store: $(cat "$OUT/store-rec.wall") s wall"
    ours store data.on_device=true distill.store="$OUT/store-rec" || echo "deitkit store run: failed"
  else tail -30 "$OUT/store-rec.log"; echo "deitkit store: failed"; fi
fi

# 4. the figures: median epoch time after the first, images/s, whole-process times, ratios
$PY - "$OUT" "$BATCH" "$EPOCHS" "$AMP" "$DATA" <<'EOF'
import json, re, statistics, sys
from pathlib import Path
out, batch, epochs, amp = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
wall = lambda n: float((out / f"{n}.wall").read_text()) if (out / f"{n}.wall").is_file() else None
ntrain = sum(1 for p in (Path(sys.argv[5]) / "train").rglob("*") if p.is_file())
res = {"machine": (out / "machine.txt").read_text().strip(), "batch": batch, "epochs": epochs,
       "train_images": ntrain, "amp": {"off": "off (fp32)", "bf16": "bf16 autocast"}[amp],
       "command": "OUT=... AMP=%s bash scripts/cpu_e2e.sh (EPOCHS=%d BATCH=%d)" % (amp, epochs, batch)}
# timm logs, at the last batch of each epoch, the mean update time over the epoch (a batch
# time that includes waiting for the loader)
log = (out / "timm.log").read_text() if (out / "timm.log").is_file() else ""
rows = re.findall(r"Train: (\d+) \[\s*(\d+)/(\d+) .*?\((\d+\.\d+)s, +[\d.]+/s\)", log)
last = {int(ep): float(avg) * int(n) for ep, idx, n, avg in rows}
if last:
    per = [last[e] for e in sorted(last)]
    res["timm_epoch_seconds"] = round(statistics.median(per[1:] or per), 2)
    res["timm_epoch_seconds_all"] = [round(x, 2) for x in per]
    res["timm_wall_seconds"] = wall("timm")
    # the last line of its last plain (not EMA) evaluation: "Acc@1: batch (mean)"
    acc = re.findall(r"^Test: \[\s*(\d+)/\1\].*?Acc@1: +[\d.]+ \( *(\d+\.\d+)\)", log, re.M)
    res["timm_top1_last"] = float(acc[-1][1]) if acc else None
for name in ("device", "workers", "store"):
    m = out / name / "metrics.jsonl"
    if not m.is_file() or wall(name) is None:
        continue
    rows = [json.loads(l) for l in m.read_text().splitlines()]
    ep = [r for r in rows if "epoch_seconds" in r]
    secs = [r["epoch_seconds"] for r in ep]
    res[f"ours_{name}_epoch_seconds"] = round(statistics.median(secs[1:] or secs), 2)
    res[f"ours_{name}_epoch_seconds_all"] = [round(x, 2) for x in secs]
    res[f"ours_{name}_wall_seconds"] = wall(name)
    res[f"ours_{name}_fused_top1"] = next((r.get("fused_top1") for r in reversed(rows)
                                           if r.get("fused_top1") is not None), None)
    if "timm_epoch_seconds" in res:
        res[f"ratio_epoch_{name}"] = round(res["timm_epoch_seconds"] / res[f"ours_{name}_epoch_seconds"], 2)
        res[f"ratio_wall_{name}"] = round(res["timm_wall_seconds"] / res[f"ours_{name}_wall_seconds"], 2)
if wall("store-rec") is not None:
    res["store_record_seconds"] = wall("store-rec")
if ntrain:
    for k in [k for k in res if k.endswith("_epoch_seconds")]:
        res[k.replace("_epoch_seconds", "_images_per_s")] = round(ntrain / res[k], 1)
(out / "cpu-e2e.json").write_text(json.dumps(res, indent=1) + "\n")
print(json.dumps(res, indent=1))
EOF
