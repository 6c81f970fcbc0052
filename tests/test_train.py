import copy

import pytest
import torch
import torch.nn.functional as F

from cnn.data import DeviceBatches, synthetic_cifar10
from cnn.models import build_model
from cnn.train import (
    Diverged,
    Unsupported,
    evaluate,
    make_trainer,
    sgd_with_zero_buffers,
    train_epoch,
    unsupported_reason,
)


def batches(data, bs=32, n=512, **kw):
    return DeviceBatches(data.train_x[:n], data.train_y[:n], bs, **kw)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cpu_precisions_train(small_data, precision):
    trainer = make_trainer("tutorial", "cpu", precision, batch_size=32, seed=0)
    before = trainer.model.conv1.weight.detach().clone()
    result = train_epoch(trainer, batches(small_data).epoch(0))
    assert result.steps == 16 and 2.0 < result.mean_loss < 2.5  # cross-entropy near ln(10) early on
    assert not torch.equal(before, trainer.model.conv1.weight)
    assert trainer.model.conv1.weight.dtype == torch.float32  # autocast keeps fp32 master weights


@pytest.mark.parametrize("precision,reason", [
    ("fp16", "fp16 training .* is CUDA-only here; use bf16 on the CPU"),
    ("tf32", "tf32 is a CUDA tensor-core mode; the CPU has no TF32"),
    ("int8", "unknown precision 'int8'; expected one of fp32, tf32, fp16, bf16"),
])
def test_cpu_refuses_what_it_cannot_run_with_a_reason(precision, reason):
    with pytest.raises(Unsupported, match=reason):
        make_trainer("tutorial", "cpu", precision)


def test_cuda_without_a_gpu_is_refused():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert "CUDA is not available" in unsupported_reason("cuda", "fp32")


def test_a_non_finite_loss_is_reported_at_epoch_end(small_data):
    trainer = make_trainer("tutorial", "cpu", "fp32", batch_size=32, lr=1e4)
    with pytest.raises(Diverged, match=r"training loss is (nan|inf) after 16 steps"):
        train_epoch(trainer, batches(small_data).epoch(0))


def test_on_step_can_end_an_epoch_early(small_data):
    trainer = make_trainer("tutorial", "cpu", "fp32", batch_size=32)
    calls = []
    result = train_epoch(trainer, batches(small_data).epoch(0), on_step=lambda: calls.append(1) or len(calls) == 5)
    assert result.steps == 5 and len(calls) == 5


def test_evaluate_returns_accuracy_and_per_example_predictions(small_data):
    trainer = make_trainer("tutorial", "cpu", "fp32", batch_size=32)
    test = DeviceBatches(small_data.test_x, small_data.test_y, 96, shuffle=False, drop_last=False)
    result = evaluate(trainer, test.epoch(0))
    assert result.predictions.shape == (1000,) and result.predictions.dtype == torch.uint8
    expected = (result.predictions.long() == small_data.test_y).float().mean().item()
    assert result.accuracy == pytest.approx(expected)
    assert trainer.model.training  # evaluation leaves the model in training mode


def test_reset_returns_to_the_seeds_initial_weights(small_data):
    trainer = make_trainer("resnet18", "cpu", "fp32", batch_size=8, seed=2)
    train_epoch(trainer, batches(small_data, bs=8, n=16).epoch(0))
    trainer.reset(2)
    fresh = build_model("resnet18", seed=2).state_dict()
    for k, v in trainer.model.state_dict().items():
        assert torch.equal(v, fresh[k]), k
    assert_zero_momentum_buffers(trainer)  # momentum cleared


def test_channels_last_trains_to_the_same_loss(small_data):
    a = make_trainer("tutorial", "cpu", "fp32", batch_size=32, seed=0)
    b = make_trainer("tutorial", "cpu", "fp32", batch_size=32, seed=0, channels_last=True)
    ra = train_epoch(a, batches(small_data, n=128).epoch(0))
    rb = train_epoch(b, batches(small_data, n=128, channels_last=True).epoch(0))
    assert rb.mean_loss == pytest.approx(ra.mean_loss, rel=1e-4)


@pytest.mark.slow
def test_synthetic_data_is_learnable_but_not_saturated():
    """The tutorial Net, 2 epochs on the full-size synthetic set, lands in 60-90%."""
    data = synthetic_cifar10(seed=0)
    trainer = make_trainer("tutorial", "cpu", "fp32", batch_size=32, seed=0)
    train = DeviceBatches(data.train_x, data.train_y, 32, seed=0)
    test = DeviceBatches(data.test_x, data.test_y, 500, shuffle=False, drop_last=False)
    for epoch in range(2):
        train_epoch(trainer, train.epoch(epoch))
    accuracy = evaluate(trainer, test.epoch(0)).accuracy
    assert 0.60 <= accuracy <= 0.90, accuracy


@pytest.mark.cuda
@pytest.mark.parametrize("precision", ["fp32", "tf32", "fp16", "bf16"])
def test_cuda_hot_loop_never_synchronises(small_data, precision):
    trainer = make_trainer("tutorial", "cuda", precision, batch_size=32)
    data = batches(small_data, device="cuda", augment=True)
    train_epoch(trainer, data.epoch(0))  # warm-up: first allocations may sync
    steps = iter(data.epoch(1))
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(5):
            x, y = next(steps)
            trainer.step(x, y)
    finally:
        torch.cuda.set_sync_debug_mode("default")


# ---- SGD momentum buffers and the fused kernel's first step -----------------------------------

def assert_zero_momentum_buffers(trainer):
    params = list(trainer.model.parameters())
    assert set(trainer.optimizer.state) == set(params)
    for p in params:
        buf = trainer.optimizer.state[p]["momentum_buffer"]
        assert buf.shape == p.shape and buf.dtype == p.dtype and buf.device == p.device
        assert not buf.any() and buf.data_ptr() != p.data_ptr()


def test_momentum_buffers_start_at_zero_after_make_trainer_and_reset(small_data):
    """A zero buffer makes the first step buf = 0.9 * 0 + grad = grad, SGD's own first step,
    and the fused kernel never takes its first-step path (uninitialised `empty_like` buffers)."""
    trainer = make_trainer("tutorial", "cpu", "fp32", batch_size=32, seed=0)
    assert_zero_momentum_buffers(trainer)
    train_epoch(trainer, batches(small_data, n=64).epoch(0))
    assert any(s["momentum_buffer"].any() for s in trainer.optimizer.state.values())
    trainer.reset(0)
    assert_zero_momentum_buffers(trainer)


def test_zero_buffers_step_exactly_as_sgd_from_empty_state(small_data):
    trainer = make_trainer("tutorial", "cpu", "fp32", batch_size=32, seed=0)
    reference = build_model("tutorial", seed=0)
    plain = torch.optim.SGD(reference.parameters(), lr=trainer.lr, momentum=0.9, foreach=False)
    for x, y in batches(small_data, n=96).epoch(0):
        trainer.step(x, y)
        F.cross_entropy(reference(x), y).backward()
        plain.step()
        plain.zero_grad()
    for p, q in zip(trainer.model.parameters(), reference.parameters()):
        assert torch.equal(p, q)


def fused_cpu_sgd(model):
    # No skip: the CPU fused SGD kernel exists in every torch this project supports (it came
    # with torch 2.4, pytorch#123629; pyproject asks for torch>=2.4), so any error is a failure.
    return sgd_with_zero_buffers(model, torch.device("cpu"), 0.05, 0.9, 0.0, fused=True)


def test_an_overflowing_first_fp16_step_leaves_no_garbage_momentum(small_data, monkeypatch):
    """GradScaler + fused SGD: the first step overflows and is skipped. The fused kernel used to
    make its first-step buffers with `empty_like` and return before writing them on found_inf,
    so step 2 read uninitialised memory. `empty_like` is made to return NaNs here, which
    uninitialised memory may hold; the CPU runs the same fused kernel and scaler contract."""
    monkeypatch.setattr(torch, "empty_like", lambda t, **kw: torch.full_like(t, float("nan"), **kw))
    (x1, y1), (x2, y2) = list(batches(small_data, n=64).epoch(0))
    model = build_model("tutorial", seed=0)
    reference = copy.deepcopy(model)
    optimizer = fused_cpu_sgd(model)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    for step, (x, y) in enumerate(((x1, y1), (x2, y2))):
        scaler.scale(F.cross_entropy(model(x), y)).backward()
        if step == 0:
            model.conv1.weight.grad[0, 0, 0, 0] = float("inf")  # an fp16 overflow
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        if step == 0:  # skipped: weights untouched, the scale halved
            assert all(torch.equal(p, q) for p, q in zip(model.parameters(), reference.parameters()))
            assert scaler.get_scale() == 2.0**15
    # The reference never saw the overflowing step: one plain SGD step on batch 2.
    plain = torch.optim.SGD(reference.parameters(), lr=0.05, momentum=0.9, foreach=False)
    F.cross_entropy(reference(x2), y2).backward()
    plain.step()
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        assert torch.isfinite(p).all(), name
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7, msg=name)
