"""What the side-by-side scripts (gpu_e2e.sh, cpu_e2e.sh) need to run timm's train.py as the peer.

    python scripts/timm_peer.py teacher-file TEACHER_RUN OUT.safetensors
    python scripts/timm_peer.py patch TIMM_TRAIN_PY OUT_TRAIN_PY

teacher-file: a deitkit teacher run's best weights as a plain safetensors file (what timm's
TokenDistillationTask loads). patch: a copy of timm's train.py with its one change,
`--kd-teacher-path FILE` handed to TokenDistillationTask's `teacher_pretrained_path`
(--kd-model-name alone loads hub weights only). timm's train.py itself is not kept here.
"""
from __future__ import annotations

import sys


def teacher_file(run: str, out: str) -> None:
    import safetensors.torch

    from deitkit.checkpoint import load_checkpoint
    ck = load_checkpoint(f"{run}/checkpoint-best.pt")
    safetensors.torch.save_file({k: v.contiguous() for k, v in ck["model"].items()}, out)


def patch(train_py: str, out: str) -> None:
    src = open(train_py).read()
    arg = "parser.add_argument('--kd-model-name'"
    if arg not in src:
        sys.exit(f"timm's train.py changed: --kd-model-name not found in {train_py}")
    src = src.replace(arg, "parser.add_argument('--kd-teacher-path', default=None, type=str)\n"
                      + arg, 1)
    at = src.index("task = TokenDistillationTask(")
    kw = "teacher_model=args.kd_model_name,"
    i = src.index(kw, at) + len(kw)
    src = src[:i] + "\n                teacher_pretrained_path=args.kd_teacher_path," + src[i:]
    open(out, "w").write(src)


if __name__ == "__main__":
    commands = {"teacher-file": teacher_file, "patch": patch}
    if len(sys.argv) != 4 or sys.argv[1] not in commands:
        sys.exit(__doc__)
    commands[sys.argv[1]](*sys.argv[2:])
