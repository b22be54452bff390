"""A CNN teacher fine-tuned from pretrained weights: every matching tensor loaded, the
classifier re-initialised for the data's classes, mismatches named (no downloads: tiny
random-weight timm and torchvision models saved to files here)."""
import pytest
import safetensors.torch
import timm
import torch
import torchvision

from deitkit import build_config
from deitkit.build import build_run, load_bundle
from deitkit.checkpoint import CheckpointError
from deitkit.cli import main
from deitkit.distributed import DistInfo

BASE = ["data.train_fraction=0.1", "progress=false", "device=cpu", "amp=off",
        "data.batch_size=16", "epochs=1", "tensorboard=false"]


@pytest.fixture(scope="module")
def timm_file(tmp_path_factory):
    """A 1000-class timm resnet10t, as an ImageNet file would be (random weights)."""
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("w") / "resnet10t.safetensors"
    safetensors.torch.save_file(timm.create_model("resnet10t", num_classes=1000).state_dict(),
                                str(path))
    return path


def _teacher_run(tmp_path, *overrides):
    cfg = build_config("cnn-teacher", overrides=[*BASE, f"out={tmp_path / 'run'}", *overrides])
    lines = []
    run = build_run(cfg, "teacher", load_bundle(cfg), dist_info=DistInfo(), log=lines.append)
    return run, lines


def test_a_1000_class_file_fine_tunes_a_10_class_teacher(timm_file, tmp_path):
    run, lines = _teacher_run(tmp_path, "model.name=resnet10t", "model.small_stem=false",
                              f"model.weights={timm_file}")
    file = safetensors.torch.load_file(str(timm_file))
    own = run.model.state_dict()
    assert own["fc.weight"].shape == (10, 512) and file["fc.weight"].shape == (1000, 512)
    for k, v in file.items():
        if not k.startswith("fc."):
            assert torch.equal(own[k], v), k  # every other tensor is the file's
    said = " ".join(lines)
    assert "teacher init: loaded" in said and "fc.weight" in said and "(1000, 512)" in said
    # without the file: the same architecture starts from other (random) weights
    plain, _ = _teacher_run(tmp_path, "model.name=resnet10t", "model.small_stem=false")
    assert not torch.equal(plain.model.state_dict()["conv1.0.weight"], file["conv1.0.weight"])


def test_torchvision_weights_fine_tune_too(tmp_path):
    torch.manual_seed(2)
    path = tmp_path / "tv.pth"
    torch.save(torchvision.models.resnet18(num_classes=1000).state_dict(), path)
    run, lines = _teacher_run(tmp_path, "model.name=resnet18", "model.small_stem=false",
                              f"model.weights={path}")
    file = torch.load(path, weights_only=True)
    assert torch.equal(run.model.state_dict()["layer4.1.conv2.weight"],
                       file["layer4.1.conv2.weight"])
    assert run.model.state_dict()["fc.weight"].shape[0] == 10


def test_mismatches_are_named(timm_file, tmp_path):
    r18 = tmp_path / "resnet18.safetensors"  # an ImageNet stem (7x7) ...
    safetensors.torch.save_file(timm.create_model("resnet18", num_classes=1000).state_dict(),
                                str(r18))
    with pytest.raises(CheckpointError, match=r"'conv1.weight' is \(64, 3, 7, 7\) in the file, "
                                              r"\(64, 3, 3, 3\) in the model.*small_stem=false"):
        _teacher_run(tmp_path, "model.name=resnet18", "model.small_stem=true",  # ... a CIFAR one
                     f"model.weights={r18}")
    with pytest.raises(CheckpointError, match=r"do not fit the model: 'layer2.0.downsample"):
        _teacher_run(tmp_path, "model.name=resnet18", "model.small_stem=false",
                     f"model.weights={timm_file}")  # a resnet10t file: one block per stage
    with pytest.raises(CheckpointError, match="does not exist"):
        _teacher_run(tmp_path, "model.name=resnet10t", "model.small_stem=false",
                     f"model.weights={tmp_path / 'no.pt'}")


def test_deitkit_teacher_with_weights_trains_from_them(timm_file, tmp_path, capsys):
    out = tmp_path / "t"
    assert main(["teacher", "--out", str(out), "--model", "resnet10t", "--epochs", "1",
                 "--no-progress", "--data", "digits", "data.train_fraction=0.1",
                 "model.small_stem=false", f"model.weights={timm_file}", "amp=off"]) == 0
    assert "teacher init: loaded" in capsys.readouterr().out
