"""Tiny, fast configurations and fault injectors for harness tests."""

import torch

import cnn.train
from bench.config import RunConfig

FAST = dict(train_size=256, test_size=64, warmup_steps=1, warmup_seconds=0.05, min_steps=2, max_steps=3,
            max_seconds=0.05, eval_max_seconds=0.02)


def tiny(**kw) -> RunConfig:
    base = dict(device="cpu", model="tutorial", batch_size=16, precision="fp32", **FAST)
    base.update(kw)
    return RunConfig(**base)


def inject_step_error(monkeypatch, batch_size: int, error: BaseException) -> None:
    """Make every training step at `batch_size` raise `error`; other batch sizes train."""
    real_step = cnn.train.Trainer.step

    def step(self, x, y):
        if x.shape[0] == batch_size:
            raise error
        return real_step(self, x, y)

    monkeypatch.setattr(cnn.train.Trainer, "step", step)


def inject_oom(monkeypatch, batch_size: int, message: str = "CUDA out of memory. Tried to allocate 20.00 GiB"):
    """Make every training step at `batch_size` raise torch's out-of-memory error."""
    oom = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
    inject_step_error(monkeypatch, batch_size, oom(f"{message} (injected)"))
