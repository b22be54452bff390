"""Masked-autoencoder pretraining: the maths (masking, patches, encoder), real short runs on
the digits and on a plain folder of images, exact resume, the weights in a student, the page."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from deitkit.build import build_student
from deitkit.cli import main
from deitkit.config import build_config, replace_keys
from deitkit.models.pretrained import load_pretrained
from deitkit.pretrain import (MaskedAutoencoder, build_mae, kept_patches, patchify, pretrain,
                              random_masking, unpatchify)
from deitkit.pretrain import run as pretrain_run
from deitkit.rundir import RunDir

TINY = ["data.img_size=16", "model.patch_size=4", "model.overrides.depth=1",
        "model.overrides.embed_dim=32", "model.overrides.num_heads=2", "mae.decoder_dim=16",
        "mae.decoder_depth=1", "mae.decoder_heads=2", "data.batch_size=32",
        "data.train_fraction=0.15", "optim.lr=2e-3", "optim.warmup_epochs=0", "amp=off",
        "progress=false", "mae.pictures=4", "mae.picture_epochs=2"]


def tiny_cfg(out, epochs=3, extra=()):
    return build_config("mae-cpu", None, [*TINY, f"epochs={epochs}", f"out={out}", *extra])


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    out = tmp_path_factory.mktemp("mae") / "run"
    summary = pretrain(tiny_cfg(out, epochs=4), log=lambda *a: None)
    return out, summary


# -- the maths ---------------------------------------------------------------------------------

@pytest.mark.parametrize("n,ratio", [(16, 0.75), (64, 0.75), (49, 0.5), (10, 0.9)])
def test_masking_keeps_exactly_the_share_per_image_and_is_seeded(n, ratio):
    g = lambda s: torch.Generator().manual_seed(s)  # noqa: E731
    m = random_masking(8, n, ratio, g(3), torch.device("cpu"))
    k = kept_patches(n, ratio)
    assert k == round(n * (1 - ratio))
    assert m.keep.shape == (8, k) and m.mask.shape == (8, n)
    assert (m.mask.sum(1) == n - k).all()                              # exact share, per image
    for b in range(8):                                                 # visible = the kept ones
        assert set(m.keep[b].tolist()) == set(torch.nonzero(m.mask[b] == 0).flatten().tolist())
        assert sorted(m.restore[b].tolist()) == list(range(n))
    again = random_masking(8, n, ratio, g(3), torch.device("cpu"))
    other = random_masking(8, n, ratio, g(4), torch.device("cpu"))
    assert torch.equal(m.mask, again.mask) and not torch.equal(m.mask, other.mask)
    assert len({tuple(r.tolist()) for r in m.mask}) > 1                # images differ


def test_patches_round_trip_and_the_prediction_maps_back_to_pixels():
    x = torch.randn(2, 3, 16, 12)
    p = patchify(x, 4)
    assert p.shape == (2, 12, 48)
    assert torch.equal(unpatchify(p, 4, (4, 3)), x)
    # patch 0 is the top-left 4x4 block, channels last inside a patch
    assert torch.equal(p[0, 0].reshape(4, 4, 3).permute(2, 0, 1), x[0, :, :4, :4])
    cfg = tiny_cfg("unused")
    mae = build_mae(cfg).eval()
    imgs = torch.randn(2, 3, 16, 16)
    masking = random_masking(2, mae.num_patches, 0.75, torch.Generator().manual_seed(0),
                             torch.device("cpu"))
    # predicting the normalised target exactly reconstructs the image, hidden patches too
    rec = mae.reconstruct(imgs, mae.target(imgs), masking, paste_visible=False)
    assert torch.allclose(rec, imgs, atol=1e-4)
    const = torch.full((1, 3, 16, 16), 0.3)
    m1 = random_masking(1, mae.num_patches, 0.75, torch.Generator().manual_seed(0),
                        torch.device("cpu"))
    assert torch.allclose(mae.target(const), torch.zeros(1, 16, 48))  # per-patch normalised
    assert torch.allclose(mae.reconstruct(const, torch.zeros(1, 16, 48), m1), const, atol=1e-6)
    hidden = mae.masked_input(imgs, masking)
    keep = masking.mask.reshape(2, 4, 4).repeat_interleave(4, 1).repeat_interleave(4, 2)
    assert torch.equal(hidden * (1 - keep[:, None]), imgs * (1 - keep[:, None]))
    assert (hidden * keep[:, None] == 0).all()


def test_the_encoder_on_all_patches_is_timms_forward():
    mae = build_mae(tiny_cfg("unused")).eval()
    x = torch.randn(3, 3, 16, 16)
    everything = torch.arange(mae.num_patches).expand(3, -1)
    with torch.no_grad():
        assert torch.allclose(mae.encode(x, everything), mae.encoder.forward_features(x),
                              atol=1e-5)
        masking = random_masking(3, mae.num_patches, 0.75, torch.Generator().manual_seed(1),
                                 torch.device("cpu"))
        loss, pred = mae(x, masking)
    assert mae.encode(x, masking.keep).shape == (3, 1 + 4, 32)
    assert pred.shape == (3, 16, 48) and torch.isfinite(loss)


def test_a_student_with_a_distillation_token_is_refused_as_an_encoder():
    from deitkit.models import create_student
    with pytest.raises(ValueError, match="one class token"):
        MaskedAutoencoder(create_student("deit_tiny_distilled_patch16_224", img_size=16,
                                         patch_size=4, depth=1))


# -- real runs -----------------------------------------------------------------------------------

def test_the_loss_falls_and_the_run_folder_holds_the_contract(pretrained):
    out, s = pretrained
    rows = RunDir(out).read_metrics()
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"] - 0.05
    assert s["val_loss"] < s["first_val_loss"]
    assert s["role"] == "pretrain" and s["train_images"] == 216 and s["eval_images"] == 360
    assert [e for e, _ in RunDir(out).pictures()] == [1, 4]
    ckpt = torch.load(out / "checkpoint-last.pt", weights_only=True)
    assert ckpt["meta"]["role"] == "pretrain" and "cls_token" in ckpt["model"]
    assert not any(k.startswith("decoder") for k in ckpt["model"])      # the encoder alone
    assert (out / "tb").is_dir() and (out / "config.yaml").is_file()


def test_resume_is_bit_exact(tmp_path, pretrained, monkeypatch):
    ref, _ = pretrained
    out = tmp_path / "run"
    real = pretrain_run.train_epoch

    def stop_at_third(p, epoch):
        if epoch == 2:
            raise KeyboardInterrupt
        return real(p, epoch)
    monkeypatch.setattr(pretrain_run, "train_epoch", stop_at_third)
    with pytest.raises(KeyboardInterrupt):
        pretrain(tiny_cfg(out, epochs=4), log=lambda *a: None)
    assert [r["epoch"] for r in RunDir(out).read_metrics()] == [1, 2]
    monkeypatch.setattr(pretrain_run, "train_epoch", real)
    pretrain(tiny_cfg(out, epochs=4), resume=True, log=lambda *a: None)
    a = torch.load(ref / "checkpoint-last.pt", weights_only=True)
    b = torch.load(out / "checkpoint-last.pt", weights_only=True)
    for part in ("model", "decoder"):
        assert a[part].keys() == b[part].keys()
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), k
    strip = lambda rows: [{k: v for k, v in r.items()  # noqa: E731
                           if k not in ("epoch_seconds", "images_per_second")} for r in rows]
    assert strip(RunDir(ref).read_metrics()) == strip(RunDir(out).read_metrics())


def test_the_encoder_loads_into_a_distilled_student(pretrained):
    out, _ = pretrained
    cfg = replace_keys(tiny_cfg("unused"), **{"model.name": "deit_tiny_distilled_patch16_224"})
    torch.manual_seed(0)
    student = build_student(cfg, 10)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    lines = load_pretrained(student, str(out))
    enc = torch.load(out / "checkpoint-last.pt", weights_only=True)["model"]
    after = student.state_dict()
    for k, v in enc.items():
        if k != "pos_embed":
            assert torch.equal(after[k], v), k
            assert not torch.equal(before[k], v), k
    assert torch.equal(after["dist_token"], enc["cls_token"])
    assert torch.equal(after["pos_embed"][:, 1], enc["pos_embed"][:, 0])  # the token's position
    assert torch.equal(after["pos_embed"][:, 2:], enc["pos_embed"][:, 1:])
    for k in ("head.weight", "head.bias", "head_dist.weight", "head_dist.bias"):
        assert torch.equal(after[k], before[k]), k                     # fresh heads
    text = "\n".join(lines)
    assert "MAE pretraining" in text and "heads fresh" in text and "distillation token" in text


def test_train_starts_from_a_pretraining_run_and_says_so(pretrained, tmp_path, capsys):
    out, s = pretrained
    keys = [k for k in s["student_keys"] if not k.startswith("model.name")]
    assert main(["train", "--out", str(tmp_path / "st"), "--epochs", "1", "--no-progress",
                 "distill.kind=none", "distill.heads=cls", "amp=off", "data.train_fraction=0.1",
                 "eval_train_images=0", "model.overrides.embed_dim=32",
                 "model.overrides.num_heads=2", *keys]) == 0
    printed = capsys.readouterr().out
    assert "student init: loaded" in printed and "MAE pretraining" in printed


def test_the_page_shows_the_numbers_and_the_reconstructions(pretrained, browser):
    from selenium.webdriver.common.by import By

    from conftest import check_images, open_page
    from deitkit.report import fmt
    out, s = pretrained
    assert main(["report", str(out), "--html"]) == 0
    assert open_page(browser, out / "report.html") == []
    shown = {td.get_attribute("data-key"): td.text
             for td in browser.find_elements(By.CSS_SELECTOR, "#results td[data-key]")}
    assert shown["val_loss"] == fmt(s["val_loss"])
    assert shown["first_val_loss"] == fmt(s["first_val_loss"])
    assert shown["epochs"] == "4"
    figures = browser.find_elements(By.CSS_SELECTOR, "figure.reconstruction")
    assert [f.get_attribute("data-epoch") for f in figures] == ["1", "4"]
    assert check_images(browser) == 3                                  # the loss + 2 grids


def _noise_png(path, seed, size=20):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path)


def test_a_plain_folder_of_images_searched_recursively(tmp_path, capsys):
    imgs = tmp_path / "imgs"
    for i in range(40):
        _noise_png(imgs / f"part{i % 3}" / "deeper" / f"{i}.png", i)
    (imgs / "notes.txt").write_text("not an image")
    (imgs / "part0" / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "run"
    args = ["pretrain", "--data", str(imgs), "--out", str(out), "--epochs", "1", *TINY,
            "data.train_fraction=1.0", "data.batch_size=8"]
    assert main(args) == 2                                             # the broken file, named
    assert "broken.png" in capsys.readouterr().err
    assert not RunDir(out).has_last()                                  # stopped in epoch 1
    assert main(args + ["data.on_bad_image=skip", "--overwrite"]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["train_images"] + s["eval_images"] == 41 and s["eval_images"] == 4
    assert "broken.png" in (out / "skipped_images.txt").read_text()
    assert main(args + ["data.on_bad_image=skip"]) == 2                # the folder holds a run
    assert "--overwrite" in capsys.readouterr().err


def test_bad_pretraining_inputs_are_one_line_before_work(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["pretrain", "--data", str(empty), "--out", str(tmp_path / "a"), *TINY]) == 2
    assert "holds 0 image file(s)" in capsys.readouterr().err
    for extra, words in ((["mae.mask_ratio=1.0"], "mae.mask_ratio"),
                         (["mae.decoder_heads=3"], "mae.decoder_heads"),
                         (["model.weights=x.pt"], "random weights"),
                         (["model.patch_size=5"], "multiple of patch_size")):
        assert main(["pretrain", "--out", str(tmp_path / "b"), *TINY, *extra]) == 2, extra
        assert words in capsys.readouterr().err, extra
        assert not (tmp_path / "b").exists()


def test_a_time_budget_chooses_the_epochs_from_measured_steps(tmp_path):
    lines = []
    s = pretrain(tiny_cfg(tmp_path / "run", epochs=500), time_budget=0.25, log=lines.append)
    said = " ".join(lines)
    assert "time budget 0.25 min: an epoch measured at" in said
    assert 1 <= s["epochs"] < 500                                      # the recipe's 500: cut
    assert s["wall_seconds"] <= 0.25 * 60 * 1.5                        # within the budget, or near
    assert len(RunDir(tmp_path / "run").read_metrics()) == s["epochs"]


def test_runs_started_at_once_keep_apart_and_match_a_run_alone(tmp_path):
    # --jobs-safe: two `deitkit pretrain` processes started in the same second, same folder,
    # no --out, one thread each (as --jobs 2 gives on 2 cores): two run folders, and each run
    # is the run it would have been alone (bit for bit)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DEITKIT_AMP_CACHE": str(tmp_path / "amp.json")}
    cmd = lambda seed, *out: [sys.executable, "-m", "deitkit", "pretrain", *out,  # noqa: E731
                              *TINY, "epochs=2", f"seed={seed}"]
    alone = subprocess.run(cmd(0, "--out", str(tmp_path / "alone")), cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=300)
    assert alone.returncode == 0, alone.stderr
    procs = [subprocess.Popen(cmd(seed), cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for seed in (0, 1)]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read()
    folders = sorted((tmp_path / "runs").iterdir())
    assert len(folders) == 2 and all(RunDir(f).is_finished() for f in folders)
    ref = torch.load(tmp_path / "alone" / "checkpoint-last.pt", weights_only=True)
    same = []
    for f in folders:
        c = torch.load(f / "checkpoint-last.pt", weights_only=True)
        same.append(all(torch.equal(ref[part][k], c[part][k])
                        for part in ("model", "decoder") for k in ref[part]))
    assert sorted(same) == [False, True]                   # seed 0 as alone; seed 1 its own
