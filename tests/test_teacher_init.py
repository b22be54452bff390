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
from deitkit.config import ConfigError
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


# -- a student run that fine-tunes its own teacher; the teacher at its own resolution --------

def test_a_student_run_fine_tunes_its_teacher_with_the_finetune_recipe(timm_file, tmp_path):
    from deitkit.models.teacher_run import teacher_config_for, teacher_recipe
    cfg = build_config("quickstart", overrides=[f"teacher.train_weights={timm_file}",
                                                "teacher.img_size=48"])
    tcfg = teacher_config_for(cfg, tmp_path / "t")
    assert teacher_recipe(cfg) == "cnn-finetune" and tcfg.recipe.name == "cnn-finetune"
    assert tcfg.model.weights == str(timm_file) and tcfg.model.name == "resnet10t"
    assert tcfg.data.img_size == 48 and cfg.data.img_size == 32     # its own resolution
    assert tcfg.optim.lr is None and tcfg.optim.base_lr == 0.03
    mine = build_config("quickstart", overrides=[f"teacher.train_weights={timm_file}",
                                                 "teacher.train_recipe=cnn-teacher"])
    assert teacher_recipe(mine) == "cnn-finetune"                   # the default gives way
    other = build_config("quickstart", overrides=["teacher.train_recipe=quickstart"])
    assert teacher_recipe(other) == "quickstart"                    # no weights: as given


def test_deitkit_train_fine_tunes_its_teacher_at_its_size_and_says_so(timm_file, tmp_path,
                                                                     capsys):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--epochs", "1", "--no-progress", "amp=off",
                 "data.train_fraction=0.1", "eval_train_images=0", "teacher.train_epochs=1",
                 f"teacher.train_weights={timm_file}", "teacher.img_size=48"]) == 0
    printed = capsys.readouterr().out
    assert "fine-tuning a resnet10t teacher for 1 epochs at 48 px (recipe cnn-finetune)" \
        in printed
    assert "teacher init: loaded" in printed and "fc.weight" in printed
    import yaml
    tconf = yaml.safe_load((out / "teacher" / "config.yaml").read_text())
    assert tconf["model"]["weights"] == str(timm_file) and tconf["data"]["img_size"] == 48
    ckpt = torch.load(out / "teacher" / "checkpoint-last.pt", weights_only=True)
    assert ckpt["meta"]["img_size"] == 48
    # handed to another run with --teacher: fed the size it was trained at, and said so
    again = tmp_path / "again"
    assert main(["train", "--out", str(again), "--epochs", "1", "--no-progress", "amp=off",
                 "data.train_fraction=0.1", "eval_train_images=0",
                 "--teacher", str(out / "teacher")]) == 0
    assert "was trained at 48 px, so the student's 32-px batches are resized to 48" \
        in capsys.readouterr().out
    assert yaml.safe_load((again / "config.yaml").read_text())["teacher"]["img_size"] == 48


def test_a_teacher_at_twice_the_size_sees_the_batch_resized_on_the_device():
    import torch.nn.functional as F
    from torchvision.transforms import v2

    from deitkit.models import Teacher
    torch.manual_seed(3)
    cnn = timm.create_model("resnet10t", num_classes=10).eval()
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    teacher = Teacher(cnn, mean, std)
    teacher.set_student_input(mean, std, 64)
    x = torch.randn(4, 3, 32, 32)
    resized = v2.functional.resize(x, [64, 64], interpolation=v2.InterpolationMode.BILINEAR,
                                   antialias=True)                    # beforehand, torchvision
    with torch.no_grad():
        want = cnn(resized)
        assert not torch.allclose(cnn(x), want, atol=1e-3)           # the size matters
    assert torch.allclose(teacher(x), want, atol=1e-5)
    teacher.optimize(torch.device("cpu"), None, x.shape)             # BatchNorm folded: same
    assert torch.allclose(teacher(x), want, atol=1e-4)
    teacher.set_student_input(mean, std, 16)                         # shrinking: antialiased
    with torch.no_grad():
        small = cnn(F.interpolate(x, size=(16, 16), mode="bilinear", antialias=True))
    assert torch.allclose(teacher(x), small, atol=1e-4)


def test_a_store_recorded_for_another_teacher_size_is_refused():
    from deitkit.build import load_bundle as bundle_of
    from deitkit.distill.store import StoreError, check_fingerprint, fingerprint
    cfg = build_config("quickstart", overrides=["teacher.img_size=64"])
    bundle = bundle_of(cfg)
    recorded = fingerprint(cfg, bundle, 1, "abc")
    check_fingerprint(recorded, fingerprint(cfg, bundle, 1, "abc"), "S")   # the same: taken
    for other in ([], ["teacher.img_size=48"]):
        wanted = fingerprint(build_config("quickstart", overrides=other), bundle, 1, "abc")
        with pytest.raises(StoreError, match="teacher_img_size"):
            check_fingerprint(recorded, wanted, "S")


def test_layer_decay_scales_each_group_below_the_head_and_the_schedule_keeps_it():
    """optim.layer_decay: the classifier at the scheduled lr, each timm layer group below it
    `layer_decay` times the one above, through warm-up and cosine (timm's lr_scale)."""
    from deitkit.build import build_optimizer, build_scheduler
    model = timm.create_model("resnet10t", num_classes=3)
    for decay in (None, 0.5):
        cfg = build_config("cnn-finetune", overrides=[f"optim.layer_decay={decay or 'null'}"])
        opt = build_optimizer(cfg, model, lr=0.01)
        sched = build_scheduler(cfg, opt, updates_per_epoch=4)
        for update in (0, 3, 17):
            sched.step_update(update)
            lrs = sorted({float(f"{g['lr']:.9e}") for g in opt.param_groups})
            if decay is None:
                assert len(lrs) == 1
                continue
            top = max(lrs)
            assert len(lrs) >= 4  # stem, stages and head apart
            assert lrs == pytest.approx(sorted(top * decay ** k for k in range(len(lrs))), rel=1e-6)
            head = {id(p) for p in model.get_classifier().parameters()}
            assert all(g["lr"] == pytest.approx(top) for g in opt.param_groups
                       if any(id(p) in head for p in g["params"]))


def test_layer_decay_out_of_range_is_named():
    with pytest.raises(ConfigError, match="optim.layer_decay"):
        build_config("cnn-finetune", overrides=["optim.layer_decay=1.5"])


@pytest.mark.parametrize("same_names", [True, False])
def test_a_deitkit_checkpoint_of_other_classes_keeps_its_body_not_its_classifier(tmp_path,
                                                                                  same_names):
    """Five classes into five others (the pretraining emulation of docs/finetune.md): the
    counts match, the names do not, so the classifier starts fresh; the same names keep it.
    The run folder is accepted as the weights, as for students."""
    from deitkit.models.teacher import init_cnn
    torch.manual_seed(0)
    source = timm.create_model("resnet10t", num_classes=3)
    ours = ["a", "b", "c"]
    folder = tmp_path / "pre"
    folder.mkdir()
    torch.save({"model": source.state_dict(), "epoch": 3,
                "meta": {"role": "teacher", "classes": ours if same_names else ["x", "y", "z"]}},
               folder / "checkpoint-best.pt")
    model = timm.create_model("resnet10t", num_classes=3)
    lines = init_cnn(model, str(folder), classes=ours)
    mine, theirs = model.state_dict(), source.state_dict()
    assert torch.equal(mine["conv1.0.weight"], theirs["conv1.0.weight"])
    assert torch.equal(mine["fc.weight"], theirs["fc.weight"]) is same_names
    assert any("trained on the classes ['x', 'y', 'z']" in line for line in lines) is not same_names


def test_the_teacher_forward_is_the_one_measured_fastest_and_says_so():
    """Teacher.optimize times each candidate forward and keeps the fastest; `fastest_of`
    itself ranks by measured time (a candidate that sleeps longer loses)."""
    import time as clock

    from deitkit.models import Teacher
    from deitkit.models.teacher import fastest_of
    secs = fastest_of({"slow": lambda: clock.sleep(0.03), "fast": lambda: clock.sleep(0.001)})
    assert min(secs, key=secs.get) == "fast" and secs["slow"] > 0.025
    calls = []
    fastest_of({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=2)
    assert calls == ["a", "b", "a", "b", "a", "b"]                   # warm-up, then alternated
    torch.manual_seed(0)
    cnn = timm.create_model("resnet10t", num_classes=5).eval()
    teacher = Teacher(cnn, (0.5,) * 3, (0.5,) * 3)
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        want = cnn(x)
    line = teacher.optimize(torch.device("cpu"), None, x.shape)
    assert teacher.optimized in ("plain", "channels_last", "fx-onednn")
    assert line.startswith(teacher.optimized) and "the speed of the plain forward" in line
    assert "fx-onednn" in line and "channels_last" in line               # both were timed
    assert torch.allclose(teacher(x), want, atol=1e-4)

def test_a_teacher_torch_fx_cannot_trace_keeps_a_plain_forward_and_says_why():
    from deitkit.models import Teacher

    class Branchy(torch.nn.Module):  # control flow on a value: torch.fx cannot trace it
        def __init__(self):
            super().__init__()
            self.conv, self.fc = torch.nn.Conv2d(3, 4, 3), torch.nn.Linear(4, 3)

        def forward(self, x):
            y = self.conv(x).mean((2, 3))
            return self.fc(y if y.sum() > 0 else -y)
    model = Branchy().eval()
    teacher = Teacher(model, (0.5,) * 3, (0.5,) * 3)
    x = torch.randn(4, 3, 16, 16)
    line = teacher.optimize(torch.device("cpu"), None, x.shape)
    assert "torch.fx oneDNN left out" in line and teacher.optimized != "fx-onednn"
    with torch.no_grad():
        assert torch.allclose(teacher(x), model(x), atol=1e-5)
