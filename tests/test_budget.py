"""The budget well spent (issue 32): epochs revised from measured epochs, the fusion weight
chosen on held-out training images, and the ending that says when the CNN is ahead."""
import json
import math
import random
import time

import pytest
import torch

from deitkit import build_config, plan, train
from deitkit.build import build_run, build_scheduler, load_bundle
from deitkit.cli import main
from deitkit.distill import choose_fusion_weight, fuse
from deitkit.distributed import DistInfo
from deitkit.export import FusedHeads, load_for_inference
from deitkit.fit import _revise, fit
from deitkit.models import student_forward
from deitkit.plan import end_reserve
from deitkit.plan import Deadline
from deitkit.regime import fusion_line, reach_epochs, teacher_gap
from deitkit.rundir import RunDir

TINY = ["progress=false", "device=cpu", "amp=off", "data.train_fraction=0.25",
        "model.overrides={depth: 1}", "data.batch_size=16", "tensorboard=false"]


# -- the revision, with made-up epoch times ---------------------------------------------------

@pytest.mark.parametrize("epoch_s,eval_s,every,budget", [
    (10.0, 2.0, 1, 300.0), (10.0, 2.0, 4, 300.0), (3.0, 4.0, 2, 100.0), (1.0, 0.2, 1, 37.5)])
def test_revisions_from_made_up_epochs_end_within_the_budget_and_use_it(epoch_s, eval_s, every,
                                                                        budget):
    # a fit loop on a made-up clock: epochs and evaluations vary by +-3 % (as measured here),
    # the first pays a one-time cost; the plan starts far off (4 epochs)
    rng = random.Random(0)
    d, now, total, done = Deadline(budget), 0.0, 4, 0
    train_s, evals, totals = [], [], []

    def evaluate():
        e = eval_s * rng.uniform(0.97, 1.03)
        evals.append(e)
        return e
    while done < total:
        t = epoch_s * rng.uniform(0.97, 1.03) + (5.0 if done == 0 else 0.0)
        now += t
        train_s.append(t)
        done += 1
        evaluated = done % every == 0 or done == total
        if evaluated:
            now += evaluate()
        total = d.epochs(done, total, train_s, evals, every, now, evaluated)
        totals.append(total)
        if done == total and not evaluated:
            now += evaluate()
    assert now <= budget                                       # never more ...
    assert now >= budget - (epoch_s + eval_s) * 1.1 - 5.0      # ... and at most an epoch left
    assert total == done > 4
    assert all(t <= 4 for t in totals[:every - 1])             # no raise before an evaluation


def test_a_revision_never_goes_below_the_epochs_done():
    assert Deadline(10.0).epochs(7, 9, [5.0] * 7, [1.0], 1, now=20.0, evaluated=True) == 7


# -- the teacher stopped when its validation flattens ----------------------------------------

def test_a_flat_curve_caps_the_teacher_and_a_rising_one_does_not():
    rising = [(e, 0.30 + 0.01 * e) for e in range(1, 9)]            # +1 point per epoch
    d = Deadline(1e9, stop_when_flat=True)
    assert all(d.flattened(rising[:k], k) is None for k in range(1, 9)) and d.cap is None
    assert d.epochs(8, 8, [1.0] * 8, [0.1] * 8, 1, now=0.0, evaluated=True) > 1000
    # rising, then flat with noise of +-0.5 points: flat by the time the window holds only the
    # plateau (or earlier, once the rise in it is too small)
    noisy = rising[:4] + [(e, 0.34 + (0.005 if e % 2 else -0.005)) for e in range(5, 14)]
    flat_at = next(k for k in range(1, 14) if d.flattened(noisy[:k], k) is not None)
    assert 4 < flat_at <= 4 + plan.FLAT_WINDOW
    assert d.cap == flat_at + max(1, math.ceil(plan.ANNEAL_SHARE * flat_at))
    # capped: the generous deadline no longer raises the count, and a second call changes nothing
    assert d.epochs(flat_at, 8, [1.0] * flat_at, [0.1] * flat_at, 1, now=0.0,
                    evaluated=True) == d.cap
    assert d.flattened(noisy, 13) is None
    # a deadline without the flag (the student's) never caps
    plain = Deadline(1e9)
    assert plain.flattened(noisy, 13) is None and plain.cap is None


def test_a_teacher_that_stops_learning_hands_its_share_back(tmp_path):
    # a teacher at a vanishing learning rate: its validation is flat from the first epochs, so
    # under a deadline far away it stops after FLAT_WINDOW evaluations and a short anneal
    # (without the stop the deadline would raise its count to fill the 10 minutes)
    cfg = build_config("cnn-teacher", overrides=[
        f"out={tmp_path / 't'}", "progress=false", "device=cpu", "amp=off", "tensorboard=false",
        "data.train_fraction=0.25", "data.batch_size=32", "model.name=resnet10t",
        "model.small_stem=false",
        "optim.lr=1e-9", "optim.warmup_epochs=0", "epochs=3", "eval_every=1",
        "eval_train_images=0", "ema.enabled=false"])
    lines = []
    deadline = Deadline(time.perf_counter() + 600, stop_when_flat=True)
    summary = fit(cfg, "teacher", log=lines.append, deadline=deadline)
    w = plan.FLAT_WINDOW
    assert deadline.cap == w + max(1, math.ceil(plan.ANNEAL_SHARE * w))
    assert summary["epochs"] == deadline.cap
    assert summary["wall_seconds"] < 300
    said = "\n".join(lines)
    assert "teacher: validation has flattened" in said and f"until epoch {deadline.cap}" in said
    assert len(RunDir(tmp_path / "t").read_metrics()) == deadline.cap


# -- the revision in a real run ---------------------------------------------------------------

def test_a_revised_run_has_the_schedule_of_its_new_length(tmp_path):
    cfg = build_config("quickstart", overrides=[f"out={tmp_path}", *TINY, "epochs=4",
                                                 "distill.kind=none", "optim.warmup_epochs=1"])
    bundle = load_bundle(cfg)
    run = build_run(cfg, "student", bundle, dist_info=DistInfo())
    n = len(run.train_loader)
    run.step.scheduler.step_update(num_updates=2 * n)       # two epochs done at 4 in all
    cfg10 = _revise(run, 2, 10, [1.0, 1.0], [], lambda *a: None)
    assert cfg10.epochs == run.cfg.epochs == 10
    ref = build_scheduler(cfg10, torch.optim.SGD([torch.zeros(1, requires_grad=True)],
                                                 lr=run.lr), n)
    for u in (2 * n, 5 * n, 10 * n - 1):
        run.step.scheduler.step_update(num_updates=u)
        assert run.step.optimizer.param_groups[0]["lr"] == pytest.approx(ref._get_lr(u)[0])


def test_a_budgeted_run_fills_its_budget_and_never_passes_it(tmp_path, monkeypatch):
    # the planner measures made-up epochs (2 s teacher, 3 s student), far slower than the real
    # ones here, so the first plan is short: the fits revise it from their measured epochs
    monkeypatch.setattr(plan, "measure_epoch", lambda cfg, role, bundle, teacher=None, steps=3:
                        2.0 if role == "teacher" else 3.0)
    monkeypatch.setattr("deitkit.plan.process_seconds", lambda: 5.0)
    lines = []
    cfg = build_config("quickstart", overrides=[f"out={tmp_path / 'r'}", *TINY, "eval_every=1"])
    budget = 0.35                                             # 21 s, 5 of them already "spent"
    t0 = time.perf_counter()
    summary = train(cfg, log=lines.append, time_budget=budget)
    took = time.perf_counter() - t0
    left = 60 * budget - 5.0                                  # what the run was given
    assert took <= left                                       # never more
    epoch = (summary["wall_seconds"] - summary["teacher_wall_seconds"]) / summary["epochs"]
    # used: the deadline (the budget less the reserve for the summary) missed by under an
    # epoch with its evaluation
    assert took >= left - end_reserve(60 * budget) - 1.5 * epoch
    said = "\n".join(lines)
    first = next(line for line in lines if line.startswith("time budget 0.35 min: chose"))
    t, s = (int(x) for x in (first.split("teacher ")[1].split()[0],
                             first.split("student ")[1].split()[0]))
    assert t * 2.0 + s * 3.0 <= left < t * 2.0 + (s + 1) * 3.0 + 3.0   # the first plan fits
    assert summary["epochs"] > s and "student epochs (the last measured at" in said
    rd = RunDir(tmp_path / "r")
    assert len(rd.read_metrics()) == summary["epochs"]                 # what ran is recorded
    assert f"epochs: {summary['epochs']}" in rd.config.read_text()


# -- the fusion weight -------------------------------------------------------------------------

def test_the_weight_follows_the_better_head_and_ties_keep_the_mean():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 5, (400,), generator=g)
    good = torch.nn.functional.one_hot(labels, 5).float() * 3 + torch.randn(400, 5, generator=g)
    noise = torch.randn(400, 5, generator=g) * 3
    w, acc = choose_fusion_weight(noise, good, labels)       # the distillation head is better
    assert w < 0.5 and acc[w] >= max(acc[1.0], acc[0.0])      # never below the better head
    assert acc[w] > acc[0.5]                                  # and above the plain mean here
    w2, _ = choose_fusion_weight(good, noise, labels)         # the class head is better
    assert w2 > 0.5
    w3, _ = choose_fusion_weight(good, good.clone(), labels)  # equal heads: the mean
    assert w3 == 0.5
    a, b = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g)
    assert torch.equal(fuse(a, b, "logits", 0.5), (a + b) / 2)
    assert torch.allclose(fuse(a, b, "probs", 0.8), 0.8 * a.softmax(-1) + 0.2 * b.softmax(-1))


def test_the_held_out_images_are_apart_stratified_and_seeded():
    cfg = build_config("quickstart", overrides=["data.holdout=0.1"])
    b = load_bundle(cfg)
    full = load_bundle(build_config("quickstart"))
    train_idx, held = set(b.train.indices), set(b.holdout.indices)
    assert not train_idx & held and train_idx | held == set(full.train.indices)
    per_class = [b.holdout.targets.count(c) for c in range(10)]
    assert all(abs(n - 0.1 * full.train.targets.count(c)) <= 1 for c, n in enumerate(per_class))
    assert load_bundle(cfg).holdout.indices == b.holdout.indices


def test_a_run_chooses_its_weight_there_and_eval_predict_and_onnx_use_it(tmp_path, browser):
    out = tmp_path / "r"
    cfg = build_config("quickstart", overrides=[f"out={out}", *TINY, "epochs=3",
                                                 "teacher.train_epochs=2", "data.holdout=0.2"])
    summary = train(cfg, log=lambda *a: None)
    w = summary["fusion_weight"]
    rows = RunDir(out).read_metrics()
    assert summary["holdout_images"] == len(load_bundle(cfg).holdout) > 0
    assert rows[-1]["fusion_weight"] == w and summary["holdout_fused_top1"] >= max(
        summary["holdout_cls_top1"], summary["holdout_dist_top1"])
    teacher = json.loads((out / "teacher" / "summary.json").read_text())
    assert teacher["train_images"] == summary["train_images"]  # the teacher never saw them
    model, meta = load_for_inference(out / "checkpoint-last.pt")
    assert meta["fusion_weight"] == w
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out_w = FusedHeads(model, "logits", weight=w)(x)
        heads = student_forward(model, x)
    assert torch.allclose(out_w, w * heads.cls_logits + (1 - w) * heads.dist_logits, atol=1e-6)
    res_json = tmp_path / "eval.json"
    assert main(["eval", str(out), "--last", "--json", str(res_json)]) == 0
    res = json.loads(res_json.read_text())
    assert res["fusion_weight"] == w
    assert res["fused_top1"] == pytest.approx(rows[-1]["fused_top1"])  # as the run scored it
    line = fusion_line(summary)
    assert f"{summary['holdout_images']} held-out training images" in line
    # the page says it too, and the ending (a teacher far ahead after 3 epochs) as a list
    from selenium.webdriver.common.by import By

    from conftest import open_page
    assert main(["report", str(out), "--html"]) == 0
    assert open_page(browser, out / "report.html") == []
    assert browser.find_element(By.ID, "fusion").text == line
    ending = [li.text for li in browser.find_elements(By.CSS_SELECTOR, "#ending li")]
    assert ending == summary["ending"] and (ending == []) == (
        summary["teacher_top1"] - summary["fused_top1"] <= 0.03)
    # a fixed weight is the user's word: nothing is chosen
    fixed = train(build_config("quickstart", overrides=[
        f"out={tmp_path / 'f'}", *TINY, "epochs=1", "data.holdout=0.2",
        f"teacher.name={out / 'teacher'}", "distill.fusion_weight=0.3"]), log=lambda *a: None)
    assert fixed["fusion_weight"] == 0.3 and "holdout_fused_top1" not in fixed


# -- the ending ---------------------------------------------------------------------------------

def _curve(f, epochs):
    return [{"epoch": e, "fused_top1": f(e)} for e in range(1, epochs + 1)]


def test_the_curve_says_when_the_student_would_reach_the_teacher():
    curve = _curve(lambda e: 0.3 + 0.1 * math.log(e), 8)
    assert reach_epochs(curve, 0.67) == pytest.approx(math.exp(3.7), rel=1e-6)
    assert reach_epochs(_curve(lambda e: 0.5, 8), 0.67) is None       # flat: no guess
    assert reach_epochs(curve[:2], 0.67) is None                       # too short


def test_the_ending_says_plainly_when_the_cnn_is_ahead():
    curve = _curve(lambda e: 0.3 + 0.1 * math.log(e), 8)
    summary = {"teacher_top1": 0.70, "fused_top1": curve[-1]["fused_top1"], "epochs": 8,
               "wall_seconds": 500.0, "teacher_wall_seconds": 100.0, "run_dir": "runs/x"}
    lines = teacher_gap(summary, curve, "/data/mine")
    text = "\n".join(lines)
    assert "the CNN teacher is the better model today: 70.0 % against the student's 50.8 %" \
        in text and "19.2 points" in text
    more = (math.exp(3.7) - 8) * 50.0 / 60                              # 50 s per student epoch
    assert f"after about 40 epochs, about {more:.0f} more minutes" in text
    assert "deitkit pretrain --data /data/mine" in text and "model.weights=PRE" in text
    assert "deitkit predict runs/x/teacher IMAGES" in text
    assert teacher_gap({**summary, "fused_top1": 0.68}, curve, "d") == []   # within 3 points
    far = teacher_gap({**summary, "teacher_top1": 0.99}, curve, "d")
    assert "out of reach by time alone" in "\n".join(far)
    pre = teacher_gap(summary, curve, "d", start="runs/pre")
    assert "started from runs/pre" in "\n".join(pre) and "deitkit pretrain" not in "\n".join(pre)


def test_the_plan_measures_its_epochs_at_the_precision_the_run_will_use(monkeypatch):
    """--time-budget plans from steps timed at the run's own precision (amp=auto's measured
    choice), not at fp32 regardless: a bf16 run is planned from bf16 steps."""
    seen = []
    monkeypatch.setattr(plan, "run_amp", lambda cfg, role, *a, **k: seen.append(
        (role, cfg.amp)) or torch.bfloat16)
    real = plan.build_step

    def spy(*a, **k):
        seen.append(k["amp_dtype"])
        return real(*a, **k)
    monkeypatch.setattr(plan, "build_step", spy)
    cfg = build_config("quickstart", overrides=[*TINY, "amp=auto", "distill.kind=none"])
    seconds = plan.measure_epoch(cfg, "student", load_bundle(cfg))
    assert seen == [("student", "auto"), torch.bfloat16] and seconds > 0
