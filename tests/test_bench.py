"""`deitkit bench`: the timing and the ratios against steps of known duration, the phase
shares against ranges of known length, and one real run at a tiny size."""
import json
import time

import pytest
import torch
from torch.profiler import record_function

from deitkit.bench import (BenchConfig, Variant, _MemoryStore, format_bench, profile_share,
                           run_bench, speed_ratios, time_round_robin)
from deitkit.cli import main
from deitkit.distill.store import STORE_FORMAT, TeacherStore, save_epoch, write_meta

SMALL = BenchConfig(img_size=32, batch_size=8, steps=2, warmup=1, repeats=2,
                    precisions="fp32", workers=0, teacher="resnet18", matmul_size=256)
CPU = torch.device("cpu")


def _fake(name, kind, durations, calls):
    """A configuration whose calls 'take' the given seconds, in turn (no real work)."""
    it = iter(durations)

    def run(batches):
        calls.append(name)
        return next(it)
    return Variant(name, run, kind, "fp32")


def test_round_robin_takes_the_median_of_each_configuration_in_turn():
    calls = []
    # reference median 0.30 s; ours median 0.15 s despite one slow outlier (a mean: 0.25 s)
    variants = [_fake("reference_fp32", "reference", [0.2, 0.4, 0.3], calls),
                _fake("ours_fp32", "online", [0.1, 0.5, 0.15], calls),
                _fake("ours_stored_fp32", "stored", [0.12, 0.12, 0.12], calls),
                _fake("ours_nodistill_fp32", "none", [0.06, 0.06, 0.06], calls)]
    ips = time_round_robin(variants, [None], repeats=3, images=60, device=CPU, log=lambda m: None)
    assert calls == [v.name for v in variants] * 3  # repeat 1 of each, then repeat 2 of each
    assert ips["reference_fp32"] == pytest.approx(60 / 0.3)
    assert ips["ours_fp32"] == pytest.approx(60 / 0.15)
    r = speed_ratios(ips, variants, ["fp32"])
    assert r["ratio_fp32_vs_reference"] == pytest.approx(2.0)
    # the best accurate configuration is the stored one (0.12 s); the no-teacher step is not
    # eligible although it is faster
    assert r["best_configuration"] == "ours_stored_fp32"
    assert r["ratio_best_vs_reference"] == pytest.approx(0.3 / 0.12)
    # a time ratio: the stored-output step takes twice the no-teacher step
    assert r["stored_over_nodistill"] == pytest.approx(0.12 / 0.06)


def test_profile_shares_match_ranges_of_known_length():
    def run(batches):
        with record_function("teacher"):
            time.sleep(0.10)
        with record_function("backward"):
            time.sleep(0.20)
        time.sleep(0.10)  # outside every phase: "other"
    share = profile_share(run, [None])
    assert share["teacher"] == pytest.approx(0.25, abs=0.08)
    assert share["backward"] == pytest.approx(0.50, abs=0.08)
    assert share["other"] == pytest.approx(0.25, abs=0.08)
    assert share["mix"] == 0 and share["ema"] == 0


def test_bench_runs_every_configuration_on_real_steps():
    res = run_bench(SMALL, log=lambda *a: None)
    ips = res["images_per_second"]
    assert set(ips) == {"reference_fp32", "ours_fp32", "ours_stored_fp32", "ours_nodistill_fp32"}
    # every configuration was timed `repeats` times, on real steps (each takes time)
    assert all(len(t) == SMALL.repeats and min(t) > 0 for t in res["repeats_seconds"].values())
    # a distillation step does more work than the teacher alone: the student step's FLOPs
    # (forward + backward of a DeiT-Tiny) exceed a ResNet-18 forward at this size
    assert res["student_step_gflop"] > res["teacher_forward_gflop"] > 0
    share = res["profile_share_ours_fp32"]
    assert share["teacher"] > 0 and share["backward"] > 0 and share["optimizer"] > 0
    text = format_bench(res)
    for key in ("ratio_fp32_vs_reference", "ratio_best_vs_reference", "stored_over_nodistill"):
        assert f"{res[key]:.2f}" in text  # the figures printed are the figures measured
    assert f"amp=auto would choose {res['amp_auto']['choice'] or 'unknown'}" in text


@pytest.mark.parametrize("ips, native, want", [
    ({"ours_fp32": 100.0, "ours_bf16": 191.0}, True, "bf16"),   # AMD EPYC here: 1.91x
    ({"ours_fp32": 100.0, "ours_bf16": 62.0}, True, "fp32"),    # bf16 without AMX on a Xeon
    ({"ours_fp32": 100.0, "ours_bf16": 103.0}, True, "fp32"),   # within the margin: fp32
    ({"ours_fp32": 100.0}, False, "fp32"),                      # no bf16 instructions
])
def test_bench_says_which_precision_auto_would_choose_and_why(ips, native, want):
    from deitkit.bench import auto_precision
    got = auto_precision(ips, torch.device("cpu"), native)
    assert got["choice"] == want
    if "ours_bf16" in ips:
        assert f"{ips['ours_bf16'] / ips['ours_fp32']:.2f}x" in got["why"]


def test_bench_cli_writes_json(tmp_path):
    out = tmp_path / "b.json"
    assert main(["bench", "--img-size", "32", "--batch-size", "4", "--steps", "1", "--warmup",
                 "1", "--repeats", "1", "--precisions", "fp32", "--workers", "0",
                 "--matmul-size", "128", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    ips = res["images_per_second"]
    assert res["ratio_fp32_vs_reference"] == pytest.approx(ips["ours_fp32"] / ips["reference_fp32"])
    assert res["config"]["batch_size"] == 4 and res["config"]["steps"] == 1


def test_the_bench_memory_store_reads_as_the_same_targets_from_files(tmp_path):
    """The bench times stored outputs from memory: its targets must be what a file store
    holding the same arrays gives (the read path the bench claims to time)."""
    mem = _MemoryStore(steps=2, batch=3, num_classes=5)
    fp = {"num_classes": 5}
    save_epoch(tmp_path, 0, 0, mem._data["values"], mem._data["indices"],
               mem._data["checksums"])
    write_meta(tmp_path, {"format": STORE_FORMAT, "fingerprint": fp, "complete": True,
                          "epochs": 1, "topk": 5, "steps": 2})
    files = TeacherStore(tmp_path, fp, epochs=1)
    for step in range(2):
        a, b = mem.log_probs(0, step, device="cpu"), files.log_probs(0, step, device="cpu")
        assert a.shape == (3, 5) and torch.equal(a, b)
        assert torch.allclose(a.exp().sum(-1), torch.ones(3), atol=1e-5)


def test_bench_e2e_times_whole_runs_both_ways(monkeypatch):
    """--e2e: two whole `deitkit train` runs (data on the device, worker loader), their
    epoch time, images/s and whole-run time; the run takes longer than its epochs."""
    import deitkit.bench as bench
    monkeypatch.setattr(bench, "E2E_IMAGES", 24)
    cfg = BenchConfig(img_size=16, batch_size=8, workers=0, teacher="resnet10t", device="cpu",
                      e2e=True)
    lines = []
    res = bench.bench_e2e(cfg, log=lines.append)
    assert res["images"] == 24 and res["epochs"] == bench.E2E_EPOCHS
    for name in ("device", "workers"):
        r = res[name]
        assert r["images_per_second"] == pytest.approx(24 / r["epoch_seconds"], rel=0.05)
        assert r["wall_seconds"] > bench.E2E_EPOCHS * r["epoch_seconds"] * 0.9
    assert any("e2e device" in x for x in lines) and any("e2e workers" in x for x in lines)
