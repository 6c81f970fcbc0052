"""Runs a sweep of RunConfigs and records each finished configuration at once.

Per configuration:
  1. throughput: warm-up steps (excluded), then timed steps within the budget
     (bench.timing.StepTimer), then a timed inference loop;
  2. accuracy (when `epochs` > 0): back to the seed's initial weights, `epochs` full epochs,
     each timed end to end (data included) and followed by a full test-set evaluation.
Failures never stop a sweep: out-of-memory -> `oom` (memory released), an unsupported
combination or one over its time budget -> `skipped`, a non-finite loss -> `diverged`,
anything else -> `failed` with the error (traceback in errors.log).

Data parallel (a torchrun job, `dist` given): every rank runs every configuration with the
model in DistributedDataParallel and its shard of each global batch (`batch_size` is the
global batch). Rank 0 alone owns the run folder: it takes the lock, decides what is pending,
writes every file, evaluates and measures the peak while the others wait. Loops that time
training run a step count agreed before they start (from the slowest rank's step time), so
all ranks stop at the same step: a loop that stopped on one rank's clock would leave the
others waiting in an all-reduce. Skips and divergence are decided identically on every rank
(shared step times, global mean loss); any other error on a rank stops the job (rank 0
records the configuration first), because the ranks' collectives no longer pair up.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import json
import math
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path

import torch
from filelock import FileLock, Timeout

from bench import system, timing
from bench.config import RunConfig
from bench.distributed import Distributed, RankFailed
from bench.results import COLUMNS, ResultsStore
from cnn.data import Cifar10Arrays, DataError, DeviceBatches, classic_loader, get_dataset
from cnn.train import Diverged, Trainer, Unsupported, evaluate, make_trainer, train_epoch, unsupported_reason

# The compute-only ceiling is a reference, not the measurement: fewer steps suffice.
CEILING_MIN_STEPS = 3


class RunFolderError(Exception):
    """The run folder cannot be used (locked, not a folder, holds another sweep)."""


def is_oom(e: BaseException) -> bool:
    oom_types = tuple(t for t in (getattr(torch, "OutOfMemoryError", None),
                                  getattr(torch.cuda, "OutOfMemoryError", None)) if t is not None)
    if isinstance(e, MemoryError) or (oom_types and isinstance(e, oom_types)):
        return True
    text = str(e)
    return isinstance(e, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


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


def _forever(make_epoch: Callable[[int], Iterator]) -> Iterator:
    # Throughput loops draw from epochs numbered from 10_000 so their batches never
    # coincide with the accuracy epochs'; the model is reset in between anyway.
    return itertools.chain.from_iterable(make_epoch(10_000 + e) for e in itertools.count())


def check_run_folder(out: Path, resume: bool) -> None:
    """The checks `Runner.run` makes before writing, for a launcher to make before it starts
    any process: not a file, no results unless resuming, not locked by another sweep."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"--out {out} is a file, expected a folder")
    if not out.is_dir():
        return
    n = len(ResultsStore(out).load(warn=lambda m: None))
    if n and not resume:
        raise RunFolderError(_holds_results(out, n))
    if (out / ".lock").exists():
        lock = FileLock(str(out / ".lock"))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise RunFolderError(f"another sweep is writing to {out} (lock {out / '.lock'} is held); "
                                 "wait for it to finish or choose another --out") from None
        lock.release()


def _holds_results(out: Path, n: int) -> str:
    return f"{out} already holds {n} results; add --resume to continue that sweep, or choose another --out"


class Runner:
    """One sweep into one run folder. `log` receives one line per event."""

    def __init__(self, out: Path, data_kind: str = "auto", data_dir: Path | None = None,
                 log: Callable[[str], None] = print, progress: bool | None = None,
                 probe_seconds: float | None = None, dist: Distributed | None = None):
        self.out = Path(out)
        self.data_kind, self.data_dir = data_kind, data_dir
        self.dist = dist
        self.main = dist is None or dist.is_main
        self.log = log if self.main else (lambda m: None)
        self.progress = progress if self.main else False
        self.probe_seconds = probe_seconds
        self.store = ResultsStore(self.out)
        self._data: Cifar10Arrays | None = None
        self._batches: dict = {}
        self._peaks: dict[tuple[str, str], dict] = {}
        self._history: dict[tuple, list[tuple[int, float]]] = {}
        self._size_hint: tuple[int | None, int | None] = (None, None)
        self.system = system.system_info()
        self.host = self.system["host"]

    # ---- folder, lock, resume ------------------------------------------------------

    def _lock(self) -> FileLock:
        if self.out.exists() and not self.out.is_dir():
            raise RunFolderError(f"--out {self.out} is a file, expected a folder")
        self.out.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.out / ".lock"))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise RunFolderError(f"another sweep is writing to {self.out} (lock {self.out / '.lock'} is held); "
                                 "wait for it to finish or choose another --out") from None
        return lock

    def _run_distributed(self, configs: list[RunConfig], resume: bool) -> list[dict]:
        """Rank 0 prepares the folder and the data and tells the others what to run: its
        configurations (it alone can read sweep.json on --resume), which are pending, and
        which dataset to load (the others never download; they load what rank 0 found)."""
        assert self.dist is not None
        lock, plan = None, None
        try:
            if self.main:
                try:
                    lock = self._lock()
                    done = self._prepare_folder(configs, resume)
                    self._write_system()
                    self._set_size_hint(configs)
                    data = self.dataset()
                    pending = [c for c in configs if c.key() not in done]
                    if done:
                        self.log(f"resuming {self.out}: {len(configs) - len(pending)} of {len(configs)} "
                                 "configurations already recorded")
                    plan = {"pending": pending, "data": data.source, "folder": data.folder,
                            "sizes": self._size_hint}
                except (RunFolderError, DataError) as e:
                    plan = {"error": f"{type(e).__name__}", "message": str(e)}
            plan = self.dist.broadcast(plan)
            if "error" in plan:
                raise (RunFolderError if plan["error"] == "RunFolderError" else DataError)(plan["message"])
            problem = None
            if not self.main:
                self._size_hint = plan["sizes"]
                self.data_kind = plan["data"]
                if plan["folder"] is not None:
                    self.data_dir = Path(plan["folder"])
                try:
                    self.dataset()
                except DataError as e:
                    problem = f"rank {self.dist.rank}: {e}"
            problems = [p for p in self.dist.all_gather(problem) if p]
            if problems:
                raise DataError("; ".join(problems))
            return self._sweep(plan["pending"])
        finally:
            if lock is not None:
                lock.release()

    def _set_size_hint(self, configs: list[RunConfig]) -> None:
        sizes = [c.train_size for c in configs], [c.test_size for c in configs]
        self._size_hint = tuple(None if None in s else max(s, default=None) for s in sizes)

    def _prepare_folder(self, configs: list[RunConfig], resume: bool) -> set[str]:
        if self.out.exists() and not self.out.is_dir():
            raise RunFolderError(f"--out {self.out} is a file, expected a folder")
        self.out.mkdir(parents=True, exist_ok=True)
        rows = self.store.repair(warn=self.log)
        if rows and not resume:
            raise RunFolderError(_holds_results(self.out, len(rows)))
        sweep = self.out / "sweep.json"
        sweep.write_text(json.dumps([asdict(c) for c in configs], indent=1))
        return {r["config_key"] for r in rows if "config_key" in r}

    def _write_system(self) -> None:
        info = {**self.system, "peaks": list(self._peaks.values())}
        tmp = self.out / "system.json.tmp"
        tmp.write_text(json.dumps(info, indent=2, default=str))
        os.replace(tmp, self.out / "system.json")

    def run(self, configs: list[RunConfig], resume: bool = False) -> list[dict]:
        if self.dist is not None:
            return self._run_distributed(configs, resume)
        lock = self._lock()
        try:
            done = self._prepare_folder(configs, resume)
            self._write_system()
            self._set_size_hint(configs)
            self.dataset()  # a data problem stops here, before any configuration runs
            pending = [c for c in configs if c.key() not in done]
            if done:
                self.log(f"resuming {self.out}: {len(configs) - len(pending)} of {len(configs)} "
                         "configurations already recorded")
            return self._sweep(pending)
        finally:
            lock.release()

    # ---- the sweep -----------------------------------------------------------------

    def _sweep(self, configs: list[RunConfig]) -> list[dict]:
        from tqdm import tqdm

        rows = []
        bar = tqdm(total=len(configs), unit="cfg", disable=True if self.progress is False else None,
                   dynamic_ncols=True, leave=False)
        bar_on = not bar.disable
        say = tqdm.write if bar_on else self.log
        try:
            for i, cfg in enumerate(configs, 1):
                bar.set_description(cfg.label())
                try:
                    row = self.run_one(cfg, phase=lambda p: bar.set_postfix_str(p) if bar_on else None)
                except _RankError as e:  # distributed: record it (rank 0), then stop the job
                    if self.main:
                        self.store.append(e.row)
                        say(f"[{i}/{len(configs)}] {summary_line(e.row)}")
                    raise RankFailed(f"rank {self.dist.rank}: {cfg.label()}: {e.row['reason']}; the job stops "
                                     "because the ranks can no longer stay in step (a rank that waits longer than "
                                     "--dist-timeout for the others fails this way too)") from None
                if self.main:
                    self.store.append(row)
                    say(f"[{i}/{len(configs)}] {summary_line(row)}")
                rows.append(row)
                bar.update(1)
        finally:
            bar.close()
            if self.main:
                self._write_system()
        return rows

    def dataset(self) -> Cifar10Arrays:
        if self._data is None:
            sizes = (self._size_hint[0] or 50_000, self._size_hint[1] or 10_000)
            # Only rank 0 may download: the other ranks load what it found (no racing
            # downloads into one folder); on other nodes it must be at the same path.
            self._data = get_dataset(self.data_kind, self.data_dir, download=self.main, synthetic_sizes=sizes,
                                     warn=self.log)
        return self._data

    def peak(self, device: str, precision: str) -> dict:
        key = (device, precision)
        if key not in self._peaks:
            self._peaks[key] = system.measure_peak_tflops(device, precision, self.probe_seconds)
        return self._peaks[key]

    def base_row(self, cfg: RunConfig, threads: int) -> dict:
        return {
            **dict.fromkeys(COLUMNS),
            **asdict(cfg),
            "config": asdict(cfg),
            "config_key": cfg.key(),
            "config_id": cfg.short_id(),
            "device_name": system.device_name(cfg.device) if unsupported_reason(cfg.device, "fp32") is None
            else None,
            "host": self.host,
            "threads": threads,
            "data": self._data.source if self._data is not None else None,  # skipped rows say it too
            "world_size": 1 if self.dist is None else self.dist.world_size,
            "backend": "none" if self.dist is None else self.dist.backend_for(cfg.device),
            "nodes": 1 if self.dist is None else self.dist.topo.nodes,
        }

    def _distributed_reason(self, cfg: RunConfig) -> str | None:
        """Why a configuration cannot run data-parallel (the same answer on every rank)."""
        if self.dist is None:
            return None
        if cfg.data_path != "device":
            return "the DataLoader input path is not sharded across processes; distributed runs use --data-paths device"
        if cfg.batch_size % self.dist.world_size:
            return (f"global batch size {cfg.batch_size} does not divide among {self.dist.world_size} processes "
                    "(each process steps on batch_size / world_size images)")
        return None

    def run_one(self, cfg: RunConfig, phase: Callable[[str], None] = lambda p: None) -> dict:
        with cpu_threads(cfg.threads) as threads:
            row = self.base_row(cfg, threads)
            reason = unsupported_reason(cfg.device, cfg.precision) or self._distributed_reason(cfg)
            if reason is None:
                reason = self._over_budget(cfg)
            if reason is not None:
                return {**row, "status": "skipped", "reason": reason, "finished_at": timing.wall_clock()}
            device = torch.device(cfg.device) if self.dist is None else self.dist.device(cfg.device)
            if self.main:  # probed here, outside the configuration's memory window
                self.peak(str(device), cfg.precision)
            monitor = system.ResourceMonitor(str(device))
            rank_error = False
            try:
                with monitor, cudnn_benchmark(device, cfg.cudnn_benchmark):
                    metrics = self.measure(cfg, phase)
                row.update(status="ok", reason=None, **metrics)
            except Diverged as e:
                row.update(status="diverged", reason=str(e))
            except Unsupported as e:
                row.update(status="skipped", reason=str(e))
            except _OverBudget as e:
                row.update(status="skipped", reason=str(e))
            except KeyboardInterrupt:
                raise
            except Exception as e:  # recorded, never swallowed: the row and errors.log say what
                rank_error = self.dist is not None
                if is_oom(e):
                    row.update(status="oom", reason=f"out of memory: {str(e).splitlines()[0][:200]}")
                else:
                    row.update(status="failed", reason=f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
                               if str(e) else type(e).__name__)
                    if self.main:
                        with open(self.out / "errors.log", "a") as f:
                            f.write(f"--- {cfg.label()}\n{traceback.format_exc()}\n")
                    else:  # only rank 0 writes files; the others say it on stderr
                        print(f"rank {self.dist.rank}: {cfg.label()}\n{traceback.format_exc()}", file=sys.stderr)
            finally:
                release_memory()
            row.update(peak_memory_mb=monitor.peak_memory_mb, memory_kind=monitor.memory_kind,
                       cpu_percent=monitor.cpu_percent, finished_at=timing.wall_clock())
            if rank_error:
                raise _RankError(row)
            if self.dist is not None:
                self._merge_ranks(row)
            return row

    def _merge_ranks(self, row: dict) -> None:
        """Per-rank facts into rank 0's row: the job's peak memory is the largest process's,
        its CPU use the sum; per-rank lists go to the JSON row only."""
        ranks = self.dist.all_gather({"host": self.host, "threads": row["threads"], "status": row["status"],
                                      "peak_memory_mb": row["peak_memory_mb"], "cpu_percent": row["cpu_percent"]})
        statuses = {r["status"] for r in ranks}
        if len(statuses) > 1:  # cannot happen by construction; if it does, the row must not pass for ok
            row.update(status="failed", reason=f"ranks disagree on the outcome: {[r['status'] for r in ranks]}")
        row.update(peak_memory_mb=max(r["peak_memory_mb"] for r in ranks),
                   cpu_percent=sum(r["cpu_percent"] for r in ranks),
                   rank_hosts=[r["host"] for r in ranks], rank_threads=[r["threads"] for r in ranks],
                   rank_peak_memory_mb=[r["peak_memory_mb"] for r in ranks])

    # ---- budget ---------------------------------------------------------------------

    def _history_key(self, cfg: RunConfig) -> tuple:
        return (cfg.device, cfg.model, cfg.precision, cfg.channels_last, cfg.compile, cfg.data_path, cfg.threads)

    def _over_budget(self, cfg: RunConfig) -> str | None:
        """Predict the throughput loop's cost from smaller batch sizes already measured in
        this sweep (step time scaled linearly with batch size: pessimistic on GPUs, about
        right on CPUs); a reason when it would exceed the configuration's budget."""
        smaller = [(bs, s) for bs, s in self._history.get(self._history_key(cfg), []) if bs < cfg.batch_size]
        if not smaller:
            return None
        bs, step = max(smaller)
        predicted_step = step * cfg.batch_size / bs
        steps = 1 + cfg.min_steps + (CEILING_MIN_STEPS if self.dist is None else 0)
        predicted = predicted_step * steps
        if predicted > cfg.max_config_seconds:
            return (f"over the time budget: batch {bs} took {step:.2f} s/step, so batch {cfg.batch_size} "
                    f"would take about {predicted_step:.1f} s/step and {predicted:.0f} s for the fewest steps "
                    f"it needs ({steps}: warm-up, timed, ceiling) > {cfg.max_config_seconds:g} s per configuration")
        return None

    # ---- measurement ------------------------------------------------------------------

    def batches(self, cfg: RunConfig, device: torch.device):
        """(train batches by epoch, test batches) for the configuration's data path."""
        data = self.dataset().subset(cfg.train_size, cfg.test_size)
        if cfg.data_path == "dataloader":
            pin = device.type == "cuda"
            train = classic_loader(data, cfg.batch_size, True, pin_memory=pin, augment=cfg.augment, seed=cfg.seed)
            test = classic_loader(data, cfg.batch_size, False, pin_memory=pin, workers=2)
            return (lambda epoch: iter(train)), (lambda: iter(test)), data
        key = (str(device), cfg.train_size, cfg.test_size, cfg.augment, cfg.channels_last)
        if key not in self._batches:  # keep one device copy of the data per device, size and layout
            self._batches.clear()
            release_memory()
            self._batches[key] = (
                DeviceBatches(data.train_x, data.train_y, 1, device, augment=cfg.augment,
                              channels_last=cfg.channels_last),
                DeviceBatches(data.test_x, data.test_y, 1, device, shuffle=False, drop_last=False,
                              channels_last=cfg.channels_last),
            )
        train_base, test_base = self._batches[key]
        shard = {} if self.dist is None else {"rank": self.dist.rank, "world_size": self.dist.world_size}
        train = train_base.view(batch_size=cfg.batch_size, seed=cfg.seed, **shard)
        test = test_base.view(batch_size=cfg.batch_size)
        return train.epoch, (lambda: test.epoch(0)), data

    def measure(self, cfg: RunConfig, phase: Callable[[str], None]) -> dict:
        device = torch.device(cfg.device) if self.dist is None else self.dist.device(cfg.device)
        group = None if self.dist is None else self.dist.group_for(device)
        trainer = make_trainer(cfg.model, device, cfg.precision, batch_size=cfg.batch_size, seed=cfg.seed,
                               lr=cfg.lr, channels_last=cfg.channels_last, compile=cfg.compile,
                               compile_mode=cfg.compile_mode, process_group=group)
        train_epoch_batches, test_batches, data = self.batches(cfg, device)
        out: dict = {"data": data.source, "lr": trainer.lr, "train_size": len(data.train_y),
                     "test_size": len(data.test_y)}

        stream = _forever(train_epoch_batches)
        if self.dist is None:
            m, extra = self._time_training(cfg, trainer, stream, device, phase)
        else:
            m, extra = self._time_training_distributed(cfg, trainer, stream, device, phase)
        out.update(extra)
        self._history.setdefault(self._history_key(cfg), []).append((cfg.batch_size, m.median))
        del stream
        out.update(
            train_images_per_s=m.items_per_second, step_ms_median=m.median * 1e3, step_ms_iqr=m.iqr * 1e3,
            noisy=m.noisy, timed_steps=len(m.samples), warmup_steps=m.warmup_steps,
            warmup_seconds=m.warmup_seconds, timing_method=m.method, step_samples_s=list(m.samples),
        )

        if self.main:  # under DDP rank 0 alone evaluates and probes the peak; the others wait
            phase("inference")
            ev_warm = timing.StepTimer(device, 1, 1, 0.0)
            ev_warm.start()
            evaluate(trainer, test_batches(), on_step=ev_warm.mark)
            ev_timer = timing.StepTimer(device, 2, 10_000, cfg.eval_max_seconds)
            ev_timer.start()
            evaluate(trainer, test_batches(), on_step=ev_timer.mark)
            ev = timing.Measurement(ev_timer.samples(), cfg.batch_size, 1, 0.0, ev_timer.method)

            flops = system.training_flops_per_image(cfg.model)
            # N processes have N devices' worth of peak (on one CPU: N x the per-process threads)
            peak = self.peak(str(device), cfg.precision)["tflops"] * (1 if self.dist is None else self.dist.world_size)
            achieved = flops * m.items_per_second / 1e12
            out.update(eval_images_per_s=ev.items_per_second, eval_samples_s=list(ev.samples),
                       flops_per_image=flops, achieved_tflops=achieved, peak_tflops=peak, mfu=achieved / peak)
        if self.dist is not None:
            self.dist.barrier()
        if cfg.epochs > 0:
            out.update(self.train_for_accuracy(cfg, trainer, train_epoch_batches, test_batches, data, phase))
        return out

    def _time_training(self, cfg: RunConfig, trainer: Trainer, stream, device: torch.device,
                       phase: Callable[[str], None]) -> tuple[timing.Measurement, dict]:
        """Warm-up, then timed steps (both loops stop on their step or time budget), then the
        compute-only ceiling."""
        phase("warm-up")
        warm = timing.StepTimer(device, 1, cfg.warmup_steps, cfg.warmup_seconds)
        warm.start()
        train_epoch(trainer, stream, on_step=warm.mark)
        warm_samples = warm.samples()
        remaining = cfg.max_config_seconds - sum(warm_samples)
        if warm_samples[-1] * (cfg.min_steps + CEILING_MIN_STEPS) > remaining:
            raise _OverBudget(f"over the time budget: a step takes {warm_samples[-1]:.2f} s, so "
                              f"{cfg.min_steps} timed and {CEILING_MIN_STEPS} ceiling steps would exceed the "
                              f"{cfg.max_config_seconds:g} s per configuration")

        phase("timing")
        timer = timing.StepTimer(device, cfg.min_steps, cfg.max_steps, cfg.max_seconds)
        timer.start()
        train_epoch(trainer, stream, on_step=timer.mark)
        m = timing.Measurement(timer.samples(), cfg.batch_size, len(warm_samples), sum(warm_samples),
                               timer.method)

        # The compute-only ceiling: the same trainer stepping on one batch already on the
        # device, timed the same way, so fraction_of_ceiling shows what the input path costs.
        phase("ceiling")
        x, y = trainer.prepare(*next(stream))
        fixed = (x.clone(memory_format=torch.preserve_format), y.clone())
        ceil_timer = timing.StepTimer(device, min(CEILING_MIN_STEPS, cfg.min_steps), cfg.max_steps,
                                      cfg.max_seconds / 2)
        ceil_timer.start()
        train_epoch(trainer, itertools.repeat(fixed), on_step=ceil_timer.mark)
        ceiling = timing.Measurement(ceil_timer.samples(), cfg.batch_size, 0, 0.0, ceil_timer.method)
        return m, {
            "compile_seconds": warm_samples[0] if cfg.compile else None,
            "ceiling_images_per_s": ceiling.items_per_second,
            "fraction_of_ceiling": m.items_per_second / ceiling.items_per_second,
        }

    def _time_training_distributed(self, cfg: RunConfig, trainer: Trainer, stream, device: torch.device,
                                   phase: Callable[[str], None]) -> tuple[timing.Measurement, dict]:
        """The same budget as `_time_training`, with every loop's step count fixed before it
        starts from the slowest rank's step time, so all ranks stop together. The global
        throughput is the global batch over the slowest rank's median step. Then a few steps
        under DDP's no_sync (no gradient all-reduce) estimate the exposed communication."""
        d = self.dist

        def steps(n: int) -> timing.StepTimer:
            timer = timing.StepTimer(device, n, n, math.inf)  # exactly n steps on every rank
            timer.start()
            train_epoch(trainer, stream, on_step=timer.mark)
            return timer

        phase("warm-up")
        first = steps(1).samples()
        step = d.max(first[0])
        if step * (1 + cfg.min_steps) > cfg.max_config_seconds:
            raise _OverBudget(f"over the time budget: a first step takes {step:.2f} s on the slowest rank, so "
                              f"{cfg.min_steps} timed steps would exceed the {cfg.max_config_seconds:g} s "
                              "per configuration")
        # At least 2 warm-up steps: DDP rebuilds its gradient buckets after the first one.
        more = steps(timing.steps_within(step, 1, max(1, cfg.warmup_steps - 1), cfg.warmup_seconds - step))
        warm = (*first, *more.samples())
        step, spent = d.max(warm[-1]), d.max(sum(warm))
        if step * cfg.min_steps > cfg.max_config_seconds - spent:
            raise _OverBudget(f"over the time budget: a step takes {step:.2f} s on the slowest rank, so "
                              f"{cfg.min_steps} timed steps would exceed the {cfg.max_config_seconds:g} s "
                              "per configuration")

        phase("timing")
        n = timing.steps_within(step, cfg.min_steps, cfg.max_steps, cfg.max_seconds)
        timer = steps(n)
        per_rank = d.all_gather(timer.samples())
        medians = [timing.quartiles(s)[1] for s in per_rank]
        slowest = per_rank[medians.index(max(medians))]
        m = timing.Measurement(tuple(slowest), cfg.batch_size, len(warm), sum(warm), timer.method)

        phase("no_sync")
        # Replicas drift apart here (each applies its own gradient); accuracy runs reset the
        # weights first, and throughput does not depend on their values.
        with trainer.model.no_sync():
            no_sync = steps(min(n, max(cfg.min_steps, n // 2))).samples()
        t_no_sync = d.max(timing.quartiles(no_sync)[1])
        return m, {
            "compile_seconds": step if cfg.compile else None,  # the slowest rank's first step
            "rank_step_ms_median": [1e3 * t for t in medians],
            "step_ms_no_sync": 1e3 * t_no_sync,
            "comm_share": min(1.0, max(0.0, 1 - t_no_sync / m.median)),
        }

    def train_for_accuracy(self, cfg: RunConfig, trainer: Trainer, train_epoch_batches, test_batches,
                           data: Cifar10Arrays, phase: Callable[[str], None]) -> dict:
        """`epochs` full epochs from the seed's initial weights, each followed by a full
        test-set evaluation (rank 0 alone under DDP, the others waiting)."""
        trainer.reset(cfg.seed)
        device = trainer.device
        curve, epoch_seconds, eval_seconds, losses = [], [], [], []
        time_to_target, trained = None, 0.0
        result = None
        for epoch in range(cfg.epochs):
            phase(f"epoch {epoch + 1}/{cfg.epochs}")
            with timing.Stopwatch(device) as sw:
                r = train_epoch(trainer, train_epoch_batches(epoch))
            epoch_seconds.append(sw.seconds)
            losses.append(r.mean_loss)
            trained += sw.seconds
            if self.main:
                with timing.Stopwatch(device) as esw:
                    result = evaluate(trainer, test_batches())
                eval_seconds.append(esw.seconds)
                curve.append(result.accuracy)
                if cfg.target_accuracy is not None and time_to_target is None \
                        and result.accuracy >= cfg.target_accuracy:
                    time_to_target = trained
            if self.dist is not None:
                self.dist.barrier()
        if not self.main:
            return {}
        assert result is not None
        pred_file = self.store.save_predictions(cfg.short_id(), result.predictions.numpy(),
                                                data.test_y.numpy())
        return {
            "test_accuracy": result.accuracy, "accuracy_curve": curve,
            "epoch_seconds": timing.quartiles(epoch_seconds)[1],
            "epoch_seconds_list": epoch_seconds, "eval_seconds_list": eval_seconds, "train_loss_curve": losses,
            "time_to_target_s": time_to_target, "predictions_file": pred_file,
        }


class _OverBudget(Exception):
    pass


class _RankError(Exception):
    """An unexpected error inside a distributed configuration; carries the row to record."""

    def __init__(self, row: dict):
        super().__init__(row.get("reason"))
        self.row = row


def summary_line(row: dict) -> str:
    label = RunConfig.from_dict(row["config"]).label() if "config" in row else row.get("model", "?")
    if (row.get("world_size") or 1) > 1:
        label += f" x{row['world_size']} {row['backend']}"
    if row["status"] != "ok":
        return f"{label}: {row['status']} ({row.get('reason')})"
    text = (f"{label}: {row['train_images_per_s']:,.0f} img/s, step {row['step_ms_median']:.2f} ms "
            f"(IQR {100 * row['step_ms_iqr'] / row['step_ms_median']:.0f}%{', noisy' if row['noisy'] else ''})")
    if row.get("comm_share") is not None:
        text += f", global; comm share ~{100 * row['comm_share']:.0f}%"
    if row.get("test_accuracy") is not None:
        text += f", test acc {100 * row['test_accuracy']:.1f}% after {row['epochs']} epochs"
    return text

