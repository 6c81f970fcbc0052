"""Runs a sweep of RunConfigs and records each finished configuration at once.

Per configuration:
  1. throughput: warm-up steps (excluded), then timed steps within the budget
     (bench.timing.StepTimer), then a timed inference loop;
  2. accuracy (when `epochs` > 0): back to the seed's initial weights, `epochs` full epochs,
     each timed end to end (data included) and followed by a full test-set evaluation.
Failures never stop a sweep: out-of-memory -> `oom` (memory released), an unsupported
combination or one over its time budget -> `skipped`, a non-finite loss -> `diverged`,
anything else -> `failed` with the error (traceback in errors.log).
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import json
import os
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path

import torch
from filelock import FileLock, Timeout

from bench import system, timing
from bench.config import RunConfig
from bench.results import COLUMNS, ResultsStore
from cnn.data import Cifar10Arrays, DeviceBatches, classic_loader, get_dataset
from cnn.train import Diverged, Trainer, Unsupported, evaluate, make_trainer, train_epoch, unsupported_reason


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


class Runner:
    """One sweep into one run folder. `log` receives one line per event."""

    def __init__(self, out: Path, data_kind: str = "auto", data_dir: Path | None = None,
                 log: Callable[[str], None] = print, progress: bool | None = None,
                 probe_seconds: float | None = None):
        self.out = Path(out)
        self.data_kind, self.data_dir = data_kind, data_dir
        self.log = log
        self.progress = progress
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

    def _prepare_folder(self, configs: list[RunConfig], resume: bool) -> set[str]:
        if self.out.exists() and not self.out.is_dir():
            raise RunFolderError(f"--out {self.out} is a file, expected a folder")
        self.out.mkdir(parents=True, exist_ok=True)
        rows = self.store.repair(warn=self.log)
        if rows and not resume:
            raise RunFolderError(f"{self.out} already holds {len(rows)} results; add --resume to continue "
                                 "that sweep, or choose another --out")
        sweep = self.out / "sweep.json"
        sweep.write_text(json.dumps([asdict(c) for c in configs], indent=1))
        return {r["config_key"] for r in rows if "config_key" in r}

    def _write_system(self) -> None:
        info = {**self.system, "peaks": list(self._peaks.values())}
        tmp = self.out / "system.json.tmp"
        tmp.write_text(json.dumps(info, indent=2, default=str))
        os.replace(tmp, self.out / "system.json")

    def run(self, configs: list[RunConfig], resume: bool = False) -> list[dict]:
        lock = FileLock(str(self.out / ".lock")) if self.out.is_dir() else None
        if lock is None:
            if self.out.exists():
                raise RunFolderError(f"--out {self.out} is a file, expected a folder")
            self.out.mkdir(parents=True)
            lock = FileLock(str(self.out / ".lock"))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise RunFolderError(f"another sweep is writing to {self.out} (lock {self.out / '.lock'} is held); "
                                 "wait for it to finish or choose another --out") from None
        try:
            done = self._prepare_folder(configs, resume)
            self._write_system()
            sizes = [c.train_size for c in configs], [c.test_size for c in configs]
            self._size_hint = tuple(None if None in s else max(s, default=None) for s in sizes)
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
                row = self.run_one(cfg, phase=lambda p: bar.set_postfix_str(p) if bar_on else None)
                self.store.append(row)
                rows.append(row)
                say(f"[{i}/{len(configs)}] {summary_line(row)}")
                bar.update(1)
        finally:
            bar.close()
            self._write_system()
        return rows

    def dataset(self) -> Cifar10Arrays:
        if self._data is None:
            sizes = (self._size_hint[0] or 50_000, self._size_hint[1] or 10_000)
            self._data = get_dataset(self.data_kind, self.data_dir, synthetic_sizes=sizes, warn=self.log)
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
            "world_size": 1,
            "backend": "none",
            "nodes": 1,
        }

    def run_one(self, cfg: RunConfig, phase: Callable[[str], None] = lambda p: None) -> dict:
        with cpu_threads(cfg.threads) as threads:
            row = self.base_row(cfg, threads)
            reason = unsupported_reason(cfg.device, cfg.precision)
            if reason is None:
                reason = self._over_budget(cfg)
            if reason is not None:
                return {**row, "status": "skipped", "reason": reason, "finished_at": timing.wall_clock()}
            device = torch.device(cfg.device)
            self.peak(cfg.device, cfg.precision)  # probed here, outside the configuration's memory window
            monitor = system.ResourceMonitor(cfg.device)
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
                if is_oom(e):
                    row.update(status="oom", reason=f"out of memory: {str(e).splitlines()[0][:200]}")
                else:
                    row.update(status="failed", reason=f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
                               if str(e) else type(e).__name__)
                    with open(self.out / "errors.log", "a") as f:
                        f.write(f"--- {cfg.label()}\n{traceback.format_exc()}\n")
            finally:
                release_memory()
            row.update(peak_memory_mb=monitor.peak_memory_mb, memory_kind=monitor.memory_kind,
                       cpu_percent=monitor.cpu_percent, finished_at=timing.wall_clock())
            return row

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
        predicted = predicted_step * (1 + cfg.min_steps)
        if predicted > cfg.max_config_seconds:
            return (f"over the time budget: batch {bs} took {step:.2f} s/step, so batch {cfg.batch_size} "
                    f"would take about {predicted_step:.1f} s/step and {predicted:.0f} s for 1 warm-up + "
                    f"{cfg.min_steps} timed steps > {cfg.max_config_seconds:g} s per configuration")
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
        key = (str(device), cfg.train_size, cfg.test_size, cfg.augment)
        if key not in self._batches:  # keep one device copy of the data per device and size
            self._batches.clear()
            release_memory()
            self._batches[key] = (
                DeviceBatches(data.train_x, data.train_y, 1, device, augment=cfg.augment),
                DeviceBatches(data.test_x, data.test_y, 1, device, shuffle=False, drop_last=False),
            )
        train_base, test_base = self._batches[key]
        train = train_base.view(batch_size=cfg.batch_size, seed=cfg.seed, channels_last=cfg.channels_last)
        test = test_base.view(batch_size=cfg.batch_size, channels_last=cfg.channels_last)
        return train.epoch, (lambda: test.epoch(0)), data

    def measure(self, cfg: RunConfig, phase: Callable[[str], None]) -> dict:
        device = torch.device(cfg.device)
        trainer = make_trainer(cfg.model, device, cfg.precision, batch_size=cfg.batch_size, seed=cfg.seed,
                               lr=cfg.lr, channels_last=cfg.channels_last, compile=cfg.compile,
                               compile_mode=cfg.compile_mode)
        train_epoch_batches, test_batches, data = self.batches(cfg, device)
        out: dict = {"data": data.source, "lr": trainer.lr, "train_size": len(data.train_y),
                     "test_size": len(data.test_y)}

        phase("warm-up")
        stream = _forever(train_epoch_batches)
        warm = timing.StepTimer(device, 1, cfg.warmup_steps, cfg.warmup_seconds)
        warm.start()
        train_epoch(trainer, stream, on_step=warm.mark)
        warm_samples = warm.samples()
        remaining = cfg.max_config_seconds - sum(warm_samples)
        if warm_samples[-1] * cfg.min_steps > remaining:
            raise _OverBudget(f"over the time budget: a step takes {warm_samples[-1]:.2f} s, so "
                              f"{cfg.min_steps} timed steps would exceed the {cfg.max_config_seconds:g} s "
                              "per configuration")

        phase("timing")
        timer = timing.StepTimer(device, cfg.min_steps, cfg.max_steps, cfg.max_seconds)
        timer.start()
        train_epoch(trainer, stream, on_step=timer.mark)
        m = timing.Measurement(timer.samples(), cfg.batch_size, len(warm_samples), sum(warm_samples), timer.method)
        self._history.setdefault(self._history_key(cfg), []).append((cfg.batch_size, m.median))

        # The compute-only ceiling: the same trainer stepping on one batch already on the
        # device, timed the same way, so fraction_of_ceiling shows what the input path costs.
        phase("ceiling")
        x, y = trainer.prepare(*next(stream))
        fixed = (x.clone(memory_format=torch.preserve_format), y.clone())
        del stream
        ceil_timer = timing.StepTimer(device, cfg.min_steps, cfg.max_steps, cfg.max_seconds / 2)
        ceil_timer.start()
        train_epoch(trainer, itertools.repeat(fixed), on_step=ceil_timer.mark)
        ceiling = timing.Measurement(ceil_timer.samples(), cfg.batch_size, 0, 0.0, ceil_timer.method)

        phase("inference")
        ev_warm = timing.StepTimer(device, 1, 1, 0.0)
        ev_warm.start()
        evaluate(trainer, test_batches(), on_step=ev_warm.mark)
        ev_timer = timing.StepTimer(device, 2, 10_000, cfg.eval_max_seconds)
        ev_timer.start()
        evaluate(trainer, test_batches(), on_step=ev_timer.mark)
        ev = timing.Measurement(ev_timer.samples(), cfg.batch_size, 1, 0.0, ev_timer.method)

        flops = system.training_flops_per_image(cfg.model)
        peak = self.peak(cfg.device, cfg.precision)
        achieved = flops * m.items_per_second / 1e12
        out.update(
            train_images_per_s=m.items_per_second, step_ms_median=m.median * 1e3, step_ms_iqr=m.iqr * 1e3,
            noisy=m.noisy, timed_steps=len(m.samples), warmup_steps=m.warmup_steps,
            warmup_seconds=m.warmup_seconds, timing_method=m.method, step_samples_s=list(m.samples),
            compile_seconds=warm_samples[0] if cfg.compile else None,
            ceiling_images_per_s=ceiling.items_per_second,
            fraction_of_ceiling=m.items_per_second / ceiling.items_per_second,
            eval_images_per_s=ev.items_per_second, eval_samples_s=list(ev.samples),
            flops_per_image=flops, achieved_tflops=achieved, peak_tflops=peak["tflops"],
            mfu=achieved / peak["tflops"],
        )
        if cfg.epochs > 0:
            out.update(self.train_for_accuracy(cfg, trainer, train_epoch_batches, test_batches, data, phase))
        return out

    def train_for_accuracy(self, cfg: RunConfig, trainer: Trainer, train_epoch_batches, test_batches,
                           data: Cifar10Arrays, phase: Callable[[str], None]) -> dict:
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
            with timing.Stopwatch(device) as esw:
                result = evaluate(trainer, test_batches())
            eval_seconds.append(esw.seconds)
            curve.append(result.accuracy)
            if cfg.target_accuracy is not None and time_to_target is None and result.accuracy >= cfg.target_accuracy:
                time_to_target = trained
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


def summary_line(row: dict) -> str:
    label = RunConfig.from_dict(row["config"]).label() if "config" in row else row.get("model", "?")
    if row["status"] != "ok":
        return f"{label}: {row['status']} ({row.get('reason')})"
    text = (f"{label}: {row['train_images_per_s']:,.0f} img/s, step {row['step_ms_median']:.2f} ms "
            f"(IQR {100 * row['step_ms_iqr'] / row['step_ms_median']:.0f}%{', noisy' if row['noisy'] else ''})")
    if row.get("test_accuracy") is not None:
        text += f", test acc {100 * row['test_accuracy']:.1f}% after {row['epochs']} epochs"
    return text

