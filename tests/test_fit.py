"""TrainState: what checkpoint-last.pt holds is what a resume restores."""
import torch

from deitkit import build_config
from deitkit.build import build_run, load_bundle
from deitkit.distributed import DistInfo
from deitkit.engine import train_one_epoch
from deitkit.fit import TrainState
from deitkit.runtime import rng_state

TINY = ["progress=false", "device=cpu", "amp=off", "data.train_fraction=0.1", "epochs=3",
        "model.overrides={depth: 1}", "eval_train_images=0", "distill.kind=none",
        "data.batch_size=16", "optim.warmup_epochs=1", "tensorboard=false"]


def _run(cfg, bundle):
    return build_run(cfg, "student", bundle, dist_info=DistInfo())


def _epoch(run, epoch):
    run.train_loader.sampler.set_epoch(epoch)
    return train_one_epoch(run.step, run.train_loader, run.device, epoch, run.opts)


def test_train_state_round_trips_and_the_next_epoch_is_the_same(tmp_path):
    cfg = build_config("quickstart", overrides=[f"out={tmp_path}", *TINY])
    bundle = load_bundle(cfg)
    a = _run(cfg, bundle)
    state = TrainState()
    state.finish_epoch({"epoch": 1, **_epoch(a, 0), "fused_top1": 0.3})
    state.kept_top1, state.rng = 0.3, [rng_state()]
    ckpt = state.to_checkpoint(a)
    torch.save(ckpt, tmp_path / "c.pt")  # through the file, as a resume reads it
    ckpt = torch.load(tmp_path / "c.pt", weights_only=True)

    back = TrainState.from_checkpoint(ckpt)
    assert (back.epoch, back.best, back.best_epoch, back.kept_top1) == (1, 0.3, 1, 0.3)
    assert back.record == state.record
    assert torch.equal(back.rng[0]["torch"], state.rng[0]["torch"])

    b = _run(cfg, bundle)  # a fresh process's pieces: untrained until restored
    assert not torch.equal(a.model.head.weight, b.model.head.weight)
    back.restore(ckpt, b, tmp_path / "c.pt")
    for k, v in a.model.state_dict().items():
        assert torch.equal(v, b.model.state_dict()[k]), k
    # the second epoch from the restored state equals the uninterrupted second epoch
    ra, rb = _epoch(a, 1), _epoch(b, 1)
    for k, v in a.model.state_dict().items():
        assert torch.equal(v, b.model.state_dict()[k]), k
    for k, v in a.step.ema.module.state_dict().items():
        assert torch.equal(v, b.step.ema.module.state_dict()[k]), k
    assert ra["lr"] == rb["lr"] and ra["train_loss"] == rb["train_loss"]


def test_best_and_last_hold_what_their_readers_need(tmp_path):
    cfg = build_config("quickstart", overrides=[f"out={tmp_path}", *TINY])
    run = _run(cfg, load_bundle(cfg))
    state = TrainState()
    assert state.finish_epoch({"epoch": 1, "fused_top1": 0.2}) is True
    assert state.finish_epoch({"epoch": 2}) is False          # not evaluated: no new best
    assert state.finish_epoch({"epoch": 3, "fused_top1": 0.1}) is False
    assert (state.best, state.best_epoch, state.epoch) == (0.2, 1, 3)
    best = state.to_checkpoint(run, full=False)
    assert set(best) == {"model", "meta", "epoch", "config", "metrics"}  # weights, no resume
    assert best["meta"]["role"] == "student" and best["config"]["epochs"] == 3
    state.rng = [rng_state()]
    last = state.to_checkpoint(run)
    assert TrainState.from_checkpoint(last).best == 0.2
    assert last["scheduler"] is not None and last["ema"] is not None and last["scaler"] is None


def test_the_ema_copy_changes_nothing_else_in_a_run(tmp_path):
    """The premise of the studies' NO_EMA: with the same seed, a run without the EMA copy
    trains the same weights to the same losses (the studies drop it to halve evaluation)."""
    runs = []
    for ema in ("true", "false"):
        cfg = build_config("quickstart", overrides=[f"out={tmp_path / ema}", *TINY,
                                                   f"ema.enabled={ema}"])
        run = _run(cfg, load_bundle(cfg))
        runs.append((run, [_epoch(run, e)["train_loss"] for e in range(2)]))
    (a, la), (b, lb) = runs
    assert a.step.ema is not None and b.step.ema is None
    assert la == lb
    for k, v in a.model.state_dict().items():
        assert torch.equal(v, b.model.state_dict()[k]), k
