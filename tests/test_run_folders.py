"""Nothing lost: a run folder is never overwritten without its owner's word, and a run can be
resumed from any moment (its teacher's training included) without changing a finished one."""
import importlib
import shutil

import pytest

from conftest import folder_hash
from deitkit import build_config, train
from deitkit.cli import main
from deitkit.models.teacher_run import teacher_config_for
from deitkit.rundir import RunDir

fit_mod = importlib.import_module("deitkit.fit")
FAST = ["--no-progress", "teacher.train_epochs=1", "model.overrides={depth: 1}",
        "data.train_fraction=0.2", "device=cpu"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "run"
    assert main(["train", "--out", str(out), "--epochs", "2", *FAST]) == 0
    return out


def test_a_finished_run_is_neither_overwritten_nor_retrained(finished, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    before = folder_hash(run)
    for cmd in (["train", "--out", str(run), "--epochs", "1", *FAST],
                ["teacher", "--out", str(run), "--epochs", "1", "--no-progress"]):
        assert main(cmd) == 2
        err = capsys.readouterr().err
        assert "a finished run" in err and "summary.json" in err and "--overwrite" in err
        assert folder_hash(run) == before
    # resuming a finished run says so and changes nothing
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert "finished" in capsys.readouterr().out and folder_hash(run) == before
    # --overwrite replaces the run's own files, and only those
    (run / "notes.txt").write_text("mine")
    assert main(["train", "--out", str(run), "--epochs", "1", "--overwrite", *FAST]) == 0
    assert len(RunDir(run).read_metrics()) == 1 and RunDir(run).read_summary()["epochs"] == 1
    assert (run / "notes.txt").read_text() == "mine"
    assert main(["train", "--resume", str(run), "--overwrite"]) == 2  # one or the other


def test_out_that_is_a_file_is_refused(tmp_path, capsys):
    f = tmp_path / "notes.txt"
    f.write_text("mine")
    assert main(["train", "--out", str(f), "--epochs", "1", *FAST]) == 2
    assert "is a file" in capsys.readouterr().err and f.read_text() == "mine"


def test_default_run_folders_never_collide(tmp_path):
    made = [RunDir.new_unique(tmp_path, "quickstart") for _ in range(3)]  # the same second
    assert len({m.path for m in made}) == 3
    assert all(m.path.is_dir() and not any(m.path.iterdir()) for m in made)


def test_resume_while_the_teacher_was_training(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    real = fit_mod.train_one_epoch

    def teacher_dies_in_epoch_2(step, loader, device, epoch, opts):
        if epoch == 1 and not hasattr(step.model, "cls_token"):  # the CNN
            raise KeyboardInterrupt
        return real(step, loader, device, epoch, opts)
    monkeypatch.setattr(fit_mod, "train_one_epoch", teacher_dies_in_epoch_2)
    cfg = build_config("quickstart", overrides=[f"out={out}", "epochs=2", "progress=false",
                                                "teacher.train_epochs=2", "device=cpu",
                                                "model.overrides={depth: 1}",
                                                "data.train_fraction=0.2"])
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    assert RunDir(out).teacher.has_last() and not RunDir(out).has_last()
    monkeypatch.setattr(fit_mod, "train_one_epoch", real)
    assert main(["train", "--resume", str(out), "--no-progress"]) == 0
    teacher = RunDir(out).teacher
    assert [r["epoch"] for r in teacher.read_metrics()] == [1, 2]  # continued, not restarted
    assert teacher.read_summary()["epochs"] == 2 and RunDir(out).read_summary()["epochs"] == 2


def test_the_teacher_run_carries_every_data_setting_over(tmp_path):
    cfg = build_config("quickstart", overrides=["data.on_bad_image=skip", "data.eval_batch_size=77",
                                                "data.batch_size=16", "data.num_workers=0"])
    t = teacher_config_for(cfg, tmp_path / "teacher")
    assert t.data.on_bad_image == "skip" and t.data.eval_batch_size == 77
    assert t.data.num_workers == 0 and t.data.name == cfg.data.name
    assert t.data.batch_size == 64  # the teacher recipe's own setting stays the teacher's
    cfg = build_config("quickstart", overrides=["teacher.train_overrides=[data.batch_size=8]"])
    assert teacher_config_for(cfg, tmp_path / "teacher").data.batch_size == 8


def test_a_teacher_setting_error_names_where_to_set_it(tmp_path, capsys):
    # 20 % of the digits' 1,437 training images is 287: a teacher batch of 512 cannot fit
    assert main(["train", "--out", str(tmp_path / "r"), "--epochs", "1", *FAST,
                 "teacher.train_overrides=[model.small_stem=false, data.batch_size=512]"]) == 2
    err = capsys.readouterr().err
    assert "data.batch_size=512" in err and "teacher.train_overrides" in err
