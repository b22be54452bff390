"""Where a model meets data, its class names are checked, not only their count: a teacher or
an evaluation on other classes is refused naming both lists; fine-tuning on other classes
keeps the body and re-initialises the heads, saying why; a pretraining run's encoder is
refused where heads are needed."""
import numpy as np
import pytest
from PIL import Image

from deitkit.cli import main

TINY = ["--epochs", "1", "--no-progress", "amp=off", "distill.kind=none", "distill.heads=cls",
        "data.train_fraction=0.1", "eval_train_images=0", "tensorboard=false"]


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cls") / "run"
    assert main(["train", "--out", str(out), *TINY]) == 0
    return out


@pytest.fixture(scope="module")
def other_classes(tmp_path_factory):
    """An ImageFolder of ten classes that are not the digits' (same count)."""
    root = tmp_path_factory.mktemp("letters")
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in "abcdefghij":
            for i in range(3):
                (root / split / c).mkdir(parents=True, exist_ok=True)
                Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(
                    root / split / c / f"{i}.png")
    return root


def test_eval_on_other_classes_of_the_same_count_is_refused(digits_run, other_classes, capsys):
    assert main(["eval", str(digits_run), "--data", str(other_classes)]) == 2
    err = capsys.readouterr().err
    assert "['0', '1', '2'" in err and "['a', 'b', 'c'" in err


def test_a_teacher_trained_on_other_classes_is_refused(digits_run, other_classes, tmp_path,
                                                       capsys):
    out = tmp_path / "st"
    assert main(["train", "--data", str(other_classes), "--recipe", "quickstart", "--out",
                 str(out), "--teacher", str(digits_run), "--epochs", "1", "--no-progress",
                 "amp=off", "data.batch_size=8"]) == 2
    err = capsys.readouterr().err
    assert "the teacher" in err and "['a', 'b', 'c'" in err and "['0', '1'" in err


def test_fine_tuning_on_other_classes_keeps_the_body_and_renews_the_heads(
        digits_run, other_classes, tmp_path, capsys):
    assert main(["train", "--data", str(other_classes), "--recipe", "quickstart", "--out",
                 str(tmp_path / "ft"), f"model.weights={digits_run}", *TINY,
                 "data.train_fraction=1.0", "data.batch_size=8"]) == 0
    out = capsys.readouterr().out
    assert "heads re-initialised: the weights were trained on the classes ['0', '1'" in out
    assert "this data's are ['a', 'b'" in out


def test_a_pretraining_run_cannot_teach_or_be_evaluated(tmp_path, capsys):
    pre = tmp_path / "mae"
    assert main(["pretrain", "--out", str(pre), "--epochs", "1", "--no-progress", "amp=off",
                 "data.train_fraction=0.1", "mae.pictures=0"]) == 0
    capsys.readouterr()
    assert main(["eval", str(pre)]) == 2
    assert "pretraining run's encoder" in capsys.readouterr().err
    assert main(["train", "--out", str(tmp_path / "s"), "--teacher", str(pre), *TINY[:4],
                 "data.train_fraction=0.1"]) == 2
    assert "pretraining run's encoder" in capsys.readouterr().err
    assert main(["export", str(pre), str(tmp_path / "m.onnx")]) == 2
    assert "pretraining run's encoder" in capsys.readouterr().err
    # as safetensors the encoder exports, and timm rebuilds it from the file and its json
    import json

    import timm
    import torch
    assert main(["export", str(pre), str(tmp_path / "enc.safetensors")]) == 0
    meta = json.loads((tmp_path / "enc.json").read_text())
    assert meta["model_name"] == "deit_tiny_patch16_224" and meta["num_classes"] == 0
    enc = timm.create_model(meta["model_name"], pretrained=True, pretrained_cfg_overlay=dict(
        file=str(tmp_path / "enc.safetensors")), **meta["timm_kwargs"])
    ckpt = torch.load(pre / "checkpoint-last.pt", weights_only=True)
    for k, v in ckpt["model"].items():
        assert torch.equal(enc.state_dict()[k], v), k


def test_predict_checks_class_folders_against_the_model(digits_run, other_classes, tmp_path,
                                                        capsys):
    # folders named by the model's classes: scored, the folders as labels
    rng = np.random.default_rng(1)
    mine = tmp_path / "mine"
    for c in ("3", "7"):
        (mine / c).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(
                mine / c / f"{i}.png")
    assert main(["predict", str(digits_run), str(mine), "--no-progress"]) == 0
    assert "labelled by class folders: top-1" in capsys.readouterr().err
    # folders none of which is a class: not labels, predicted as they are
    assert main(["predict", str(digits_run), str(other_classes / "val"), "--no-progress"]) == 0
    assert "labelled by class folders" not in capsys.readouterr().err
    # a mix: refused, naming the folders the model does not know
    (mine / "seven").mkdir()
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(mine / "seven" / "x.png")
    assert main(["predict", str(digits_run), str(mine), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "seven are not among its classes" in err and "['0', '1'" in err
