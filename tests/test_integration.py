"""One real short run: a CNN teacher, then a distilled DeiT student, on the embedded digits."""
import json

from deitkit import build_config, train


def test_teacher_then_distilled_student_beat_chance_widely(tmp_path):
    # the quickstart recipe, shortened: 4 blocks, 8 epochs, crop + flip augmentation (the DeiT
    # stack needs more epochs than a unit test has; tests/test_resume.py runs it end to end)
    cfg = build_config("quickstart", overrides=[
        f"out={tmp_path / 'run'}", "epochs=8", "teacher.train_epochs=3", "progress=false",
        "optim.warmup_epochs=1", "model.overrides={depth: 4}", "aug.stack=light"])
    summary = train(cfg)
    chance = 0.1
    assert summary["teacher_top1"] > 0.6                 # the CNN learns the digits quickly
    assert summary["fused_top1"] > 3 * chance            # the student is far above chance
    assert summary["dist_top1"] is not None and summary["head_agreement"] is not None
    on_disk = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert on_disk["fused_top1"] == summary["fused_top1"]
    # the distillation head learned from the teacher: it agrees with it well above chance
    assert summary["student_teacher_agreement"] > 3 * chance
