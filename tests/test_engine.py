"""The training step on toy models: the teacher stays frozen, metrics are what they claim."""
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from deitkit import DistillationLoss, create_student
from deitkit.distill.sources import OnlineTeacher
from deitkit.engine import NonFiniteLossError, Step, StepOptions, evaluate, train_one_epoch
from deitkit.models import Teacher, create_cnn


def _toy(n=32, C=4, size=16):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, size, size, generator=g)
    y = torch.randint(0, C, (n,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=8)


def _student(C=4):
    return create_student("deit_tiny_distilled_patch16_224", num_classes=C, img_size=16,
                          patch_size=8, depth=2)


def test_teacher_is_frozen_and_outside_the_optimizer():
    torch.manual_seed(0)
    cnn = create_cnn("resnet18", 4)
    teacher = Teacher(cnn, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = _student()
    opt = torch.optim.AdamW(student.parameters(), lr=1e-3)
    ids = {id(p) for g in opt.param_groups for p in g["params"]}
    assert not ids & {id(p) for p in teacher.parameters()}
    w0 = student.head_dist.weight.clone()
    cpu = torch.device("cpu")
    step = Step(model=student, criterion=DistillationLoss("hard"), optimizer=opt, teacher=OnlineTeacher(teacher, cpu))
    stats = train_one_epoch(step, _toy(), cpu, 0, StepOptions(progress=False))
    for k, v in teacher.state_dict().items():  # weights and BatchNorm running stats
        assert torch.equal(v, before[k]), k
    assert not teacher.training
    assert not torch.equal(w0, student.head_dist.weight)
    assert stats["train_distill_loss"] > 0
    # accuracy over the 32 images of the epoch: a count of correct predictions over 32
    correct = stats["train_top1"] * 32
    assert correct == pytest.approx(round(correct), abs=1e-6)


def test_non_finite_loss_stops_with_epoch_and_step():
    student = _student()
    with torch.no_grad():
        student.head.weight.fill_(float("nan"))
    opt = torch.optim.SGD(student.parameters(), lr=0.1)
    with pytest.raises(NonFiniteLossError, match=r"epoch 3, step 1: loss=nan"):
        train_one_epoch(Step(model=student, criterion=DistillationLoss("none"), optimizer=opt), _toy(),
                        torch.device("cpu"), 2, StepOptions(progress=False))


def test_evaluate_metrics_agree_with_direct_computation():
    torch.manual_seed(0)
    student = _student().eval()
    loader = _toy(n=40)
    teacher = Teacher(create_cnn("resnet18", 4), [0.5] * 3, [0.5] * 3)
    res = evaluate(student, loader, torch.device("cpu"), teacher, "logits")
    x, y = loader.dataset.tensors
    from deitkit import student_forward
    with torch.no_grad():
        out = student_forward(student, x)
        t = teacher(x)
    fused = (out.cls_logits + out.dist_logits) / 2
    assert res["cls_top1"] == pytest.approx((out.cls_logits.argmax(1) == y).float().mean().item())
    assert res["dist_top1"] == pytest.approx((out.dist_logits.argmax(1) == y).float().mean().item())
    assert res["fused_top1"] == pytest.approx((fused.argmax(1) == y).float().mean().item())
    assert res["head_agreement"] == pytest.approx(
        (out.cls_logits.argmax(1) == out.dist_logits.argmax(1)).float().mean().item())
    cos = torch.nn.functional.cosine_similarity(out.cls_token, out.dist_token).mean().item()
    assert res["token_cosine"] == pytest.approx(cos, abs=1e-5)
    assert res["teacher_top1"] == pytest.approx((t.argmax(1) == y).float().mean().item())
    assert res["student_teacher_agreement"] == pytest.approx(
        (fused.argmax(1) == t.argmax(1)).float().mean().item())
    assert res["fused_top5"] == 1.0  # 4 classes: top-5 covers them all
    assert res["eval_images"] == 40


def test_a_teacher_memo_evaluates_the_teacher_once_with_the_same_metrics():
    torch.manual_seed(0)
    C = 10  # more classes than 5, so the memo's top-5 is a real top-5
    student, loader = _student(C).eval(), _toy(n=40, C=C)
    calls = []
    teacher = Teacher(create_cnn("resnet18", C), [0.5] * 3, [0.5] * 3)
    teacher.register_forward_hook(lambda *_: calls.append(1))
    cpu = torch.device("cpu")
    plain = evaluate(student, loader, cpu, teacher)
    assert len(calls) == 5                                   # 40 images, batches of 8
    memo = []
    first = evaluate(student, loader, cpu, teacher, teacher_memo=memo)
    assert len(calls) == 10 and len(memo) == 5
    with torch.no_grad():                                    # the student moves on; the
        student.head.weight.mul_(-1)                         # teacher does not
    again = evaluate(student, loader, cpu, teacher, teacher_memo=memo)
    assert len(calls) == 10                                  # read from the memo
    assert first == plain
    for k in ("teacher_top1", "teacher_top5"):
        assert again[k] == plain[k]
    x, y = loader.dataset.tensors
    with torch.no_grad():
        t, out = teacher(x), _fused(student, x)
    assert plain["teacher_top5"] == pytest.approx(
        (t.topk(5, 1).indices == y[:, None]).any(1).float().mean().item())
    assert again["student_teacher_agreement"] == pytest.approx(
        (out.argmax(1) == t.argmax(1)).float().mean().item())
    assert again["cls_top1"] != first["cls_top1"] or again["fused_top1"] != first["fused_top1"]
    with pytest.raises(RuntimeError, match="batch 0 held 8 images"):
        evaluate(student, DataLoader(loader.dataset, batch_size=4), cpu, teacher,
                 teacher_memo=memo)


def _fused(student, x):
    from deitkit import student_forward
    out = student_forward(student, x)
    return (out.cls_logits + out.dist_logits) / 2


def test_nonfinite_skip_policy_drops_and_counts_the_bad_step():
    torch.manual_seed(0)
    x = torch.randn(32, 3, 16, 16)
    x[8:16] = float("nan")  # the second batch of four is poisoned
    loader = DataLoader(TensorDataset(x, torch.randint(0, 4, (32,))), batch_size=8)
    student = _student()
    opt = torch.optim.AdamW(student.parameters(), lr=1e-3)
    step, cpu = Step(model=student, criterion=DistillationLoss("none"), optimizer=opt), torch.device("cpu")
    stats = train_one_epoch(step, loader, cpu, 0, StepOptions(progress=False, nonfinite="skip"))
    assert stats["skipped_steps"] == 1
    assert all(torch.isfinite(p).all() for p in student.parameters())
    with pytest.raises(NonFiniteLossError, match="more than max_skipped_steps=0"):
        train_one_epoch(step, loader, cpu, 1,
                        StepOptions(progress=False, nonfinite="skip", max_skipped_steps=0))
    with pytest.raises(NonFiniteLossError, match="epoch 3, step 2"):
        train_one_epoch(step, loader, cpu, 2, StepOptions(progress=False))
