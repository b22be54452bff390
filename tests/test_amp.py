"""`amp=auto` on a CPU with bf16 instructions: chosen by measuring the run's own step, cached,
recorded with the run, and kept by its resume and its evaluation."""
import json

import pytest
import torch

import deitkit.build as build
from deitkit import build_config, train
from deitkit.checkpoint import load_checkpoint
from deitkit.runtime import measured_cpu_amp


def _probe(fp32, bf16, calls):
    def probe(dtype):
        calls.append(dtype)
        return bf16 if dtype is torch.bfloat16 else fp32
    return probe


def test_the_faster_precision_is_chosen_and_cached(tmp_path):
    cache, calls, said = tmp_path / "amp.json", [], []
    # bf16 0.62x the speed of fp32 (the AVX-512-bf16-without-AMX case): fp32
    assert measured_cpu_amp({"m": 1}, _probe(1.0, 1.6, calls), said.append, cache) is None
    assert calls == [None, torch.bfloat16] * 3  # alternated, 3 repeats each
    assert "amp: fp32" in said[-1] and "0.62x" in said[-1]
    # cached: the same key is not measured again, whatever a new probe would say
    assert measured_cpu_amp({"m": 1}, _probe(1.0, 0.1, calls), said.append, cache) is None
    assert len(calls) == 6
    # another run shape is measured: bf16 1.3x faster here
    assert measured_cpu_amp({"m": 2}, _probe(1.3, 1.0, calls), said.append, cache) is torch.bfloat16
    entries = json.loads(cache.read_text())
    assert sorted(e["choice"] for e in entries.values()) == ["bf16", "fp32"]
    # a margin: bf16 must save at least 5 % to be chosen
    assert measured_cpu_amp({"m": 3}, _probe(1.0, 0.97, calls), said.append, cache) is None
    cache.write_text("{damaged")  # a damaged cache is measured again, not an error
    assert measured_cpu_amp({"m": 1}, _probe(1.0, 0.5, calls), said.append, cache) is torch.bfloat16


def test_a_run_records_its_precision_and_its_resume_keeps_it(tmp_path, monkeypatch):
    monkeypatch.setenv("DEITKIT_AMP_CACHE", str(tmp_path / "amp.json"))
    monkeypatch.setattr(build, "cpu_has_native_bf16", lambda: True)
    speeds = {"bf16": 0.5}  # seconds of the bf16 probe (fp32: 1.0)

    def fake_probe(*a, **k):
        return lambda dtype: speeds["bf16"] if dtype is torch.bfloat16 else 1.0
    monkeypatch.setattr(build, "_step_probe", fake_probe)
    cfg = build_config("quickstart", overrides=[
        f"out={tmp_path / 'run'}", "amp=auto", "device=cpu", "progress=false", "epochs=2",
        "teacher.train_epochs=1", "model.overrides={depth: 1}", "data.train_fraction=0.1"])
    lines = []
    train(cfg, log=lines.append)
    assert any(line.startswith("amp: bf16") for line in lines)
    last = load_checkpoint(tmp_path / "run" / "checkpoint-last.pt")
    assert last["meta"]["amp"] == "bf16"
    # the cache gone and the CPU now measured the other way: a resume keeps the run's bf16
    (tmp_path / "amp.json").unlink()
    speeds["bf16"] = 2.0
    (tmp_path / "run" / "summary.json").unlink()
    lines.clear()
    train(cfg, resume=True, log=lines.append)
    assert not any(line.startswith("amp:") for line in lines)  # nothing measured
    assert any("amp torch.bfloat16" in line for line in lines)


def test_the_real_probe_times_both_precisions(tmp_path):
    cfg = build_config("quickstart", overrides=["model.overrides={depth: 1}",
                                                "data.batch_size=4", "data.img_size=16"])
    probe = build._step_probe(cfg, "student", 10, "resnet10t", torch.device("cpu"))
    for dtype in (None, torch.bfloat16):
        assert probe(dtype) > 0


@pytest.mark.parametrize("caps, native", [
    ({}, True),
    ({"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}, False),   # a laptop class
    ({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"}, False),                          # AVX-512, no bf16
    ({"ONEDNN_MAX_CPU_ISA": "avx512_core_bf16"}, True),
    ({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_AMX"}, True),
    ({"ATEN_CPU_CAPABILITY": "default"}, False),
    ({"ATEN_CPU_CAPABILITY": "avx512"}, True),
])
def test_an_instruction_cap_below_bf16_means_no_native_bf16(monkeypatch, caps, native):
    """An emulated older CPU (ONEDNN_MAX_CPU_ISA / ATEN_CPU_CAPABILITY below bf16) is treated
    as that CPU: amp=auto picks fp32 without a probe, as it would there."""
    from deitkit import runtime
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    for k in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY"):
        monkeypatch.delenv(k, raising=False)
    for k, v in caps.items():
        monkeypatch.setenv(k, v)
    assert runtime.cpu_has_native_bf16() is native
    assert (runtime.resolve_amp("auto", torch.device("cpu")) is torch.bfloat16) is native
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert runtime.cpu_has_native_bf16() is False                   # no flags: never
