"""Each loss variant against a formula written out by hand, on fixed random tensors."""
import math

import pytest
import torch

from deitkit import DistillationLoss, fuse


def _softmax(row):
    m = max(row)
    e = [math.exp(v - m) for v in row]
    s = sum(e)
    return [v / s for v in e]


def _ce(row, y, smoothing=0.0):
    p = _softmax(row)
    C = len(row)
    return -sum(((1 - smoothing) * (c == y) + smoothing / C) * math.log(p[c]) for c in range(C))


def _soft_ce(row, target):
    p = _softmax(row)
    return -sum(t * math.log(q) for t, q in zip(target, p))


def _kl_sum(student_rows, teacher_rows, tau):
    total = 0.0
    for s, t in zip(student_rows, teacher_rows):
        ps, pt = _softmax([v / tau for v in s]), _softmax([v / tau for v in t])
        total += sum(b * (math.log(b) - math.log(a)) for a, b in zip(ps, pt))
    return total


@pytest.fixture
def tensors():
    g = torch.Generator().manual_seed(0)
    B, C = 6, 5
    return (torch.randn(B, C, generator=g, dtype=torch.float64) * 2,
            torch.randn(B, C, generator=g, dtype=torch.float64) * 2,
            torch.randint(0, C, (B,), generator=g),
            torch.randn(B, C, generator=g, dtype=torch.float64) * 3)


def test_hard(tensors):
    cls, dist, y, t = tensors
    out = DistillationLoss("hard", alpha=0.3)(cls, dist, y, t)
    base = sum(_ce(r, int(c)) for r, c in zip(cls.tolist(), y)) / len(y)
    kd = sum(_ce(r, int(c)) for r, c in zip(dist.tolist(), t.argmax(1))) / len(y)
    assert out["base_loss"].item() == pytest.approx(base, rel=1e-9)
    assert out["distill_loss"].item() == pytest.approx(kd, rel=1e-9)
    assert out["loss"].item() == pytest.approx(0.7 * base + 0.3 * kd, rel=1e-9)


@pytest.mark.parametrize("tau", [1.0, 3.0])
def test_soft_per_element_matches_official(tensors, tau):
    cls, dist, y, t = tensors
    out = DistillationLoss("soft", alpha=0.5, tau=tau, kl_norm="per_element")(cls, dist, y, t)
    kd = _kl_sum(dist.tolist(), t.tolist(), tau) * tau * tau / dist.numel()
    assert out["distill_loss"].item() == pytest.approx(kd, rel=1e-9)
    # the official facebookresearch/deit expression, verbatim
    official = torch.nn.functional.kl_div(
        torch.log_softmax(dist / tau, 1), torch.log_softmax(t / tau, 1),
        reduction="sum", log_target=True) * (tau * tau) / dist.numel()
    assert out["distill_loss"].item() == pytest.approx(official.item(), rel=1e-9)


def test_soft_batchmean(tensors):
    cls, dist, y, t = tensors
    tau = 2.0
    out = DistillationLoss("soft", tau=tau, kl_norm="batchmean")(cls, dist, y, t)
    kd = _kl_sum(dist.tolist(), t.tolist(), tau) * tau * tau / dist.shape[0]
    assert out["distill_loss"].item() == pytest.approx(kd, rel=1e-9)
    # batchmean is per_element times the class count
    pe = DistillationLoss("soft", tau=tau, kl_norm="per_element")(cls, dist, y, t)
    assert out["distill_loss"].item() == pytest.approx(pe["distill_loss"].item() * 5, rel=1e-9)


def test_none_trains_dist_head_on_labels(tensors):
    cls, dist, y, _ = tensors
    out = DistillationLoss("none", alpha=0.5, smoothing=0.1)(cls, dist, y, None)
    base = sum(_ce(r, int(c), 0.1) for r, c in zip(cls.tolist(), y)) / len(y)
    kd = sum(_ce(r, int(c), 0.1) for r, c in zip(dist.tolist(), y)) / len(y)
    assert out["loss"].item() == pytest.approx(0.5 * base + 0.5 * kd, rel=1e-9)


def test_soft_targets_from_mixup(tensors):
    cls, dist, _, t = tensors
    g = torch.Generator().manual_seed(1)
    soft = torch.rand(6, 5, generator=g, dtype=torch.float64)
    soft = soft / soft.sum(1, keepdim=True)
    out = DistillationLoss("hard", alpha=0.5)(cls, dist, soft, t)
    base = sum(_soft_ce(r, s) for r, s in zip(cls.tolist(), soft.tolist())) / 6
    assert out["base_loss"].item() == pytest.approx(base, rel=1e-9)


def test_single_head_modes(tensors):
    cls, dist, y, t = tensors
    cls_only = DistillationLoss("none", heads="cls")(cls, dist, y, None)
    assert cls_only["loss"].item() == pytest.approx(
        sum(_ce(r, int(c)) for r, c in zip(cls.tolist(), y)) / 6, rel=1e-9)
    dist_only = DistillationLoss("hard", heads="dist")(cls, dist, y, t)
    assert dist_only["loss"].item() == pytest.approx(
        sum(_ce(r, int(c)) for r, c in zip(dist.tolist(), t.argmax(1))) / 6, rel=1e-9)
    # gradients reach only the trained head
    c, d = cls.clone().requires_grad_(), dist.clone().requires_grad_()
    DistillationLoss("hard", heads="dist")(c, d, y, t)["loss"].backward()
    assert c.grad is None and d.grad.abs().sum() > 0


def test_errors(tensors):
    cls, dist, y, t = tensors
    with pytest.raises(ValueError, match="distillation token"):
        DistillationLoss("hard")(cls, None, y, t)
    with pytest.raises(ValueError, match="teacher_logits"):
        DistillationLoss("soft")(cls, dist, y, None)
    with pytest.raises(ValueError, match="kind"):
        DistillationLoss("medium")
    with pytest.raises(ValueError, match="kl_norm"):
        DistillationLoss("soft", kl_norm="mean")
    with pytest.raises(ValueError, match="kind=none"):
        DistillationLoss("hard", heads="cls")


def test_fuse(tensors):
    cls, dist, _, _ = tensors
    assert torch.allclose(fuse(cls, dist, "logits"), (cls + dist) / 2)
    probs = fuse(cls, dist, "probs")
    assert torch.allclose(probs, (cls.softmax(1) + dist.softmax(1)) / 2)
    assert torch.allclose(probs.sum(1), torch.ones(6, dtype=probs.dtype))
    # the modes can disagree: a head's very negative logit drags the logit average down
    a = torch.tensor([[0.0, -30.0, 0.5]])
    b = torch.tensor([[0.0, 5.0, 0.0]])
    assert fuse(a, b, "logits").argmax().item() == 2
    assert fuse(a, b, "probs").argmax().item() == 1
    assert torch.equal(fuse(cls, None), cls)
    with pytest.raises(ValueError):
        fuse(cls, dist, "max")
