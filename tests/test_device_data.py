"""Data on the device: the decoded cache (safe format, keyed by the files, rebuilt when they
change), the on/off decision, the loaders, and runs through them."""
import json
import os
import shutil

import numpy as np
import pytest
import safetensors
import torch
from PIL import Image

from deitkit.config import AugConfig, ConfigError, DataConfig, build_config, replace_keys
from deitkit.data import load_dataset
from deitkit.data import device as dd
from deitkit.data.sampler import RepeatedAugSampler
from deitkit.build import build_loaders
from deitkit.pipeline import train


@pytest.fixture()
def folder(cifar_folder, tmp_path):
    root = tmp_path / "cifar"
    shutil.copytree(cifar_folder, root)
    return root


def _decode(root, cache, log=None):
    bundle = load_dataset(str(root))
    lines = []
    out = dd.cached_decode(bundle.train, 32, AugConfig(), "train", cache, progress=False,
                           log=log or lines.append)
    return bundle, out, lines


def test_cache_is_safetensors_keyed_by_the_files_and_rebuilt_when_one_changes(folder, tmp_path,
                                                                               monkeypatch):
    cache = tmp_path / "cache"
    bundle, first, lines = _decode(folder, cache)
    assert first.images.dtype == torch.uint8 and first.images.shape == (200, 3, 32, 32)
    files = list(cache.glob("*.safetensors"))
    assert len(files) == 1 and "decoding 200 train images" in lines[0]
    # the pixels are the files' pixels (CIFAR is stored at 32 px: the decode is the identity)
    path, label = bundle.train.base.samples[bundle.train.indices[7]]
    assert torch.equal(first.images[7], torch.from_numpy(
        np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1))
    assert first.targets[7] == label
    # a safe format: safetensors with JSON metadata, no pickle
    with safetensors.safe_open(str(files[0]), "pt") as f:
        assert set(f.keys()) == {"images", "targets"}
        assert json.loads(f.metadata()["deitkit"])["files"] == 200
    # second run: read back, not decoded
    monkeypatch.setattr(dd, "decode", lambda *a, **k: pytest.fail("decoded again"))
    _, again, lines = _decode(folder, cache)
    assert torch.equal(again.images, first.images) and lines == []
    monkeypatch.undo()
    # one file changes: a new key, decoded again, the old cache removed
    Image.new("RGB", (32, 32), (255, 0, 0)).save(path)
    os.utime(path, ns=(1, 10**18))
    _, changed, lines = _decode(folder, cache)
    assert "replacing 1 older cache" in lines[0]
    assert len(list(cache.glob("*.safetensors"))) == 1
    assert list(cache.glob("*.safetensors"))[0] != files[0]
    assert (changed.images[7].float().mean(dim=(1, 2)) - torch.tensor([254., 0, 0])).abs().max() < 3
    assert torch.equal(changed.images[8], first.images[8])


def test_a_torn_cache_is_rebuilt_with_a_message(folder, tmp_path):
    cache = tmp_path / "cache"
    _decode(folder, cache)
    f = next(cache.glob("*.safetensors"))
    f.write_bytes(f.read_bytes()[:1000])
    _, out, lines = _decode(folder, cache)
    assert "unreadable" in lines[0] and "rebuilding" in lines[0]
    assert out.images.shape == (200, 3, 32, 32)


def test_unreadable_images_error_or_are_skipped_and_listed(folder, tmp_path):
    bad = next((folder / "train").glob("cat/*.jpg"))
    bad.write_bytes(b"not a jpeg")
    cfg = build_config("quickstart", overrides=[f"data.name={folder}", "data.on_device=true",
                                                f"data.cache_dir={tmp_path / 'c'}"])
    bundle = load_dataset(str(folder))
    with pytest.raises(Exception, match=str(bad.name)):
        build_loaders(cfg, bundle, torch.device("cpu"))
    cfg = replace_keys(cfg, **{"data.on_bad_image": "skip"})  # the config is frozen
    log = tmp_path / "skipped.txt"
    build_loaders(cfg, load_dataset(str(folder)), torch.device("cpu"), log)
    assert str(bad) in log.read_text()
    log.unlink()  # the second run reads the cache, and still lists the skipped file
    build_loaders(cfg, load_dataset(str(folder)), torch.device("cpu"), log)
    assert str(bad) in log.read_text()


def test_decision_auto_true_false():
    cpu = torch.device("cpu")
    small, aug = DataConfig(), AugConfig()
    assert dd.decide(small, aug, 1000, 100, cpu).on_device
    assert "augmented there" in dd.decide(small, aug, 1000, 100, cpu).reason
    assert not dd.decide(DataConfig(on_device=False), aug, 1000, 100, cpu).on_device
    tiny_share = DataConfig(device_share=1e-9)
    d = dd.decide(tiny_share, aug, 1000, 100, cpu)
    assert not d.on_device and "worker loader" in d.reason and "device_share" in d.reason
    with pytest.raises(ConfigError, match="device_share"):
        dd.decide(DataConfig(on_device=True, device_share=1e-9), aug, 1000, 100, cpu)
    v2 = AugConfig(stack="v2")
    assert not dd.decide(small, v2, 10, 10, cpu).on_device
    with pytest.raises(ConfigError, match="v2"):
        dd.decide(DataConfig(on_device=True), v2, 10, 10, cpu)
    assert not dd.decide(small, AugConfig(remode="const"), 10, 10, cpu).on_device
    # a compiled augmentation's views differ by float rounding: a teacher store tells them apart
    assert dd.decide(small, aug, 1000, 100, cpu).views == "device:cpu"
    assert dd.decide(DataConfig(compile_augment=True), aug, 10, 10, cpu).views == \
        "device:cpu+compiled"
    assert dd.decide(DataConfig(on_device=False, compile_augment=True), aug, 10, 10,
                     cpu).views == "workers"


def test_on_device_is_a_typed_option():
    assert build_config("quickstart", overrides=["data.on_device=true"]).data.on_device is True
    assert build_config("quickstart", overrides=["data.on_device=auto"]).data.on_device == "auto"
    with pytest.raises(ConfigError, match="on_device"):
        build_config("quickstart", overrides=["data.on_device=maybe"])


def test_device_loader_covers_the_samplers_order_and_replays(folder, tmp_path):
    cfg = build_config("quickstart", overrides=[f"data.name={folder}", "data.on_device=true",
                                                f"data.cache_dir={tmp_path / 'c'}",
                                                "aug.stack=deit", "aug.crop=rrc",
                                                "aug.repeated_aug=3", "data.batch_size=20"])
    bundle = load_dataset(str(folder))
    train_loader, val_loader = build_loaders(cfg, bundle, torch.device("cpu"))
    assert isinstance(train_loader, dd.DeviceTrainLoader) and len(train_loader) == 10
    train_loader.sampler.set_epoch(1)
    batches = list(train_loader)
    labels = torch.cat([y for _, y in batches])
    ref = RepeatedAugSampler(200, 3, seed=cfg.seed)
    ref.set_epoch(1)
    order, _ = ref.epoch_order()
    assert torch.equal(labels, torch.tensor(bundle.train.targets)[order[:200]])
    again = list(train_loader)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again))
    # repeated augmentation: the copies of one image are different views
    x = torch.cat([b for b, _ in batches])
    first = (order[:200] == order[0]).nonzero().flatten()
    assert len(first) >= 2 and not torch.equal(x[first[0]], x[first[1]])
    val = list(val_loader)
    assert sum(len(y) for _, y in val) == 50
    assert torch.equal(torch.cat([y for _, y in val]), torch.tensor(bundle.val.targets))


def test_compile_augment_compiles_the_loaders_augmentation(folder, tmp_path, monkeypatch):
    """data.compile_augment=true: the training loader's augmentation is the compiled graph
    (aot_eager here: inductor's code generation takes a minute on this CPU), same batches."""
    from deitkit.data import gpu_aug
    compiled = []

    def fake_compile(augment, device):
        compiled.append(device)
        return gpu_aug.compile_augment(augment, device, backend="aot_eager")
    monkeypatch.setattr(dd, "compile_augment", fake_compile)
    base = [f"data.name={folder}", "data.on_device=true", f"data.cache_dir={tmp_path / 'c'}",
            "data.batch_size=50"]
    bundle = load_dataset(str(folder))
    plain, _ = build_loaders(build_config("quickstart", overrides=base), bundle,
                             torch.device("cpu"))
    fused, _ = build_loaders(build_config("quickstart", overrides=base +
                                          ["data.compile_augment=true"]), bundle,
                             torch.device("cpu"))
    assert compiled == [torch.device("cpu")] and fused.augment is not plain.augment
    for loader in (plain, fused):
        loader.sampler.set_epoch(2)
    for (a, ya), (b, yb) in zip(plain, fused):
        assert torch.equal(ya, yb) and torch.equal(a, b)


@pytest.mark.parametrize("on_device", [True, False])
def test_a_short_cifar_run_through_either_pipeline(folder, tmp_path, on_device):
    cfg = build_config("quickstart", overrides=[
        f"data.name={folder}", f"data.on_device={str(on_device).lower()}",
        f"data.cache_dir={tmp_path / 'c'}", "aug.stack=deit", "aug.crop=rrc", "epochs=2",
        "teacher.train_epochs=1", "amp=off", f"out={tmp_path / 'run'}", "progress=false",
        "eval_every=1"])
    lines = []
    s = train(cfg, log=lambda *a: lines.append(" ".join(map(str, a))))
    said = [line for line in lines if line.startswith("data: ")]
    assert said and all(("augmented there" in line) == on_device for line in said)
    assert s["eval_images"] == 50
    assert s["train_clean_top1"] is not None
