import gzip
import struct
import urllib.error
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from deitkit.config import AugConfig
from deitkit.data import (DataError, RepeatedAugSampler, build_eval_transform, build_mixer,
                          build_train_transform, load_dataset, stratified_subset)
from deitkit.data import sources

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def test_digits_split_is_fixed_and_stratified():
    b = load_dataset("digits")
    assert (len(b.train), len(b.val), b.num_classes) == (1437, 360, 10)
    img, y = b.train[0]
    assert img.size == (32, 32) and img.mode == "RGB" and 0 <= y < 10
    assert b.train.targets == load_dataset("digits").train.targets
    assert min(Counter(b.val.targets).values()) >= 35


def test_train_fraction_is_stratified_and_seeded():
    targets = [c for c in range(4) for _ in range(100)]
    a = stratified_subset(targets, 0.1, seed=1)
    assert len(a) == 40 and Counter(targets[i] for i in a) == {c: 10 for c in range(4)}
    assert a == stratified_subset(targets, 0.1, seed=1) != stratified_subset(targets, 0.1, seed=2)
    b = load_dataset("digits", train_fraction=0.25)
    assert 355 <= len(b.train) <= 362 and len(b.val) == 360
    with pytest.raises(DataError):
        stratified_subset(targets, 0.0, 0)


def _tree(root, classes=("cat", "dog"), n=3, val_classes=None, val="val"):
    for split, cls in (("train", classes), (val, val_classes or classes)):
        for c in cls:
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (20, 24), (i * 40, 10, 200)).save(root / split / c / f"{i}.png")


def test_imagefolder(tmp_path):
    _tree(tmp_path, classes=("ant", "bee", "cat"), val_classes=("bee", "cat"), val="test")
    b = load_dataset(str(tmp_path))
    assert b.classes == ["ant", "bee", "cat"] and b.val_split == "test"
    assert sorted(set(b.val.targets)) == [1, 2]  # indices follow the training classes
    assert b.val[0][1] == 1


def test_imagefolder_errors(tmp_path):
    with pytest.raises(DataError, match="unknown dataset"):
        load_dataset(str(tmp_path / "nope"))
    (tmp_path / "a" / "train" / "x").mkdir(parents=True)
    with pytest.raises(DataError, match="neither 'val/' nor 'test/'"):
        load_dataset(str(tmp_path / "a"))
    _tree(tmp_path / "b", classes=("cat",), val_classes=("cat", "emu"))
    with pytest.raises(DataError, match=r"training split lacks: \['emu'\]"):
        load_dataset(str(tmp_path / "b"))


def test_offline_download_gives_a_clear_message(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as cifar

    def no_net(*a, **k):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
    monkeypatch.setattr(cifar, "download_and_extract_archive", no_net)
    with pytest.raises(DataError) as e:
        load_dataset("cifar10", root=str(tmp_path))
    assert "cifar-10-python.tar.gz" in str(e.value) and str(tmp_path) in str(e.value)
    with pytest.raises(DataError, match="data.download is false"):
        load_dataset("cifar100", root=str(tmp_path), download=False)


def _idx(path, arr, labels=False):
    with gzip.open(path, "wb") as f:
        if labels:
            f.write(struct.pack(">II", 2049, len(arr)) + bytes(arr))
        else:
            f.write(struct.pack(">IIII", 2051, len(arr), 28, 28) + arr.astype(np.uint8).tobytes())


def test_fashion_mnist_from_debian_files(tmp_path):
    deb = tmp_path / "debian"
    deb.mkdir()
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("t10k", 4)):
        _idx(deb / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 255, (n, 28, 28)))
        _idx(deb / f"{split}-labels-idx1-ubyte.gz", [i % 10 for i in range(n)], labels=True)
    train, test, classes = sources.torchvision_dataset("fashion-mnist", str(tmp_path / "root"),
                                                       download=False, fashion_dirs=[str(deb)])
    assert len(train) == 12 and len(test) == 4 and classes[0] == "T-shirt/top"


@pytest.mark.parametrize("stack", ["deit", "v2", "light"])
@pytest.mark.parametrize("crop", ["rrc", "pad"])
def test_train_stacks(stack, crop):
    tf = build_train_transform(AugConfig(stack=stack, crop=crop), 32, MEAN, STD)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 36, 3), dtype=np.uint8))
    for _ in range(50):  # RandAugment draws many ops; none may fail
        x = tf(img)
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32


def test_deit_stack_has_the_paper_ops():
    text = repr(build_train_transform(AugConfig(), 224, MEAN, STD))
    for op in ("RandomResizedCropAndInterpolation", "interpolation=bicubic", "RandAugment(n=2",
               "m=9, mstd=0.5", "PosterizeIncreasing", "RandomErasing(p=0.25, mode=pixel",
               "RandomHorizontalFlip(p=0.5)"):
        assert op in text


def test_eval_transform_is_deterministic():
    tf = build_eval_transform(AugConfig(eval_crop_pct=0.875), 32, MEAN, STD)
    img = Image.new("RGB", (50, 40), (10, 20, 30))
    assert torch.equal(tf(img), tf(img)) and tf(img).shape == (3, 32, 32)


@pytest.mark.parametrize("stack", ["deit", "v2"])
def test_mixers_give_soft_targets(stack):
    mix = build_mixer(AugConfig(stack=stack), num_classes=5)
    x, y = torch.randn(8, 3, 16, 16), torch.arange(8) % 5
    xm, t = mix(x, y)
    assert xm.shape == x.shape and t.shape == (8, 5)
    assert torch.allclose(t.sum(1), torch.ones(8), atol=1e-5)
    assert build_mixer(AugConfig(stack="light"), 5) is None
    assert build_mixer(AugConfig(mixup=0, cutmix=0), 5) is None


def test_repeated_aug_sampler_single_process_and_small_data():
    s = RepeatedAugSampler(10, repeats=3, seed=0)
    keys = list(s)
    idx = [k.index for k in keys]
    assert len(idx) == 10 and [k.position for k in keys] == list(range(10))
    assert idx[0] == idx[1] == idx[2] and idx[3] == idx[4] == idx[5]  # 3 views of each image
    s.set_epoch(1)
    assert [k.index for k in s] != idx and all(k.epoch == 1 for k in s)
    assert len(list(RepeatedAugSampler(2, repeats=3))) == 2  # smaller than one RA chunk


def test_repeated_aug_sampler_shards_views_across_ranks():
    ranks = [list(RepeatedAugSampler(9, 3, num_replicas=3, rank=r, seed=5)) for r in range(3)]
    assert all(len(r) == 3 for r in ranks)
    idx = [[k.index for k in r] for r in ranks]
    assert idx[0] == idx[1] == idx[2]  # each rank sees another view of the same images
    assert len(set(idx[0])) == 3
    positions = sorted(k.position for r in ranks for k in r)
    assert positions == list(range(9))  # every global position once: distinct seeds


def test_augmented_views_replay_bit_for_bit_and_repeats_differ():
    b = load_dataset("digits")
    ds = b.train.with_transform(build_train_transform(AugConfig(), 32, MEAN, STD), seed=7)
    keys = list(RepeatedAugSampler(len(ds), 3, seed=7))[:6]
    first = [ds[k][0] for k in keys]
    torch.manual_seed(123)  # the global stream must not matter ...
    again = [ds[k][0] for k in reversed(keys)][::-1]  # ... nor the order of access
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert keys[0].index == keys[1].index and not torch.equal(first[0], first[1])
    # and reading a sample does not disturb the caller's random streams
    torch.manual_seed(5)
    ref = torch.rand(3)
    torch.manual_seed(5)
    ds[keys[0]]
    assert torch.equal(torch.rand(3), ref)


def test_views_do_not_depend_on_worker_count():
    b = load_dataset("digits", train_fraction=0.05)
    ds = b.train.with_transform(build_train_transform(AugConfig(), 32, MEAN, STD), seed=1)
    sampler = RepeatedAugSampler(len(ds), 3, seed=1)

    def batches(workers):
        loader = torch.utils.data.DataLoader(ds, batch_size=8, sampler=sampler,
                                             num_workers=workers)
        return [x for x, _ in loader]
    for a, b_ in zip(batches(0), batches(2)):
        assert torch.equal(a, b_)
