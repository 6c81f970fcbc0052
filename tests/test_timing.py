import pytest
import torch

from bench import timing
from bench.timing import Measurement, StepTimer, Stopwatch, quartiles


class FakeClock:
    """Returns the scripted readings in order, one per call."""

    def __init__(self, readings):
        self.readings = list(readings)
        self.calls = 0

    def __call__(self):
        self.calls += 1
        return self.readings.pop(0)


def test_quartiles_by_hand():
    # sorted 1,2,3,4,5: inclusive quartiles are 2 and 4
    assert quartiles([5.0, 1.0, 3.0, 2.0, 4.0]) == (2.0, 3.0, 4.0)
    assert quartiles([7.0]) == (7.0, 7.0, 7.0)
    with pytest.raises(ValueError):
        quartiles([])


def test_measurement_statistics_by_hand():
    m = Measurement((0.010, 0.011, 0.012, 0.010, 0.030), 32, "perf_counter")
    assert m.median == pytest.approx(0.011)
    assert m.iqr == pytest.approx(0.012 - 0.010)
    assert m.noisy  # 0.002 / 0.011 = 18% > 10%
    assert m.items_per_second == pytest.approx(5 * 32 / 0.073)  # the headline: images / total time
    assert m.items_per_second_median == pytest.approx(32 / 0.011)
    steady = Measurement((0.010, 0.0101, 0.0102, 0.0099), 32, "perf_counter")
    assert not steady.noisy


def test_step_timer_records_each_step_from_the_clock():
    # start reads once, then one reading per mark
    clock = FakeClock([10.0, 10.5, 10.75, 11.5, 12.5])
    timer = StepTimer("cpu", steps=4, clock=clock)
    timer.start()
    stops = [timer.mark() for _ in range(4)]
    assert timer.samples() == pytest.approx((0.5, 0.25, 0.75, 1.0))
    assert stops == [False, False, False, True]  # the last step says stop
    assert timer.method == "perf_counter"
    assert clock.calls == 5


def test_stopwatch_uses_the_clock():
    clock = FakeClock([1.0, 3.5])
    with Stopwatch("cpu", clock) as sw:
        pass
    assert sw.seconds == pytest.approx(2.5)


def test_time_repeated_runs_warmup_then_at_least_min_repeats():
    calls = []
    times = timing.time_repeated(lambda: calls.append(1), "cpu", min_repeats=4, max_seconds=0.0, warmup=2)
    assert len(times) == 4 and len(calls) == 6


def test_synchronized_is_the_function_itself_on_the_cpu():
    fn = lambda x: x + 1
    assert timing.synchronized(fn, "cpu") is fn


@pytest.mark.cuda
def test_synchronized_call_returns_after_the_kernels_finish():
    def queue_a_long_kernel():
        torch.cuda._sleep(200_000_000)  # ~0.1 s of GPU spinning, queued asynchronously
        return 7

    queue_a_long_kernel()
    assert not torch.cuda.current_stream().query()  # the plain call returns while the GPU still works
    torch.cuda.synchronize()
    assert timing.synchronized(queue_a_long_kernel, "cuda")() == 7
    assert torch.cuda.current_stream().query()  # nothing left running: a host clock sees the whole call


@pytest.mark.cuda
def test_the_step_timer_times_queued_gpu_work_with_events():
    """On CUDA a step's mark only queues an event (no sync): the host runs ahead of the GPU,
    and samples() gives each step's GPU time."""
    timer = timing.StepTimer("cuda", 2)
    timer.start()
    torch.cuda._sleep(100_000_000)  # a long step (~0.05 s of spinning)
    timer.mark()
    torch.cuda._sleep(10_000_000)  # a step a tenth as long
    assert timer.mark()
    assert not torch.cuda.current_stream().query()  # the marks did not wait for the GPU
    long, short = timer.samples()
    assert long > 3 * short > 0
    assert timer.method == "cuda_event"
