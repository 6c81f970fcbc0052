import pytest
import torch

from bench import timing
from bench.timing import Deadline, Measurement, StepTimer, Stopwatch, quartiles


class FakeClock:
    """Returns the scripted readings in order, one per call."""

    def __init__(self, readings):
        self.readings = list(readings)
        self.calls = 0

    def __call__(self):
        self.calls += 1
        return self.readings.pop(0)


def ticking(step, n, start=100.0):
    return FakeClock([start + i * step for i in range(n)])


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
    timer = StepTimer("cpu", min_steps=1, max_steps=4, max_seconds=100, clock=clock)
    timer.start()
    stops = [timer.mark() for _ in range(4)]
    assert timer.samples() == pytest.approx((0.5, 0.25, 0.75, 1.0))
    assert stops == [False, False, False, True]  # max_steps reached
    assert timer.method == "perf_counter"


def test_step_timer_stops_on_seconds_but_not_before_min_steps():
    clock = ticking(1.0, 20)
    timer = StepTimer("cpu", min_steps=3, max_steps=100, max_seconds=1.5, clock=clock)
    timer.start()
    steps = 0
    while True:
        steps += 1
        if timer.mark():
            break
    assert steps == 3  # 1.5 s passed after 2 steps, but at least 3 are timed
    clock = FakeClock([0.0, *(0.1 * i + 0.001 for i in range(1, 100))])
    timer = StepTimer("cpu", min_steps=2, max_steps=1000, max_seconds=1.0, clock=clock)
    timer.start()
    steps = 1
    while not timer.mark():
        steps += 1
    assert steps == 10


def test_deadline_counts_steps():
    clock = FakeClock([0.0, 0.2, 0.4])
    d = Deadline(min_steps=1, max_steps=5, max_seconds=0.3, clock=clock)
    assert d.tick() is False  # 0.2 s
    assert d.tick() is True  # 0.4 s > 0.3 s
    assert d.steps == 2


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


@pytest.mark.parametrize("step,expected", [
    (0.1, 10),    # 1 s budget / 0.1 s: the Deadline would stop after the 10th step
    (0.3, 4),     # ceil(3.33): the step that crosses the budget still runs, as with a Deadline
    (2.0, 3),     # slow steps: never fewer than min_steps
    (0.001, 50),  # fast steps: never more than max_steps
])
def test_steps_within_matches_what_a_deadline_would_run(step, expected):
    assert timing.steps_within(step, 3, 50, 1.0) == expected
    d = Deadline(3, 50, 1.0, lambda: 0.0)
    while not d.tick(now=(d.steps + 1) * step):  # StepTimer passes the reading after each step
        pass
    assert d.steps == expected


def test_steps_within_without_a_time_limit_is_max_steps():
    assert timing.steps_within(0.5, 2, 7, float("inf")) == 7
    assert timing.steps_within(0.0, 2, 7, 1.0) == 7
