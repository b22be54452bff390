"""RunDir: the one reader and writer of a run folder's files."""
import json

import pytest

from deitkit.checkpoint import CheckpointError
from deitkit.config import ConfigError, TrainConfig, from_dict
from deitkit.rundir import RunDir, resolve_checkpoint


def test_metrics_append_read_and_a_torn_line(tmp_path):
    rd = RunDir(tmp_path / "run")
    rd.mkdir()
    rd.reset_metrics()
    for e in (1, 2, 3):
        rd.append_metrics({"epoch": e, "fused_top1": e / 10})
    with open(rd.metrics, "a") as f:
        f.write('{"epoch": 4, "fused_t')  # a crash in the middle of a line
    assert [r["epoch"] for r in rd.read_metrics()] == [1, 2, 3]
    assert [r["epoch"] for r in rd.read_metrics(upto_epoch=2)] == [1, 2]
    rd.reset_metrics(2)  # a resume after epoch 2: later and torn lines go
    assert rd.metrics.read_text().splitlines() == [json.dumps({"epoch": 1, "fused_top1": 0.1}),
                                                  json.dumps({"epoch": 2, "fused_top1": 0.2})]
    rd.reset_metrics(0)
    assert rd.read_metrics() == [] and rd.metrics.read_text() == ""


def test_checkpoint_lookup_best_then_last(tmp_path):
    rd = RunDir(tmp_path)
    with pytest.raises(CheckpointError, match="holds no checkpoint-best.pt or checkpoint-last.pt"):
        rd.checkpoint()
    rd.save_last({"model": {}, "meta": {}})
    assert rd.checkpoint() == rd.last and resolve_checkpoint(tmp_path) == rd.last
    rd.save_best({"model": {}, "meta": {}})
    assert rd.checkpoint() == rd.best
    assert rd.checkpoint(last=True) == rd.last == resolve_checkpoint(tmp_path, last=True)
    assert resolve_checkpoint(rd.best) == rd.best  # a file is itself
    assert rd.load_last() == {"model": {}, "meta": {}}


def test_rungs_are_the_kept_evaluated_epochs(tmp_path):
    rd = RunDir(tmp_path)
    for e, acc in ((1, 0.2), (2, None), (3, 0.5)):
        rd.append_metrics({"epoch": e, **({"fused_top1": acc} if acc else {})})
    rd.save_rung({"model": {}, "meta": {}}, 3)
    rd.save_rung({"model": {}, "meta": {}}, 2)  # no evaluation that epoch: not a rung
    assert [(p.name, r["fused_top1"]) for p, r in rd.rungs()] == [("checkpoint-epoch-003.pt", 0.5)]


def test_summary_config_and_skipped_images(tmp_path):
    rd = RunDir(tmp_path)
    assert not rd.is_finished()
    with pytest.raises(ConfigError, match="holds no summary.json"):
        rd.read_summary()
    rd.summary.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        rd.read_summary()
    rd.write_summary({"fused_top1": 0.5})
    assert rd.is_finished() and rd.read_summary() == {"fused_top1": 0.5}
    cfg = TrainConfig()
    rd.write_config(cfg)
    assert from_dict(rd.read_config()) == cfg
    assert rd.skipped_count() == 0
    rd.skipped.write_text("a.jpg\tcannot read\nb.jpg\tempty\na.jpg\tcannot read\n")
    assert rd.skipped_count() == 2  # distinct files, each listed each time it was met
    rd.clear_skipped()
    assert rd.skipped_count() == 0 and not rd.skipped.exists()
    assert rd.teacher.path == tmp_path / "teacher" and not rd.teacher.is_finished()
