"""`deitkit bench` runs every configuration and reports the ratios the issue names."""
import json

import pytest

from deitkit.bench import BenchConfig, _MemoryStore, format_bench, run_bench
from deitkit.cli import main

SMALL = BenchConfig(img_size=32, batch_size=8, steps=2, warmup=1, repeats=2,
                    precisions="fp32", workers=0, teacher="resnet18", matmul_size=256)


def test_bench_reports_every_stage_and_ratio():
    res = run_bench(SMALL, log=lambda *a: None)
    ips = res["images_per_second"]
    assert set(ips) == {"reference_fp32", "ours_fp32", "ours_stored_fp32", "ours_nodistill_fp32"}
    assert all(v > 0 for v in ips.values())
    assert res["ratio_fp32_vs_reference"] == ips["ours_fp32"] / ips["reference_fp32"]
    best = max(ips[k] for k in ("ours_fp32", "ours_stored_fp32"))
    assert res["ratio_best_vs_reference"] == best / ips["reference_fp32"]
    assert res["stored_over_nodistill"] == ips["ours_nodistill_fp32"] / ips["ours_stored_fp32"]
    assert 0 < res["model_flops_fraction_of_peak"] < 5
    assert res["student_step_gflop"] > 0 and res["teacher_forward_gflop"] > 0
    # every configuration was timed `repeats` times (the median of those is reported)
    assert all(len(t) == SMALL.repeats for t in res["repeats_seconds"].values())
    share = res["profile_share_ours_fp32"]
    assert share["teacher"] > 0 and share["backward"] > 0
    phases = sum(v for k, v in share.items() if k != "other")
    assert 0 < phases <= 1.05  # the phases are disjoint ranges inside the measured wall time
    assert share["other"] == pytest.approx(max(0.0, 1.0 - phases))
    assert res["data_images_per_second_per_worker"] > 0
    assert res["eval_images_per_second_fp32"] > 0
    text = format_bench(res)
    assert "ratio_fp32_vs_reference" in text and "reference_fp32" in text


def test_bench_cli_writes_json(tmp_path):
    out = tmp_path / "b.json"
    assert main(["bench", "--img-size", "32", "--batch-size", "4", "--steps", "1", "--warmup",
                 "1", "--repeats", "1", "--precisions", "fp32", "--workers", "0",
                 "--matmul-size", "128", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    for key in ("ratio_fp32_vs_reference", "ratio_best_vs_reference", "stored_over_nodistill",
                "model_flops_fraction_of_peak"):
        assert isinstance(res[key], float) and res[key] > 0


def test_memory_store_reads_like_a_file_store():
    s = _MemoryStore(steps=2, batch=3, num_classes=5)
    logits = s.log_probs(0, 1, device="cpu")
    assert logits.shape == (3, 5)
    assert abs(float(logits.exp().sum(-1).mean()) - 1) < 1e-5
