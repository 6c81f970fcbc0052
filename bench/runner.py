"""The sweep: runs RunConfigs one after another into a run folder and records each finished
configuration at once. How one configuration is measured lives in bench/measure.py (and
the method itself in bench/protocol.py); the folder, lock and resume in bench/runfolder.py.

Per sweep: the matmul peaks of every (device, precision) are probed before the first
configuration and again after the last, and a short reference measurement is timed at
both ends, so the report can say how much the machine moved during the run.
Per configuration: refused by construction (unsupported precision, a batch larger than the
data, compile without a C++ compiler, an unsharded input path under DDP) -> `skipped` with
the reason; predicted over budget from the smaller batch sizes already measured (steady
step times only) -> `skipped`; out of memory -> `oom` (memory released); a non-finite loss
-> `diverged`; anything else -> `failed` with the error (traceback in errors.log).

Data parallel (`dist` given): rank 0 alone owns the folder, decides what is pending and
which data to load, and writes; skips and divergence are decided identically on every
rank; any other error on a rank stops the job after rank 0 recorded the configuration.
"""

from __future__ import annotations

import math
import shutil
import statistics
import sys
import traceback
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch

from bench import energy, measure, passes, protocol, resources, stepcost, system, timing
from bench.config import RunConfig, is_reference
from bench.distributed import Distributed, RankFailed
from bench.passes import is_grid
from bench.resources import ResourceMonitor, release_memory
from bench.results import COLUMNS, row_key
from bench.runfolder import RunFolder, RunFolderError
from cnn.data import Cifar10Arrays, DataError, get_dataset
from cnn.train import Diverged, Unsupported, unsupported_reason


def refusal(cfg: RunConfig, dist: Distributed | None) -> str | None:
    """Why a configuration cannot run by construction (the same answer on every rank)."""
    reason = unsupported_reason(cfg.device, cfg.precision)
    if reason:
        return reason
    if cfg.train_size is not None and cfg.batch_size > cfg.train_size:
        return f"batch size {cfg.batch_size} is larger than the {cfg.train_size} training images"
    if cfg.compile and torch.device(cfg.device).type == "cpu" and not any(
            shutil.which(c) for c in ("cc", "gcc", "clang", "g++", "c++")):
        return "torch.compile on the CPU generates C++ and needs a C++ compiler (none on PATH)"
    if dist is not None:
        if cfg.data_path != "device":
            return "the DataLoader input path is not sharded across processes; distributed runs use --data-paths device"
        if cfg.batch_size % dist.world_size:
            return (f"global batch size {cfg.batch_size} does not divide among {dist.world_size} processes "
                    "(each process steps on batch_size / world_size images)")
    return None


class Runner:
    """One sweep into one run folder. `log` receives one line per event."""

    def __init__(self, out, data_kind: str = "auto", data_dir=None, log: Callable[[str], None] = print,
                 progress: bool | None = None, probe_seconds: float | None = None, dist: Distributed | None = None,
                 drift_seconds: float | None = None):
        self.dist = dist
        self.main = dist is None or dist.is_main
        self.log = log if self.main else (lambda m: None)
        self.progress = progress if self.main else False
        self.folder = RunFolder(out, self.log)
        self.out, self.store = self.folder.out, self.folder.store
        self.data_kind, self.data_dir = data_kind, data_dir
        self.probe_seconds = probe_seconds
        self.drift_seconds = drift_seconds  # None: 1 s on a CPU, 0.3 s on a GPU; 0: no drift reference
        self._data: Cifar10Arrays | None = None
        self._inputs = measure.InputCache()
        self._peaks: dict[tuple[str, str], dict] = {}
        self._drift: dict[str, dict] = {}
        self._stepcost: dict = {}  # host cost per operator, memory bandwidth (bench/stepcost.py)
        self._probed: set[str] = set()  # devices whose "before" probes ran
        self._history: dict[tuple, list[tuple[int, float]]] = {}
        self._rows: dict[str, dict] = {}  # the latest row of each configuration (passes merge into it)
        self._sizes: tuple[int | None, int | None] = (None, None)
        self.system = system.system_info()

    # ---- folder and data -------------------------------------------------------------

    def run(self, configs: list[RunConfig], resume: bool = False, retry_all: bool = False,
            followup: Callable[[list[dict]], list[RunConfig]] | None = None) -> list[dict]:
        """Run what is pending; returns the rows this call recorded (a configuration measured in
        several passes: its row after each pass). `followup` plans more configurations from
        every row recorded once those have run (time to accuracy at the fastest batch sizes);
        they join sweep.json and run in the same sweep (one process). The machine checks
        (peaks, drift reference) run once before the first configuration and once after the
        last, follow-ups included."""
        plan, problem = None, None
        try:
            if self.main:
                try:
                    self.folder.lock()
                    pending = self.folder.pending(configs, resume, retry_all)
                    self.folder.write_system(self.system)
                    self._set_sizes(configs)
                    data = self.dataset()  # a data problem stops here, before any configuration runs
                    plan = {"pending": pending, "data": data.source, "folder": data.folder, "sizes": self._sizes,
                            "prior": {k: r for k, r in ((row_key(r), r) for r in self.store.load())}}
                except (RunFolderError, DataError) as e:
                    if self.dist is None:
                        raise
                    plan = {"error": type(e).__name__, "message": str(e)}
            if self.dist is not None:
                plan = self.dist.broadcast(plan)
                if "error" in plan:
                    raise (RunFolderError if plan["error"] == "RunFolderError" else DataError)(plan["message"])
                if not self.main:  # the others load what rank 0 found (they never download)
                    self._sizes, self.data_kind = plan["sizes"], plan["data"]
                    if plan["folder"] is not None:
                        self.data_dir = Path(plan["folder"])
                    try:
                        self.dataset()
                    except DataError as e:
                        problem = f"rank {self.dist.rank}: {e}"
                problems = [p for p in self.dist.all_gather(problem) if p]
                if problems:
                    raise DataError("; ".join(problems))
            self._rows = dict(plan["prior"])
            self._record_cudnn_benchmark(configs)
            with resources.startup_objects_frozen():  # after imports and the dataset: cheap collections per visit
                return self._run_planned(plan["pending"], configs, retry_all, followup)
        finally:
            if self.main and self.folder.locked:
                self._write_system()
            self.folder.release()

    def _run_planned(self, pending: list[RunConfig], configs: list[RunConfig], retry_all: bool,
                     followup: Callable[[list[dict]], list[RunConfig]] | None) -> list[dict]:
        """The machine checks before, the sweep, its follow-ups, the checks after; the latest
        row of each configuration this call recorded, in plan order."""
        checked = list(pending)
        self._machine_checks(checked, "before")
        rows = self._sweep(pending, retry_all)
        if followup is not None and self.dist is None:
            more = [c for c in followup(self.store.load()) if c not in configs]
            if more:
                self.log(f"time to accuracy: {len(more)} runs at the fastest batch sizes measured")
                configs = configs + more
                pending = self.folder.pending(configs, resume=True, retry_all=retry_all)
                checked += [c for c in pending if c not in checked]
                self._machine_checks(pending, "before")  # only what was not probed yet
                rows += self._sweep(pending, retry_all)
        self._machine_checks(checked, "after")
        latest = {row_key(r): r for r in rows}  # a configuration's row after its last pass, in plan order
        return [latest[c.key()] for c in configs if c.key() in latest]

    def _set_sizes(self, configs: list[RunConfig]) -> None:
        sizes = [c.train_size for c in configs], [c.test_size for c in configs]
        self._sizes = tuple(None if None in s else max(s, default=None) for s in sizes)

    def dataset(self) -> Cifar10Arrays:
        if self._data is None:
            sizes = (self._sizes[0] or 50_000, self._sizes[1] or 10_000)
            # Only rank 0 may download: no racing downloads into one folder.
            self._data = get_dataset(self.data_kind, self.data_dir, download=self.main, synthetic_sizes=sizes,
                                     warn=self.log)
        return self._data

    def _write_system(self) -> None:
        self.folder.write_system({**self.system, "peaks": list(self._peaks.values()),
                                  "drift": list(self._drift.values()), **self._stepcost})

    def _record_cudnn_benchmark(self, configs: list[RunConfig]) -> None:
        """system.json's `cudnn_benchmark`: what the sweep's CUDA rows run with (each row's
        RunConfig sets it for its own block), not the process default (kept apart as
        `cudnn_benchmark_default`)."""
        if not self.system.get("cuda_available"):
            return
        used = {c.cudnn_benchmark for c in configs if torch.device(c.device).type == "cuda"}
        self.system["cudnn_benchmark"] = used.pop() if len(used) == 1 else ("mixed" if used else None)

    # ---- the sweep ---------------------------------------------------------------------

    def _machine_checks(self, configs: list[RunConfig], when: str) -> None:
        """Peaks of every (device, precision) and the drift reference of every device,
        before the first configuration or after the last (rank 0 of a job: its own)."""
        if not self.main or not configs:
            return
        if when == "before" and "energy" not in self.system:  # once per run, before any work warms the machine
            devices = [d for d in dict.fromkeys(c.device for c in configs) if unsupported_reason(d, "fp32") is None]
            self.system["energy"] = energy.machine_check(devices, self.log, distributed=self.dist is not None)
        for cfg in dict.fromkeys(RunConfig(c.device, "tutorial", 1, c.precision) for c in configs):
            if unsupported_reason(cfg.device, cfg.precision) is None:
                self.peak(cfg.device, cfg.precision, when)
        probe = [d for d in dict.fromkeys(c.device for c in configs) if unsupported_reason(d, "fp32") is None]
        if when == "before":  # follow-ups probe only devices not yet probed (a second probe is the "after")
            probe = [d for d in probe if d not in self._probed]
            self._probed.update(probe)
        if probe:
            stepcost.probe_machine(self._stepcost, probe, self.probe_seconds)
        if self.dist is not None or self.drift_seconds == 0:
            return  # (distributed: the other ranks share the machine while rank 0 would time alone)
        for device in dict.fromkeys(c.device for c in configs):
            if unsupported_reason(device, "fp32") is not None or f"{when}_images_per_s" in self._drift.get(device, {}):
                continue
            d = self._drift.setdefault(device, {"device": device, "reference": "tutorial fp32 bs 64 ceiling"})
            seconds = self.drift_seconds or (1.0 if torch.device(device).type == "cpu" else 0.3)
            try:
                d[f"{when}_images_per_s"] = measure.drift_reference(torch.device(device), seconds)
            except Exception as e:  # a check of the machine, not a result: said, and the sweep goes on
                d[f"{when}_error"] = f"{type(e).__name__}: {e}"
            if "before_images_per_s" in d and "after_images_per_s" in d:
                d["change"] = d["after_images_per_s"] / d["before_images_per_s"] - 1

    def peak(self, device: str, precision: str, when: str = "before") -> dict:
        key = (device, precision)
        if key not in self._peaks or when == "after":
            p = system.measure_peak_tflops(device, precision, self.probe_seconds)
            if key in self._peaks:  # after the sweep: keep the first probe, record the second
                first = self._peaks[key]
                first.update(tflops_after=p["tflops"], change=p["tflops"] / first["tflops"] - 1)
            else:
                self._peaks[key] = p
        return self._peaks[key]

    def _visits(self, configs: list[RunConfig], retry_all: bool = False) -> list[tuple[RunConfig, int | None]]:
        """The order of the sweep (bench/passes.py `visit_order`, which `--plan` prints too),
        given the rows already recorded."""
        return passes.visit_order(configs, self._rows, retry_all)

    def _sweep(self, configs: list[RunConfig], retry_all: bool = False) -> list[dict]:
        from tqdm import tqdm

        visits = self._visits(configs, retry_all)
        rows: list[dict] = []
        bar = tqdm(total=len(visits), unit="visit", disable=True if self.progress is False else None,
                   dynamic_ncols=True, leave=False)
        bar_on = not bar.disable
        say = tqdm.write if bar_on else self.log
        planned_seconds = 0.0
        try:
            for i, (cfg, p) in enumerate(visits, 1):
                started = timing.now()
                row = self._visit(cfg, p, bar, say, f"{i}/{len(visits)}", rows)
                if row is not None and p is not None:
                    planned_seconds += timing.now() - started
                bar.update(1)
            if self.dist is None:
                rows += self._extra_passes([c for c in configs if is_grid(c)], planned_seconds, bar, say)
        finally:
            bar.close()
        return rows

    def _extra_passes(self, grid: list[RunConfig], planned_seconds: float, bar, say) -> list[dict]:
        """Configurations whose passes disagree by more than passes.EXTRA_PASS_SPREAD get more
        (at most EXTRA_PASSES each), in shuffled order, while their estimated time fits within
        EXTRA_TIME_SHARE of the time the planned passes took."""
        rows: list[dict] = []
        allowance, spent = passes.EXTRA_TIME_SHARE * planned_seconds, 0.0
        for extra in range(1, passes.EXTRA_PASSES + 1):
            todo = [c for c in grid if c.passes > 1 and passes.needs_extra_pass(self._rows.get(c.key(), {}), c.passes)
                    and (self._rows[c.key()].get("passes_run") or 0) < c.passes + extra]
            if not todo:
                break
            self.log(f"extra pass {extra}: {len(todo)} configurations whose passes disagree by more than "
                     f"{passes.EXTRA_PASS_SPREAD:.0%}")
            bar.total = (bar.total or 0) + len(todo)
            for cfg in passes.pass_order(todo, passes.EXTRA_ORDER + extra):
                entries = self._rows[cfg.key()].get("pass_results") or []
                estimate = statistics.median([e.get("visit_seconds") or 0.0 for e in entries] or [0.0])
                if spent + estimate > allowance:
                    self.log(f"extra passes stop: their time allowance ({allowance:.1f} s, "
                             f"{passes.EXTRA_TIME_SHARE:.0%} of the planned passes) is spent")
                    return rows
                started = timing.now()
                self._visit(cfg, max(e["pass"] for e in entries) + 1, bar, say, f"extra {extra}", rows)
                spent += timing.now() - started
                bar.update(1)
        return rows

    def _visit(self, cfg: RunConfig, pass_index: int | None, bar, say, where: str, rows: list[dict]) -> dict | None:
        """One visit: run the configuration (or one pass of it), merge the pass into its row,
        record the row. None when the visit was not needed (an earlier pass was not ok)."""
        previous = self._rows.get(cfg.key())
        if pass_index is not None and pass_index > 1 and previous is not None and previous.get("status") != "ok":
            return None  # skipped, oom, diverged or failed in an earlier pass: no more passes
        label = cfg.label() + (f" pass {pass_index}/{cfg.passes}" if pass_index is not None and cfg.passes > 1 else "")
        bar.set_description(label)
        started = timing.now()
        try:
            row = self.run_one(cfg, phase=lambda p: bar.set_postfix_str(p) if not bar.disable else None,
                               pass_index=pass_index)
        except _RankError as e:  # distributed: record it (rank 0), then stop the job
            if self.main:
                self.store.append(e.row)
                say(f"[{where}] {summary_line(e.row)}")
            raise RankFailed(f"rank {self.dist.rank}: {cfg.label()}: {e.row['reason']}; the job stops "
                             "because the ranks can no longer stay in step (a rank that waits longer than "
                             "--dist-timeout for the others fails this way too)") from None
        if pass_index is not None:
            row.update(visit_seconds=timing.now() - started)
            row = passes.merge(previous, row, pass_index)
            row["flags"] = "; ".join(measure.flags(row)) or None
        self._rows[cfg.key()] = row
        if self.main:
            self.store.append(row)
            say(f"[{where}] {summary_line(row, pass_index)}")
        rows.append(row)
        return row

    # ---- one configuration -------------------------------------------------------------

    def base_row(self, cfg: RunConfig, threads: int) -> dict:
        return {
            **dict.fromkeys(COLUMNS), **asdict(cfg), "config": asdict(cfg), "config_key": cfg.key(),
            "config_id": cfg.short_id(),
            "device_name": system.device_name(cfg.device) if unsupported_reason(cfg.device, "fp32") is None else None,
            "host": self.system["host"], "threads": threads,
            "data": self._data.source if self._data is not None else None,  # skipped rows say it too
            "world_size": 1 if self.dist is None else self.dist.world_size,
            "backend": "none" if self.dist is None else self.dist.backend_for(cfg.device),
            "nodes": 1 if self.dist is None else self.dist.topo.nodes,
        }

    def _line(self, cfg: RunConfig) -> tuple:
        return (cfg.device, cfg.model, cfg.precision, cfg.channels_last, cfg.compile, cfg.data_path, cfg.threads)

    def over_budget(self, cfg: RunConfig) -> str | None:
        """Predict the fewest steps' cost from the steady step of the largest smaller batch
        already measured on this line (step time scaled linearly with the batch size:
        pessimistic on GPUs, about right on CPUs). Accuracy runs are asked for by name and
        never skipped here: the equivalence check needs them."""
        smaller = [(bs, s) for bs, s in self._history.get(self._line(cfg), []) if bs < cfg.batch_size]
        if not smaller or cfg.epochs > 0 or is_reference(cfg):
            return None
        bs, step = max(smaller)
        predicted_step = step * cfg.batch_size / bs
        steps = 2 * cfg.min_steps  # timed loop and its ceiling (no_sync steps under DDP)
        predicted = predicted_step * steps
        if predicted > cfg.max_config_seconds:
            return (f"over the time budget: batch {bs} took {step:.3g} s per steady step, so batch {cfg.batch_size} "
                    f"would take about {predicted_step:.2g} s per step and {predicted:.0f} s for the fewest steps "
                    f"it needs ({cfg.min_steps} timed, {cfg.min_steps} ceiling) > {cfg.max_config_seconds:g} s "
                    f"per configuration (to run it: `cifar-bench run --out FOLDER --resume --retry-all "
                    f"--max-config-seconds {math.ceil(max(predicted * 1.5, cfg.max_config_seconds * 2, 1))}`)")
        return None

    def _reference_step(self, cfg: RunConfig, pass_index: int | None) -> float | None:
        """The median step of the passes a configuration already has (seconds), for a later
        pass's warm-up; None in its first pass."""
        row = self._rows.get(cfg.key())
        if not pass_index or pass_index == 1 or row is None or row.get("status") != "ok":
            return None
        return row["step_ms_median"] / 1e3 if row.get("step_ms_median") else None

    def run_one(self, cfg: RunConfig, phase: Callable[[str], None] = lambda p: None,
                pass_index: int | None = None) -> dict:
        """One configuration, or one pass of it (`pass_index`, with 1/passes of its budget);
        the row records the configuration as asked for."""
        row_cfg, cfg = cfg, passes.pass_budget(cfg) if pass_index is not None else cfg
        with measure.cpu_threads(cfg.threads) as threads:
            row = self.base_row(row_cfg, threads)
            # a later pass of a configuration that fit in the first is not predicted again
            reason = refusal(cfg, self.dist) or (self.over_budget(cfg) if (pass_index or 1) == 1 else None)
            if reason is not None:
                return {**row, "status": "skipped", "reason": reason, "finished_at": timing.wall_clock()}
            device = torch.device(cfg.device) if self.dist is None else self.dist.device(cfg.device)
            peak_scale = 1 if self.dist is None else self.dist.world_size  # N devices' worth of peak
            monitor = ResourceMonitor(device)
            rank_error = False
            try:
                # the data is placed before the memory window opens: reported apart
                inputs = self._inputs.get(self.dataset(), cfg, device, *((0, 1) if self.dist is None else
                                                                        (self.dist.rank, self.dist.world_size)))
                row["dataset_mb"] = inputs.dataset_bytes / 2**20
                with monitor, measure.cudnn_benchmark(device, cfg.cudnn_benchmark):
                    metrics, step = measure.measure(
                        cfg, device, inputs, phase,
                        lambda: self.peak(cfg.device, cfg.precision)["tflops"] * peak_scale,
                        self.store.save_predictions if self.main else None, self.dist,
                        once=(pass_index or 1) == 1, reference_step=self._reference_step(cfg, pass_index),
                        warmed=monitor.warmed_up)
                if step is not None:
                    self._history.setdefault(self._line(cfg), []).append((cfg.batch_size, step))
                row.update(status="ok", reason=None, **metrics)
            except Diverged as e:
                row.update(status="diverged", reason=str(e))
            except (Unsupported, protocol.OverBudget) as e:
                row.update(status="skipped", reason=str(e))
            except KeyboardInterrupt:
                raise
            except Exception as e:  # recorded, never swallowed: the row and errors.log say what
                rank_error = self.dist is not None
                if resources.is_oom(e):
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
                if cfg.data_path == "dataloader":
                    self._inputs.clear()
                release_memory()
            row.update(peak_memory_mb=monitor.peak_memory_mb, peak_memory_total_mb=monitor.peak_memory_total_mb,
                       memory_kind=monitor.memory_kind, cpu_percent=monitor.cpu_percent,
                       finished_at=timing.wall_clock())
            if rank_error:
                raise _RankError(row)
            if self.dist is not None:
                self._merge_ranks(row)
            return row

    def _merge_ranks(self, row: dict) -> None:
        """Per-rank facts into rank 0's row: the job's peak memory is the largest process's,
        its CPU use the sum; per-rank lists go to the JSON row only."""
        ranks = self.dist.all_gather({"host": self.system["host"], "threads": row["threads"], "status": row["status"],
                                      "peak_memory_mb": row["peak_memory_mb"], "cpu_percent": row["cpu_percent"]})
        if len({r["status"] for r in ranks}) > 1:  # cannot happen by construction; it must not pass for ok
            row.update(status="failed", reason=f"ranks disagree on the outcome: {[r['status'] for r in ranks]}")
        row.update(peak_memory_mb=max(r["peak_memory_mb"] for r in ranks),
                   cpu_percent=sum(r["cpu_percent"] for r in ranks),
                   rank_hosts=[r["host"] for r in ranks], rank_threads=[r["threads"] for r in ranks],
                   rank_peak_memory_mb=[r["peak_memory_mb"] for r in ranks])


class _RankError(Exception):
    """An unexpected error inside a distributed configuration; carries the row to record."""

    def __init__(self, row: dict):
        super().__init__(row.get("reason"))
        self.row = row


def summary_line(row: dict, pass_index: int | None = None) -> str:
    label = RunConfig.from_dict(row["config"]).label() if "config" in row else row.get("model", "?")
    planned = (row.get("config") or {}).get("passes") or 1
    if pass_index is not None and planned > 1:
        label += f" pass {pass_index}/{planned}" if pass_index <= planned else f" extra pass {pass_index}"
    if (row.get("world_size") or 1) > 1:
        label += f" x{row['world_size']} {row['backend']}"
    if row["status"] != "ok":
        return f"{label}: {row['status']} ({row.get('reason')})"
    if row.get("train_images_per_s") is None:  # an accuracy run: epochs end to end, no throughput rounds
        text = f"{label}: epoch {row['epoch_seconds']:.2f} s" if row.get("epoch_seconds") is not None else label
    else:
        text = (f"{label}: {row['train_images_per_s']:,.0f} img/s, median step {row['step_ms_median']:.2f} ms "
                f"(IQR {100 * row['step_ms_iqr'] / row['step_ms_median']:.0f}%{', noisy' if row['noisy'] else ''}, "
                f"{row['timed_steps']} steps)")
        values = [e["train_images_per_s"] for e in row.get("pass_results") or []
                  if e.get("status") == "ok" and e.get("train_images_per_s")]
        if len(values) > 1:
            text += f" (median of passes {' / '.join(f'{v:,.0f}' for v in values)})"
    if row.get("comm_share") is not None:
        text += f", global; comm share ~{100 * row['comm_share']:.0f}%"
    if row.get("test_accuracy") is not None:
        text += f", test acc {100 * row['test_accuracy']:.1f}% after {row.get('epochs_run') or row['epochs']} epochs"
    if row.get("flags"):
        text += f" [flagged: {row['flags']}]"
    return text
