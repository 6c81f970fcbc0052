"""pytest-benchmark suite: one training step (forward, backward, optimizer step) and one
evaluation batch, per device, model, batch size and precision.

`pytest --benchmark-compare` measures it and saves a baseline per machine, `make bench-compare`
gates regressions against that baseline, and `make test` runs each case once as a smoke test
(tests/benchconfig.py, README "Guarding your changes with pytest-benchmark").

Timing: pytest-benchmark reads a host clock around each call, so on CUDA the timed call ends
with a synchronize (`timing.synchronized`), and each round's batch is cut in `setup`, outside
the timed region, from data already on the device. Warm-up follows the harness's protocol
(bench/protocol.py: until the step time settles) and absorbs first-call costs (allocations,
oneDNN/cuDNN algorithm choice); its steady step time sizes the number of rounds to
--benchmark-max-time (at least --benchmark-min-rounds).
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Callable, Iterator

import pytest
import torch

from bench import protocol, system, timing
from bench.measure import cudnn_benchmark, endless_batches
from cnn.data import DeviceBatches
from cnn.train import evaluate, make_trainer, matmul_precision, unsupported_reason

# A ResNet-18 training step costs about 20 ms per image on an idle 2-core CPU, several times that
# when the cores are shared: small batches there keep the whole suite around a minute.
BATCH_SIZES = {
    "cpu": {"tutorial": (4, 32, 256), "resnet18": (4, 16)},
    "cuda": {"tutorial": (4, 32, 256), "resnet18": (32, 128, 512)},
}
PRECISIONS = {"cpu": ("fp32", "bf16"), "cuda": ("fp32", "tf32", "fp16", "bf16")}  # fp16/tf32 are CUDA-only
MAX_ROUNDS = 1000  # sub-millisecond GPU steps would otherwise take thousands of rounds


def rounds_within(step_seconds: float, min_rounds: int, max_rounds: int, max_seconds: float) -> int:
    """Rounds of `step_seconds` that fill `max_seconds` (the round that crosses it included),
    never fewer than `min_rounds` nor more than `max_rounds`: pytest-benchmark's pedantic mode
    takes a round count, not a time."""
    max_rounds = max(max_rounds, min_rounds)
    if not step_seconds > 0 or math.isinf(max_seconds):
        return max_rounds
    return min(max_rounds, max(min_rounds, math.ceil(max_seconds / step_seconds)))


def cases() -> Iterator:
    for device, models in BATCH_SIZES.items():
        marks = [pytest.mark.cuda] if device == "cuda" else []
        for model, sizes in models.items():
            for batch_size, precision in itertools.product(sizes, PRECISIONS[device]):
                yield pytest.param(device, model, batch_size, precision, marks=marks,
                                   id=f"{device}-{model}-b{batch_size}-{precision}")


CASE = pytest.mark.parametrize(("device", "model", "batch_size", "precision"), list(cases()))


@contextlib.contextmanager
def case_trainer(device: str, model: str, batch_size: int, precision: str):
    """The harness's trainer with the harness's device flags (TF32 per precision, cuDNN autotuning)."""
    reason = unsupported_reason(device, precision)
    if reason:
        pytest.skip(reason)
    trainer = make_trainer(model, device, precision, batch_size=batch_size, seed=0)
    with matmul_precision(trainer.device, precision), cudnn_benchmark(trainer.device, True):
        yield trainer


def measure(benchmark, config: pytest.Config, step: Callable, batches: Iterator, device: str, group: str):
    """Time `step(x, y)` with benchmark.pedantic, a fresh batch per round; returns the last result.
    Warm-up is the harness's (bench/protocol.py: until two steps agree within 10%, at least 2),
    and its steady step time sizes the rounds to --benchmark-max-time."""

    def setup():
        x, y = next(batches)
        timing.synchronize(device)  # the batch's gather is queued work: finish it before the clock starts
        return (x, y), {}

    rounds = 1  # disabled (smoke test): pedantic calls step once
    if benchmark.enabled:
        timed_step = timing.synchronized(step, device)

        def loop(n, on_step):
            for x, y in itertools.islice(batches, n):
                timed_step(x, y)
                if on_step():
                    break

        warm = protocol.warm_up(loop, torch.device(device), protocol.Policy(warmup_seconds=2.0))
        rounds = rounds_within(warm.steady, config.getoption("benchmark_min_rounds"), MAX_ROUNDS,
                               float(config.getoption("benchmark_max_time")))
    benchmark.group = group  # read when the timing starts
    return benchmark.pedantic(timing.synchronized(step, device), setup=setup, rounds=rounds, warmup_rounds=1)


def record(benchmark, kind: str, device: str, model: str, batch_size: int, precision: str, flops: Callable) -> None:
    benchmark.extra_info.update(
        step=kind, device=device, device_name=system.device_name(device), model=model, batch_size=batch_size,
        precision=precision, threads=torch.get_num_threads(),
        timer="perf_counter, CUDA synchronized at the end of each call" if device == "cuda" else "perf_counter",
    )
    if benchmark.enabled:
        per_image = flops(model)
        images_per_s = batch_size / benchmark.stats.stats.median
        benchmark.extra_info.update(flops_per_image=per_image, images_per_s=images_per_s,
                                    achieved_tflops=per_image * images_per_s / 1e12)


@CASE
def test_train_step(benchmark, pytestconfig, small_data, device, model, batch_size, precision):
    with case_trainer(device, model, batch_size, precision) as trainer:
        data = DeviceBatches(small_data.train_x, small_data.train_y, batch_size, device, seed=0)
        loss = measure(benchmark, pytestconfig, trainer.step, endless_batches(data.epoch), device,
                       f"{device} {model} train batch {batch_size}")
    assert torch.isfinite(loss)  # the timing of a diverged step means nothing
    record(benchmark, "train", device, model, batch_size, precision, system.training_flops_per_image)


@CASE
def test_eval_batch(benchmark, pytestconfig, small_data, device, model, batch_size, precision):
    with case_trainer(device, model, batch_size, precision) as trainer:
        data = DeviceBatches(small_data.test_x, small_data.test_y, batch_size, device, seed=0)
        result = measure(benchmark, pytestconfig, lambda x, y: evaluate(trainer, [(x, y)]),
                         endless_batches(data.epoch), device, f"{device} {model} eval batch {batch_size}")
    assert len(result.predictions) == batch_size and 0.0 <= result.accuracy <= 1.0
    record(benchmark, "eval", device, model, batch_size, precision, system.inference_flops_per_image)


@pytest.mark.parametrize("step,expected", [
    (0.1, 10),    # 1 s / 0.1 s
    (0.3, 4),     # ceil(3.33): the round that crosses the time still runs
    (2.0, 3),     # slow steps: never fewer than min_rounds
    (0.001, 50),  # fast steps: never more than max_rounds
])
def test_rounds_fill_the_time_within_their_bounds(step, expected):
    assert rounds_within(step, 3, 50, 1.0) == expected


def test_rounds_without_a_time_limit_or_a_step_time_are_max_rounds():
    assert rounds_within(0.5, 2, 7, float("inf")) == 7
    assert rounds_within(0.0, 2, 7, 1.0) == 7
