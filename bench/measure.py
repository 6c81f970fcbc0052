"""One configuration, measured: its trainer, its data on the device, the protocol's loops
(bench/protocol.py) and the row's figures (throughput, ceiling, evaluation, FLOPs, MFU,
accuracy). The sweep (bench/runner.py) decides what runs and records the outcome.

Data parallel (`dist` given): the model is in DistributedDataParallel, each rank steps on
its shard of the global batch, and the policy's `agree` makes every loop's length the same
on all ranks. Instead of the compute-only ceiling, the timed rounds interleave steps under
DDP's no_sync (no gradient all-reduce) to estimate the exposed communication. Rank 0 alone
evaluates and saves predictions; the others wait at barriers.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import torch

from bench import energy, protocol, stepcost, system, timing
from bench.config import RunConfig
from cnn.data import Cifar10Arrays, DeviceBatches, classic_loader
from cnn.models import parameter_count
from cnn.train import Trainer, Unsupported, evaluate, make_trainer, train_epoch

CEILING_FLAG = 1.05  # a loop measured faster than its own ceiling by more than this is noise, not speed
NO_ENERGY_WINDOW = ("not measured in this configuration: its preset measures energy on a subset of the grid "
                    "(Preset.energy_runs), to fit its time limit")


def policy_for(cfg: RunConfig, agree: Callable[[float], float] = lambda x: x,
               reference_step: float | None = None) -> protocol.Policy:
    p = protocol.Policy(min_steps=cfg.min_steps, max_steps=cfg.max_steps, max_seconds=cfg.max_seconds,
                        target_ci=cfg.target_ci, warmup_steps=cfg.warmup_steps, warmup_seconds=cfg.warmup_seconds,
                        max_config_seconds=cfg.max_config_seconds, agree=agree, reference_step=reference_step)
    return protocol.with_min_warmup(p, cfg.compile or cfg.compile_mode == "reduce-overhead")


def endless_batches(make_epoch: Callable[[int], Iterator]) -> Iterator:
    """Batches of epoch after epoch, for loops that run a number of steps, not epochs.
    Throughput loops draw from epochs numbered from 10_000 so their batches never
    coincide with the accuracy epochs'; the model is reset in between anyway."""
    return itertools.chain.from_iterable(make_epoch(10_000 + e) for e in itertools.count())


@dataclass
class Inputs:
    """A configuration's data on its device: train batches by epoch, test batches, and the
    bytes the resident copy holds (reported apart from the configuration's own memory)."""

    train_epoch: Callable[[int], Iterator]
    test: Callable[[], Iterator]
    data: Cifar10Arrays
    dataset_bytes: int


class InputCache:
    """Keeps device copies of the data per device, size, augmentation and layout (the
    MAX_ENTRIES latest): a pass visits configurations in shuffled order, so layouts alternate."""

    MAX_ENTRIES = 4  # both layouts of the models with and without augmentation (CUDA: both layouts run)

    def __init__(self):
        self._entries: dict[tuple, tuple] = {}

    def clear(self) -> None:
        self._entries.clear()

    def get(self, data: Cifar10Arrays, cfg: RunConfig, device: torch.device, rank: int = 0,
            world_size: int = 1) -> Inputs:
        data = data.subset(cfg.train_size, cfg.test_size)
        if cfg.data_path == "dataloader":
            pin = device.type == "cuda"
            train = classic_loader(data, cfg.batch_size, True, pin_memory=pin, augment=cfg.augment, seed=cfg.seed)
            test = classic_loader(data, cfg.batch_size, False, pin_memory=pin, workers=2)
            return Inputs(lambda epoch: iter(train), lambda: iter(test), data, 0)
        key = (str(device), cfg.train_size, cfg.test_size, cfg.augment, cfg.channels_last)
        if key not in self._entries:
            while len(self._entries) >= self.MAX_ENTRIES:
                del self._entries[next(iter(self._entries))]
            self._entries[key] = (
                DeviceBatches(data.train_x, data.train_y, 1, device, augment=cfg.augment,
                              channels_last=cfg.channels_last),
                DeviceBatches(data.test_x, data.test_y, 1, device, shuffle=False, drop_last=False,
                              channels_last=cfg.channels_last))
        batches = self._entries[key]
        train_base, test_base = batches
        shard = {} if world_size == 1 else {"rank": rank, "world_size": world_size}
        train = train_base.view(batch_size=cfg.batch_size, seed=cfg.seed, **shard)
        test = test_base.view(batch_size=cfg.batch_size)
        size = sum(t.numel() * t.element_size() for b in batches for t in (b.x, b.y))
        return Inputs(train.epoch, lambda: test.epoch(0), data, size)


def build_trainer(cfg: RunConfig, device: torch.device, process_group=None) -> Trainer:
    return make_trainer(cfg.model, device, cfg.precision, batch_size=cfg.batch_size, seed=cfg.seed, lr=cfg.lr,
                        channels_last=cfg.channels_last, compile=cfg.compile, compile_mode=cfg.compile_mode,
                        process_group=process_group)


def training_loop(trainer: Trainer, stream: Iterator) -> protocol.Loop:
    return lambda n, on_step: train_epoch(trainer, itertools.islice(stream, n), on_step=on_step)


def ceiling_loop(trainer: Trainer, stream: Iterator) -> protocol.Loop:
    """The same step on one batch already on the device: what compute alone allows."""
    x, y = trainer.prepare(*next(stream))
    fixed = (x.clone(memory_format=torch.preserve_format), y.clone())
    return lambda n, on_step: train_epoch(trainer, itertools.repeat(fixed, n), on_step=on_step)


def eval_loop(trainer: Trainer, test: Callable[[], Iterator]) -> tuple[protocol.Loop, int]:
    """Evaluation steps over full test batches only (a final partial batch would be counted
    as a whole one), and the images per step: the batch size, or the whole test set when it
    is smaller than one batch."""
    full = len(next(test())[1])
    stream = (b for _ in itertools.count() for b in test() if len(b[1]) == full)
    return (lambda n, on_step: evaluate(trainer, itertools.islice(stream, n), on_step=on_step)), full


def time_training(cfg: RunConfig, trainer: Trainer, loop: protocol.Loop, other: tuple[str, protocol.Loop],
                  policy: protocol.Policy, phase: Callable[[str], None],
                  gather: Callable[[object], list] = lambda x: [x],
                  warmed: Callable[[], None] = lambda: None) -> tuple[dict, float]:
    """Warm-up, budget check, interleaved rounds of the loop and `other` (the ceiling, or
    no_sync steps under DDP). Returns the row's figures and the steady step time. `warmed()`
    is called once warm-up is over, before the first timed step (the CUDA memory window opens
    there: bench/resources.py)."""
    device = trainer.device
    phase("warm-up")
    warm = protocol.warm_up(loop, device, policy)
    protocol.check_budget(warm.fastest, 2, policy)
    warmed()
    phase("timing")
    name, other_loop = other
    rounds = protocol.measure({"loop": loop, name: other_loop}, warm.steady, device, policy)
    method = "cuda_event" if device.type == "cuda" else "perf_counter"
    # Data parallel: the job is as fast as its slowest rank (every rank ran the same steps).
    per_rank = gather((rounds.samples["loop"], rounds.samples[name]))
    slowest = max(range(len(per_rank)), key=lambda r: sum(per_rank[r][0]))
    m = timing.Measurement(per_rank[slowest][0], cfg.batch_size, method)
    o = timing.Measurement(per_rank[slowest][1], cfg.batch_size, method)
    row = {"train_images_per_s": m.items_per_second, "step_ms_median": m.median * 1e3, "step_ms_iqr": m.iqr * 1e3,
           "median_ci": m.ci_relative, "noisy": m.noisy, "timed_steps": len(m.samples), "rounds": rounds.rounds,
           "warmup_steps": len(warm.samples), "warmup_seconds": sum(warm.samples), "warmup_settled": warm.settled,
           "startup_seconds": warm.startup_seconds,
           "compile_seconds": warm.startup_seconds if cfg.compile else None,
           "timing_method": method, "step_samples_s": list(m.samples)}
    if name == "ceiling":
        row.update(ceiling_images_per_s=o.items_per_second, ceiling_samples_s=list(o.samples),
                   fraction_of_ceiling=m.items_per_second / o.items_per_second)
    else:  # no_sync: the step without gradient communication
        row.update(step_ms_no_sync=o.median * 1e3, comm_share=min(1.0, max(0.0, 1 - o.median / m.median)),
                   rank_step_ms_median=[1e3 * timing.quartiles(s[0])[1] for s in per_rank])
    return row, m.median


def time_eval(cfg: RunConfig, trainer: Trainer, test: Callable[[], Iterator], phase: Callable[[str], None],
              policy: protocol.Policy) -> dict:
    phase("inference")
    loop, images = eval_loop(trainer, test)
    # rank 0 alone evaluates: its loops agree with nobody
    p = replace(policy, max_seconds=cfg.eval_max_seconds, warmup_min=1, warmup_steps=3, agree=lambda x: x)
    warm = protocol.warm_up(loop, trainer.device, p)
    rounds = protocol.measure({"eval": loop}, warm.steady, trainer.device, p)
    ev = rounds.measurement("eval", images, "")
    return {"eval_images_per_s": ev.items_per_second, "eval_samples_s": list(ev.samples)}


def mfu_flag(mfu: float, device: str | None = None) -> str:
    """Why an MFU above 100% is a measurement problem: the peak probed low (a loaded
    machine), or on CUDA, cuDNN's Winograd or FFT algorithms doing fewer FLOPs than counted."""
    text = f"MFU {mfu:.1%} > 100% of the measured matmul peak: the peak was probed low (load)"
    if str(device or "").startswith("cuda"):
        text += (", or cuDNN ran Winograd or FFT convolutions, which do fewer FLOPs than the direct "
                 "convolutions FlopCounterMode counts (then the throughput is real, the MFU is not)")
    return text


def flags(row: dict) -> list[str]:
    """Measurement problems a row carries: never a headline, always said."""
    out = []
    if (row.get("mfu") or 0) > 1:
        out.append(mfu_flag(row["mfu"], row.get("device")))
    if (row.get("fraction_of_ceiling") or 0) > CEILING_FLAG:
        out.append(f"{row['fraction_of_ceiling']:.2f} of ceiling > {CEILING_FLAG}: the loop outran its own "
                   "compute-only ceiling, i.e. the machine's load changed between them")
    if row.get("warmup_settled") is False:
        out.append("warm-up did not settle within its bound: the first timed steps may still be slow")
    return out


def no_sync_loop(trainer: Trainer, stream: Iterator) -> protocol.Loop:
    """Steps without DDP's gradient all-reduce. The replicas drift apart (each applies its
    own gradient); accuracy runs reset the weights first, and throughput does not care."""
    def run(n: int, on_step: Callable[[], bool]) -> None:
        with trainer.model.no_sync():
            train_epoch(trainer, itertools.islice(stream, n), on_step=on_step)
    return run


def train_for_accuracy(cfg: RunConfig, trainer: Trainer, inputs: Inputs, phase: Callable[[str], None],
                       save_predictions: Callable | None, agree: Callable[[float], float]) -> dict:
    """From the seed's initial weights: `epochs` epochs (or fewer, at the target with
    `stop_at_target`), each timed end to end and followed by a test-set evaluation on rank 0."""
    trainer.reset(cfg.seed)
    main = save_predictions is not None
    run = protocol.train_to_accuracy(
        lambda e: train_epoch(trainer, inputs.train_epoch(e)).mean_loss,
        (lambda: evaluate(trainer, inputs.test())) if main else None,
        cfg.epochs, trainer.device, cfg.target_accuracy, cfg.stop_at_target, agree,
        on_epoch=lambda e: phase(f"epoch {e + 1}/{cfg.epochs}"))
    if not main:
        return {}
    pred_file = save_predictions(cfg.short_id(), run.result.predictions.numpy(), inputs.data.test_y.numpy())
    return {"test_accuracy": run.result.accuracy, "accuracy_curve": run.curve,
            "epoch_seconds": timing.quartiles(run.epoch_seconds)[1], "epochs_run": len(run.epoch_seconds),
            "epoch_seconds_list": run.epoch_seconds, "eval_seconds_list": run.eval_seconds,
            "train_loss_curve": run.losses, "time_to_target_s": run.time_to_target,
            "epochs_to_target": run.epochs_to_target, "predictions_file": pred_file}


def measure(cfg: RunConfig, device: torch.device, inputs: Inputs, phase: Callable[[str], None],
            peak_tflops: Callable[[], float], save_predictions: Callable | None,
            dist=None, once: bool = True, reference_step: float | None = None,
            warmed: Callable[[], None] = lambda: None) -> tuple[dict, float | None]:
    """Every figure of one configuration's row, and its steady step time (for the sweep's
    budget predictions). `save_predictions` is None on ranks other than 0. An accuracy run
    (epochs > 0) trains and is timed epoch by epoch, end to end; its throughput is measured
    by the grid's own configuration of the same model, batch size and precision. `once`: this
    visit measures what a configuration needs only once (its energy window and profiled step,
    where `cfg.energy_window` and `cfg.profile_step` ask for them), as the first pass does.
    `reference_step`: the steady step an earlier pass measured (its warm-up may settle
    on it). `warmed()`: called when the training loop's warm-up is over. A compiled configuration
    compiles from scratch and may not fall back to eager (`compile_scope`)."""
    with compile_scope(cfg) as compiled:
        row, step = _measure(cfg, device, inputs, phase, peak_tflops, save_predictions, dist, once,
                             lambda: (compiled.warmed(), warmed()), reference_step)
    return {**row, **compiled.columns()}, step


def _measure(cfg: RunConfig, device: torch.device, inputs: Inputs, phase: Callable[[str], None],
             peak_tflops: Callable[[], float], save_predictions: Callable | None,
             dist, once: bool, warmed: Callable[[], None],
             reference_step: float | None = None) -> tuple[dict, float | None]:
    trainer = build_trainer(cfg, device, None if dist is None else dist.group_for(device))
    row: dict = {"data": inputs.data.source, "lr": trainer.lr, "train_size": len(inputs.data.train_y),
                 "test_size": len(inputs.data.test_y), "flops_per_image": system.training_flops_per_image(cfg.model),
                 "parameters": parameter_count(cfg.model)}
    if cfg.epochs > 0:
        row.update(train_for_accuracy(cfg, trainer, inputs, phase, save_predictions,
                                      (lambda x: x) if dist is None else dist.max))
        return row, None
    # under DDP every rank holds the same reference (the row's slowest-rank step), so they agree
    policy = policy_for(cfg, (lambda x: x) if dist is None else dist.max, reference_step)
    stream = endless_batches(inputs.train_epoch)
    other = ("ceiling", ceiling_loop(trainer, stream)) if dist is None else ("no_sync", no_sync_loop(trainer, stream))
    timed, step = time_training(cfg, trainer, training_loop(trainer, stream), other, policy, phase,
                                gather=(lambda x: [x]) if dist is None else dist.all_gather, warmed=warmed)
    row.update(timed)
    if once and cfg.profile_step and dist is None:  # operators and bytes of one step, for the GPU bound (not timed)
        row.update(stepcost.measure_step(trainer, *next(stream)))
    if once and cfg.energy_window:
        row.update(energy.training_energy(training_loop(trainer, stream), step, device, cfg.batch_size, phase,
                                          distributed=dist is not None))
    elif once:
        row.update(energy.not_measured(NO_ENERGY_WINDOW))
    del stream
    if save_predictions is not None:  # under DDP rank 0 alone evaluates; the others wait
        row.update(time_eval(cfg, trainer, inputs.test, phase, policy))
        peak = peak_tflops()
        achieved = row["flops_per_image"] * row["train_images_per_s"] / 1e12
        row.update(achieved_tflops=achieved, peak_tflops=peak, mfu=achieved / peak)
    if dist is not None:
        dist.barrier()
    row["flags"] = "; ".join(flags(row)) or None
    return row, step


class CompileRecord:
    """What Dynamo compiled during one configuration (empty for an eager one):
    `compile_frames`, the frames it compiled in all, and `recompiles`, those compiled after
    the training loop's warm-up (a guard that failed: evaluation's forward in eval mode, a new
    shape), read from torch._dynamo's own counters."""

    def __init__(self, on: bool):
        self.on = on
        self._start = self._at_warm = None
        if on:
            self._start = self._frames()

    @staticmethod
    def _frames() -> int:
        from torch._dynamo.utils import counters

        return counters["frames"]["ok"]

    def warmed(self) -> None:
        if self.on and self._at_warm is None:
            self._at_warm = self._frames()

    def columns(self) -> dict:
        if not self.on:
            return {}
        end = self._frames()
        return {"compile_frames": end - self._start,
                "recompiles": None if self._at_warm is None else end - self._at_warm}


FELL_BACK = ("torch.compile would have run this configuration eager: {why}. A row labelled compile must have "
             "run compiled, so it is refused")


@contextlib.contextmanager
def compile_scope(cfg: RunConfig) -> Iterator[CompileRecord]:
    """Around a compiled configuration: Dynamo's state reset first (`torch._dynamo.reset()`:
    no compiled code, guards or CUDA-graph trees carried over from an earlier configuration, so
    its compile_seconds is its own compile (Inductor's on-disk caches stay) and the recompile
    limit counts its own recompiles),
    and no silent fallback to eager: hitting the recompile limit raises
    (`fail_on_recompile_limit_hit`), as does a compile error (`suppress_errors` off), and either
    becomes `Unsupported` (the row is skipped with the reason). An eager configuration: nothing."""
    if not cfg.compile:
        yield CompileRecord(False)
        return
    import torch._dynamo
    from torch._dynamo import exc

    torch._dynamo.reset()
    if torch.cuda.is_initialized():  # CUDA-graph trees are process-wide; reset() clears them only in newer torch
        from torch._inductor import cudagraph_trees

        getattr(cudagraph_trees, "reset_cudagraph_trees", lambda: None)()
    strict = {k: v for k, v in (("fail_on_recompile_limit_hit", True), ("suppress_errors", False))
              if hasattr(torch._dynamo.config, k)}
    record = CompileRecord(True)
    limit_hit = getattr(exc, "FailOnRecompileLimitHit", None) or getattr(exc, "FailOnCacheLimitHit", None)
    try:
        with torch._dynamo.config.patch(**strict):
            yield record
    except Exception as e:
        if limit_hit is not None and isinstance(e, limit_hit):
            limit = getattr(torch._dynamo.config, "recompile_limit", None) or \
                getattr(torch._dynamo.config, "cache_size_limit", "?")
            raise Unsupported(FELL_BACK.format(why=f"Dynamo's recompile limit ({limit}) was hit")) from e
        raise


@contextlib.contextmanager
def cpu_threads(n: int | None) -> Iterator[int]:
    """Use `n` torch CPU threads inside the block (restored after); yields the count."""
    old = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(old)


@contextlib.contextmanager
def cudnn_benchmark(device: torch.device, on: bool) -> Iterator[None]:
    if device.type != "cuda":
        yield
        return
    old = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = on
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = old


DRIFT_WARN = 0.10  # the report warns when the drift reference moved more than this between start and end


def drift_reference(device: torch.device, seconds: float, clock: timing.Clock = timing.now) -> float:
    """Images per second of a fixed short measurement (the tutorial Net's compute-only step,
    fp32, batch 64, fixed seed), timed at a sweep's start and end to see the machine move."""
    trainer = make_trainer("tutorial", device, "fp32", batch_size=64, seed=0)
    gen = torch.Generator().manual_seed(0)
    batch = iter([(torch.randn(64, 3, 32, 32, generator=gen).to(device),
                   torch.randint(0, 10, (64,), generator=gen).to(device))])
    loop = ceiling_loop(trainer, batch)
    policy = protocol.Policy(min_steps=20, max_seconds=seconds, target_ci=0.02, warmup_seconds=0.5, clock=clock)
    warm = protocol.warm_up(loop, device, policy)
    return protocol.measure({"ref": loop}, warm.steady, device, policy).measurement("ref", 64, "").items_per_second
