"""Bad inputs through the real CLI: each refused with exit status 2 and a line naming what is
wrong, before work starts, and the output folder (holding a file of the user's) unchanged."""
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
]


@pytest.mark.parametrize("args, fragment", CASES, ids=[f"{i}-{c[0][0]}" for i, c in
                                                        enumerate(CASES)])
def test_bad_input_is_refused_and_changes_nothing(tmp_path, capsys, args, fragment):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("the user's own file")
    before = folder_hash(out)
    code = main([a.replace("OUT", str(out)) for a in args])
    err = capsys.readouterr().err
    assert code == 2, err
    assert fragment in err and err.startswith("deitkit: error:"), err
    assert "Traceback" not in err
    assert folder_hash(out) == before


def test_a_refused_run_leaves_no_empty_folder(tmp_path, capsys):
    out = tmp_path / "new"
    assert main(["train", "--out", str(out), *FAST, "model.patch_size=0"]) == 2
    assert not out.exists()
    assert main(["teacher", "--out", str(out), "--no-progress", "--model", "nosuchnet"]) == 2
    assert not out.exists()
