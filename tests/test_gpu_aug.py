"""The device augmentation against timm's PIL ops on real CIFAR-10 images, each op on its own;
then the per-sample draws (crop boxes, erasing, RandAugment as a whole) against timm's and
torchvision's distributions, replay, and no host reads."""
import math
import random

import numpy as np
import pytest
import timm.data.auto_augment as taa
import torch
from PIL import Image
from timm.data import create_transform
from timm.data.random_erasing import RandomErasing
from torchvision.transforms import RandomResizedCrop
from torchvision.transforms import functional as TF

from deitkit.config import AugConfig
from deitkit.data import gpu_aug as g

FILL = (124, 116, 104)  # timm's RandAugment fill for the ImageNet mean
PIL_KW = dict(fillcolor=FILL, resample=Image.BICUBIC)


@pytest.fixture(scope="module")
def cifar(cifar_folder):
    files = sorted(cifar_folder.glob("train/*/*.jpg"))[::4]             # 50 images, 10 classes
    imgs = [Image.open(f).convert("RGB") for f in files]
    x = torch.stack([torch.from_numpy(np.array(i)).permute(2, 0, 1) for i in imgs]).float()
    return imgs, x


def pil_batch(imgs, fn):
    return torch.stack([torch.from_numpy(np.array(fn(i))).permute(2, 0, 1) for i in imgs]).float()


def full(x, v):
    return torch.full((len(x),), float(v))


# (name, timm's PIL op, ours, bound on the mean absolute difference in 0..255 levels)
PIXEL_OPS = [
    ("AutoContrast", taa.auto_contrast, lambda x: g.auto_contrast(x)),
    ("Equalize", taa.equalize, lambda x: g.equalize(x)),
    ("Invert", taa.invert, lambda x: g.invert(x)),
    ("Posterize 1", lambda i: taa.posterize(i, 1), lambda x: g.posterize(x, full(x, 1))),
    ("Posterize 3", lambda i: taa.posterize(i, 3), lambda x: g.posterize(x, full(x, 3))),
    ("Posterize 0", lambda i: taa.posterize(i, 0), lambda x: g.posterize(x, full(x, 0))),
    ("Solarize 26", lambda i: taa.solarize(i, 26), lambda x: g.solarize(x, full(x, 26))),
    ("Solarize 200", lambda i: taa.solarize(i, 200), lambda x: g.solarize(x, full(x, 200))),
    ("SolarizeAdd 99", lambda i: taa.solarize_add(i, 99), lambda x: g.solarize_add(x, full(x, 99))),
    *[(f"{n} {f}", lambda i, n=n, f=f: getattr(taa, n)(i, f),
       lambda x, n=n, f=f: getattr(g, n)(x, full(x, f)))
      for n in ("color", "contrast", "brightness", "sharpness") for f in (0.19, 1.81)],
]
GEOMETRIC_OPS = [
    ("Rotate", 27.0, lambda i: taa.rotate(i, 27.0, **PIL_KW)),
    ("Rotate", -13.5, lambda i: taa.rotate(i, -13.5, **PIL_KW)),
    ("ShearX", 0.27, lambda i: taa.shear_x(i, 0.27, **PIL_KW)),
    ("ShearY", -0.27, lambda i: taa.shear_y(i, -0.27, **PIL_KW)),
    ("TranslateXRel", 0.405, lambda i: taa.translate_x_rel(i, 0.405, **PIL_KW)),
    ("TranslateYRel", -0.2, lambda i: taa.translate_y_rel(i, -0.2, **PIL_KW)),
]


@pytest.mark.parametrize("name,pil_op,ours", PIXEL_OPS, ids=[p[0] for p in PIXEL_OPS])
def test_each_pixel_op_matches_timm_on_cifar(cifar, name, pil_op, ours):
    imgs, x = cifar
    ref, out = pil_batch(imgs, pil_op), ours(x)
    assert out.shape == x.shape
    assert (ref - out).abs().mean() <= 0.05, name    # PIL's integer maths, reproduced
    assert not torch.equal(out, x), f"{name} did nothing"


@pytest.mark.parametrize("name,arg,pil_op", GEOMETRIC_OPS,
                         ids=[f"{p[0]} {p[1]}" for p in GEOMETRIC_OPS])
def test_each_geometric_op_matches_timm_on_cifar(cifar, name, arg, pil_op):
    imgs, x = cifar
    ref = pil_batch(imgs, pil_op)
    out = g.apply_op(name, x, full(x, arg), torch.tensor(FILL, dtype=torch.float32))
    d = (ref - out).abs()
    # bicubic kernels differ (torch a=-0.75, PIL a=-0.5): under 1.5 levels on average
    assert d.mean() <= 1.5, (name, arg, d.mean())
    # the fill colour lands where PIL puts it (corners of a rotation, the uncovered band)
    filled = (ref == torch.tensor(FILL).reshape(1, 3, 1, 1).float()).all(1)
    ours_filled = (out == torch.tensor(FILL).reshape(1, 3, 1, 1).float()).all(1)
    assert (filled == ours_filled).float().mean() > 0.97
    assert (ref - x).abs().mean() > 5  # the op moved pixels: the comparison means something


@pytest.mark.parametrize("name", [n for n in g.RAND_INCREASING
                                  if n not in ("AutoContrast", "Equalize", "Invert")])
@pytest.mark.parametrize("level", [0.0, 4.5, 9.0, 10.0, 14.0])  # 14: with mmax raised
def test_level_arguments_are_timms(name, level, monkeypatch):
    hp = dict(taa._HPARAMS_DEFAULT)
    for draw, sign in ((0.9, -1.0), (0.1, 1.0)):  # timm negates when random.random() > 0.5
        monkeypatch.setattr(taa.random, "random", lambda d=draw: d)
        want = taa.LEVEL_TO_ARG[name](level, hp)[0]
        ours = g.level_args(name, torch.tensor([level]), torch.tensor([sign]))[0].item()
        assert ours == pytest.approx(want, abs=1e-5), (name, level, sign)


def test_resized_crop_and_flip_match_torchvision_on_pil(cifar):
    imgs, x = cifar
    boxes = [(3, 5, 20, 24), (0, 0, 32, 32), (10, 2, 12, 17), (1, 9, 31, 23)]
    for flip in (False, True):
        for top, left, h, w in boxes:
            def ref_op(i):
                out = TF.resized_crop(i, top, left, h, w, [32, 32],
                                      TF.InterpolationMode.BICUBIC)
                return TF.hflip(out) if flip else out
            ref = pil_batch(imgs, ref_op)
            t = lambda v: full(x, v)  # noqa: E731
            out = g.resized_crop(x, t(top), t(left), t(h), t(w),
                                 torch.full((len(x),), flip), 32)
            # the identity box is exact; others differ by the bicubic kernel and the edges
            bound = 0.0 if (h, w) == (32, 32) else 2.5
            assert (ref - out).abs().mean() <= bound, (top, left, h, w, flip)


def test_pad_crop_is_exact():
    x = torch.randint(0, 256, (6, 3, 32, 32)).float()
    tops, lefts = torch.tensor([0., 8, 3, 4, 7, 1]), torch.tensor([8., 0, 5, 4, 2, 6])
    flip = torch.tensor([False, True, False, True, False, True])
    out = g.resized_crop(x, tops - 4, lefts - 4, full(x, 32), full(x, 32), flip, 32, "nearest")
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for b in range(6):
        t, le = int(tops[b]), int(lefts[b])
        want = padded[b, :, t:t + 32, le:le + 32]
        assert torch.equal(out[b], want.flip(-1) if flip[b] else want)


def test_crop_boxes_follow_torchvisions_distribution():
    n, H, W, scale = 4000, 32, 32, (0.08, 1.0)
    seeds = g.item_seeds(0, 0, torch.arange(n))
    top, left, h, w = g.crop_boxes(g.uniform(seeds, 1, 40), H, W, scale).unbind(1)
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= H).all() \
        and (left + w <= W).all() and (h >= 1).all() and (w >= 1).all()
    torch.manual_seed(0)
    ref = torch.tensor([RandomResizedCrop.get_params(torch.zeros(3, H, W), list(scale),
                                                     [3 / 4, 4 / 3]) for _ in range(n)]).float()
    area, ref_area = (h * w / (H * W)).mean(), (ref[:, 2] * ref[:, 3] / (H * W)).mean()
    assert abs(area - ref_area) < 0.02, (area, ref_area)
    assert abs((w / h).log().mean() - (ref[:, 3] / ref[:, 2]).log().mean()) < 0.03
    assert abs((top + h / 2).mean() - (ref[:, 0] + ref[:, 2] / 2).mean()) < 0.4


def test_erasing_matches_timms_rate_and_size():
    n, C, H, W = 3000, 3, 32, 32
    aug = g.DeviceAugment(AugConfig(reprob=0.25), 32, [0.5] * 3, [0.5] * 3)
    seeds = g.item_seeds(3, 1, torch.arange(n))
    out = aug.erase(torch.full((n, C, H, W), 100.0), seeds)
    ours = (out != 100.0).all(1).float().mean(dim=(1, 2))                # erased fraction
    random.seed(0)
    torch.manual_seed(0)
    er = RandomErasing(probability=0.25, mode="pixel", device="cpu")
    ref = torch.stack([(er(torch.full((C, H, W), 100.0)) != 100.0).all(0).float().mean()
                       for _ in range(n)])
    assert abs((ours > 0).float().mean() - (ref > 0).float().mean()) < 0.03     # p = 0.25
    assert abs(ours[ours > 0].mean() - ref[ref > 0].mean()) < 0.015              # box size
    noise = out[ours > 0][(out[ours > 0] != 100.0)]
    assert abs(noise.mean()) < 0.05 and abs(noise.std() - 1) < 0.05              # N(0, 1)


def test_whole_pipeline_matches_timms_transform_statistics(cifar):
    """The DeiT stack (RRC, flip, rand-m9-mstd0.5-inc1, normalise, erasing 0.25) on the
    device and timm's create_transform on PIL: the same images, many draws, the same
    per-channel mean and spread of the augmented tensors."""
    imgs, x = cifar
    aug = AugConfig()
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    ours_tf = g.DeviceAugment(aug, 32, mean, std)
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    tf = create_transform(32, is_training=True, scale=(aug.scale_min, 1.0), hflip=aug.hflip,
                          auto_augment=aug.rand_augment, interpolation="bicubic",
                          re_prob=aug.reprob, re_mode="pixel", re_count=1, mean=mean, std=std)
    reps = 16
    ref = torch.stack([tf(i) for _ in range(reps) for i in imgs])
    xs = x.repeat(reps, 1, 1, 1).to(torch.uint8)
    ours = ours_tf(xs, g.item_seeds(0, 0, torch.arange(len(xs))))
    assert ours.shape == ref.shape
    for stat in (lambda t: t.mean(dim=(0, 2, 3)), lambda t: t.std(dim=(0, 2, 3))):
        assert (stat(ours) - stat(ref)).abs().max() < 0.06, (stat(ours), stat(ref))
    # how far views move from the plain image: the same on both sides
    plain = ((x / 255 - torch.tensor(mean).reshape(1, 3, 1, 1))
             / torch.tensor(std).reshape(1, 3, 1, 1)).repeat(reps, 1, 1, 1)
    d_ours, d_ref = (ours - plain).abs().mean(), (ref - plain).abs().mean()
    assert abs(d_ours - d_ref) / d_ref < 0.08, (d_ours, d_ref)


def test_views_replay_and_do_not_depend_on_the_batch(cifar):
    _, x = cifar
    aug = g.DeviceAugment(AugConfig(), 32, [0.5] * 3, [0.5] * 3)
    xs = x.to(torch.uint8)
    seeds = g.item_seeds(7, 2, torch.arange(len(xs)))
    a, b = aug(xs, seeds), aug(xs, seeds)
    assert torch.equal(a, b)
    alone = aug(xs[5:6], seeds[5:6])
    assert torch.allclose(alone[0], a[5], atol=1e-5)
    other = aug(xs, g.item_seeds(7, 3, torch.arange(len(xs))))          # the next epoch
    assert (other - a).abs().mean() > 0.1


def test_no_host_reads_inside_the_augmentation(cifar, monkeypatch):
    """Nothing in the dense form (what runs on a GPU) reads a value back to the host (which
    would stall the GPU every step): .item(), .tolist(), bool(), int(), nonzero() of tensors
    are forbidden."""
    _, x = cifar
    aug = g.DeviceAugment(AugConfig(), 32, [0.5] * 3, [0.5] * 3, dense=True)
    seeds = g.item_seeds(0, 0, torch.arange(len(x)))

    def boom(*a, **k):
        raise AssertionError("host read in the device augmentation")
    for name in ("item", "tolist", "__bool__", "__int__", "__float__", "nonzero"):
        monkeypatch.setattr(torch.Tensor, name, boom)
    out = aug(x.to(torch.uint8), seeds)
    monkeypatch.undo()
    assert torch.isfinite(out).all()


def test_no_host_copies_per_batch(cifar, monkeypatch):
    """After the first batch, the augmentation makes no tensor from host data and moves none
    to a device (a copy from pageable host memory waits for the GPU's queue): constants are
    made once per device."""
    _, x = cifar
    aug = g.DeviceAugment(AugConfig(), 32, [0.5] * 3, [0.5] * 3, dense=True)
    xs = x.to(torch.uint8)
    seeds = g.item_seeds(0, 0, torch.arange(len(xs)))
    aug(xs, seeds)  # the first batch makes the constants
    real_to = torch.Tensor.to

    def to(self, *args, **kwargs):
        if "device" in kwargs or any(isinstance(a, (torch.device, str, torch.Tensor))
                                     for a in args):
            raise AssertionError("a host copy per batch")
        return real_to(self, *args, **kwargs)

    def tensor(*a, **k):
        raise AssertionError("a tensor made from host data per batch")
    monkeypatch.setattr(torch.Tensor, "to", to)
    monkeypatch.setattr(torch, "tensor", tensor)
    out = aug(xs, seeds)
    monkeypatch.undo()
    assert torch.isfinite(out).all()


def test_dense_and_sparse_forms_give_the_same_views(cifar):
    _, x = cifar
    xs = x.to(torch.uint8).repeat(4, 1, 1, 1)
    seeds = g.item_seeds(11, 0, torch.arange(len(xs)))
    dense = g.DeviceAugment(AugConfig(), 32, [0.5] * 3, [0.5] * 3, dense=True)(xs, seeds)
    sparse = g.DeviceAugment(AugConfig(), 32, [0.5] * 3, [0.5] * 3, dense=False)(xs, seeds)
    assert torch.allclose(dense, sparse, atol=1e-5)


def test_the_compiled_augmentation_is_one_graph_with_the_same_views(cifar):
    """data.compile_augment: the whole pipeline captures as one graph (fullgraph: a graph
    break would raise), and the captured graph gives the eager views, for new seeds too (the
    seeds are inputs, not constants baked in). aot_eager captures as inductor does, without
    its minute of code generation; inductor's own fused kernels differ from eager by float
    rounding only (measured: at most one grey level, at 1e-7 of the values)."""
    _, x = cifar
    xs = x.to(torch.uint8).repeat(2, 1, 1, 1)
    eager = g.DeviceAugment(AugConfig(), 32, [0.5] * 3, [0.5] * 3, dense=True)
    compiled = g.compile_augment(g.DeviceAugment(AugConfig(), 32, [0.5] * 3, [0.5] * 3),
                                 torch.device("cpu"), backend="aot_eager")
    for epoch in (0, 1):
        seeds = g.item_seeds(5, epoch, torch.arange(len(xs)))
        assert torch.equal(compiled(xs, seeds), eager(xs, seeds))


def test_rand_augment_specs_parse_and_unsupported_ones_are_named():
    spec = g.RandAugmentSpec.parse("rand-m9-mstd0.5-inc1")
    assert (spec.magnitude, spec.magnitude_std, spec.num_layers, spec.increasing) == \
        (9, 0.5, 2, True)
    assert g.RandAugmentSpec.parse("rand-m7-n3-inc1-p0.3").num_layers == 3
    assert spec.magnitude_max == 10                                   # timm's default clip
    big = g.RandAugmentSpec.parse("rand-m14-mstd0.5-inc1-mmax15")
    assert (big.magnitude, big.magnitude_max) == (14, 15)
    seeds = torch.arange(4000, dtype=torch.int64)
    flat = lambda spec: g.ra_levels(g.RandAugmentSpec.parse(spec), seeds, 0)  # noqa: E731
    assert (flat("rand-m14-inc1") == 10).all()                       # timm clips m14 to 10
    assert (flat("rand-m14-inc1-mmax15") == 14).all()                # unless mmax is raised
    drawn = g.ra_levels(big, seeds, 0)
    assert drawn.max() == 15 and drawn.min() > 11.5 and abs(drawn.mean() - 14) < 0.05
    with pytest.raises(ValueError, match="increasing op set"):
        g.RandAugmentSpec.parse("rand-m9-mstd0.5")
    with pytest.raises(ValueError, match="'w0'"):
        g.RandAugmentSpec.parse("rand-m9-w0-inc1")
    assert "v2" in g.device_support(AugConfig(stack="v2"))
    assert g.device_support(AugConfig()) is None
    assert g.device_support(AugConfig(stack="light")) is None


def test_uniforms_are_uniform_and_streams_independent():
    seeds = g.item_seeds(0, 0, torch.arange(20000))
    u = g.uniform(seeds, 3, 4)
    assert ((u >= 0) & (u < 1)).all()
    assert abs(u.mean() - 0.5) < 0.01 and abs(u.var() - 1 / 12) < 0.003
    v = g.uniform(seeds, 4, 4)
    assert abs(torch.corrcoef(torch.stack([u[:, 0], v[:, 0]]))[0, 1]) < 0.03
    hist = torch.histc(u[:, 0], bins=10, min=0, max=1) / len(u)
    assert (hist - 0.1).abs().max() < 0.01
    z = g.normal(seeds, 5, 2)
    assert abs(z.mean()) < 0.03 and abs(z.std() - 1) < 0.03
    assert math.isclose(float((z.abs() < 1.96).float().mean()), 0.95, abs_tol=0.01)
