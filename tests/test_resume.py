"""Exact resume, crash-safe checkpoints, refused config changes."""
import errno
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import importlib

train_mod = importlib.import_module("deitkit.fit")
from deitkit import build_config, train
from deitkit.checkpoint import CheckpointError, atomic_save
from deitkit.cli import main
from deitkit.config import ConfigError

# small but complete: teacher trained in the run, Mixup/CutMix, repeated augmentation, EMA,
# stochastic depth, RandAugment, random erasing (the deit stack, on the device as `auto` picks
# for the digits); all random streams are exercised
TINY = ["aug.stack=deit", "aug.crop=rrc", "epochs=4", "teacher.train_epochs=1", "progress=false",
        "data.train_fraction=0.12",
        "model.overrides={depth: 2}", "aug.mixup=0.8", "aug.cutmix=1.0", "aug.repeated_aug=3",
        "data.batch_size=32", "optim.warmup_epochs=1", "device=cpu"]
TIMING = ("epoch_seconds", "images_per_second")


def _cfg(out, *extra):
    return build_config("quickstart", overrides=[f"out={out}", *TINY, *extra])


def _metrics(run):
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def _weights(run):
    return torch.load(run / "checkpoint-last.pt", weights_only=True)


def _same_run(a, b):
    assert _metrics(a) == _metrics(b)
    wa, wb = _weights(a), _weights(b)
    for part in ("model", "ema"):
        for k in wa[part]:
            assert torch.equal(wa[part][k], wb[part][k]), f"{part}.{k}"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    train(_cfg(out))
    return out


def test_interrupted_and_resumed_equals_uninterrupted(reference, tmp_path, monkeypatch):
    out = tmp_path / "run"
    real = train_mod.train_one_epoch

    def dies_in_epoch_3(*args, **kwargs):
        if args[3] == 2:  # the epoch argument
            raise KeyboardInterrupt
        return real(*args, **kwargs)
    monkeypatch.setattr(train_mod, "train_one_epoch", dies_in_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(out))
    assert len(_metrics(out)) == 2
    monkeypatch.setattr(train_mod, "train_one_epoch", real)
    t0 = time.perf_counter()
    summary = train(_cfg(out), resume=True)
    second = time.perf_counter() - t0
    _same_run(reference, out)
    # the wall time adds up both segments: the second, plus at least the epochs the first
    # segment finished before the interruption
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert summary["wall_seconds"] > rows[0]["epoch_seconds"] + rows[1]["epoch_seconds"] + \
        0.99 * second


def test_resume_is_exact_with_the_worker_loader_too(reference, tmp_path, monkeypatch):
    ref, out = tmp_path / "ref", tmp_path / "run"
    train(_cfg(ref, "data.on_device=false"))
    real = train_mod.train_one_epoch

    def dies_in_epoch_2(*args, **kwargs):
        if args[3] == 1:
            raise KeyboardInterrupt
        return real(*args, **kwargs)
    monkeypatch.setattr(train_mod, "train_one_epoch", dies_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(out, "data.on_device=false"))
    monkeypatch.setattr(train_mod, "train_one_epoch", real)
    train(_cfg(out, "data.on_device=false"), resume=True)
    _same_run(ref, out)
    assert _metrics(ref) != _metrics(reference)  # it was the other pipeline: other views


def test_kill_9_then_cli_resume_with_workers(reference, tmp_path):
    out = tmp_path / "run"
    args = [sys.executable, "-m", "deitkit", "train", "--out", str(out), *TINY]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if (out / "checkpoint-last.pt").is_file():
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (out / "checkpoint-last.pt").is_file()
    # the checkpoint left by the kill loads; resuming (with 2 loader workers this time, which
    # may change nothing) finishes the run exactly as the uninterrupted one
    assert main(["train", "--resume", str(out), "--no-progress", "data.num_workers=2"]) == 0
    _same_run(reference, out)


def test_resume_refuses_a_changed_recipe(reference, tmp_path, capsys):
    import shutil
    run = tmp_path / "copy"
    shutil.copytree(reference, run)
    with pytest.raises(ConfigError, match=r"distill.alpha, optim.lr differ"):
        train(_cfg(run, "distill.alpha=0.3", "optim.lr=1e-3"), resume=True)
    assert main(["train", "--resume", str(run), "--no-progress", "distill.tau=2"]) == 2
    assert "distill.tau" in capsys.readouterr().err
    # forced, it goes on (here: a finished run extended by one epoch)
    assert main(["train", "--resume", str(run), "--no-progress", "epochs=5", "--force"]) == 0
    assert len(_metrics(run)) == 5
    assert main(["train", "--resume", str(tmp_path / "nothing")]) == 2
    assert "holds no config.yaml" in capsys.readouterr().err


def test_corrupt_last_checkpoint_names_the_file(reference, tmp_path):
    import shutil
    run = tmp_path / "copy"
    shutil.copytree(reference, run)
    (run / "summary.json").unlink()  # interrupted after its last epoch: it resumes from there
    data = (run / "checkpoint-last.pt").read_bytes()
    (run / "checkpoint-last.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"checkpoint-last.pt' is truncated or corrupt"):
        train(_cfg(run), resume=True)


def test_a_crash_while_saving_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "ck.pt"
    atomic_save({"w": torch.ones(3)}, path)
    real_save = torch.save

    def crash(obj, f, *a, **k):
        f.write(b"partial garbage")
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(CheckpointError, match=r"could not write '.*ck.pt': No space left"):
        atomic_save({"w": torch.zeros(3)}, path)
    monkeypatch.setattr(torch, "save", real_save)
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.ones(3))
    assert os.listdir(tmp_path) == ["ck.pt"]  # no temporary file left behind


def test_kept_epoch_checkpoints_are_a_ladder_of_half_point_highs(tmp_path, monkeypatch):
    # scripted validation accuracies: only new highs at least 0.5 points above the last kept
    # checkpoint are kept (epoch 1; 3: +0.6; 5: +0.8 over epoch 3; not 2, 4, 6: below or
    # less than half a point up), and the ladder survives an interrupted, resumed run
    accs = iter([0.300, 0.290, 0.306, 0.310, 0.314, 0.316, 0.330])
    real = train_mod.evaluate

    def scripted(*args, **kwargs):
        return {**real(*args, **kwargs), "fused_top1": next(accs)}
    monkeypatch.setattr(train_mod, "evaluate", scripted)
    args = ["epochs=7", "distill.kind=none", "keep_eval_checkpoints=true", "eval_every=1",
            "ema.enabled=false", "eval_train_images=0", "model.name=deit_tiny_patch16_224"]
    real_epoch = train_mod.train_one_epoch

    def dies_in_epoch_5(*a, **kw):
        if a[3] == 4:
            raise KeyboardInterrupt
        return real_epoch(*a, **kw)
    monkeypatch.setattr(train_mod, "train_one_epoch", dies_in_epoch_5)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(out, *args))
    monkeypatch.setattr(train_mod, "train_one_epoch", real_epoch)
    train(_cfg(out, *args), resume=True)
    kept = sorted(p.name for p in out.glob("checkpoint-epoch-*.pt"))
    assert kept == ["checkpoint-epoch-001.pt", "checkpoint-epoch-003.pt",
                    "checkpoint-epoch-005.pt", "checkpoint-epoch-007.pt"]
    assert torch.load(out / "checkpoint-epoch-005.pt",
                      weights_only=True)["metrics"]["fused_top1"] == pytest.approx(0.314)


def test_a_full_disk_mid_run_is_one_line_and_the_last_checkpoint_stays(tmp_path, monkeypatch,
                                                                      capsys):
    """The disk fills while epoch 2's checkpoint is written: exit status 2, one line naming the
    file and the cause, epoch 1's checkpoint intact and the run resumable."""
    out = tmp_path / "run"
    real_save, calls = torch.save, []

    def fills_up(obj, f, *a, **k):
        calls.append(1)
        if obj.get("epoch") == 2 and obj.get("meta", {}).get("role") == "student":
            f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *a, **k)
    monkeypatch.setattr(torch, "save", fills_up)
    args = ["train", "--out", str(out), "--no-progress", *TINY, "epochs=3"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("deitkit: error: could not write") and "No space left" in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert torch.load(out / "checkpoint-last.pt", weights_only=True)["epoch"] == 1
    monkeypatch.setattr(torch, "save", real_save)
    assert main(["train", "--resume", str(out), "--no-progress"]) == 0
    assert json.loads((out / "summary.json").read_text())["epochs"] == 3


def _image_folder(root, per_class=6, size=16):
    from PIL import Image
    g = torch.Generator().manual_seed(0)
    for split in ("train", "val"):
        for c in range(3):
            d = root / split / f"c{c}"
            d.mkdir(parents=True)
            for i in range(per_class):
                pix = (torch.rand(size, size, 3, generator=g) * 255).to(torch.uint8).numpy()
                Image.fromarray(pix).save(d / f"{i}.png")
    return root


@pytest.mark.parametrize("failure", ["read-only folder", "vanished image"])
def test_a_failure_mid_run_is_one_line_and_the_last_checkpoint_stays(tmp_path, monkeypatch,
                                                                     capsys, failure):
    """Epoch 2 meets a folder turned read-only (the checkpoint's temporary file cannot be
    made) or a training image deleted since epoch 1 (the worker loader reads it): exit status
    2, one line naming the file and the cause, epoch 1's checkpoint intact."""
    import tempfile as tempfile_mod
    data = _image_folder(tmp_path / "data")
    out = tmp_path / "run"
    real_epoch, real_mkstemp = train_mod.train_one_epoch, tempfile_mod.mkstemp
    gone = data / "train" / "c1" / "3.png"

    def epoch_then_fail(*a, **kw):
        result = real_epoch(*a, **kw)
        if a[3] == 0 and failure == "vanished image":
            gone.unlink()
        if a[3] == 1 and failure == "read-only folder":
            def refuse(*m, **mk):
                if "checkpoint" in mk.get("prefix", ""):
                    raise OSError(errno.EROFS, "Read-only file system")
                return real_mkstemp(*m, **mk)
            monkeypatch.setattr(tempfile_mod, "mkstemp", refuse)
        return result
    monkeypatch.setattr(train_mod, "train_one_epoch", epoch_then_fail)
    code = main(["train", "--out", str(out), "--data", str(data), "--no-progress",
                 "--recipe", "quickstart", "distill.kind=none", "model.name=deit_tiny_patch16_224",
                 "model.patch_size=8", "data.img_size=16", "model.overrides={depth: 1}",
                 "data.batch_size=4", "data.on_device=false", "data.num_workers=0",
                 "epochs=3", "eval_every=1", "tensorboard=false",
                 "eval_train_images=0"])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    if failure == "vanished image":
        assert str(gone) in err and "No such file" in err
    else:
        assert "checkpoint" in err and "Read-only file system" in err
    assert torch.load(out / "checkpoint-last.pt", weights_only=True)["epoch"] == 1

