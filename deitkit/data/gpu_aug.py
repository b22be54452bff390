"""The DeiT augmentation on the device, per sample, in plain torch.

Why by hand: kornia and torchvision v2 draw one parameter set per batch (every image the same
RandAugment ops and magnitudes), and NVIDIA DALI runs on CUDA only (our tests run on CPUs)
and cannot replay a view from an item's seed (see docs/performance.md). Here every image gets
its own crop, flip, two RandAugment ops with their own magnitudes and signs, and its own
erasing box, all drawn from a counter-based hash of the item's seed: a view depends on
(run seed, epoch, position) only, so it replays exactly (stored teacher outputs, resume,
2 processes), and nothing waits on the host (no `.item()`, no data-dependent shapes).

The ops follow timm's PIL ops (`timm.data.auto_augment`: `rand-m9-mstd0.5-inc1`) on images
held as float tensors of integer values 0..255, [B, 3, H, W]; each op is tested against timm's
on real CIFAR-10 images (tests/test_gpu_aug.py). Known differences, all small: torch's bicubic
kernel (a = -0.75) against PIL's (a = -0.5); no antialiasing when a crop is shrunk (the cache
is decoded at the training size, so crops are only ever enlarged).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from ..config import AugConfig

_M32 = 0xFFFFFFFF


# ---------------------------------------------------------------------------------------------
# counter-based random numbers: uint32 values held in int64 (no overflow anywhere)

def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """x * c mod 2^32 for x < 2^32, split so that no product passes 2^63."""
    return (x * (c & 0xFFFF) + (((x * (c >> 16)) & 0xFFFF) << 16)) & _M32


def hash32(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 (C. Wellons' hash-prospector): a well-mixed bijection of uint32."""
    x = x & _M32
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def item_seeds(run_seed: int, epoch: int, positions: torch.Tensor) -> torch.Tensor:
    """One uint32 seed per item from (run seed, epoch, position in the epoch): [B] int64."""
    base = int(hash32(torch.tensor((run_seed * 0x9E3779B1 + epoch) & _M32)).item())
    return hash32(positions.to(torch.int64) ^ base)


def uniform(seeds: torch.Tensor, stream: int, n: int = 1) -> torch.Tensor:
    """[B, n] uniforms in [0, 1) for stream `stream`; each item's numbers from its seed only."""
    counter = torch.arange(n, device=seeds.device, dtype=torch.int64) + (stream << 20)
    x = hash32(hash32(seeds[:, None] ^ hash32(counter)[None, :]) + counter)
    return (x >> 8).to(torch.float32) * (1.0 / (1 << 24))


def normal(seeds: torch.Tensor, stream: int, n: int = 1) -> torch.Tensor:
    """[B, n] standard normals (Box-Muller on two 16-bit uniforms from one hash per number:
    a quarter of the work of two full uniforms, which matters for per-pixel noise)."""
    # torch.full, not torch.tensor: made on the device, no copy from the host (a copy from
    # pageable memory waits for the GPU's queue)
    key = hash32(seeds[:, None] ^ hash32(torch.full((), stream << 20, device=seeds.device,
                                                    dtype=torch.int64)))
    x = hash32(key + torch.arange(n, device=seeds.device, dtype=torch.int64)[None, :])
    u1 = ((x >> 16).to(torch.float32) + 0.5) * (1.0 / 65536)            # (0, 1)
    u2 = ((x & 0xFFFF).to(torch.float32) + 0.5) * (1.0 / 65536)
    return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2 * math.pi * u2)


def randint(u: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """Integers in [low, high] (both included, like `random.randint`) from uniforms u."""
    return low + torch.floor(u * (high - low + 1)).clamp(max=high - low)


# ---------------------------------------------------------------------------------------------
# geometry: one affine resampling per batch, PIL's convention (pixel centres at i + 0.5)

def affine(x: torch.Tensor, A: torch.Tensor, fill: torch.Tensor, mode: str = "bicubic",
           out_size: Optional[int] = None) -> torch.Tensor:
    """Resample [B, C, H, W] at A @ (u, v, 1) for each output pixel centre (u, v): A [B, 2, 3]
    maps output to input coordinates in pixels, as PIL's `Image.transform(AFFINE)`. Output
    pixels whose source lies outside the image get `fill` ([C] or [B, C])."""
    B, C, H, W = x.shape
    S = out_size or H
    c = torch.arange(S, device=x.device, dtype=torch.float32) + 0.5
    vv, uu = torch.meshgrid(c, c, indexing="ij")
    pts = torch.stack([uu, vv, torch.ones_like(uu)], -1)            # [S, S, 3]
    src = torch.einsum("bij,hwj->bhwi", A.float(), pts)              # [B, S, S, 2] pixels
    inside = ((src[..., 0] >= 0) & (src[..., 0] < W) & (src[..., 1] >= 0)
              & (src[..., 1] < H))[:, None]                          # [B, 1, S, S]
    grid = torch.stack([src[..., 0] * (2.0 / W) - 1, src[..., 1] * (2.0 / H) - 1], -1)
    out = F.grid_sample(x, grid, mode=mode, padding_mode="border", align_corners=False)
    fill = fill.reshape(-1, C, 1, 1)  # on x's device already (no host copy per batch)
    return torch.where(inside, out, fill).clamp(0, 255).round()


def crop_boxes(u: torch.Tensor, H: int, W: int, scale: Sequence[float],
               ratio: Sequence[float] = (3 / 4, 4 / 3)) -> torch.Tensor:
    """RandomResizedCrop's boxes (torchvision/timm `get_params`: 10 tries, then a centre crop),
    vectorised: u [B, 40] uniforms -> [B, 4] (top, left, height, width)."""
    B, tries = u.shape[0], 10
    area = float(H * W)
    target = area * (scale[0] + (scale[1] - scale[0]) * u[:, :tries])
    logr = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[:, tries:2 * tries]
    ar = torch.exp(logr)
    w = torch.round(torch.sqrt(target * ar))
    h = torch.round(torch.sqrt(target / ar))
    ok = (w > 0) & (w <= W) & (h > 0) & (h <= H)
    first = torch.where(ok.any(1), ok.float().argmax(1), torch.full_like(ok[:, 0], tries,
                                                                          dtype=torch.long))
    # the fallback (no try fitted): the centre crop of the clamped aspect ratio
    in_ratio = W / H
    if in_ratio < ratio[0]:
        fw, fh = W, int(round(W / ratio[0]))
    elif in_ratio > ratio[1]:
        fw, fh = int(round(H * ratio[1])), H
    else:
        fw, fh = W, H
    w = torch.cat([w, torch.full((B, 1), float(fw), device=u.device)], 1)
    h = torch.cat([h, torch.full((B, 1), float(fh), device=u.device)], 1)
    w = w.gather(1, first[:, None])[:, 0]
    h = h.gather(1, first[:, None])[:, 0]
    top = randint(u[:, 2 * tries:3 * tries].gather(1, first.clamp(max=tries - 1)[:, None])[:, 0],
                  torch.zeros_like(h), H - h)
    left = randint(u[:, 3 * tries:].gather(1, first.clamp(max=tries - 1)[:, None])[:, 0],
                   torch.zeros_like(w), W - w)
    fallback = first == tries
    top = torch.where(fallback, torch.div(H - h, 2, rounding_mode="floor"), top)
    left = torch.where(fallback, torch.div(W - w, 2, rounding_mode="floor"), left)
    return torch.stack([top, left, h, w], 1)


def resized_crop(x: torch.Tensor, top, left, h, w, flip, size: int, mode: str = "bicubic",
                 fill: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Crop box (top, left, h, w) of each image (tensors [B]; may reach outside the image, then
    `fill`), resized to size x size and mirrored where `flip` [B] is true: one resampling
    (torchvision's `resized_crop` then `hflip`, on PIL images)."""
    sx = w / size
    zero = torch.zeros_like(sx)
    # output u -> input left + u * w / S; mirrored: left + (S - u) * w / S
    A = affine_matrix(torch.where(flip, -sx, sx), zero, torch.where(flip, left + w, left),
                      zero, h / size, top)
    if fill is None:
        fill = torch.zeros(x.shape[1], device=x.device)
    return affine(x, A, fill, mode, out_size=size)


# ---------------------------------------------------------------------------------------------
# RandAugment ops: x [B, C, H, W] float of integer values 0..255, one argument per image

def _lut(x: torch.Tensor, lut: torch.Tensor) -> torch.Tensor:
    """Apply per-image, per-channel look-up tables lut [B, C, 256]."""
    B, C = x.shape[:2]
    idx = x.reshape(B, C, -1).long().clamp(0, 255)
    return lut.gather(2, idx).reshape(x.shape).to(x.dtype)


def _histogram(x: torch.Tensor) -> torch.Tensor:
    B, C = x.shape[:2]
    idx = x.reshape(B, C, -1).long().clamp(0, 255)
    return torch.zeros(B, C, 256, device=x.device).scatter_add_(2, idx, torch.ones_like(idx,
                                                                       dtype=torch.float32))


def _blend(degenerate: torch.Tensor, x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL's Image.blend(degenerate, x, factor): clamp, then truncate to an integer."""
    out = degenerate + factor.reshape(-1, 1, 1, 1) * (x - degenerate)
    return out.clamp(0, 255).floor()


def _gray(x: torch.Tensor) -> torch.Tensor:
    """PIL's RGB -> L (ITU-R 601-2 luma, fixed point, rounded): [B, 1, H, W]."""
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    return torch.floor((r * 19595 + g * 38470 + b * 7471 + 0x8000) / 65536)


def auto_contrast(x: torch.Tensor) -> torch.Tensor:
    """ImageOps.autocontrast: stretch each channel's [min, max] to [0, 255]."""
    lo = x.amin(dim=(2, 3), keepdim=True)
    hi = x.amax(dim=(2, 3), keepdim=True)
    scale = 255.0 / (hi - lo).clamp(min=1)
    out = torch.floor(((x - lo) * scale).clamp(0, 255))
    return torch.where(hi > lo, out, x)


def equalize(x: torch.Tensor) -> torch.Tensor:
    """ImageOps.equalize, per channel (PIL's integer algorithm)."""
    h = _histogram(x)                                                  # [B, C, 256]
    bins = torch.arange(256, device=x.device)
    last = torch.where(h > 0, bins, torch.zeros_like(bins)).amax(-1, keepdim=True)
    step = torch.div(h.sum(-1, keepdim=True) - h.gather(2, last), 255, rounding_mode="floor")
    before = torch.cumsum(h, -1) - h                                   # counts below each bin
    lut = torch.div(torch.div(step, 2, rounding_mode="floor") + before, step.clamp(min=1),
                    rounding_mode="floor").clamp(max=255)
    lut = torch.where(step > 0, lut, bins.float().expand_as(lut))      # flat or 1-colour: as is
    return _lut(x, lut)


def invert(x: torch.Tensor) -> torch.Tensor:
    return 255 - x


def posterize(x: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """Keep the top `bits` bits (0..8) of each value."""
    q = torch.pow(2.0, 8 - bits.float().clamp(min=0)).reshape(-1, 1, 1, 1)  # < 0: as 0
    return torch.floor(x / q) * q


def solarize(x: torch.Tensor, thresh: torch.Tensor) -> torch.Tensor:
    return torch.where(x >= thresh.reshape(-1, 1, 1, 1), 255 - x, x)


def solarize_add(x: torch.Tensor, add: torch.Tensor, thresh: float = 128) -> torch.Tensor:
    return torch.where(x < thresh, (x + add.reshape(-1, 1, 1, 1)).clamp(max=255), x)


def color(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend(_gray(x).expand_as(x), x, factor)


def contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    mean = torch.floor(_gray(x).mean(dim=(1, 2, 3), keepdim=True) + 0.5)
    return _blend(mean.expand_as(x), x, factor)


def brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend(torch.zeros_like(x), x, factor)


def sharpness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with PIL's SMOOTH filter ([[1,1,1],[1,5,1],[1,1,1]] / 13; border pixels kept)."""
    # sum of the 3x3 neighbourhood plus 4 x the centre, / 13 (avg_pool: faster than a
    # grouped convolution on CPUs)
    box = F.avg_pool2d(x, 3, stride=1) * 9                              # [B, C, H-2, W-2]
    smooth = torch.floor((box + 4 * x[:, :, 1:-1, 1:-1]) / 13 + 0.5).clamp(0, 255)
    degenerate = x.clone()
    degenerate[:, :, 1:-1, 1:-1] = smooth
    return _blend(degenerate, x, factor)


def rotate_matrix(deg: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """PIL's Image.rotate(deg) (counter-clockwise, about the centre) as output->input [B, 2, 3]."""
    a = -torch.deg2rad(deg.float())
    cos, sin = torch.cos(a), torch.sin(a)
    cx, cy = W / 2.0, H / 2.0
    tx = cos * -cx + sin * -cy + cx
    ty = -sin * -cx + cos * -cy + cy
    return torch.stack([torch.stack([cos, sin, tx], -1), torch.stack([-sin, cos, ty], -1)], 1)


def affine_matrix(a, b, c, d, e, f) -> torch.Tensor:
    """PIL's AFFINE data (a, b, c, d, e, f), tensors [B], as [B, 2, 3]."""
    return torch.stack([torch.stack([a, b, c], -1), torch.stack([d, e, f], -1)], 1)


# timm's `_RAND_INCREASING_TRANSFORMS`, in its order (the op index is drawn over this list)
RAND_INCREASING = ("AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing",
                   "SolarizeIncreasing", "SolarizeAdd", "ColorIncreasing", "ContrastIncreasing",
                   "BrightnessIncreasing", "SharpnessIncreasing", "ShearX", "ShearY",
                   "TranslateXRel", "TranslateYRel")
GEOMETRIC = ("Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")


def level_args(name: str, level: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    """timm's LEVEL_TO_ARG for the increasing set, per image: level [B] in [0, mmax] (10 unless
    the spec raises it), sign [B] of +-1 (timm's `_randomly_negate`). Above 10 the arguments
    grow on as timm's do (posterize keeps fewer than 0 bits: black, as PIL's)."""
    frac = level / 10.0
    if name == "Rotate":
        return frac * 30.0 * sign
    if name == "PosterizeIncreasing":
        return 4 - torch.floor(frac * 4)
    if name == "SolarizeIncreasing":
        return 256 - torch.floor(frac * 256).clamp(max=256)
    if name == "SolarizeAdd":
        return torch.floor(frac * 110).clamp(max=128)
    if name.endswith("Increasing"):                                    # the enhance ops
        return (1.0 + frac * 0.9 * sign).clamp(min=0.1)
    if name in ("ShearX", "ShearY"):
        return frac * 0.3 * sign
    if name in ("TranslateXRel", "TranslateYRel"):
        return frac * 0.45 * sign
    raise ValueError(f"no level argument for {name}")


def op_matrix(name: str, arg: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """The output->input matrix [B, 2, 3] of a geometric op (timm's PIL AFFINE data)."""
    one, zero = torch.ones_like(arg), torch.zeros_like(arg)
    if name == "Rotate":
        return rotate_matrix(arg, H, W)
    return {"ShearX": lambda: affine_matrix(one, arg, zero, zero, one, zero),
            "ShearY": lambda: affine_matrix(one, zero, zero, arg, one, zero),
            "TranslateXRel": lambda: affine_matrix(one, zero, arg * W, zero, one, zero),
            "TranslateYRel": lambda: affine_matrix(one, zero, zero, zero, one, arg * H)}[name]()


def apply_op(name: str, x: torch.Tensor, arg: torch.Tensor,
             fill: Optional[torch.Tensor] = None, mode: str = "bicubic") -> torch.Tensor:
    """One RandAugment op with one argument per image (timm's PIL op, batched); geometric ops
    fill uncovered pixels with `fill` ([C], 0..255)."""
    if name in GEOMETRIC:
        return affine(x, op_matrix(name, arg, *x.shape[-2:]), fill, mode)
    return {"AutoContrast": lambda: auto_contrast(x), "Equalize": lambda: equalize(x),
            "Invert": lambda: invert(x), "PosterizeIncreasing": lambda: posterize(x, arg),
            "SolarizeIncreasing": lambda: solarize(x, arg),
            "SolarizeAdd": lambda: solarize_add(x, arg),
            "ColorIncreasing": lambda: color(x, arg),
            "ContrastIncreasing": lambda: contrast(x, arg),
            "BrightnessIncreasing": lambda: brightness(x, arg),
            "SharpnessIncreasing": lambda: sharpness(x, arg)}[name]()


# ---------------------------------------------------------------------------------------------
# the spec and the pipeline

@dataclass(frozen=True)
class RandAugmentSpec:
    """A parsed timm RandAugment string (`rand-m9-mstd0.5-inc1`)."""
    magnitude: float = 10.0
    num_layers: int = 2
    magnitude_std: float = 0.0
    prob: float = 0.5
    increasing: bool = False
    magnitude_max: float = 10.0  # timm's `mmax`: levels are clipped to [0, magnitude_max]

    @staticmethod
    def parse(spec: str) -> "RandAugmentSpec":
        parts = spec.split("-")
        if parts[0] != "rand":
            raise ValueError(f"'{spec}' is not a RandAugment spec (rand-m9-mstd0.5-inc1)")
        kw = {}
        for part in parts[1:]:
            key = next((k for k in ("mstd", "mmax", "inc", "m", "n", "p")
                        if part.startswith(k)), None)
            if key is None:
                raise ValueError(f"RandAugment option '{part}' of '{spec}' is not supported "
                                 "on the device (supported: m, n, mstd, mmax, p, inc)")
            val = float(part[len(key):])
            kw[{"m": "magnitude", "n": "num_layers", "mstd": "magnitude_std", "p": "prob",
                "inc": "increasing", "mmax": "magnitude_max"}[key]] = val
        out = RandAugmentSpec(**{**kw, "num_layers": int(kw.get("num_layers", 2)),
                                 "increasing": bool(kw.get("increasing", 0))})
        if not out.increasing:
            raise ValueError(f"'{spec}': on the device only the increasing op set (inc1, as "
                             "DeiT) is implemented")
        if out.magnitude_std > 100 or math.isinf(out.magnitude_std):
            raise ValueError(f"'{spec}': uniform magnitude sampling is not supported on the "
                             "device")
        return out


def ra_levels(ra: RandAugmentSpec, seeds: torch.Tensor, layer: int) -> torch.Tensor:
    """Each image's magnitude [B] for RandAugment layer `layer`: N(m, mstd) clipped to
    [0, mmax], as timm draws it (mstd 0: m itself, clipped)."""
    level = ra.magnitude + ra.magnitude_std * normal(seeds, _RA + 16 + layer)[:, 0]
    if ra.magnitude_std > 0:
        return level.clamp(0, ra.magnitude_max)
    return torch.full_like(level, min(ra.magnitude, ra.magnitude_max))


def device_support(aug: AugConfig) -> Optional[str]:
    """None when the device pipeline implements `aug`, else the reason it does not."""
    if aug.stack == "v2":
        return "the `v2` stack (torchvision RandAugment) is CPU-only; use aug.stack=deit"
    if aug.stack == "deit" and not aug.rand_augment and aug.color_jitter > 0:
        return "colour jitter (used when RandAugment is off) is CPU-only"
    if aug.stack == "deit" and aug.rand_augment:
        try:
            RandAugmentSpec.parse(aug.rand_augment)
        except ValueError as e:
            return str(e)
    if aug.stack == "deit" and aug.reprob > 0 and aug.remode != "pixel":
        return f"random erasing mode {aug.remode!r} is CPU-only (the device has 'pixel')"
    if aug.interpolation not in ("bicubic", "bilinear"):
        return f"interpolation {aug.interpolation!r} is not available on the device"
    return None


# random-number streams of one item (each a separate counter range of its seed)
_CROP, _FLIP, _ERASE, _NOISE, _RA = 1, 2, 3, 4, 8


class DeviceAugment:
    """The per-image training augmentation of `aug` (stacks `deit` and `light`) on uint8
    batches already on the device: crop (RandomResizedCrop or pad-crop) and flip in one
    resampling, RandAugment, normalisation, random erasing. Call with (images uint8
    [B, 3, S, S], item seeds [B]) -> normalised float [B, 3, S, S]."""

    def __init__(self, aug: AugConfig, size: int, mean: Sequence[float], std: Sequence[float],
                 dense: Optional[bool] = None):
        """dense: run every RandAugment op on the whole batch and keep each image's own (no
        host reads, fixed shapes: what keeps a GPU busy); sparse: run each op on its images
        only (less work where nothing waits for a device). None: dense except on the CPU.
        Both give the same views."""
        self.dense = dense
        reason = device_support(aug)
        if reason:
            raise ValueError(reason)
        self.aug, self.size = aug, size
        self.mean_std = (tuple(mean), tuple(std))
        self._consts: dict = {}  # per device: constants made once (no host copy per batch)
        deit = aug.stack == "deit"
        self.ra = RandAugmentSpec.parse(aug.rand_augment) if deit and aug.rand_augment else None
        self.reprob = aug.reprob if deit else 0.0
        # timm's RandAugment fill: the mean colour, in 0..255
        self.fill_rgb = [min(255, round(255 * m)) for m in mean]
        self.mode = aug.interpolation

    def consts(self, device: torch.device) -> dict:
        """mean, std [1, 3, 1, 1], fill [3] (0..255), zeros [3], on `device` (made once)."""
        if device not in self._consts:
            mean, std = self.mean_std
            m, s = channel_stats(mean, std, device)
            self._consts[device] = {
                "mean": m, "std": s,
                "fill": torch.tensor(self.fill_rgb, dtype=torch.float32).to(device),
                "zeros": torch.zeros(3, device=device)}
        return self._consts[device]

    def crop_flip(self, x: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
        B, _, H, W = x.shape
        S = self.size
        flip = uniform(seeds, _FLIP)[:, 0] < self.aug.hflip                       # [B]
        if self.aug.crop == "pad":  # RandomCrop(S, padding=4): offsets in [0, H + 8 - S]
            u = uniform(seeds, _CROP, 2)
            top = randint(u[:, 0], torch.zeros_like(u[:, 0]), torch.full_like(u[:, 0], H + 8 - S))
            left = randint(u[:, 1], torch.zeros_like(u[:, 1]), torch.full_like(u[:, 1], W + 8 - S))
            top, left = top - 4, left - 4
            h = w = torch.full_like(top, float(S))
            mode, fill = "nearest", self.consts(x.device)["zeros"]
        else:
            top, left, h, w = crop_boxes(uniform(seeds, _CROP, 40), H, W,
                                         (self.aug.scale_min, 1.0)).unbind(1)
            mode, fill = self.mode, self.consts(x.device)["fill"]  # inside: never used
        return resized_crop(x, top, left, h, w, flip, S, mode, fill)

    def rand_augment(self, x: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
        ra, n_ops = self.ra, len(RAND_INCREASING)
        for layer in range(ra.num_layers):
            u = uniform(seeds, _RA + layer, 3)
            op = torch.floor(u[:, 0] * n_ops).clamp(max=n_ops - 1)             # [B]
            applied = u[:, 1] <= ra.prob
            sign = torch.where(u[:, 2] > 0.5, -1.0, 1.0)
            level = ra_levels(ra, seeds, layer)
            out = x
            # the five geometric ops share one resampling with a matrix per image
            eye = torch.eye(2, 3, device=x.device).expand(len(x), 2, 3)
            A, geo = eye, torch.zeros_like(applied)
            for k, name in enumerate(RAND_INCREASING):
                pick = applied & (op == k)
                if name in GEOMETRIC:
                    M = op_matrix(name, level_args(name, level, sign), *x.shape[-2:])
                    A = torch.where(pick[:, None, None], M, A)
                    geo = geo | pick
                    continue
                arg = level if name in ("AutoContrast", "Equalize", "Invert") else \
                    level_args(name, level, sign)
                out = self._where(pick, lambda i, n=name, a=arg: apply_op(n, x[i], a[i]), out)
            fill = self.consts(x.device)["fill"]
            x = self._where(geo, lambda i: affine(x[i], A[i], fill, self.mode), out)
        return x

    def _where(self, pick: torch.Tensor, op, out: torch.Tensor) -> torch.Tensor:
        """out with images `pick` replaced by op(index) applied to them."""
        dense = self.dense if self.dense is not None else out.device.type != "cpu"
        if dense:  # op on every image (index: all), selected per image
            return torch.where(pick.reshape(-1, 1, 1, 1), op(slice(None)), out)
        idx = pick.nonzero()[:, 0]
        return out.index_copy(0, idx, op(idx)) if len(idx) else out

    def erase(self, x: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
        """timm's RandomErasing (mode pixel, one box, area 2-33 %, aspect 0.3-3.3)."""
        B, C, H, W = x.shape
        tries = 10
        u = uniform(seeds, _ERASE, 1 + 4 * tries)
        target = (0.02 + (1 / 3 - 0.02) * u[:, 1:1 + tries]) * (H * W)
        logr = math.log(0.3) + (math.log(1 / 0.3) - math.log(0.3)) * u[:, 1 + tries:1 + 2 * tries]
        ar = torch.exp(logr)
        h = torch.round(torch.sqrt(target * ar))
        w = torch.round(torch.sqrt(target / ar))
        ok = (w < W) & (h < H)
        first = ok.float().argmax(1, keepdim=True)
        do = (u[:, 0] <= self.reprob) & ok.any(1)
        h, w = h.gather(1, first)[:, 0], w.gather(1, first)[:, 0]
        top = randint(u[:, 1 + 2 * tries:1 + 3 * tries].gather(1, first)[:, 0],
                      torch.zeros_like(h), H - h)
        left = randint(u[:, 1 + 3 * tries:].gather(1, first)[:, 0], torch.zeros_like(w), W - w)
        rows = torch.arange(H, device=x.device)[None, :, None]
        cols = torch.arange(W, device=x.device)[None, None, :]
        box = ((rows >= top[:, None, None]) & (rows < (top + h)[:, None, None])
               & (cols >= left[:, None, None]) & (cols < (left + w)[:, None, None]))
        box = box[:, None]                                                    # [B, 1, H, W]

        def erased(i):
            noise = normal(seeds[i], _NOISE, C * H * W).reshape(-1, C, H, W)
            return torch.where(box[i], noise, x[i])
        return self._where(do, erased, x)

    def __call__(self, images: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
        x = self.crop_flip(images.float(), seeds)                             # [B, 3, S, S]
        if self.ra is not None:
            x = self.rand_augment(x, seeds)
        c = self.consts(x.device)
        x = (x / 255.0 - c["mean"]) / c["std"]
        if self.reprob > 0:
            x = self.erase(x, seeds)
        return x


def compile_augment(augment: DeviceAugment, device: torch.device, backend: str = "inductor"):
    """`augment` as one compiled graph for `device` (dense form, fixed shapes: the loaders
    drop the last partial batch): torch.compile fuses its ~1,400 small ops per batch, each a
    kernel launch on a GPU. Whole-graph capture (no graph breaks) is tested; the constants are
    made before capture, so the graph holds no side effects."""
    augment.dense = True  # the sparse form's nonzero() has data-dependent shapes
    augment.consts(device)
    return torch.compile(augment, dynamic=False, fullgraph=True, backend=backend)


def channel_stats(mean: Sequence[float], std: Sequence[float],
                  device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalisation mean and std as [1, 3, 1, 1] tensors on `device` (make once, reuse: a
    host copy per batch would wait for the GPU's queue)."""
    def as4(v):
        return torch.tensor(v, dtype=torch.float32).reshape(1, 3, 1, 1).to(device)
    return as4(mean), as4(std)


def normalize(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 [B, 3, H, W] -> normalised float (the evaluation view of cached images); mean and
    std [1, 3, 1, 1] on the images' device."""
    return (images.float() / 255.0 - mean) / std
