"""The regime a run ended in, and the time plan: measured estimates and epochs for a budget."""
import time

import pytest
import torch

from deitkit import build_config, plan, train
from deitkit.data import load_dataset
from deitkit.regime import diagnose, last_quarter_change
from deitkit.runtime import rng_state


@pytest.mark.parametrize("train_clean, val, teacher, change, regime", [
    (0.99, 0.70, 0.98, 0.0, "over-fitting"),      # training 29 points above validation
    (0.60, 0.58, 0.98, 0.0, "still learning"),    # close to validation, far below the teacher
    (0.97, 0.96, None, 0.03, "still learning"),   # near 100 %, but validation still rising
    (0.975, 0.965, 0.99, 0.002, "fitted"),        # close to both, levelled off
    (None, 0.9, None, None, "unknown"),
])
def test_regime_follows_the_numbers(train_clean, val, teacher, change, regime):
    got, text = diagnose(train_clean, val, teacher, change)
    assert got == regime and text.startswith(regime)
    if regime == "over-fitting":
        assert "29.0 points above validation" in text and "augmentation" in text
    if regime == "still learning":
        assert "more epochs" in text


def test_last_quarter_change_reads_the_curve():
    curve = [{"epoch": e, "fused_top1": v} for e, v in
             enumerate([0.1, 0.3, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9], start=1)]
    assert last_quarter_change(curve) == pytest.approx(0.9 - 0.8)  # epochs 6 -> 8
    assert last_quarter_change(curve[:1]) is None


TINY = ["progress=false", "device=cpu", "amp=off", "data.train_fraction=0.1",
        "model.overrides={depth: 1}", "eval_train_images=64"]


def test_measuring_an_epoch_leaves_the_random_streams_alone():
    cfg = build_config("quickstart", overrides=TINY)
    bundle = load_dataset("digits", train_fraction=0.1)
    torch.manual_seed(7)
    before = rng_state()
    seconds = plan.measure_epoch(cfg, "student", bundle)
    after = rng_state()
    assert seconds > 0  # (a measurement was made; the streams are the point)
    assert torch.equal(before["torch"], after["torch"])
    assert torch.equal(before["numpy"][0], after["numpy"][0])


def test_the_first_evaluation_is_not_what_the_estimate_times(monkeypatch):
    """One-time costs of the first evaluation (cuDNN's search on a GPU, here a 2 s sleep) stay
    out of the estimate: timed cold, they were scaled by the images evaluated per epoch."""
    cfg = build_config("quickstart", overrides=TINY + ["eval_every=1"])
    bundle = load_dataset("digits", train_fraction=0.1)
    calls = []

    def evaluate(*a, **k):
        calls.append(1)
        if len(calls) == 1:
            time.sleep(2.0)
        return real(*a, **k)
    real = plan.evaluate
    plain = plan.measure_epoch(cfg, "student", bundle)  # the same estimate, no sleep
    monkeypatch.setattr(plan, "evaluate", evaluate)
    seconds = plan.measure_epoch(cfg, "student", bundle)
    assert len(calls) == 2
    # cold, the 2 s would count once per evaluation batch of the epoch's evaluations (> 4 s);
    # compared with the estimate without the sleep, so a slow or busy machine cannot fail it
    batches = (len(bundle.val) * 2 + cfg.eval_train_images) / cfg.data.eval_batch_size
    assert batches * 2.0 > 4.0 and seconds < plain + 1.5


def test_a_budget_too_short_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(plan, "measure_epoch", lambda *a, **k: 30.0)
    monkeypatch.setattr("deitkit.plan.process_seconds", lambda: 0.0)
    cfg = build_config("quickstart", overrides=[f"out={tmp_path / 'r'}", *TINY])
    with pytest.raises(ValueError, match="too short: one student epoch takes 30.0 s"):
        train(cfg, time_budget=0.5)
