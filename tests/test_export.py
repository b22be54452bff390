"""Pretrained students, exports (safetensors for timm, ONNX for onnxruntime) and predict."""
import json
import re
import os
import subprocess
import sys

import numpy as np
import pytest
import safetensors.torch
import timm
import torch

from deitkit import create_student
from deitkit.checkpoint import CheckpointError
from deitkit.cli import main
from deitkit.data import build_eval_transform, load_dataset
from deitkit.config import AugConfig
from deitkit.export import FusedHeads, load_for_inference
from deitkit.models import student_forward
from deitkit.models.pretrained import load_pretrained

FAST = ["--epochs", "2", "--no-progress", "teacher.train_epochs=1", "model.overrides={depth: 2}",
        "data.train_fraction=0.2", "amp=off", "--device", "cpu"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "run"
    assert main(["train", "--out", str(out), *FAST]) == 0
    return out


def _digits(n=16):
    """n real test digits (PIL images) with their labels."""
    val = load_dataset("digits").val
    return [val._load(i) for i in range(n)]


# --- pretrained initialisation -------------------------------------------------------------

def test_plain_deit_fills_a_distilled_student_with_resampling(tmp_path):
    src = timm.create_model("deit_tiny_patch16_224", depth=2)              # 224 px, patch 16
    f = tmp_path / "plain.safetensors"
    safetensors.torch.save_file(src.state_dict(), str(f))
    s = create_student("deit_tiny_distilled_patch16_224", num_classes=5, img_size=32,
                       patch_size=4, depth=2)
    head = s.head.weight.clone()
    said = load_pretrained(s, str(f))
    assert any("distillation token and its position started from the class token" in x
               for x in said)
    assert any("pos_embed resampled from (1, 197, 192) to (1, 66, 192)" in x
               or "pos_embed resampled from (1, 198, 192) to (1, 66, 192)" in x for x in said)
    assert any("heads re-initialised for 5 classes (the weights had 1000)" in x for x in said)
    assert torch.equal(s.dist_token, src.cls_token)
    assert torch.equal(s.blocks[1].mlp.fc2.weight, src.blocks[1].mlp.fc2.weight)
    assert torch.equal(s.head.weight, head)                              # left as initialised


def test_official_checkpoint_and_distilled_into_plain(tmp_path):
    d = create_student("deit_tiny_distilled_patch16_224", num_classes=10, img_size=32,
                       patch_size=8, depth=2)
    f = tmp_path / "official.pth"
    torch.save({"model": d.state_dict(), "model_ema": d.state_dict(), "epoch": 3}, f)
    plain = create_student("deit_tiny_patch16_224", num_classes=10, img_size=32, patch_size=8,
                           depth=2)
    said = load_pretrained(plain, str(f))
    assert any("distillation token, its position and head dropped" in x for x in said)
    assert torch.equal(plain.head.weight, d.head.weight)                  # same classes: kept
    assert torch.equal(plain.pos_embed[:, 1:], d.pos_embed[:, 2:])


@pytest.mark.parametrize("layout", ["transformers-5", "hub-files"])
def test_hugging_face_weights_give_the_same_outputs(tmp_path, layout):
    from transformers import DeiTConfig, DeiTForImageClassificationWithTeacher
    cfg = DeiTConfig(image_size=32, patch_size=8, hidden_size=192, num_hidden_layers=2,
                     num_attention_heads=3, intermediate_size=768, num_labels=7,
                     layer_norm_eps=1e-6)
    hf = DeiTForImageClassificationWithTeacher(cfg).eval()
    state = {k: v.contiguous() for k, v in hf.state_dict().items()}
    if layout == "hub-files":  # the names the files on the Hugging Face hub use
        ren = {"layers.": "encoder.layer.", "attention.q_proj": "attention.attention.query",
               "attention.k_proj": "attention.attention.key",
               "attention.v_proj": "attention.attention.value",
               "attention.o_proj": "attention.output.dense", "mlp.fc1": "intermediate.dense",
               "mlp.fc2": "output.dense"}
        for a, b in ren.items():
            state = {k.replace(a, b): v for k, v in state.items()}
        assert any("attention.attention.query" in k for k in state)
    f = tmp_path / "hf.safetensors"
    safetensors.torch.save_file(state, str(f))
    s = create_student("deit_tiny_distilled_patch16_224", num_classes=7, img_size=32,
                       patch_size=8, depth=2).eval()
    assert any("Hugging Face names" in x for x in load_pretrained(s, str(f)))
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        want, got = hf(pixel_values=x), student_forward(s, x)
    assert torch.allclose(want.cls_logits, got.cls_logits, atol=1e-5)
    assert torch.allclose(want.distillation_logits, got.dist_logits, atol=1e-5)


def test_architecture_mismatch_names_keys_and_shapes(tmp_path):
    f = tmp_path / "w.safetensors"
    safetensors.torch.save_file(create_student("deit_tiny_patch16_224", num_classes=10,
                                               img_size=32, patch_size=8, depth=2).state_dict(),
                                str(f))
    deeper = create_student("deit_tiny_patch16_224", num_classes=10, img_size=32, patch_size=8,
                            depth=3)
    with pytest.raises(CheckpointError, match=r"missing \(\d+ keys\): blocks\.2\.norm1\.weight"):
        load_pretrained(deeper, str(f))
    small = create_student("deit_small_patch16_224", num_classes=10, img_size=32, patch_size=8,
                           depth=2)
    with pytest.raises(CheckpointError, match=r"shapes differ \(\d+ keys\): .*blocks\.0\.attn"
                                              r"\.proj\.weight: file \(192, 192\), model "
                                              r"\(384, 384\)"):
        load_pretrained(small, str(f))


def test_run_starts_from_a_deitkit_checkpoint_and_says_so(run_dir, tmp_path, capsys):
    out = tmp_path / "ft"
    assert main(["train", "--out", str(out), *FAST, "--teacher", str(run_dir / "teacher"),
                 f"model.weights={run_dir / 'checkpoint-best.pt'}"]) == 0
    said = capsys.readouterr().out
    assert "student init: loaded" in said and "checkpoint-best.pt" in said


def test_hub_weights_offline_fail_with_a_message_naming_model_weights(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    r = subprocess.run([sys.executable, "-m", "deitkit", "train", "--out", str(tmp_path / "r"),
                        *FAST, "model.pretrained=true"], capture_output=True, text=True,
                       env=env, timeout=300)
    assert r.returncode == 2
    assert "could not download the pretrained weights" in r.stderr
    assert "model.weights=" in r.stderr


# --- exports -------------------------------------------------------------------------------

def test_onnx_export_matches_pytorch_on_real_images(run_dir, tmp_path):
    import onnx
    import onnxruntime as ort
    path = tmp_path / "m.onnx"
    assert main(["export", str(run_dir), str(path)]) == 0
    model, meta = load_for_inference(run_dir)
    tf = build_eval_transform(AugConfig(eval_crop_pct=1.0), meta["img_size"], meta["mean"],
                              meta["std"])
    x = torch.stack([tf(img) for img, _ in _digits(16)])               # 16 real test digits
    with torch.no_grad():
        want = FusedHeads(model, meta["fusion"])(x).numpy()
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(["logits"], {"image": x.numpy()})[0]
    assert np.abs(got - want).max() < 1e-4
    got3 = sess.run(["logits"], {"image": x[:3].numpy()})[0]            # dynamic batch
    assert got3.shape == (3, 10) and np.abs(got3 - want[:3]).max() < 1e-4
    props = {p.key: json.loads(p.value) for p in onnx.load(str(path)).metadata_props}
    assert props["img_size"] == meta["img_size"] and props["mean"] == meta["mean"]
    assert props["std"] == meta["std"] and props["classes"] == meta["classes"]


def test_safetensors_export_loads_in_timm(run_dir, tmp_path):
    path = tmp_path / "m.safetensors"
    assert main(["export", str(run_dir), str(path)]) == 0
    meta = json.loads(path.with_suffix(".json").read_text())
    kw = {k: v for k, v in meta["timm_kwargs"].items() if k != "num_classes"}
    n = meta["num_classes"]
    ours, _ = load_for_inference(run_dir)
    x = torch.randn(4, 3, meta["img_size"], meta["img_size"])
    # the form: timm keeps every weight but re-initialises the heads, as it does for
    # any pretrained file whose class count is not its 1000
    m = timm.create_model(meta["model_name"], pretrained=True,
                          pretrained_cfg_overlay=dict(file=str(path)), num_classes=n, **kw)
    assert torch.equal(m.blocks[0].attn.qkv.weight, ours.blocks[0].attn.qkv.weight)
    assert torch.equal(m.pos_embed, ours.pos_embed) and torch.equal(m.dist_token, ours.dist_token)
    # with the class count in the overlay the heads load too: the same model, the same outputs
    m = timm.create_model(meta["model_name"], pretrained=True,
                          pretrained_cfg_overlay=dict(file=str(path), num_classes=n),
                          num_classes=n, **kw).eval()
    with torch.no_grad():
        assert torch.allclose(m(x), FusedHeads(ours, "logits")(x), atol=1e-6)


# --- predict -------------------------------------------------------------------------------

def test_predict_folders_and_files_skips_unreadable_and_writes_json_csv(run_dir, tmp_path,
                                                                         capsys):
    imgs = tmp_path / "imgs"
    (imgs / "nested").mkdir(parents=True)
    digits = _digits(6)
    for i, (img, _) in enumerate(digits):
        img.save(imgs / ("nested" if i % 2 else ".") / f"d{i}.png")
    (imgs / "broken.png").write_bytes(b"not a png")
    extra = tmp_path / "one.jpg"
    digits[0][0].save(extra)
    js, cs = tmp_path / "p.json", tmp_path / "p.csv"
    assert main(["predict", str(run_dir), str(imgs), str(extra), "--topk", "3", "--json",
                 str(js), "--csv", str(cs), "--no-progress", "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "broken.png" in err  # the unreadable file is named ...
    last = err.strip().splitlines()[-1]  # ... and the counts are said: 7 predicted, 1 skipped
    assert [int(n) for n in re.findall(r"\d+", last)] == [7, 1]
    res = json.loads(js.read_text())
    assert len(res["predictions"]) == 7 and res["skipped"][0]["path"].endswith("broken.png")
    classes = json.loads(json.dumps(load_for_inference(run_dir)[1]["classes"]))
    for r in res["predictions"]:
        probs = [t["probability"] for t in r["top"]]
        assert len(r["top"]) == 3 and probs == sorted(probs, reverse=True) and sum(probs) <= 1
        assert all(t["label"] in classes for t in r["top"])
    rows = cs.read_text().splitlines()
    assert rows[0] == "path,label1,prob1,label2,prob2,label3,prob3" and len(rows) == 8
    # the export predicts the same
    st = tmp_path / "m.safetensors"
    assert main(["export", str(run_dir), str(st)]) == 0
    js2 = tmp_path / "p2.json"
    assert main(["predict", str(st), str(imgs), str(extra), "--topk", "3", "--json", str(js2),
                 "--no-progress", "--device", "cpu"]) == 0
    assert json.loads(js2.read_text())["predictions"] == res["predictions"]
