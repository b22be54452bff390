import json

from deitkit import slurm
from deitkit.cli import main
from deitkit.slurm import torch_env


def test_slurm_task_environment():
    env = torch_env(global_rank=9, local_rank=1, world=16, hostnames=["n01", "n02"], port=29400)
    assert env == {"RANK": "9", "LOCAL_RANK": "1", "WORLD_SIZE": "16", "MASTER_ADDR": "n01",
                   "MASTER_PORT": "29400"}


def test_missing_submitit_is_a_clear_error(monkeypatch, capsys):
    monkeypatch.setattr(slurm, "submitit", None)
    assert main(["slurm", "--", "train", "--out", "x"]) == 2
    assert "pip install 'deitkit[slurm]'" in capsys.readouterr().err


def test_submission_runs_the_cli_in_each_task(tmp_path, capsys):
    import submitit  # noqa: F401  (installed with the test extra)
    out = tmp_path / "t"
    code = main(["slurm", "--local", "--wait", "--gpus-per-node", "0", "--logs",
                 str(tmp_path / "logs"), "--", "teacher", "--out", str(out), "--epochs", "1",
                 "--no-progress", "--device", "cpu", "data.train_fraction=0.05"])
    assert code == 0
    assert json.loads((out / "summary.json").read_text())["role"] == "teacher"
    assert main(["slurm", "--local", "--", "train", "--epochs", "1"]) == 2  # no --out
    assert "--out" in capsys.readouterr().err
