"""Tiny, fast configurations for harness tests."""

from bench.config import RunConfig

FAST = dict(train_size=256, test_size=64, warmup_steps=1, warmup_seconds=0.05, min_steps=2, max_steps=3,
            max_seconds=0.05, eval_max_seconds=0.02)


def tiny(**kw) -> RunConfig:
    base = dict(device="cpu", model="tutorial", batch_size=16, precision="fp32", **FAST)
    base.update(kw)
    return RunConfig(**base)
