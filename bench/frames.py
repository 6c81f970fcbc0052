"""The results of one or more run folders as frames a report and its figures read: one row
per configuration (`load_runs`), the throughput grid (`throughput`: the median of each
configuration over the run folders that measured it), and the comparisons drawn from them
(best per batch size, GPU/CPU speedups, AMP gains).

Kinds of rows never share a median: `throughput` takes the grid's rows only (epochs 0);
accuracy runs and time-to-accuracy runs have their own tables. A flagged row (MFU over 100%,
a fraction of ceiling over 1.05: a measurement problem) leaves the grid whole
(`flagged_points` keeps it apart, for figures that draw it hollow). Ratios between two rows
of one run folder are formed within each pass both ran, then their median (`ratio`).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from bench.measure import CEILING_FLAG, mfu_flag
from bench.passes import pass_values
from bench.results import load_run
from cnn.models import FAMILY

CPU_COLOURS = ["#1f77b4", "#17becf", "#9467bd", "#8c564b"]
GPU_COLOURS = ["#d62728", "#ff7f0e", "#2ca02c", "#e377c2"]
MODEL_ORDER = ("tutorial", "tutorial-wide", "resnet18", *FAMILY)


def load_runs(run_dirs: Sequence[Path | str], warn=None) -> tuple[pd.DataFrame, list[dict], list[dict]]:
    """(results frame with raw-row extras, raw rows, system facts per folder)."""
    frames, rows, systems = [], [], []
    for i, folder in enumerate(run_dirs):
        frame, raw, system = load_run(folder, warn)
        frame["run_index"] = i
        frame["accuracy_curve"] = [r.get("accuracy_curve") for r in raw]
        frame["epochs_to_target"] = [r.get("epochs_to_target") for r in raw]
        frame["pass_values"] = [pass_values(r) for r in raw]
        against_highest_peak(frame, system)
        frames.append(frame)
        rows.extend(raw)
        systems.append({**system, "run_dir": str(folder)})
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if not df.empty:
        df["world_size"] = df["world_size"].fillna(1).astype(int)  # older runs: one process
        df["device_kind"] = df["device"].astype(str).str.split(":").str[0]
        names = df["device_name"].fillna("").astype(str)
        df["device_key"] = df["device_kind"] + " · " + names.where(names != "", "unknown")
        if df["host"].nunique() > 1:
            df["device_key"] = df["device_key"] + " (" + df["host"].astype(str) + ")"
    return df, rows, systems


def against_highest_peak(frame: pd.DataFrame, system: dict) -> None:
    """MFU against the highest of the run's peak probes (before and after the sweep), in
    place: a peak is a maximum, and one probe taken while the machine was slow (seen here:
    0.096 TFLOP/s fp32 before a sweep, 0.170 after it) would put many rows above 100% and out
    of every figure. The stored rows keep the MFU they were measured with; MFU flags follow."""
    highest = {(p.get("device"), p.get("precision")): max(v for v in (p.get("tflops"), p.get("tflops_after")) if v)
               / p["tflops"] for p in system.get("peaks") or [] if p.get("tflops")}
    if frame.empty or not highest:
        return
    factor = pd.Series([highest.get((d, p), 1.0) for d, p in zip(frame["device"], frame["precision"])],
                       index=frame.index)
    frame["peak_tflops"] = frame["peak_tflops"] * factor
    frame["mfu"] = frame["mfu"] / factor
    texts = []
    for mfu, text, device in zip(frame["mfu"], frame["flags"], frame["device"]):
        parts = [f for f in (text if isinstance(text, str) else "").split("; ") if f and not f.startswith("MFU ")]
        if mfu == mfu and mfu is not None and mfu > 1:
            parts.insert(0, mfu_flag(mfu, device))
        texts.append("; ".join(parts) or None)
    frame["flags"] = texts


def device_colours(df: pd.DataFrame) -> dict[str, str]:
    colours = {}
    cpus = sorted(df.loc[df["device_kind"] == "cpu", "device_key"].unique())
    gpus = sorted(df.loc[df["device_kind"] != "cpu", "device_key"].unique())
    for keys, palette in ((cpus, CPU_COLOURS), (gpus, GPU_COLOURS)):
        for i, k in enumerate(keys):
            colours[k] = palette[i % len(palette)]
    return colours


def grid_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The ok throughput grid of one process, device input path: no accuracy or
    time-to-accuracy runs (data-parallel runs have their own section: bench.scaling)."""
    epochs = df["epochs"].fillna(0) if "epochs" in df else 0
    return df[(df["status"] == "ok") & (df["data_path"] == "device") & (df["world_size"] == 1) & (epochs == 0)
              & df["train_images_per_s"].notna()]


def flagged(df: pd.DataFrame) -> pd.Series:
    """Rows with a measurement problem (from their figures, so rows written before flags
    existed count too): MFU over 100% of the measured peak, a loop faster than its ceiling."""
    return (df["mfu"].fillna(0) > 1) | (df["fraction_of_ceiling"].fillna(0) > CEILING_FLAG)


def flagged_points(df: pd.DataFrame) -> pd.DataFrame:
    """The grid's flagged rows, for figures that draw them hollow and tables that say why."""
    g = grid_rows(df)
    return g[flagged(g)]


def throughput(df: pd.DataFrame) -> pd.DataFrame:
    """The throughput grid: each configuration's median over the run folders that measured
    it (one row each, usually), flagged rows left out whole."""
    ok = grid_rows(df)
    ok = ok[~flagged(ok)].copy()
    if ok.empty:
        return ok
    keys = ["device_key", "device_kind", "model", "precision", "batch_size", "channels_last", "compile", "threads"]
    groups = ok.groupby(keys, dropna=False)
    agg = groups.agg(
        images_per_s=("train_images_per_s", "median"),
        images_per_s_low=("train_images_per_s_low", "median"),
        images_per_s_high=("train_images_per_s_high", "median"),
        step_ms=("step_ms_median", "median"),
        iqr_ratio=("step_ms_iqr", "median"),
        mfu=("mfu", "median"),
        peak_memory_mb=("peak_memory_mb", "max"),
        eval_images_per_s=("eval_images_per_s", "median"),
        fraction_of_ceiling=("fraction_of_ceiling", "median"),
        runs=("train_images_per_s", "size"),
    ).reset_index()
    agg["iqr_ratio"] = agg["iqr_ratio"] / agg["step_ms"]
    # A configuration measured by one run folder keeps its passes, for ratios within passes.
    first = groups.agg(pass_values=("pass_values", "first"), run_dir=("run_dir", "first")).reset_index(drop=True)
    agg["pass_values"] = [pv if n == 1 else None for pv, n in zip(first["pass_values"], agg["runs"])]
    agg["run_dir"] = first["run_dir"]
    # A line per device, precision and variant; thread counts only named where a device
    # was measured with several (e.g. a 1-thread baseline beside the default).
    several = agg.groupby("device_key")["threads"].transform("nunique") > 1
    agg["variant"] = [_variant(cl, comp, int(t) if multi and t == t else None)
                      for cl, comp, t, multi in zip(agg["channels_last"], agg["compile"], agg["threads"], several)]
    # Where the layout was chosen per batch size (the default policy) and never measured
    # both ways at one batch size, draw one line and say where channels_last starts.
    line = ["device_key", "model", "precision", "compile", "threads"]
    for _, g in agg.groupby(line, dropna=False):
        if g["channels_last"].nunique() == 2 and not g.groupby("batch_size")["channels_last"].nunique().gt(1).any():
            first_cl = int(g.loc[g["channels_last"].astype(bool), "batch_size"].min())
            label = _variant(False, g["compile"].iloc[0], None)
            label = f" (cl from bs {first_cl}" + (", " + label.strip(" ()") if label else "") + ")"
            agg.loc[g.index, "variant"] = label
    return agg


def _variant(channels_last, compile, threads: int | None) -> str:
    extra = []
    if bool(channels_last):
        extra.append("cl")
    if bool(compile):
        extra.append("compiled")
    if threads is not None:
        extra.append(f"{threads} thread{'s' if threads != 1 else ''}")
    return f" ({', '.join(extra)})" if extra else ""


def best_per_batch(tp: pd.DataFrame, kind: str, model: str) -> pd.DataFrame:
    """For one device kind and model: the fastest precision/variant at each batch size."""
    sub = tp[(tp["device_kind"] == kind) & (tp["model"] == model)]
    if sub.empty:
        return sub
    return sub.loc[sub.groupby(["device_key", "batch_size"])["images_per_s"].idxmax()]


def models_in(df: pd.DataFrame) -> list[str]:
    present = list(dict.fromkeys(df["model"].dropna()))
    return sorted(present, key=lambda m: (MODEL_ORDER.index(m) if m in MODEL_ORDER else 99, m))



def ratio(a: pd.Series, b: pd.Series) -> float:
    """a's throughput over b's: within each pass both ran (one run folder), then the median;
    otherwise the ratio of their medians."""
    paired = _paired(a, b)
    return paired[0] if paired else a["images_per_s"] / b["images_per_s"]


def ratio_spread(a: pd.Series, b: pd.Series) -> tuple[float, float, int] | None:
    """(lowest, highest, passes) of the per-pass ratios a/b, when they share two passes or more."""
    paired = _paired(a, b)
    return paired[1] if paired and paired[1][2] >= 2 else None


def _paired(a: pd.Series, b: pd.Series):
    va, vb = a.get("pass_values"), b.get("pass_values")
    if not va or not vb or a.get("run_dir") != b.get("run_dir"):
        return None
    common = sorted(set(va) & set(vb))
    if not common:
        return None
    ratios = [va[p] / vb[p] for p in common]
    return statistics.median(ratios), (min(ratios), max(ratios), len(ratios))


def speedups(tp: pd.DataFrame, model: str) -> dict | None:
    """GPU vs CPU for one model: best of each, and the break-even batch size. Ratios are
    formed within passes where both sides ran in one run folder (`ratio`)."""
    cpu = best_per_batch(tp, "cpu", model)
    gpu = best_per_batch(tp, "cuda", model)
    if cpu.empty or gpu.empty:
        return None
    cpu_best = cpu.loc[cpu["images_per_s"].idxmax()]
    gpu_best = gpu.loc[gpu["images_per_s"].idxmax()]
    cpu_by_bs = {bs: g.loc[g["images_per_s"].idxmax()] for bs, g in cpu.groupby("batch_size")}
    gpu_by_bs = {bs: g.loc[g["images_per_s"].idxmax()] for bs, g in gpu.groupby("batch_size")}
    common = sorted(set(cpu_by_bs) & set(gpu_by_bs))
    ratios = {bs: ratio(gpu_by_bs[bs], cpu_by_bs[bs]) for bs in common}
    wins_from = None
    for i, bs in enumerate(common):  # smallest batch size from which the GPU stays ahead
        if all(ratios[b] > 1 for b in common[i:]):
            wins_from = bs
            break
    return {"cpu_best": cpu_best, "gpu_best": gpu_best, "speedup": ratio(gpu_best, cpu_best),
            "speedup_spread": ratio_spread(gpu_best, cpu_best), "ratio_by_bs": ratios, "wins_from": wins_from,
            "common": common}


def amp_gain(tp: pd.DataFrame, kind: str, model: str) -> str | None:
    """Reduced precision over fp32 at each one's best batch size, e.g. "bf16 1.71x (1.65-1.80
    over 3 passes)": the ratio within passes, with their range."""
    sub = tp[(tp["device_kind"] == kind) & (tp["model"] == model) & (~tp["compile"].astype(bool))]
    if sub.empty or "fp32" not in set(sub["precision"]):
        return None
    best = {p: g.loc[g["images_per_s"].idxmax()] for p, g in sub.groupby("precision")}
    parts = []
    for p in ("tf32", "fp16", "bf16"):
        if p in best:
            spread = ratio_spread(best[p], best["fp32"])
            parts.append(f"{p} {ratio(best[p], best['fp32']):.2f}x"
                         + (f" (per-pass range {spread[0]:.2f}-{spread[1]:.2f} over {spread[2]} passes)"
                            if spread else ""))
    return ", ".join(parts) if parts else None


def fmt_ips(x: float) -> str:
    return f"{x:,.0f} img/s" if x >= 10 else f"{x:.1f} img/s"


