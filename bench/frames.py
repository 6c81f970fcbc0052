"""The results of one or more run folders as frames a report and its figures read: one row
per configuration (`load_runs`), the median over seeds of each configuration (`throughput`),
and the comparisons drawn from them (best per batch size, GPU/CPU speedups, AMP gains).
Flagged values (MFU over 100%, a fraction of ceiling over 1.05) never enter `throughput`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from bench.measure import CEILING_FLAG
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


def device_colours(df: pd.DataFrame) -> dict[str, str]:
    colours = {}
    cpus = sorted(df.loc[df["device_kind"] == "cpu", "device_key"].unique())
    gpus = sorted(df.loc[df["device_kind"] != "cpu", "device_key"].unique())
    for keys, palette in ((cpus, CPU_COLOURS), (gpus, GPU_COLOURS)):
        for i, k in enumerate(keys):
            colours[k] = palette[i % len(palette)]
    return colours


def throughput(df: pd.DataFrame) -> pd.DataFrame:
    """Median over seeds of each ok one-process configuration's metrics, device input path
    (data-parallel runs have their own section: bench.scaling)."""
    ok = df[(df["status"] == "ok") & (df["data_path"] == "device") & (df["world_size"] == 1)].copy()
    if ok.empty:
        return ok
    # A flagged value is a measurement problem: listed in the warnings, never drawn or a headline.
    ok["mfu"] = ok["mfu"].where(ok["mfu"] <= 1)
    ok["fraction_of_ceiling"] = ok["fraction_of_ceiling"].where(ok["fraction_of_ceiling"] <= CEILING_FLAG)
    keys = ["device_key", "device_kind", "model", "precision", "batch_size", "channels_last", "compile", "threads"]
    agg = ok.groupby(keys, dropna=False).agg(
        images_per_s=("train_images_per_s", "median"),
        step_ms=("step_ms_median", "median"),
        iqr_ratio=("step_ms_iqr", "median"),
        mfu=("mfu", "median"),
        peak_memory_mb=("peak_memory_mb", "max"),
        eval_images_per_s=("eval_images_per_s", "median"),
        fraction_of_ceiling=("fraction_of_ceiling", "median"),
    ).reset_index()
    agg["iqr_ratio"] = agg["iqr_ratio"] / agg["step_ms"]
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



def speedups(tp: pd.DataFrame, model: str) -> dict | None:
    """GPU vs CPU for one model: best of each, and the break-even batch size."""
    cpu = best_per_batch(tp, "cpu", model)
    gpu = best_per_batch(tp, "cuda", model)
    if cpu.empty or gpu.empty:
        return None
    cpu_best = cpu.loc[cpu["images_per_s"].idxmax()]
    gpu_best = gpu.loc[gpu["images_per_s"].idxmax()]
    cpu_by_bs = cpu.groupby("batch_size")["images_per_s"].max()
    gpu_by_bs = gpu.groupby("batch_size")["images_per_s"].max()
    common = sorted(set(cpu_by_bs.index) & set(gpu_by_bs.index))
    ratio = {bs: gpu_by_bs[bs] / cpu_by_bs[bs] for bs in common}
    wins_from = None
    for i, bs in enumerate(common):  # smallest batch size from which the GPU stays ahead
        if all(ratio[b] > 1 for b in common[i:]):
            wins_from = bs
            break
    return {"cpu_best": cpu_best, "gpu_best": gpu_best, "speedup": gpu_best["images_per_s"] / cpu_best["images_per_s"],
            "ratio_by_bs": ratio, "wins_from": wins_from, "common": common}


def amp_gain(tp: pd.DataFrame, kind: str, model: str) -> str | None:
    sub = tp[(tp["device_kind"] == kind) & (tp["model"] == model) & (~tp["compile"].astype(bool))]
    if sub.empty or "fp32" not in set(sub["precision"]):
        return None
    best = sub.groupby("precision")["images_per_s"].max()
    parts = [f"{p} {best[p] / best['fp32']:.2f}x" for p in ("tf32", "fp16", "bf16") if p in best]
    return ", ".join(parts) if parts else None


def fmt_ips(x: float) -> str:
    return f"{x:,.0f} img/s" if x >= 10 else f"{x:.1f} img/s"


