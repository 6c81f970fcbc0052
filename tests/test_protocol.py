"""The measurement method (bench/protocol.py) on a fake clock and stub loops: milliseconds,
and nothing here depends on how fast the machine is."""

import itertools

import pytest
import torch

from bench import protocol, timing
from bench.protocol import OverBudget, Policy

CPU = torch.device("cpu")


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


class Stub:
    """A loop whose steps take scripted times on the fake clock; repeats its last time."""

    def __init__(self, clock, times, log=None, name=""):
        self.clock, self.times, self.log, self.name = clock, list(times), log, name
        self.steps = 0

    def __call__(self, n, on_step):
        for _ in range(n):
            self.clock.t += self.times[min(self.steps, len(self.times) - 1)]
            self.steps += 1
            if self.log is not None:
                self.log.append(self.name)
            if on_step():
                break


def policy(clock, **kw):
    return Policy(clock=clock, **{"min_steps": 10, "max_seconds": 1.0, "target_ci": 0.03, **kw})


def test_warm_up_excludes_a_slow_first_step_and_counts_it_as_startup():
    clock = Clock()
    # a 5 s first step (compilation), then steady 10 ms steps
    warm = protocol.warm_up(Stub(clock, [5.0, 0.010, 0.0101, 0.0100]), CPU, policy(clock))
    assert warm.samples == pytest.approx((5.0, 0.010, 0.0101))  # settled: 10.1 ms within 10% of 10 ms
    assert warm.settled and warm.steady == pytest.approx(0.01005)  # the later steps' median, never the first
    assert warm.startup_seconds == pytest.approx(5.0201 - 3 * 0.01005)
    assert warm.fastest == pytest.approx(0.010)
    protocol.check_budget(warm.fastest, 2, policy(clock, max_config_seconds=1.0))  # 0.2 s: fits
    with pytest.raises(OverBudget, match=r"a steady step takes 0.01 s, so 10 timed steps x 2"):
        protocol.check_budget(warm.fastest, 2, policy(clock, max_config_seconds=0.1))


def test_warm_up_takes_at_least_two_steps_and_three_when_compiled():
    clock = Clock()
    assert len(protocol.warm_up(Stub(clock, [0.01]), CPU, policy(clock)).samples) == 2
    compiled = protocol.with_min_warmup(policy(clock), compiled=True)
    assert len(protocol.warm_up(Stub(clock, [0.01]), CPU, compiled).samples) == 3


def test_a_later_pass_settles_on_the_steady_step_an_earlier_pass_measured():
    clock = Clock()
    times = [5.0, 0.0105, 0.0100, 0.0101]  # a slow first step, then steady at ~10 ms
    alone = protocol.warm_up(Stub(clock, times), CPU, policy(clock))
    assert len(alone.samples) == 3  # 10.5 ms and the 5 s first step disagree: one more step
    again = protocol.warm_up(Stub(clock, times), CPU, policy(clock, reference_step=0.010))
    assert len(again.samples) == 2 and again.settled  # 10.5 ms agrees with the earlier pass's 10 ms
    slower = protocol.warm_up(Stub(clock, times), CPU, policy(clock, reference_step=0.020))
    assert len(slower.samples) == 3  # a machine now twice as slow: the consecutive-step rule decides


def test_warm_up_that_never_settles_ends_on_its_bound_and_says_so():
    clock = Clock()
    alternating = Stub(clock, [0.01, 0.02] * 100)
    warm = protocol.warm_up(alternating, CPU, policy(clock, warmup_seconds=0.1))
    assert not warm.settled
    assert 0.1 <= sum(warm.samples[1:]) < 0.13  # the first step is not charged to the bound


def test_steady_steps_stop_at_min_steps_and_noisy_ones_sample_more():
    clock = Clock()
    steady = protocol.measure({"loop": Stub(clock, [0.01])}, 0.01, CPU, policy(clock, max_seconds=1))
    assert steady.rounds == 1 and len(steady.samples["loop"]) == 10  # identical steps: the median's CI is 0
    gen = torch.Generator().manual_seed(0)
    noisy_times = (0.01 * (1 + 0.2 * torch.randn(5000, generator=gen, dtype=torch.float64)).abs()).tolist()
    noisy = protocol.measure({"loop": Stub(clock, noisy_times)}, 0.01, CPU, policy(clock, max_seconds=100))
    m = timing.Measurement(noisy.samples["loop"], 1)
    assert len(m.samples) > 30 and m.ci_relative <= 0.03  # sampled until the median was known within 3%


def test_the_timed_budget_ends_the_rounds():
    clock = Clock()
    gen = torch.Generator().manual_seed(0)
    noisy = (0.01 + 0.02 * torch.rand(3000, generator=gen, dtype=torch.float64)).tolist()
    rounds = protocol.measure({"loop": Stub(clock, noisy)}, 0.02, CPU, policy(clock, max_seconds=1.0, target_ci=0.0))
    spent = sum(rounds.samples["loop"])
    assert 1.0 <= spent < 1.0 + rounds.block * 0.03


def test_variants_are_interleaved_in_abba_rounds():
    clock, log = Clock(), []
    variants = {"loop": Stub(clock, [0.01], log, "loop"), "ceiling": Stub(clock, [0.01], log, "ceiling")}
    rounds = protocol.measure(variants, 0.01, CPU, policy(clock, max_seconds=0.2))
    assert rounds.block == 1 and rounds.rounds == 10  # 0.2 s over ~10 rounds of 2 variants: 1 step each
    assert log[:6] == ["loop", "ceiling", "ceiling", "loop", "loop", "ceiling"]
    assert len(rounds.samples["loop"]) == len(rounds.samples["ceiling"]) == 10


def test_every_rank_runs_the_slowest_ranks_step_count():
    clock = Clock()
    other_rank_step = 0.05  # another rank is 5x slower: shared decisions take the maximum
    agree = lambda x: max(x, other_rank_step) if x > 0.001 else max(x, 0.0)
    p = policy(clock, max_seconds=2.0, agree=agree)
    assert protocol.block_size(0.01, 1, p) == protocol.block_size(0.05, 1, policy(clock, max_seconds=2.0))


def test_headline_counts_stalls_that_the_median_hides():
    m = timing.Measurement((0.01,) * 9 + (0.11,), items_per_step=32)
    assert m.median == pytest.approx(0.01)
    assert m.items_per_second_median == pytest.approx(3200)
    assert m.items_per_second == pytest.approx(320 / 0.2)  # 10 steps of 32 images in 0.2 s: 1,600


def test_median_ci_by_hand():
    xs = [float(i) for i in range(1, 11)]  # n = 10: the 95% interval is [x(2), x(9)]
    assert timing.median_ci(xs) == (2.0, 9.0)
    assert timing.median_ci([3.0, 1.0, 2.0]) == (1.0, 3.0)  # too few for 95%: the range
    m = timing.Measurement(tuple(xs), 1)
    assert m.ci_relative == pytest.approx(3.5 / 5.5)


def test_train_to_accuracy_stops_at_the_target_and_times_training_only():
    clock, accuracies = Clock(), iter([0.3, 0.55, 0.62, 0.7])

    class Result:
        def __init__(self, a):
            self.accuracy = a

    def run_epoch(e):
        clock.t += 2.0
        return 1.0

    def evaluate():
        clock.t += 0.5  # evaluation is timed apart, never part of time to target
        return Result(next(accuracies))

    run = protocol.train_to_accuracy(run_epoch, evaluate, 10, CPU, target=0.6, stop_at_target=True, clock=clock)
    assert run.curve == [0.3, 0.55, 0.62] and run.epochs_to_target == 3
    assert run.time_to_target == pytest.approx(6.0) and run.eval_seconds == pytest.approx([0.5] * 3)
    never = protocol.train_to_accuracy(run_epoch, lambda: Result(0.1), 2, CPU, target=0.6, clock=clock)
    assert never.time_to_target is None and len(never.epoch_seconds) == 2


class FakeEvent:
    """A CUDA event stand-in: records the fake clock's time; elapsed_time in milliseconds."""

    clock = None

    def __init__(self, enable_timing=False):
        self.t = None

    def record(self):
        self.t = FakeEvent.clock()

    def synchronize(self):
        pass

    def elapsed_time(self, other):
        return 1e3 * (other.t - self.t)


def test_the_cuda_event_path_runs_on_fake_events():
    clock, synced = Clock(), []
    FakeEvent.clock = clock
    p = policy(clock, timer_options={"events": FakeEvent, "sync": synced.append})
    stub = Stub(clock, [0.004, 0.002, 0.003])
    samples = protocol.run_block(stub, 3, torch.device("cuda"), p)
    assert samples == pytest.approx((0.004, 0.002, 0.003))
    assert synced == [torch.device("cuda")]  # one sync, before the block; none per step
    timer = timing.StepTimer("cuda", 1, clock=clock, events=FakeEvent, sync=lambda d: None)
    assert timer.method == "cuda_event"


def test_a_loop_that_runs_out_of_data_is_an_error():
    clock = Clock()
    short = lambda n, on_step: [on_step() for _ in itertools.islice(range(2), n)]
    with pytest.raises(RuntimeError, match="ran 2 of the 5 steps"):
        protocol.run_block(short, 5, CPU, policy(clock))
