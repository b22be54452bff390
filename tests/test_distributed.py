"""torchrun with 2 gloo processes on CPU: equivalence with 1 process, resume, error handling."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from deitkit.data import RepeatedAugSampler
from deitkit.data.sampler import ShardSampler

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
            "2", "-m", "deitkit"]
ONE = [sys.executable, "-m", "deitkit"]
# augmentation randomness controlled: per-item seeds (global positions) make views identical
# in both layouts (the device pipeline, as `auto` picks); Mixup/CutMix and stochastic depth,
# which draw per process, are off
COMMON = ["--no-progress", "--device", "cpu", "data.train_fraction=0.12", "amp=off", "eval_every=1",
          "model.overrides={depth: 2}", "model.drop_path=0", "aug.mixup=0", "aug.cutmix=0",
          "aug.repeated_aug=3", "optim.warmup_epochs=1", "data.num_workers=0",
          "aug.stack=deit", "aug.crop=rrc"]  # RandAugment + erasing, per item, on the device
TIMING = ("epoch_seconds", "images_per_second")


def _run(cmd, timeout=300, **kw):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, **kw)


def _descendants(pid: int) -> list[int]:
    """pid and every process below it (read from /proc, by parent id)."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                ppid = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d))
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo += children.get(p, [])
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"  # a zombie has ended


def _metrics(run):
    rows = [json.loads(x) for x in (Path(run) / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher") / "t"
    r = _run(ONE + ["teacher", "--out", str(out), "--epochs", "1", "--no-progress",
                    "--device", "cpu", "data.train_fraction=0.12"])
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def test_samplers_split_work_exactly():
    one = [k.position for k in RepeatedAugSampler(30, 3, seed=1)]
    two = [RepeatedAugSampler(30, 3, num_replicas=2, rank=r, seed=1) for r in range(2)]
    # the global batch of step s on 2 ranks holds the same items as step s on 1 rank
    for s in range(3):
        glob = sorted(k.position for r in two for k in list(r)[s * 4:(s + 1) * 4])
        assert glob == sorted(one[s * 8:(s + 1) * 8])
    shards = [list(ShardSampler(11, 3, r)) for r in range(3)]
    assert sorted(sum(shards, [])) == list(range(11))  # each validation image once


def test_two_processes_match_one_process_step_for_step(teacher, tmp_path):
    a, b = tmp_path / "one", tmp_path / "two"
    r1 = _run(ONE + ["train", "--out", str(a), "--teacher", str(teacher), "--epochs", "2",
                     "data.batch_size=32", *COMMON])
    assert r1.returncode == 0, r1.stderr[-3000:]
    r2 = _run(TORCHRUN + ["train", "--out", str(b), "--teacher", str(teacher), "--epochs", "2",
                          "data.batch_size=16", *COMMON])
    assert r2.returncode == 0, r2.stderr[-3000:]
    m1, m2 = _metrics(a), _metrics(b)
    assert len(m1) == len(m2) == 2
    for e1, e2 in zip(m1, m2):
        for k in ("train_loss", "train_base_loss", "train_distill_loss", "lr"):
            assert e2[k] == pytest.approx(e1[k], rel=1e-4, abs=1e-6), k
        assert e1["eval_images"] == e2["eval_images"] == 360  # each image counted once
        for k in ("cls_top1", "dist_top1", "fused_top1", "teacher_top1"):
            assert abs(e1[k] - e2[k]) <= 2 / 360, k
    w1 = torch.load(a / "checkpoint-last.pt", weights_only=True)["model"]
    w2 = torch.load(b / "checkpoint-last.pt", weights_only=True)["model"]
    for k in w1:
        # the key part of qkv.bias gets only rounding noise as gradient (softmax ignores a
        # per-query constant) and Adam scales noise up, so it alone gets a looser tolerance
        atol = 5e-4 if k.endswith("qkv.bias") else 1e-5
        assert torch.allclose(w1[k], w2[k], rtol=1e-3, atol=atol), k
    assert "x 2 processes" in r2.stdout and r2.stdout.count("class head top-1") == 1  # rank 0


def test_resume_under_two_processes(teacher, tmp_path):
    ref, run = tmp_path / "ref", tmp_path / "run"
    args = ["--teacher", str(teacher), "--epochs", "3", "data.batch_size=16", *COMMON,
            "aug.mixup=0.8", "aug.cutmix=1.0", "model.drop_path=0.1"]  # all streams, per rank
    r = _run(TORCHRUN + ["train", "--out", str(ref), *args])
    assert r.returncode == 0, r.stderr[-3000:]
    proc = subprocess.Popen(TORCHRUN + ["train", "--out", str(run), *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and not (run / "checkpoint-last.pt").is_file():
        time.sleep(0.05)
    # kill -9 torchrun and its workers, mid-run: by process id (the workers run in sessions
    # of their own, so torchrun's process group does not hold them)
    family = _descendants(proc.pid)
    assert len(family) >= 3, family  # torchrun and two workers
    for pid in family:
        os.kill(pid, signal.SIGKILL)
    proc.wait()
    while any(_alive(pid) for pid in family):
        time.sleep(0.1)
    assert len(_metrics(run)) < 3
    r = _run(TORCHRUN + ["train", "--resume", str(run), "--no-progress"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert _metrics(run) == _metrics(ref)
    w1 = torch.load(ref / "checkpoint-last.pt", weights_only=True)
    w2 = torch.load(run / "checkpoint-last.pt", weights_only=True)
    assert all(torch.equal(w1["model"][k], w2["model"][k]) for k in w1["model"])
    assert len(w2["rng"]) == 2  # one set of random streams per rank


def test_an_error_on_one_rank_ends_every_rank(tmp_path):
    from PIL import Image
    root = tmp_path / "ds"
    for split in ("train", "val"):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            for i in range(8):
                Image.new("RGB", (16, 16), (i * 20, 50, 90)).save(root / split / c / f"{i}.png")
    # corrupt the first image that rank 1 (and only rank 1) reads in epoch 0
    files = sorted((root / "train").rglob("*.png"))
    keys = list(RepeatedAugSampler(len(files), 1, num_replicas=2, rank=1, seed=0))
    rank0 = {k.index for k in RepeatedAugSampler(len(files), 1, num_replicas=2, rank=0, seed=0)}
    bad = next(files[k.index] for k in keys if k.index not in rank0)
    bad.write_bytes(b"")
    t0 = time.time()
    r = _run(TORCHRUN + ["train", "--out", str(tmp_path / "run"), "--data", str(root),
                         "--epochs", "2", "distill.kind=none", "data.batch_size=4",
                         "data.img_size=16", "model.patch_size=8", *COMMON,
                         "data.train_fraction=1.0"], timeout=180)
    assert r.returncode != 0
    assert time.time() - t0 < 180
    assert f"cannot read image '{bad}'" in r.stderr and "(rank 1)" in r.stderr


def test_teacher_store_per_rank_under_two_processes(teacher, tmp_path):
    """A store recorded by 2 processes (one file per rank and epoch) serves a 2-process run,
    which then matches the 2-process online-teacher run; a 1-process run is refused."""
    store, online, stored = tmp_path / "store", tmp_path / "online", tmp_path / "stored"
    mix = ["aug.mixup=0.8", "aug.cutmix=1.0", "data.batch_size=16", "distill.kind=soft"]
    common = [*COMMON, *mix, "--epochs", "2", "--teacher", str(teacher)]
    r = _run(TORCHRUN + ["store", "--out", str(store), *common])
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(p.name for p in store.glob("epoch-*.npz")) == [
        f"epoch-{e:04d}-rank{k}.npz" for e in range(2) for k in range(2)]
    r = _run(TORCHRUN + ["train", "--out", str(online), *common])
    assert r.returncode == 0, r.stderr[-3000:]
    r = _run(TORCHRUN + ["train", "--out", str(stored), *common, f"distill.store={store}",
                         "distill.store_verify_batches=-1"])
    assert r.returncode == 0, r.stderr[-3000:]
    for a, b in zip(_metrics(online), _metrics(stored)):
        for key in ("train_loss", "train_distill_loss", "fused_top1"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), key
    r = _run(ONE + ["train", "--out", str(tmp_path / "one"), *common, f"distill.store={store}"])
    assert r.returncode == 2 and "world_size" in r.stderr
