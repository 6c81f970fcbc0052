"""The measurement method, once. How a training step is timed, read top to bottom:

1. Warm-up (`warm_up`): steps run one at a time until the step time settles (two
   consecutive steps within SETTLE of each other, or, in a later pass of the sweep, a step
   after the first within SETTLE of the steady step an earlier pass measured), at least 2 steps (3 with torch.compile
   or CUDA graphs: "reduce-overhead" records its graph on the 2nd call and replays from the
   3rd), at most `warmup_steps` or `warmup_seconds` after the first step. Warm-up is never
   charged to a configuration's budget. What it cost beyond steady steps (compilation,
   cuDNN autotuning, first allocations) is `startup_seconds`; the steady step estimate is
   the median of the last settled steps, never the first step.
2. Budget check (`check_budget`): at the fastest warm-up step after the first, the fewest
   timed steps the method needs must fit the configuration's budget, else the configuration
   is skipped, with the arithmetic in the reason.
3. Timed rounds (`measure`): the variants (the training loop, its compute-only ceiling,
   or perf's input paths) run in interleaved rounds, ABBA order, `block` steps each, so a
   drift of the machine's load hits every variant alike. Each step is timed (StepTimer:
   perf_counter on the CPU, CUDA events on a GPU, one sync per block). Rounds go on until
   every variant has at least `min_steps` samples and its median is known within
   `target_ci` (the half-width of the median's 95% confidence interval over the median),
   or the timed budget `max_seconds` or `max_steps` ends. As in
   torch.utils.benchmark's adaptive_autorange, fast and slow steps both get enough samples.
4. Evaluation throughput uses the same rounds with one variant; training to accuracy
   (`train_to_accuracy`) times whole epochs end to end, data included, evaluating after
   each one outside the epoch's clock.

Data parallel: every decision (block size, stop) goes through `Policy.agree`, the maximum
over ranks, so all ranks run the same number of steps and none waits in an all-reduce.
Headline throughput = images / total timed time (bench/timing.Measurement).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch

from bench import timing

# A step that runs `n` steps, calling `on_step()` after each; on_step returning True stops it.
Loop = Callable[[int, Callable[[], bool]], object]
SETTLE = 0.10  # warm-up ends when two consecutive steps differ by at most 10%


class OverBudget(Exception):
    """The fewest steps the method needs do not fit the budget; the message says why."""


@dataclass(frozen=True)
class Policy:
    """How long and how much to measure. One object covers the local deadline and, through
    `agree` (the maximum of a value over all ranks; identity for one process), the step
    counts that all ranks of a data-parallel job run."""

    min_steps: int = 10
    max_steps: int = 1000
    max_seconds: float = 3.0  # timed rounds, all variants together
    target_ci: float = 0.03
    rounds: int = 10  # the timed budget is spread over about this many interleaved rounds
    warmup_min: int = 2
    warmup_steps: int = 50
    warmup_seconds: float = 2.0
    max_config_seconds: float = 60.0
    # The steady step an earlier pass of this configuration measured: a later pass's warm-up
    # has settled as soon as one step after the first agrees with it (bench/passes.py).
    reference_step: float | None = None
    clock: timing.Clock = time.perf_counter
    agree: Callable[[float], float] = field(default=lambda x: x)
    timer_options: dict = field(default_factory=dict)  # StepTimer(events=, sync=) for fakes

    def timer(self, device: torch.device, n: int) -> timing.StepTimer:
        return timing.StepTimer(device, n, clock=self.clock, **self.timer_options)


@dataclass(frozen=True)
class WarmUp:
    samples: tuple[float, ...]
    settled: bool

    @property
    def steady(self) -> float:
        """Step time after warm-up: the median of the last (up to 3) steps, first excluded."""
        tail = self.samples[1:][-3:] or self.samples
        return statistics.median(tail)

    @property
    def fastest(self) -> float:
        """The fastest step after the first: what the budget check uses, so that one step
        slowed by another process cannot get a configuration skipped."""
        return min(self.samples[1:] or self.samples)

    @property
    def startup_seconds(self) -> float:
        """Warm-up time beyond what steady steps would have taken (compile, autotune, ...)."""
        return max(0.0, sum(self.samples) - len(self.samples) * self.steady)


def run_block(loop: Loop, n: int, device: torch.device, policy: Policy) -> tuple[float, ...]:
    """Exactly `n` steps of `loop`, each timed."""
    timer = policy.timer(device, n)
    timer.start()
    loop(n, timer.mark)
    samples = timer.samples()
    if len(samples) != n:
        raise RuntimeError(f"the loop ran {len(samples)} of the {n} steps asked for (its data ran out?)")
    return samples


def warm_up(loop: Loop, device: torch.device, policy: Policy) -> WarmUp:
    samples: list[float] = []
    settled = False
    while True:
        samples += run_block(loop, 1, device, policy)
        n = len(samples)
        settled = n >= 2 and (_agree(samples[-1], samples[-2])
                              or (policy.reference_step is not None and _agree(samples[-1], policy.reference_step)))
        stop = n >= policy.warmup_min and (settled or n >= policy.warmup_steps
                                           or sum(samples[1:]) >= policy.warmup_seconds)
        if -policy.agree(-float(stop)) >= 1.0:  # the minimum over ranks: all of them may stop
            return WarmUp(tuple(samples), settled)


def _agree(a: float, b: float) -> bool:
    return abs(a - b) <= SETTLE * min(a, b)


def check_budget(step: float, variants: int, policy: Policy) -> None:
    """Raise OverBudget when `min_steps` steps of every variant at `step` seconds each
    cannot fit `max_config_seconds`."""
    step = policy.agree(step)
    need = step * policy.min_steps * variants
    if need > policy.max_config_seconds:
        raise OverBudget(f"over the time budget: a steady step takes {step:.2f} s, so {policy.min_steps} timed "
                         f"steps x {variants} (loop{' and ceiling' if variants > 1 else ''}) need {need:.0f} s "
                         f"> {policy.max_config_seconds:g} s per configuration")


@dataclass(frozen=True)
class Rounds:
    """Samples per variant, with how many steps each round added (per-round ratios)."""

    samples: dict[str, tuple[float, ...]]
    block: int
    rounds: int

    def measurement(self, name: str, items_per_step: int, method: str) -> timing.Measurement:
        return timing.Measurement(self.samples[name], items_per_step, method)

    def per_round(self, name: str, items_per_step: int) -> list[float]:
        """Items per second of each round (block steps each)."""
        s = self.samples[name]
        return [items_per_step * len(c) / sum(c) for c in (s[i:i + self.block] for i in range(0, len(s), self.block))]


def block_size(step: float, variants: int, policy: Policy) -> int:
    """Steps per variant per round: the timed budget spread over about `policy.rounds`
    rounds, at least 1, never more than max_steps / rounds (but min_steps allowed)."""
    step = policy.agree(step)
    per_round = policy.max_seconds / policy.rounds / variants
    cap = max(1, min(policy.max_steps, max(policy.min_steps, policy.max_steps // policy.rounds)))
    return int(min(cap, max(1, int(per_round / step + 1e-9) if step > 0 else cap)))


def measure(variants: dict[str, Loop], step: float, device: torch.device, policy: Policy) -> Rounds:
    """Interleaved timed rounds of every variant (see the module docstring). `step`: the
    steady step time from warm-up, which sizes the blocks."""
    names = list(variants)
    block = block_size(step, len(names), policy)
    samples: dict[str, list[float]] = {n: [] for n in names}
    rounds = 0
    while True:
        order = names if rounds % 2 == 0 else names[::-1]  # ABBA: neither always runs first
        for name in order:
            samples[name] += run_block(variants[name], block, device, policy)
        rounds += 1
        done = min(len(s) for s in samples.values())
        spent = sum(sum(s) for s in samples.values())
        enough = done >= policy.min_steps and all(
            timing.Measurement(tuple(s), 1, "").ci_relative <= policy.target_ci for s in samples.values())
        out_of_budget = done >= policy.min_steps and (spent >= policy.max_seconds or done + block > policy.max_steps)
        # stop when every rank has enough samples, or any rank is out of budget
        if -policy.agree(-float(enough)) >= 1.0 or policy.agree(float(out_of_budget)) >= 1.0:
            return Rounds({n: tuple(s) for n, s in samples.items()}, block, rounds)


@dataclass(frozen=True)
class AccuracyRun:
    curve: list[float]  # test accuracy after each epoch
    epoch_seconds: list[float]  # each epoch end to end, data included, evaluation excluded
    eval_seconds: list[float]
    losses: list[float]
    result: object  # the last EvalResult (rank 0), else None
    time_to_target: float | None  # training seconds until the target was first reached
    epochs_to_target: int | None


def train_to_accuracy(run_epoch: Callable[[int], float], evaluate: Callable[[], object] | None,
                      epochs: int, device: torch.device, target: float | None = None,
                      stop_at_target: bool = False, agree: Callable[[float], float] = lambda x: x,
                      clock: timing.Clock = time.perf_counter,
                      on_epoch: Callable[[int], None] = lambda e: None) -> AccuracyRun:
    """Up to `epochs` epochs: `run_epoch(e)` trains one and returns its mean loss, each
    timed end to end; `evaluate()` (None on ranks other than 0) returns an EvalResult, timed
    apart. With `stop_at_target`, training ends at the first epoch that reaches `target`."""
    curve, epoch_seconds, eval_seconds, losses = [], [], [], []
    time_to_target, epochs_to_target, result, trained = None, None, None, 0.0
    for epoch in range(epochs):
        on_epoch(epoch)
        with timing.Stopwatch(device, clock) as sw:
            losses.append(run_epoch(epoch))
        epoch_seconds.append(sw.seconds)
        trained += sw.seconds
        reached = 0.0
        if evaluate is not None:
            with timing.Stopwatch(device, clock) as esw:
                result = evaluate()
            eval_seconds.append(esw.seconds)
            curve.append(result.accuracy)
            if target is not None and time_to_target is None and result.accuracy >= target:
                time_to_target, epochs_to_target, reached = trained, epoch + 1, 1.0
        reached = agree(reached)
        if stop_at_target and reached >= 1.0:
            break
    return AccuracyRun(curve, epoch_seconds, eval_seconds, losses, result, time_to_target, epochs_to_target)


COMPILED_WARMUP_MIN = 3  # torch.compile records on the 1st call; CUDA graphs record on the 2nd, replay from the 3rd


def with_min_warmup(policy: Policy, compiled: bool) -> Policy:
    """torch.compile (and CUDA graphs) need a third call before steps are steady."""
    return replace(policy, warmup_min=max(policy.warmup_min, COMPILED_WARMUP_MIN)) if compiled else policy

