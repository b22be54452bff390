"""Bad inputs through the real CLI, each in its own `python -m deitkit` process: refused with
exit status 2 and a line naming what is wrong, before work starts, no traceback, and the output
folder (holding a file of the user's) unchanged."""
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import folder_hash
from deitkit.cli import main

FAST = ["--no-progress", "--device", "cpu", "--epochs", "1", "teacher.train_epochs=1",
        "data.train_fraction=0.1", "model.overrides={depth: 1}"]


CASES = [  # (arguments after `deitkit`, with OUT for the output folder; a fragment of the error)
    (["train", "--out", "OUT", *FAST, "--time-budget", "inf"], "finite number of minutes"),
    (["train", "--out", "OUT", *FAST, "--time-budget", "nan"], "finite number of minutes"),
    (["train", "--out", "OUT", *FAST, "--time-budget", "0"], "above 0"),
    (["train", "--out", "OUT", *FAST, "--time-budget", "-1"], "above 0"),
    (["train", "--out", "OUT", *FAST, "model.patch_size=0"], "patch_size must be"),
    (["train", "--out", "OUT", *FAST, "model.patch_size=5"], "not a multiple of patch_size"),
    (["train", "--out", "OUT", *FAST, "model.drop_path=5"], "drop_path must be in [0, 1)"),
    (["train", "--out", "OUT", *FAST, "model.overrides.depth=-3"], "depth must be"),
    (["train", "--out", "OUT", *FAST, "model.overrides.num_heads=5"], "num_heads"),
    (["train", "--out", "OUT", *FAST, "model.overrides.nosuch=1"], "nosuch"),
    (["train", "--out", "OUT", *FAST, "model.name=deit_tiny_patch16_224"],
     "needs a student with a distillation token"),
    (["train", "--out", "OUT", *FAST, "distill.kidn=soft"], "unknown key 'distill.kidn'"),
    (["train", "--out", "OUT", *FAST, "data.batch_size=0"], "data.batch_size"),
    (["train", "--out", "OUT", *FAST, "epochs=0"], "'epochs' must be at least 1"),
    (["train", "--out", "OUT", *FAST, "distill.alpha=2"], "distill.alpha"),
    (["train", "--out", "OUT", *FAST, "data.train_fraction=0"], "data.train_fraction"),
    (["train", "--out", "OUT", *FAST, "distill.heads=cls"], "heads=cls"),
    (["train", "--out", "OUT", *FAST, "amp=fp16"], "amp=fp16 needs a GPU"),
    (["train", "--out", "OUT", *FAST, "--data", "OUT/nothing-here"], "nothing-here"),
    (["train", "--resume", "OUT"], "holds no config.yaml"),
    (["train", "--resume", "OUT", "--overwrite"], "give one"),
    (["teacher", "--out", "OUT", "--no-progress", "--epochs", "1", "--model", "nosuchnet"],
     "nosuchnet"),
    (["predict", "OUT/none.pt", "OUT", "--topk", "0"], "--topk must be at least 1"),
    (["predict", "OUT/none.pt", "OUT", "--batch-size", "0"], "--batch-size must be at least 1"),
    (["predict", "OUT/none.pt", "OUT"], "does not exist"),
    (["export", "OUT/none.pt", "OUT/mine.txt"], "would overwrite"),
    (["export", "OUT/none.pt", "OUT/model.bin"], "use a .safetensors or .onnx"),
    (["eval", "OUT/none.pt"], "does not exist"),
    # keys set but not read by this run: refused, never silently dropped
    (["train", "--out", "OUT", *FAST, "distill.kind=none", "distill.heads=cls"],
     "teacher.train_epochs: distill.kind=none trains and runs no teacher"),
    (["train", "--out", "OUT", *FAST, "mae.mask_ratio=0.5"], "only `deitkit pretrain` reads"),
    (["train", "--out", "OUT", *FAST, "model.small_stem=true"], "small_stem is a CNN setting"),
    (["teacher", "--out", "OUT", "--no-progress", "--epochs", "1", "distill.kind=soft"],
     "a teacher run distils from no teacher"),
    (["teacher", "--out", "OUT", "--no-progress", "--epochs", "1", "model.patch_size=4"],
     "a CNN has no patches"),
    (["pretrain", "--out", "OUT", "--no-progress", "--epochs", "1", "aug.mixup=0"],
     "random resized crop"),
    (["pretrain", "--out", "OUT", "--no-progress", "--epochs", "1", "ema.decay=0.9"],
     "pretraining keeps no EMA"),
    (["pretrain", "--out", "OUT", "--no-progress", "--epochs", "1", "--time-budget", "inf"],
     "finite number of minutes"),
    (["pretrain", "--out", "OUT", "--no-progress", "--epochs", "1", "mae.mask_ratio=1"],
     "mae.mask_ratio"),
    (["pretrain", "--out", "OUT", "--no-progress", "--epochs", "1", "model.weights=w.pt"],
     "starts from random weights"),
    (["pretrain", "--resume", "OUT"], "holds no config.yaml"),
    (["pretrain", "--out", "OUT", "--no-progress", "--epochs", "1", "data.holdout=0.1"],
     "pretraining chooses no fusion weight"),
    (["train", "--out", "OUT", *FAST, "data.holdout=0.6"], "data.holdout"),
    (["train", "--out", "OUT", *FAST, "distill.fusion_weight=1.5"], "distill.fusion_weight"),
    (["train", "--out", "OUT", *FAST, "data.holdout=lots"], "data.holdout"),
]


@pytest.fixture(scope="module")
def refused(tmp_path_factory):
    """Every case through the real CLI in its own process (two at a time, one thread each):
    (exit status, stderr, the output folder's hash before, after)."""
    root = tmp_path_factory.mktemp("bad")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def one(i):
        here = root / f"case{i}"
        out = here / "out"
        out.mkdir(parents=True)
        (out / "mine.txt").write_text("the user's own file")
        before = folder_hash(out)
        p = subprocess.run([sys.executable, "-m", "deitkit",
                            *[a.replace("OUT", str(out)) for a in CASES[i][0]]],
                           capture_output=True, text=True, timeout=600, cwd=here, env=env)
        return p.returncode, p.stderr, before, folder_hash(out)
    with ThreadPoolExecutor(2) as pool:
        return list(pool.map(one, range(len(CASES))))


def test_there_are_at_least_40_cases():
    assert len(CASES) >= 40


@pytest.mark.parametrize("i", range(len(CASES)), ids=[f"{i}-{c[0][0]}" for i, c in
                                                       enumerate(CASES)])
def test_bad_input_is_refused_and_changes_nothing(refused, i):
    code, err, before, after = refused[i]
    last = err.strip().splitlines()[-1] if err.strip() else ""
    assert code == 2, err
    assert last.startswith("deitkit: error:") and CASES[i][1] in last, err
    assert "Traceback" not in err
    assert after == before


def test_debug_shows_the_traceback_and_keeps_the_status(tmp_path, capsys):
    args = ["train", "--out", str(tmp_path / "r"), *FAST, "model.patch_size=0"]
    assert main(["--debug", *args]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "patch_size must be" in err
    assert main([*args[:3], "--debug", *args[3:]]) == 2          # anywhere on the line
    assert "Traceback" in capsys.readouterr().err


def test_a_refused_run_leaves_no_empty_folder(tmp_path, capsys):
    out = tmp_path / "new"
    assert main(["train", "--out", str(out), *FAST, "model.patch_size=0"]) == 2
    assert not out.exists()
    assert main(["teacher", "--out", str(out), "--no-progress", "--model", "nosuchnet"]) == 2
    assert not out.exists()
