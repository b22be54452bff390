"""`deitkit train --data DIR` without a recipe: picks from the data, said out loud."""
import json

import numpy as np
import pytest
from PIL import Image

from deitkit.auto import auto_config, data_facts
from deitkit.cli import main


def _folder(root, n_per_class, size, classes=3, val_per_class=4):
    rng = np.random.default_rng(0)
    for split, n in (("train", n_per_class), ("val", val_per_class)):
        for c in range(classes):
            d = root / split / f"class{c}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pix = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
                pix[:, c * size // classes:(c + 1) * size // classes] += 150  # a learnable stripe
                Image.fromarray(pix).save(d / f"{i}.png")
    return root


def test_facts_are_read_from_the_folder(tmp_path):
    f = data_facts(_folder(tmp_path / "d", 5, 28))
    assert (f.train_images, f.val_images, f.classes, f.median_side) == (15, 12, 3, 28)


@pytest.mark.parametrize("size, n, device, img, patch, depth, batch, stack", [
    (28, 10, "cpu", 32, 8, 4, 16, "light"),     # small grey images: 32 px, 16 tokens
    (70, 10, "cpu", 64, 16, 4, 16, "light"),    # larger images: capped at 64 px on a CPU
    (70, 10, "cuda", 64, 8, 4, 16, "light"),    # a GPU affords 64 tokens
])
def test_picks_follow_size_count_and_device(tmp_path, size, n, device, img, patch, depth,
                                            batch, stack):
    cfg, why, budget = auto_config(str(_folder(tmp_path / "d", n, size)), device)
    assert (cfg.data.img_size, cfg.model.patch_size, cfg.model.overrides["depth"],
            cfg.data.batch_size, cfg.aug.stack) == (img, patch, depth, batch, stack)
    assert cfg.recipe.name == "auto" and cfg.data.name.endswith("d")
    assert any(f"image size {img} px" in w for w in why) and budget > 0
    # the user's overrides come last
    cfg, _, _ = auto_config(str(tmp_path / "d"), device, ["data.batch_size=8", "epochs=3"])
    assert (cfg.data.batch_size, cfg.epochs) == (8, 3)


def test_larger_data_gets_a_deeper_student_and_the_deit_stack(tmp_path, monkeypatch):
    import deitkit.auto as auto
    real = auto.data_facts
    monkeypatch.setattr(auto, "data_facts", lambda p: real(p).__class__(20_000, 5_000, 10, 32))
    cfg, why, _ = auto_config(str(_folder(tmp_path / "d", 2, 32)), "cpu")
    assert (cfg.model.overrides["depth"], cfg.model.patch_size, cfg.data.batch_size) == (6, 4, 64)
    assert cfg.aug.stack == "deit" and cfg.aug.mixup == 0 and cfg.eval_every == 4


def test_cli_without_recipe_picks_trains_and_says_why(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("deitkit.plan.process_seconds", lambda: 0.0)  # budget from now
    data = _folder(tmp_path / "d", 8, 28)
    out = tmp_path / "run"
    assert main(["train", "--data", str(data), "--out", str(out), "--time-budget", "0.6",
                 "--no-progress", "--device", "cpu", "data.num_workers=0", "amp=off"]) == 0
    said = capsys.readouterr().out
    assert "image size 32 px" in said and "--recipe" in said  # the picks, and how to choose
    budget = next(line for line in said.splitlines() if line.startswith("time budget 0.6"))
    assert "teacher" in budget and "student" in budget  # both epoch counts chosen and said
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs"] >= 1 and summary["fused_top1"] is not None
    assert summary["regime_text"].startswith(summary["regime"]) and summary["regime"] != "unknown"
