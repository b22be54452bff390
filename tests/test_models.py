
import pytest
import timm
import torch
import torchvision

from deitkit import create_student, create_teacher, student_forward
from deitkit.checkpoint import CheckpointError, atomic_save
from deitkit.config import build_config
from deitkit.models import DEIT_NAMES, create_cnn, has_dist_token
from deitkit.build import check_distillable
from deitkit.config import ConfigError


def test_registry_covers_timm_deit_names():
    timm_deit = {n for n in timm.list_models("deit_*") if "deit3" not in n}
    assert timm_deit <= set(DEIT_NAMES) and len(DEIT_NAMES) == 12


def test_384_names_default_to_384_px():
    m = create_student("deit_tiny_distilled_patch16_384", num_classes=3, depth=1)
    assert m.patch_embed.img_size == (384, 384) and m.pos_embed.shape[1] == 24 * 24 + 2


@pytest.mark.parametrize("name", DEIT_NAMES)
def test_every_deit_name_builds_small(name):
    # small sizes for speed: 32 px, patch 16 -> 4 patches; depth 1
    m = create_student(name, num_classes=7, img_size=32, patch_size=16, depth=1)
    assert isinstance(m, timm.models.deit.VisionTransformerDistilled) == ("distilled" in name)
    out = student_forward(m, torch.randn(2, 3, 32, 32))
    assert out.cls_logits.shape == (2, 7)
    if "distilled" in name:
        assert out.dist_logits.shape == (2, 7) and out.dist_token.shape == out.cls_token.shape
        assert m.pos_embed.shape[1] == 4 + 2
    else:
        assert out.dist_logits is None and m.pos_embed.shape[1] == 4 + 1


def test_small_image_overrides():
    m = create_student("deit_tiny_distilled_patch16_224", num_classes=10, img_size=32,
                       patch_size=4, drop_path_rate=0.2)
    assert m.patch_embed.grid_size == (8, 8) and m.pos_embed.shape[1] == 66
    assert m.blocks[-1].drop_path1.drop_prob == pytest.approx(0.2)
    with pytest.raises(ValueError, match="multiple of patch_size"):
        create_student("deit_tiny_distilled_patch16_224", img_size=30, patch_size=4)
    with pytest.raises(ValueError, match="unknown student"):
        create_student("resnet18")


def test_distillation_with_plain_deit_is_a_clear_error():
    cfg = build_config("quickstart", overrides=["model.name=deit_tiny_patch16_224"])
    m = create_student(cfg.model.name, num_classes=10, img_size=32, patch_size=8, depth=1)
    assert not has_dist_token(m)
    with pytest.raises(ConfigError, match="deit_tiny_distilled_patch16_224"):
        check_distillable(cfg, m)


def test_teacher_by_name_is_frozen_and_checks_classes():
    t = create_teacher("resnet18", num_classes=10)
    assert not t.training and all(not p.requires_grad for p in t.parameters())
    t.train()
    assert not t.training and not t.model.training
    assert create_teacher("mobilenet_v3_small", num_classes=10).num_classes == 10  # torchvision
    with pytest.raises(ValueError, match="unknown model"):
        create_teacher("not_a_model", num_classes=10)


def test_teacher_weights_files(tmp_path):
    tv = torchvision.models.resnet18(num_classes=10)
    torch.save(tv.state_dict(), tmp_path / "tv.pth")
    t = create_teacher("resnet18", num_classes=10, weights=str(tmp_path / "tv.pth"))
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(t(x), tv.eval()(x), atol=1e-5)
    tm = timm.create_model("resnet18", num_classes=10)
    torch.save({"state_dict": tm.state_dict()}, tmp_path / "timm.pth")
    create_teacher("resnet18", num_classes=10, weights=str(tmp_path / "timm.pth"))
    with pytest.raises(ValueError, match="predicts 10 classes but the dataset has 5"):
        create_teacher(str(_deitkit_ckpt(tmp_path)), num_classes=5)
    with pytest.raises(CheckpointError, match="fc.weight"):
        create_teacher("resnet18", num_classes=7, weights=str(tmp_path / "tv.pth"))


def _deitkit_ckpt(tmp_path):
    m = create_cnn("resnet18", 10, small_stem=True)
    meta = {"role": "teacher", "model_name": "resnet18", "num_classes": 10, "small_stem": True,
            "model_overrides": {}, "mean": [0.5] * 3, "std": [0.25] * 3, "img_size": 32}
    path = tmp_path / "run" / "checkpoint-best.pt"
    atomic_save({"model": m.state_dict(), "meta": meta}, path)
    return path


def test_teacher_from_run_folder_renormalises(tmp_path):
    path = _deitkit_ckpt(tmp_path)
    t = create_teacher(str(path.parent), num_classes=10)
    assert isinstance(t.model.maxpool, torch.nn.Identity)
    mean_s, std_s = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    t.set_student_input(mean_s, std_s)
    assert t.renormalize
    raw = torch.rand(2, 3, 32, 32)
    x_student = (raw - torch.tensor(mean_s).view(1, 3, 1, 1)) / torch.tensor(std_s).view(1, 3, 1, 1)
    expected = t.model((raw - 0.5) / 0.25)
    assert torch.allclose(t(x_student), expected, atol=1e-4)
    t.set_student_input([0.5] * 3, [0.25] * 3)
    assert not t.renormalize


class _Evil:
    def __reduce__(self):
        import os
        return (os.system, ("touch /tmp/deitkit_pwned",))


def test_malicious_checkpoint_is_refused(tmp_path):
    import os
    if os.path.exists("/tmp/deitkit_pwned"):
        os.remove("/tmp/deitkit_pwned")
    bad = tmp_path / "evil.pt"
    torch.save({"model": {}, "meta": _Evil()}, bad)
    with pytest.raises(CheckpointError, match="refused by the safe loader"):
        create_teacher(str(bad), num_classes=10)
    assert not os.path.exists("/tmp/deitkit_pwned")
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes(_deitkit_ckpt(tmp_path).read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="trunc.pt.*truncated or corrupt"):
        create_teacher(str(trunc), num_classes=10)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        create_teacher(str(empty), num_classes=10)
