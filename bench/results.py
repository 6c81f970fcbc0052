"""The results store. The schema lives here and nowhere else.

A run folder holds:
  results.jsonl   one JSON object per finished configuration, appended and fsynced as
                  each finishes (an interrupted sweep keeps everything that finished). A
                  throughput configuration measured in passes is appended after each pass:
                  its `pass_results` lists every pass so far (figures per pass), and each
                  line keeps the raw step times of the pass that wrote it, so every pass's
                  samples stay in the file. Rows
                  also carry what the CSV leaves out: the full RunConfig, raw step times,
                  per-epoch accuracy and seconds; distributed rows (written by rank 0
                  only) add per-rank lists in rank order: rank_step_ms_median,
                  rank_hosts, rank_threads, rank_peak_memory_mb.
                  A resumed sweep appends a rerun's row after the old one: readers keep the
                  latest row of each configuration (`latest_rows`).
  results.csv     the scalar columns of the same rows, rewritten through pandas after each
  system.json     machine and software facts, the measured peaks, the host cost of one
                  operator (host_op) and the memory bandwidth (memory_bandwidth)
  predictions/    per-example test predictions of each accuracy run (<id>.npz, uint8),
                  used by the equivalence check
  sweep.json      the list of configurations asked for, so `--resume` can finish it
"""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from bench.markdown import to_markdown

STATUSES = ("ok", "oom", "skipped", "diverged", "failed")

# CSV columns, in order, and what each one means. Rows are dicts with these keys (and more).
COLUMNS: dict[str, str] = {
    "device": "cpu or cuda",
    "device_name": "CPU model or GPU name",
    "host": "machine's host name",
    "model": "model name (cnn.models)",
    "batch_size": "images per training step",
    "precision": "fp32 | tf32 | fp16 | bf16",
    "channels_last": "NHWC memory format for model and inputs",
    "compile": "torch.compile used",
    "compile_mode": "torch.compile mode (default, reduce-overhead = CUDA graphs, max-autotune)",
    "cudnn_benchmark": "cuDNN autotuning on (CUDA runs)",
    "data_path": "device (resident uint8, on-device augmentation) | dataloader (torchvision + DataLoader)",
    "status": " | ".join(STATUSES),
    "reason": "why not ok",
    "seed": "seed of initial weights, batch order and augmentation",
    "epochs": "full training epochs for accuracy (0: throughput only)",
    "threads": "torch CPU threads in use",
    "train_images_per_s": "training throughput, the headline: images / total timed time, every timed step "
                          "counted (distributed: global images / the slowest rank's total time); with passes, the "
                          "median over passes. Empty for accuracy runs (their speed is epoch_seconds)",
    "train_images_per_s_low": "lower end of the row's interval: where a repeat run's value is expected "
                              "(bench/passes.py: from the spread between passes; empty with one pass)",
    "train_images_per_s_high": "upper end of that interval",
    "passes": "passes across the sweep asked for (bench/passes.py); 1 for accuracy runs",
    "passes_run": "passes measured ok (extra passes included)",
    "pass_spread": "fastest pass / slowest pass - 1 (throughput)",
    "step_ms_median": "median training step time (ms; distributed: the slowest rank's); a stability figure",
    "step_ms_iqr": "interquartile range of step times (ms)",
    "median_ci": "half-width of the median step time's 95% confidence interval / the median (0.03 = +-3%), from "
                 "one pass's consecutive steps (the median over passes): a stability figure, not the row's interval",
    "noisy": "IQR/median > 10%",
    "timed_steps": "timed steps of the training loop (the ceiling got as many), all passes together",
    "rounds": "interleaved rounds of loop and ceiling (bench/protocol.py), all passes together",
    "warmup_steps": "steps run before timing (excluded), until the step time settled; all passes together",
    "warmup_seconds": "wall time of the warm-up steps (not charged to the budget), all passes together",
    "warmup_settled": "warm-up ended in every pass because two consecutive steps agreed (not on its bound)",
    "startup_seconds": "warm-up time beyond steady steps: compilation, cuDNN autotuning, first allocations (the "
                       "first pass: the cold start)",
    "timing_method": "perf_counter (CPU) or cuda_event",
    "compile_seconds": "startup_seconds of a torch.compile run: the compilation (Dynamo is reset before each "
                       "compiled configuration; Inductor's on-disk caches of graphs and kernels are kept, as a user's "
                       "second run would find them)",
    "compile_frames": "frames torch.compile's Dynamo compiled in the configuration (a compiled run only; the first "
                      "pass)",
    "recompiles": "of those, the frames compiled after the training loop's warm-up: recompiles (a failed guard, "
                  "e.g. evaluation's forward in eval mode). A run that hit Dynamo's recompile limit is refused "
                  "(skipped), never recorded as compiled",
    "ceiling_images_per_s": "compute-only ceiling: the same step on one batch already on the device, timed "
                            "in rounds interleaved with the loop",
    "fraction_of_ceiling": "train_images_per_s / ceiling_images_per_s within each pass, the median over passes "
                           "(above 1.05: flagged, a measurement problem)",
    "epoch_seconds": "median wall time of one full training epoch, data included",
    "eval_images_per_s": "evaluation throughput (inference mode; distributed: rank 0 alone)",
    "test_accuracy": "test accuracy after the configured epochs (fraction)",
    "target_accuracy": "target accuracy, when set",
    "time_to_target_s": "training seconds (evaluation excluded) until the target accuracy was first reached",
    "epochs_to_target": "epochs until the target accuracy was first reached",
    "stop_at_target": "a time-to-accuracy run: epochs is a bound, training stopped at the target",
    "flops_per_image": "training FLOPs per image (forward + backward, FlopCounterMode)",
    "achieved_tflops": "flops_per_image * train_images_per_s / 1e12",
    "peak_tflops": "measured matmul peak of this device in this precision, the fastest of its repeats, probed "
                   "before the sweep (distributed: x world_size)",
    "mfu": "achieved_tflops / peak_tflops: the share of the measured matmul peak (above 100%: flagged)",
    "peak_memory_mb": "the configuration's own peak memory over what it started from, dataset excluded (MB; "
                      "distributed: the largest rank's)",
    "peak_memory_total_mb": "the process's absolute peak during the configuration (CPU: VmHWM; CUDA: max "
                            "allocated, resident dataset included)",
    "dataset_mb": "the resident dataset on the device (uint8 images and labels), placed before the window",
    "memory_kind": "cpu_vmhwm (kernel high-water mark, reset per configuration) | cpu_rss_sampled | "
                   "cuda_max_allocated",
    "cpu_percent": "CPU time of the process and its children (DataLoader workers) / wall time (100 = one core; "
                   "distributed: summed over ranks)",
    "flags": "measurement problems of this row (MFU > 100%, of ceiling > 1.05, unsettled warm-up), '; '-joined",
    "lr": "SGD learning rate used",
    "train_size": "training images available",
    "test_size": "test images evaluated",
    "data": "dataset that really ran: cifar10 or synthetic",
    "world_size": "processes in the run (1: single process); batch_size is the global batch, "
                  "each process steps on batch_size / world_size",
    "backend": "torch.distributed backend: gloo (CPU), nccl (CUDA), none (one process)",
    "nodes": "machines (torchrun node agents) in the run",
    "step_ms_no_sync": "distributed: median step time with DDP's gradient all-reduce skipped (no_sync), "
                       "slowest rank",
    "comm_share": "distributed, an estimate: 1 - step_ms_no_sync / step_ms_median (clamped to 0..1), the share "
                  "of a step spent in gradient communication that is not hidden behind the backward pass",

    "config_id": "short id of the RunConfig (links predictions/<id>.npz)",
    "finished_at": "UNIX time the row was written",
    "parameters": "model parameters (cnn.models.parameter_count)",
    # Energy (bench/energy.py): a window of the training loop after the timed rounds, >= 1 s. The JSON row
    # also holds the joules per domain (energy_joules); system.json the idle windows ("energy").
    "energy_j_per_image": "energy per training image (J): the window's joules, every domain in energy_domains, "
                          "over its images",
    "energy_mean_w": "mean power over the energy window (W), every domain in energy_domains",
    "energy_domains": "what was counted, '+'-joined: package-N and dram-N (RAPL: the whole CPU socket and its "
                      "memory, other processes included), gpuN (NVML: the GPU board)",
    "energy_method": "rapl | nvml-counter (the GPU's energy counter) | nvml-power-sampled (power integrated, "
                     "GPUs before Volta); '+'-joined for a GPU and its host",
    "energy_window_s": "seconds of the energy window (at least 1: NVML's counter moves about every 100 ms)",
    "energy_window_steps": "training steps in the energy window",
    "energy_idle_w": "the same domains' power with this process asleep, measured once before the sweep (W); "
                     "energy above idle per image = (energy_mean_w - energy_idle_w) x window s / images",
    "energy_reason": "why the row has no energy figures ('energy: not available: ...')",

    # What one step must cost on any device (bench/stepcost.py; the GPU speedup bound, bench/bound.py)
    "step_ops": "leaf aten operators one training step launches (forward + backward + optimizer, SGD fused as "
                "on CUDA), counted with torch.profiler on one step",
    "step_ops_forward": "step_ops of the forward pass (loss included)",
    "step_ops_backward": "step_ops of the backward pass (under the autograd engine)",
    "step_ops_optimizer": "step_ops after the backward: optimizer step, zero_grad, GradScaler",
    "step_state_bytes": "bytes of the weights, their gradients and the optimizer state",
    "step_saved_bytes": "bytes of the distinct storages saved for backward (saved_tensors_hooks), weights excluded",
    "step_min_bytes": "bytes one step must move at least: 2 x step_state_bytes (each read and written) + "
                      "2 x step_saved_bytes (written once, read once)",
}


class ResultsError(Exception):
    """A run folder that cannot be read; the message names it."""


def read_jsonl(path: Path, warn=None) -> list[dict]:
    """Rows of a results.jsonl. A torn line (a write cut short by a kill) is skipped with a
    warning, never a crash."""
    warn = warn or (lambda m: warnings.warn(m, stacklevel=3))
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise ResultsError(f"cannot read {path}: {e.strerror}") from None
    lines = text.split("\n")
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            where = "last line" if i >= len(lines) - 1 else f"line {i}"
            warn(f"{path}: ignored a torn or corrupt {where} (an interrupted write); "
                 "that configuration will run again with --resume")
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def row_key(row: dict) -> str | None:
    """The configuration key of a stored row, recomputed from its stored configuration (so
    rows written before a change of what the key covers still match)."""
    from bench.config import RunConfig

    if isinstance(row.get("config"), dict):
        return RunConfig.from_dict(row["config"]).key()
    return row.get("config_key")


def latest_rows(rows: list[dict]) -> list[dict]:
    """One row per configuration, the last one written (a resumed sweep appends the rerun of
    a failed configuration after it), in the order of first appearance."""
    latest: dict = {}
    for i, row in enumerate(rows):
        k = row_key(row)
        latest[k if k is not None else ("row", i)] = row
    return list(latest.values())


def _clean(value):
    """JSON-safe: NaN/inf become null, numpy scalars become Python ones."""
    if isinstance(value, (np.floating, np.integer)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


class ResultsStore:
    """Appends rows to results.jsonl (flushed and fsynced per row) and keeps results.csv
    in step."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.jsonl = self.folder / "results.jsonl"
        self.csv = self.folder / "results.csv"
        self.predictions = self.folder / "predictions"

    def load(self, warn=None) -> list[dict]:
        """The latest row of each configuration."""
        return latest_rows(read_jsonl(self.jsonl, warn))

    def repair(self, warn=None) -> list[dict]:
        """Load, and if torn lines were found rewrite the file with the good rows only
        (atomically), so appends start on a clean line."""
        torn: list[str] = []
        rows = read_jsonl(self.jsonl, lambda m: torn.append(m))
        for m in torn:
            (warn or warnings.warn)(m)
        if torn:
            tmp = self.jsonl.with_suffix(".jsonl.tmp")
            with open(tmp, "w", encoding="utf-8") as f:
                for row in rows:
                    f.write(json.dumps(_clean(row)) + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.jsonl)
        return rows

    def append(self, row: dict) -> None:
        line = json.dumps(_clean(row), separators=(",", ":")) + "\n"
        with open(self.jsonl, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        self.write_csv()

    def write_csv(self) -> None:
        frame = to_frame(self.load())
        tmp = self.csv.with_suffix(".csv.tmp")
        frame.to_csv(tmp, index=False)
        os.replace(tmp, self.csv)

    def save_predictions(self, config_id: str, predictions: np.ndarray, labels: np.ndarray) -> str:
        self.predictions.mkdir(exist_ok=True)
        path = self.predictions / f"{config_id}.npz"
        np.savez_compressed(path, predictions=predictions.astype(np.uint8), labels=labels.astype(np.uint8))
        return str(path.relative_to(self.folder))


def derive(rows: list[dict]) -> list[dict]:
    """Rows with their derived figures filled in: each throughput row's interval, from the
    spread between its passes moderated by the run's pooled spread (bench/passes.py), so it
    is derived from the stored passes whenever the rows are read, never stored apart."""
    from bench.passes import intervals

    rows = [dict(r) for r in rows]
    for i, iv in intervals(rows).items():
        rows[i].update(train_images_per_s_low=iv["low"], train_images_per_s_high=iv["high"])
    return rows


def to_frame(rows: list[dict]) -> pd.DataFrame:
    """The CSV view: the scalar columns in schema order (missing ones empty), derived
    figures included."""
    frame = pd.DataFrame([{c: r.get(c) for c in COLUMNS} for r in derive(rows)], columns=list(COLUMNS))
    return frame


def load_run(folder: Path | str, warn=None) -> tuple[pd.DataFrame, list[dict], dict]:
    """(frame, raw rows, system facts) of a run folder, for report and equivalence."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ResultsError(f"{folder} is not a run folder (no such directory)")
    if not (folder / "results.jsonl").exists():
        raise ResultsError(f"{folder} holds no results.jsonl; is it a run folder from `cifar-bench run`?")
    if not os.access(folder / "results.jsonl", os.R_OK):
        raise ResultsError(f"cannot read {folder / 'results.jsonl'} (permission denied)")
    rows = derive(latest_rows(read_jsonl(folder / "results.jsonl", warn)))
    for r in rows:
        r["run_dir"] = str(folder)
    system = {}
    if (folder / "system.json").exists():
        try:
            system = json.loads((folder / "system.json").read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ResultsError(f"cannot read {folder / 'system.json'}: {e}") from None
    frame = to_frame(rows)
    frame["run_dir"] = str(folder)
    return frame, rows, system


def load_predictions(folder: Path | str, row: dict) -> tuple[np.ndarray, np.ndarray] | None:
    rel = row.get("predictions_file")
    if not rel:
        return None
    path = Path(folder) / rel
    if not path.exists():
        return None
    with np.load(path) as z:
        return z["predictions"], z["labels"]


# How each results column reads in a table: (header, scale, format). Throughputs as whole images with
# thousands separators, milliseconds to three decimals, fractions as percentages; one format per
# column so a column never mixes plain and scientific notation; a missing value is left blank.
COLUMN_FORMATS: dict[str, tuple[str, float, str]] = {
    "device_key": ("device", 1, ""),
    "world_size": ("procs", 1, ""),
    "channels_last": ("cl", 1, ""),
    "train_images_per_s": ("train img/s", 1, ",.0f"),
    "train_images_per_s_low": ("interval low", 1, ",.0f"),
    "train_images_per_s_high": ("interval high", 1, ",.0f"),
    "passes_run": ("passes", 1, ".0f"),
    "step_ms_median": ("step ms", 1, ",.3f"),
    "step_ms_iqr": ("IQR ms", 1, ",.3f"),
    "eval_images_per_s": ("eval img/s", 1, ",.0f"),
    "fraction_of_ceiling": ("of ceiling", 1, ".2f"),
    "test_accuracy": ("test acc %", 100, ".1f"),
    "epoch_seconds": ("epoch s", 1, ",.2f"),
    "achieved_tflops": ("TFLOP/s", 1, ".4g"),
    "mfu": ("MFU %", 100, ".1f"),
    "peak_memory_mb": ("peak MB", 1, ",.0f"),
}


def markdown_table(frame: pd.DataFrame, columns: list[str]) -> str:
    """`frame[columns]` as a markdown table, each column in its own fixed format (COLUMN_FORMATS)."""
    view = frame[columns].copy()
    fmts, headers = [], {}
    for col in columns:
        header, scale, fmt = COLUMN_FORMATS.get(col, (col, 1, ""))
        if scale != 1:
            view[col] = pd.to_numeric(view[col], errors="coerce") * scale
        headers[col] = header
        fmts.append(fmt or "g")
    view = view.astype(object).where(view.notna(), None)
    return to_markdown(view.rename(columns=headers), floatfmt=tuple(fmts))
