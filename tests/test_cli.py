"""The README main command in a fast form, and the other subcommands on its output."""
import json

import pytest
import torch

from deitkit.cli import main

FAST = ["--epochs", "2", "--no-progress", "teacher.train_epochs=1",
        "model.overrides={depth: 1}", "data.train_fraction=0.2"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", "--out", str(out), *FAST]) == 0
    return out


def test_train_writes_the_run_folder(run_dir, capsys):
    for f in ("config.yaml", "metrics.jsonl", "checkpoint-last.pt", "checkpoint-best.pt",
              "summary.json", "teacher/summary.json", "teacher/checkpoint-best.pt"):
        assert (run_dir / f).is_file(), f
    s = json.loads((run_dir / "summary.json").read_text())
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    assert [r["epoch"] for r in rows] == [1, 2] and s["epochs"] == 2
    rec = rows[-1]
    for k in ("train_loss", "train_base_loss", "train_distill_loss", "lr", "train_top1",
              "token_cosine", "student_teacher_agreement", "epoch_seconds", "images_per_second",
              "train_clean_top1"):
        assert k in rec, k
    # the summary is the last evaluation, and the best is the best of the evaluations
    for k in ("cls_top1", "dist_top1", "fused_top1", "head_agreement", "teacher_top1",
              "train_clean_top1", "token_cosine"):
        assert s[k] == rec[k], k
    assert s["best_fused_top1"] == max(r["fused_top1"] for r in rows if "fused_top1" in r)
    assert rows[s["best_epoch"] - 1]["fused_top1"] == s["best_fused_top1"]
    assert s["regime_text"].startswith(s["regime"] + ":") and s["regime"] != "unknown"
    teacher = json.loads((run_dir / "teacher" / "summary.json").read_text())
    assert s["teacher_top1"] == pytest.approx(teacher["fused_top1"])  # the same teacher
    # the wall time counts the whole run: the teacher's training and every student epoch
    assert s["wall_seconds"] > teacher["wall_seconds"] + sum(r["epoch_seconds"] for r in rows)


def test_eval_reproduces_the_summary(run_dir, tmp_path, capsys):
    out = tmp_path / "eval.json"
    assert main(["eval", str(run_dir), "--last", "--device", "cpu", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    s = json.loads((run_dir / "summary.json").read_text())
    for k in ("cls_top1", "dist_top1", "fused_top1", "head_agreement", "teacher_top1"):
        assert res[k] == pytest.approx(s[k]), k
    assert "fused_top1" in capsys.readouterr().out
    assert main(["eval", str(run_dir), "--fusion", "probs", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["fusion"] == "probs"


def test_train_with_a_teacher_folder_and_export(run_dir, tmp_path):
    out = tmp_path / "student2"
    assert main(["train", "--out", str(out), "--teacher", str(run_dir / "teacher"), *FAST,
                 "distill.kind=soft", "distill.tau=2"]) == 0
    assert not (out / "teacher").exists()
    st = tmp_path / "m.safetensors"
    assert main(["export", str(out), str(st)]) == 0
    from safetensors.torch import load_file
    w = load_file(str(st))
    ref = torch.load(out / "checkpoint-best.pt", weights_only=True)["model"]
    assert set(w) == set(ref) and torch.equal(w["head_dist.weight"], ref["head_dist.weight"])
    assert json.loads(st.with_suffix(".json").read_text())["model_name"].startswith("deit_tiny")


def test_teacher_command(tmp_path):
    out = tmp_path / "t"
    assert main(["teacher", "--out", str(out), "--epochs", "1", "--no-progress",
                 "--data", "digits", "data.train_fraction=0.2"]) == 0
    s = json.loads((out / "summary.json").read_text())
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert s["role"] == "teacher" and s["teacher_top1"] == s["fused_top1"] == last["fused_top1"]
    assert s["dist_top1"] is None and s["head_agreement"] is None  # a CNN has one head


def test_cli_errors_are_one_clear_line(tmp_path, capsys):
    assert main(["train", "--dry-run", "distill.kidn=soft"]) == 2
    assert "unknown key 'distill.kidn'" in capsys.readouterr().err
    assert main(["train", "--out", str(tmp_path / "x"), "--no-progress",
                 "model.name=deit_tiny_patch16_224"]) == 2
    assert "distillation token" in capsys.readouterr().err
    assert main(["train", "--out", str(tmp_path / "y"), "--no-progress",
                 "--teacher", "resnet18", "--teacher-weights", str(tmp_path / "none.pt")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["train", "--dry-run", "--data", "cifar10", "--epochs", "3"]) == 0
    assert "name: cifar10" in capsys.readouterr().out
    # overrides may follow options
    assert main(["train", "--dry-run", "distill.tau=2", "--epochs", "3", "distill.alpha=0.2"]) == 0
    out = capsys.readouterr().out
    assert "tau: 2.0" in out and "alpha: 0.2" in out and "epochs: 3" in out
    with pytest.raises(SystemExit):
        main(["train", "--dry-run", "--bogus"])


def test_tensorboard_scalars_match_the_metrics(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(run_dir / "tb"))
    acc.Reload()
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    tags = set(acc.Tags()["scalars"])
    for tag, key in (("accuracy/fused_top1", "fused_top1"), ("loss/train_loss", "train_loss"),
                     ("agreement/head_agreement", "head_agreement"), ("run/lr", "lr"),
                     ("speed/images_per_second", "images_per_second"),
                     ("accuracy/train_clean_top1", "train_clean_top1")):
        assert tag in tags, tag
        got = [(e.step, e.value) for e in acc.Scalars(tag)]
        want = [(r["epoch"], pytest.approx(r[key], rel=1e-6)) for r in rows if key in r]
        assert want and got == want, tag


def test_html_page_of_a_run_shows_its_numbers(run_dir, browser, capsys):
    from selenium.webdriver.common.by import By

    from conftest import check_images, open_page
    from deitkit.html import cell
    assert main(["report", str(run_dir), "--html"]) == 0
    page = run_dir / "report.html"
    assert open_page(browser, page) == []                      # no console errors
    s = json.loads((run_dir / "summary.json").read_text())
    shown = {td.get_attribute("data-key"): td.text
             for td in browser.find_elements(By.CSS_SELECTOR, "#results td[data-key]")}
    assert {"fused_top1", "cls_top1", "dist_top1", "train_clean_top1", "teacher_top1"} <= set(shown)
    for key, text in shown.items():
        assert text == cell(key, s[key]), key
    assert browser.find_element(By.ID, "regime").text == f"Regime: {s['regime_text']}"
    assert check_images(browser) == 2                          # loss and accuracy curves
    srcs = [i.get_attribute("src") for i in browser.find_elements(By.TAG_NAME, "img")]
    assert all(src.startswith("data:image/png;base64,") for src in srcs)  # self-contained
    assert "data.img_size" in page.read_text() or "img_size" in page.read_text()  # the config
