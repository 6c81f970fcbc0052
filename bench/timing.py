"""Clocks, device synchronisation and timing statistics. The ONLY module that synchronises
a device or reads a clock for results.

How each device is timed:
  cpu   `time.perf_counter` after each step. CPU kernels run synchronously, so the gap
        between two readings is the step.
  cuda  a CUDA event recorded after each step, on the stream, without waiting. The host
        runs ahead; after the timed loop one synchronize lets us read every gap between
        consecutive events, which is the GPU time of each step in steady state.
Whole epochs and evaluation passes (data included) use `Stopwatch`: synchronise, read the
clock, run, synchronise, read again.

Warm-up steps (allocator growth, cuDNN autotuning, torch.compile) run before the timed
loop and are counted, never mixed into the samples (bench/protocol.py decides how many).
Raw samples are kept and everything else is derived from them: the headline throughput is
items / total timed time (what a user's training run would see, stalls included); the
median and IQR are the stability figures, and a measurement whose IQR/median exceeds 10%
is flagged noisy, as torch.utils.benchmark does. `median_ci` is the distribution-free
confidence interval of the median (order statistics), which decides when enough samples
were taken.

The CUDA path takes its event class and synchronize function as arguments, so tests drive
it on the CPU with fake events.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
from scipy import stats

Clock = Callable[[], float]
T = TypeVar("T")
NOISY_IQR_RATIO = 0.10
CI_LEVEL = 0.95


def synchronize(device: torch.device | str) -> None:
    """Wait for all queued work on `device` (a no-op on the CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def quartiles(samples: Sequence[float]) -> tuple[float, float, float]:
    """(Q1, median, Q3), linearly interpolated (numpy's default); all equal for one sample."""
    if not samples:
        raise ValueError("no samples")
    if len(samples) == 1:
        return samples[0], samples[0], samples[0]
    q1, q2, q3 = statistics.quantiles(samples, n=4, method="inclusive")
    return q1, q2, q3


def median_ci(samples: Sequence[float], level: float = CI_LEVEL) -> tuple[float, float]:
    """Distribution-free confidence interval of the median: the order statistics whose
    ranks a Binomial(n, 1/2) brackets with probability >= `level`. Needs no assumption
    about the step-time distribution (skewed, with stalls). With too few samples for the
    level (n < 6 at 95%) the interval is the whole range."""
    xs = sorted(samples)
    n = len(xs)
    if n == 0:
        raise ValueError("no samples")
    # the largest k with P(B <= k - 1) <= (1 - level) / 2: the CI is [x_(k), x_(n-k+1)] (1-based)
    k = int(stats.binom.ppf((1 - level) / 2, n, 0.5))
    if k >= 1 and stats.binom.cdf(k - 1, n, 0.5) > (1 - level) / 2:
        k -= 1
    k = max(k, 1)
    return xs[k - 1], xs[n - k]


@dataclass(frozen=True)
class Measurement:
    """Raw per-step times of one timed loop and what they measured."""

    samples: tuple[float, ...]  # seconds per step, in order
    items_per_step: int  # images per step (the batch size)
    method: str = ""  # "perf_counter" or "cuda_event"

    @property
    def median(self) -> float:
        return quartiles(self.samples)[1]

    @property
    def iqr(self) -> float:
        q1, _, q3 = quartiles(self.samples)
        return q3 - q1

    @property
    def total(self) -> float:
        return sum(self.samples)

    @property
    def noisy(self) -> bool:
        return self.iqr / self.median > NOISY_IQR_RATIO if self.median > 0 else True

    @property
    def ci_relative(self) -> float:
        """Half-width of the median's confidence interval over the median (0.03 = +-3%)."""
        lo, hi = median_ci(self.samples)
        return (hi - lo) / 2 / self.median if self.median > 0 else float("inf")

    @property
    def items_per_second(self) -> float:
        """The headline: items over the total timed time (every step counts, stalls too)."""
        return self.items_per_step * len(self.samples) / self.total if self.total > 0 else float("nan")

    @property
    def items_per_second_median(self) -> float:
        """Items per step over the median step: the typical step, stalls left out."""
        return self.items_per_step / self.median if self.median > 0 else float("nan")


class StepTimer:
    """Times `steps` consecutive steps on `device`. Call `start()` before the first step and
    `mark()` after each; `mark()` returns True after the last one. (How many steps a block
    runs is bench/protocol.py's decision, made before the block starts.)

    `events` and `sync` replace `torch.cuda.Event` and `torch.cuda.synchronize` on the CUDA
    path (tests pass fakes to run it without a GPU)."""

    def __init__(self, device: torch.device | str, steps: int, clock: Clock = time.perf_counter,
                 events: Callable[..., object] | None = None, sync: Callable[[torch.device], None] | None = None):
        self.device = torch.device(device)
        self.clock = clock
        self.steps = steps
        self.cuda = self.device.type == "cuda"
        self._event = events if events is not None else (torch.cuda.Event if self.cuda else None)
        self._sync = sync if sync is not None else synchronize
        self._marks: list = []

    def start(self) -> None:
        if self.cuda:
            # Pre-created events: creating one per step would cost more than recording it. torch
            # creates an event's CUDA handle at its first record(), so each is recorded once here,
            # before the idle sync, and a step's mark only re-records it.
            self._events = [self._event(enable_timing=True) for _ in range(self.steps + 1)]
            for event in self._events:
                event.record()
        self._sync(self.device)  # the timed loop starts from an idle device
        if self.cuda:
            self._events[0].record()
            self._marks = [self._events[0]]
        else:
            self._marks = [self.clock()]

    def mark(self) -> bool:
        assert self._marks, "start() first"
        if self.cuda:
            event = self._events[len(self._marks)]
            event.record()  # no sync: the host only queues the marker
            self._marks.append(event)
        else:
            self._marks.append(self.clock())
        return len(self._marks) > self.steps

    def samples(self) -> tuple[float, ...]:
        """Seconds per step. On CUDA this is the loop's one synchronisation."""
        if self.cuda:
            self._marks[-1].synchronize()
            return tuple(a.elapsed_time(b) / 1e3 for a, b in zip(self._marks, self._marks[1:]))
        return tuple(b - a for a, b in zip(self._marks, self._marks[1:]))

    @property
    def method(self) -> str:
        return "cuda_event" if self.cuda else "perf_counter"


def mark_cost(device: torch.device | str, calls: int = 20_000, clock: Clock = time.perf_counter,
              events: Callable[..., object] | None = None,
              sync: Callable[[torch.device], None] | None = None) -> float:
    """Seconds per StepTimer.mark(), the per-step instrumentation of every timed loop. The
    timer is started first, as a timed block is (on CUDA `start()` creates the block's events
    and their CUDA handles then, outside its steps), so only the marks are timed. `events`/`sync` as in StepTimer."""
    device = torch.device(device)
    sync = sync if sync is not None else synchronize
    timer = StepTimer(device, calls, clock=clock, events=events, sync=sync)
    timer.start()
    sync(device)
    t0 = clock()
    for _ in range(calls):
        timer.mark()
    sync(device)
    seconds = clock() - t0
    timer.samples()
    return seconds / calls


class Stopwatch:
    """Wall time of a block, device work included: sync, clock, run, sync, clock."""

    def __init__(self, device: torch.device | str, clock: Clock = time.perf_counter):
        self.device = torch.device(device)
        self.clock = clock
        self.seconds = float("nan")

    def __enter__(self) -> Stopwatch:
        synchronize(self.device)
        self._t0 = self.clock()
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            synchronize(self.device)
        self.seconds = self.clock() - self._t0


def synchronized(fn: Callable[..., T], device: torch.device | str) -> Callable[..., T]:
    """`fn` followed by a synchronize of `device`, for timers that only read a host clock
    around a call (pytest-benchmark): on CUDA the call then lasts until its kernels have
    finished, not until they are queued. On the CPU, `fn` itself (kernels run in the call)."""
    device = torch.device(device)
    if device.type != "cuda":
        return fn

    def run(*args: object, **kwargs: object) -> T:
        result = fn(*args, **kwargs)
        torch.cuda.synchronize(device)
        return result

    return run


def time_repeated(fn: Callable[[], object], device: torch.device | str, min_repeats: int = 3,
                  max_seconds: float = 0.5, warmup: int = 1, clock: Clock = time.perf_counter) -> list[float]:
    """Seconds per call of `fn` (each call synchronised), after `warmup` calls."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = clock()
    while len(times) < min_repeats or clock() - start < max_seconds:
        with Stopwatch(device, clock) as sw:
            fn()
        times.append(sw.seconds)
        if len(times) >= 1000:
            break
    return times


def wall_clock() -> float:
    """Seconds since the epoch, for timestamps in result files (not for durations)."""
    return time.time()


def now() -> float:
    """A monotonic reading for durations outside the measured loops (progress, budgets)."""
    return time.perf_counter()
