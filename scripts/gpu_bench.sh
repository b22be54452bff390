#!/usr/bin/env bash
# The GPU check of docs/performance.md: `deitkit bench` at 224 px, DeiT-S (distilled) student,
# RegNetY-1.6GF teacher, batch 256, fp32 reference vs ours in fp32 and bf16, compile on/off.
# Run from the repository root on a machine with one GPU; results go to $OUT (default /tmp).
set -u
OUT=${OUT:-/tmp}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, timm, PIL; print('torch', torch.__version__, 'timm', timm.__version__, 'pillow', PIL.__version__)"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
time timeout ${BENCH_TIMEOUT:-420} python3 -m deitkit bench \
  --model deit_small_distilled_patch16_224 --teacher regnety_016 --img-size 224 \
  --batch-size 256 --num-classes 1000 --precisions fp32,bf16 --compile \
  --steps 10 --warmup 3 --repeats 3 --workers 8 --json "$OUT/bench_gpu.json" 2>&1 \
  | grep -v "USDT\|DeviceProperties" | tee "$OUT/bench_gpu.txt"
