"""report.md and its figures, built from stored results only (nothing is re-run).

Several run folders can be merged (a CPU run from a laptop with a GPU run from a server).
Figures are PNGs beside report.md, linked relatively. Colour identifies a device (one per
device and machine), line style a precision.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from bench import breakeven, cost  # noqa: E402
from bench.equivalence import equivalence_table, explanation, verdict_table  # noqa: E402
from bench.markdown import to_markdown  # noqa: E402
from bench.measure import CEILING_FLAG  # noqa: E402
from bench.results import load_run, markdown_table  # noqa: E402
from bench.runner import DRIFT_WARN  # noqa: E402
from bench.time_to_accuracy import headline as tta_headline  # noqa: E402
from bench.time_to_accuracy import headline_cell, target_lines, tta_markdown, tta_table  # noqa: E402
from bench.timing import NOISY_IQR_RATIO  # noqa: E402
from cnn.models import FAMILY  # noqa: E402

PRECISION_STYLE = {"fp32": "-", "tf32": "-.", "fp16": "--", "bf16": ":"}
PRECISION_MARKER = {"fp32": "o", "tf32": "D", "fp16": "s", "bf16": "^"}
CPU_COLOURS = ["#1f77b4", "#17becf", "#9467bd", "#8c564b"]
GPU_COLOURS = ["#d62728", "#ff7f0e", "#2ca02c", "#e377c2"]
EPOCH_IMAGES = 50_000  # a CIFAR-10 training epoch
MODEL_ORDER = ("tutorial", "tutorial-wide", "resnet18", *FAMILY)


# --------------------------------------------------------------------------------------
# Loading and shaping
# --------------------------------------------------------------------------------------

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


def best_per_batch(tp: pd.DataFrame, kind: str, model: str) -> pd.DataFrame:
    """For one device kind and model: the fastest precision/variant at each batch size."""
    sub = tp[(tp["device_kind"] == kind) & (tp["model"] == model)]
    if sub.empty:
        return sub
    return sub.loc[sub.groupby(["device_key", "batch_size"])["images_per_s"].idxmax()]


def models_in(df: pd.DataFrame) -> list[str]:
    present = list(dict.fromkeys(df["model"].dropna()))
    return sorted(present, key=lambda m: (MODEL_ORDER.index(m) if m in MODEL_ORDER else 99, m))


# --------------------------------------------------------------------------------------
# Conclusions in plain words
# --------------------------------------------------------------------------------------

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


def summary_lines(df: pd.DataFrame, tp: pd.DataFrame, eq: pd.DataFrame) -> list[str]:
    lines = []
    tta = tta_table(df)
    for model in models_in(df):
        s = speedups(tp, model)
        head = f"**{model}**: "
        for line in tta_headline(tta, model, s["speedup"] if s is not None else None):
            head += line[0].upper() + line[1:] + ". "
        if s is not None:
            cb, gb = s["cpu_best"], s["gpu_best"]
            text = (f"GPU/CPU speedup **{s['speedup']:.1f}x** at each device's best setting "
                    f"({gb['device_key']}: {fmt_ips(gb['images_per_s'])} at batch {gb['batch_size']} "
                    f"{gb['precision']}; {cb['device_key']}: {fmt_ips(cb['images_per_s'])} at batch "
                    f"{cb['batch_size']} {cb['precision']}). ")
            if s["wins_from"] is None:
                text += "The GPU never beats the CPU at the batch sizes measured on both. "
            elif s["wins_from"] == s["common"][0]:
                text += f"The GPU is faster at every batch size measured on both (from {s['wins_from']}). "
            else:
                text += f"The GPU wins from batch size **{s['wins_from']}** on. "
            small = s["common"][0]
            text += f"At batch {small}: {s['ratio_by_bs'][small]:.2f}x."
        else:
            sub = tp[tp["model"] == model]
            if sub.empty:
                lines.append(head + "no successful measurements.")
                continue
            best = sub.loc[sub["images_per_s"].idxmax()]
            text = (f"best {fmt_ips(best['images_per_s'])} on {best['device_key']} at batch "
                    f"{best['batch_size']} {best['precision']} (no GPU/CPU pair in these runs: add a CUDA run "
                    "folder to the report for the speedup).")
        for kind, name in (("cpu", "CPU"), ("cuda", "GPU")):
            gain = amp_gain(tp, kind, model)
            if gain:
                text += f" Reduced precision vs fp32 on the {name} (best batch each): {gain}."
        if not eq.empty:
            sub = eq[eq["model"] == model]
            if not sub.empty:
                verdicts = "; ".join(f"{r.candidate} vs {r.reference} (bs {r.batch_size}): {r.verdict} "
                                     f"({r.diff_pp:+.2f} pp)" for r in sub.itertuples())
                text += f" Accuracy: {verdicts}."
        lines.append(head + text)
    return lines


def headline(df: pd.DataFrame, tp: pd.DataFrame, eq: pd.DataFrame) -> pd.DataFrame:
    """One row per model: the figures a reader wants first."""
    rows = []
    tta_all = tta_table(df)
    for model in models_in(df):
        row: dict = {"model": model}
        for kind, name in (("cuda", "GPU"), ("cpu", "CPU")):
            sub = tp[(tp["device_kind"] == kind) & (tp["model"] == model)]
            if sub.empty:
                continue
            best = sub.loc[sub["images_per_s"].idxmax()]
            row[f"best {name} img/s"] = f"{best['images_per_s']:,.0f} (bs {best['batch_size']} {best['precision']})"
            row[f"max {name} MFU (of measured matmul peak)"] = f"{sub['mfu'].max():.1%}" \
                if sub["mfu"].notna().any() else ""
            row[f"{name} AMP gain"] = amp_gain(tp, kind, model) or ""
        s = speedups(tp, model)
        tta = headline_cell(tta_all, model)
        if tta:
            row["time to accuracy"] = tta
        if s is not None:
            row["GPU/CPU speedup"] = f"{s['speedup']:.1f}x"
            row["GPU wins from bs"] = "never" if s["wins_from"] is None else str(s["wins_from"])
        if not eq.empty:
            v = eq[eq["model"] == model]["verdict"].value_counts()
            row["accuracy"] = ", ".join(f"{n} {k}" for k, n in v.items())
        rows.append(row)
    return pd.DataFrame(rows).fillna("")


# --------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------

def _panels(n: int, width: float = 5.0, height: float = 4.0):
    # at least 9 inches wide, so a figure title fits over a single panel
    fig, axes = plt.subplots(1, max(n, 1), figsize=(max(width * max(n, 1), 9.0), height), squeeze=False)
    return fig, axes[0]


def _variant(channels_last, compile, threads: int | None) -> str:
    extra = []
    if bool(channels_last):
        extra.append("cl")
    if bool(compile):
        extra.append("compiled")
    if threads is not None:
        extra.append(f"{threads} thread{'s' if threads != 1 else ''}")
    return f" ({', '.join(extra)})" if extra else ""


def _plain(x: float, _pos=None) -> str:
    if x >= 1000:
        return f"{x:,.0f}"
    return f"{x:g}"


def _batch_axis(ax, batch_sizes) -> None:
    """Log2 x axis labelled with the batch sizes themselves, plain numbers on a log y."""
    sizes = sorted({int(b) for b in batch_sizes})
    ax.set_xscale("log", base=2)
    if sizes:
        ax.set_xticks(sizes)
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(_plain))
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.tick_params(axis="x", labelsize=7)
    if ax.get_yscale() == "log":
        ax.yaxis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(_plain))
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())


def _save(fig, out: Path, name: str) -> str:
    fig.tight_layout()
    fig.savefig(out / name, dpi=110)
    plt.close(fig)
    return name


def _lines_vs_batch(tp: pd.DataFrame, colours: dict, value: str, ylabel: str, title: str, out: Path,
                    name: str, logy: bool = True, models: list[str] | None = None) -> str | None:
    models = models or models_in(tp)
    if tp.empty or tp[value].dropna().empty:
        return None
    fig, axes = _panels(len(models))
    for ax, model in zip(axes, models):
        sub = tp[tp["model"] == model]
        for (dkey, prec, variant), g in sub.groupby(["device_key", "precision", "variant"]):
            g = g.sort_values("batch_size").dropna(subset=[value])
            if g.empty:
                continue
            ax.plot(g["batch_size"], g[value], PRECISION_STYLE.get(prec, "-"), marker=PRECISION_MARKER.get(prec, "o"),
                    color=colours.get(dkey, "k"), label=f"{dkey} {prec}{variant}", markersize=4)
        if logy:
            ax.set_yscale("log")
        _batch_axis(ax, sub["batch_size"])
        ax.set_xlabel("batch size (images per step)")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{model}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    return _save(fig, out, name)


def fig_speedup(tp: pd.DataFrame, colours: dict, out: Path) -> str | None:
    models = [m for m in models_in(tp) if speedups(tp, m) is not None]
    if not models:
        return None
    fig, axes = _panels(len(models))
    for ax, model in zip(axes, models):
        cpu = best_per_batch(tp, "cpu", model).groupby("batch_size")["images_per_s"].max()
        gpu = tp[(tp["device_kind"] == "cuda") & (tp["model"] == model)]
        for (dkey, prec, variant), g in gpu.groupby(["device_key", "precision", "variant"]):
            g = g[g["batch_size"].isin(cpu.index)].sort_values("batch_size")
            if g.empty:
                continue
            ratio = g["images_per_s"].to_numpy() / cpu.loc[g["batch_size"]].to_numpy()
            ax.plot(g["batch_size"], ratio, PRECISION_STYLE.get(prec, "-"), marker=PRECISION_MARKER.get(prec, "o"),
                    color=colours.get(dkey, "k"), label=f"{dkey} {prec}{variant}", markersize=4)
        ax.axhline(1.0, color="black", linewidth=1.2, label="break-even (1x)")
        ax.set_yscale("log")
        _batch_axis(ax, gpu["batch_size"])
        ax.set_xlabel("batch size (images per step)")
        ax.set_ylabel("speedup over the CPU's best precision (x)")
        ax.set_title(model)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("GPU/CPU training speedup at equal batch size (above the line the GPU wins)")
    return _save(fig, out, "speedup.png")


def fig_epoch_time(df: pd.DataFrame, tp: pd.DataFrame, colours: dict, out: Path) -> str | None:
    if tp.empty:
        return None
    tp = tp.assign(projected=EPOCH_IMAGES / tp["images_per_s"])
    measured = df[(df["status"] == "ok") & (df["epochs"].fillna(0) > 0) & df["epoch_seconds"].notna()
                  & (df["data_path"] == "device") & (df["world_size"] == 1)]
    models = models_in(tp)
    fig, axes = _panels(len(models))
    for ax, model in zip(axes, models):
        sub = tp[tp["model"] == model]
        for (dkey, prec, variant), g in sub.groupby(["device_key", "precision", "variant"]):
            g = g.sort_values("batch_size")
            ax.plot(g["batch_size"], g["projected"], PRECISION_STYLE.get(prec, "-"), color=colours.get(dkey, "k"),
                    marker=PRECISION_MARKER.get(prec, "o"), markersize=4,
                    label=f"{dkey} {prec}{variant}: steady state x 50k")
        m = measured[measured["model"] == model]
        for (dkey, prec, bs), g in m.groupby(["device_key", "precision", "batch_size"]):
            scale = EPOCH_IMAGES / g["train_size"].iloc[0]
            ax.scatter([bs], [g["epoch_seconds"].median() * scale], marker="x", s=60, color=colours.get(dkey, "k"),
                       label=f"{dkey} {prec} bs {bs}: measured end to end" + (" (scaled to 50k)" if scale != 1 else ""),
                       zorder=5)
        ax.set_yscale("log")
        _batch_axis(ax, sub["batch_size"])
        ax.set_xlabel("batch size (images per step)")
        ax.set_ylabel("seconds per 50,000-image epoch")
        ax.set_title(model)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6)
    fig.suptitle("Epoch time: lines from steady-state step time, crosses measured end to end (data included)")
    return _save(fig, out, "epoch_time.png")


def fig_accuracy(df: pd.DataFrame, colours: dict, out: Path) -> str | None:
    acc = df[(df["status"] == "ok") & (df["epochs"].fillna(0) > 0) & df["accuracy_curve"].notna()]
    if acc.empty:
        return None
    groups = list(acc.groupby(["model", "batch_size"]))
    fig, axes = _panels(len(groups))
    for ax, ((model, bs), g) in zip(axes, groups):
        for (dkey, prec, world), s in g.groupby(["device_key", "precision", "world_size"]):
            curves = [c for c in s["accuracy_curve"] if c]
            n = min(len(c) for c in curves)
            arr = 100 * np.array([c[:n] for c in curves])
            epochs = np.arange(1, n + 1)
            colour = colours.get(dkey, "k")
            for c in arr:
                ax.plot(epochs, c, PRECISION_STYLE.get(prec, "-"), color=colour, alpha=0.3, linewidth=0.8)
            ax.plot(epochs, arr.mean(axis=0), PRECISION_STYLE.get(prec, "-"), color=colour, linewidth=2,
                    marker=PRECISION_MARKER.get(prec, "o"),
                    label=f"{dkey} {prec}{f' x{world} processes' if world > 1 else ''} (mean of {len(arr)} seeds)")
        ax.set_xlabel("epoch")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{model}, batch {bs}, data: {', '.join(sorted(set(g['data'].dropna())))}")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Test accuracy per epoch, devices and precisions overlaid (thin: single seeds)")
    return _save(fig, out, "accuracy.png")


def fig_data_paths(df: pd.DataFrame, colours: dict, out: Path) -> str | None:
    ok = df[df["status"] == "ok"]
    if ok["data_path"].nunique() < 2:
        return None
    g = ok.groupby(["device_key", "model", "precision", "batch_size", "data_path"])["train_images_per_s"].median()
    g = g.unstack("data_path").dropna()
    if g.empty:
        return None
    models = list(dict.fromkeys(g.index.get_level_values("model")))
    fig, axes = _panels(len(models))
    for ax, model in zip(axes, models):
        sub = g.xs(model, level="model")
        for (dkey, prec), s in sub.groupby(level=["device_key", "precision"]):
            bs = s.index.get_level_values("batch_size")
            colour = colours.get(dkey, "k")
            ax.plot(bs, s["device"], "-", marker="o", color=colour, label=f"{dkey} {prec}: device-resident")
            ax.plot(bs, s["dataloader"], "--", marker="s", color=colour, label=f"{dkey} {prec}: DataLoader")
        ax.set_yscale("log")
        _batch_axis(ax, sub.index.get_level_values("batch_size"))
        ax.set_xlabel("batch size (images per step)")
        ax.set_ylabel("training throughput (images/s)")
        ax.set_title(model)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Input pipeline: device-resident data vs the classic DataLoader")
    return _save(fig, out, "data_paths.png")


# --------------------------------------------------------------------------------------
# Tables and text
# --------------------------------------------------------------------------------------

def results_markdown(df: pd.DataFrame) -> str:
    cols = ["device_key", "model", "batch_size", "precision", "channels_last", "data_path", "seed", "epochs",
            "world_size", "status", "train_images_per_s", "step_ms_median", "step_ms_iqr", "eval_images_per_s",
            "fraction_of_ceiling", "test_accuracy", "epoch_seconds", "achieved_tflops", "mfu", "peak_memory_mb"]
    return markdown_table(df, cols)


SYSTEM_FIELDS = ("host", "cpu_model", "cpu_physical_cores", "cpu_logical_cores", "ram_gb", "os", "python", "torch",
                 "torchvision", "torch_cuda_build", "cpu_capability", "torch_threads_default", "gpu_name",
                 "gpu_memory_gb", "gpu_capability", "driver", "cudnn", "git_commit", "run_dir")


def system_markdown(systems: list[dict]) -> str:
    table = {f"run {i + 1}": {k: s.get(k) for k in SYSTEM_FIELDS} for i, s in enumerate(systems)}
    frame = pd.DataFrame(table)
    frame.index.name = "fact"
    peaks = []
    for i, s in enumerate(systems):
        for p in s.get("peaks", []):
            peaks.append({"run": i + 1, "device": p["device"], "precision": p["precision"], "dtype": p["dtype"],
                          "matmul n": p["n"], "repeats": p["repeats"], "peak TFLOP/s (before)": p["tflops"],
                          "median TFLOP/s": p.get("tflops_median"), "peak TFLOP/s (after)": p.get("tflops_after")})
    text = to_markdown(frame, index=True)
    if peaks:
        text += ("\n\nMeasured peaks (a square matmul in the run's compute dtype, sized to the machine; the peak is "
                 "the fastest of the repeats, probed before the first configuration and again after the last; MFU "
                 "divides by the first, not by datasheet numbers):\n\n"
                 + to_markdown(pd.DataFrame(peaks), floatfmt=".4g"))
    drift = [{"run": i + 1, **d} for i, s in enumerate(systems) for d in s.get("drift", [])]
    if drift:
        text += ("\n\nDrift reference (the same short measurement at the sweep's start and end):\n\n"
                 + to_markdown(pd.DataFrame(drift), floatfmt=".4g"))
    return text


def scaling_lines(df: pd.DataFrame) -> list[str]:
    """What the scaling table's numbers mean, with the launch facts of the runs shown."""
    dist = df[(df["status"] == "ok") & (df["world_size"] > 1)]
    backends = ", ".join(sorted(set(dist["backend"].dropna()))) or "none"
    return [
        f"- DistributedDataParallel over torch.distributed ({backends}), launched by torchrun; "
        f"{', '.join(str(n) for n in sorted(set(dist['world_size'])))} processes on "
        f"{', '.join(str(int(n)) for n in sorted(set(dist['nodes'].dropna())))} node(s). The batch size is the "
        "global batch: each process steps on batch / processes images, its slice of the same seeded global "
        "batch a one-process run uses.",
        "- Global img/s = global batch / the slowest rank's median step time. Every rank runs the same number "
        "of timed steps, fixed before the loop; per-rank medians are in results.jsonl (`rank_step_ms_median`).",
        "- Efficiency = img/s(N) / (N x img/s(1 process)), the 1-process run with the same threads per process "
        "(CPU) or one GPU (CUDA). 'vs 1 proc, same cores' = img/s(N processes) / img/s(one process using all "
        "N x threads cores) on one machine: the number that matters for a fixed machine.",
        "- Comm share (estimate) = 1 - step time without gradient all-reduce (DDP `no_sync`) / step time: the "
        "share of a step spent in communication not hidden behind the backward pass, on the slowest rank.",
        "- Evaluation (inference img/s, test accuracy) runs on rank 0 alone with the unwrapped model.",
    ]


def methodology(df: pd.DataFrame, rows: list[dict], systems: list[dict]) -> list[str]:
    ok = df[df["status"] == "ok"]
    lines = []
    if not ok.empty:
        lines.append(f"- Timing (bench/protocol.py): {', '.join(sorted(set(ok['timing_method'].dropna())))} "
                     "(CPU: `perf_counter` after each step; CUDA: events recorded after each step, read after one "
                     "synchronize per block). Warm-up runs until two consecutive steps agree within 10% (at least 2 "
                     "steps, 3 when compiled), is never charged to the time budget, and what it cost beyond steady "
                     f"steps (compilation, autotuning, first allocations) is `startup_seconds`: "
                     f"{_span(ok['warmup_steps'])} warm-up steps per configuration. Then the training loop and its "
                     "compute-only ceiling (the same step on one batch already on the device) run in interleaved "
                     "rounds, so a change of the machine's load hits both, until each median is known within the "
                     "target (95% confidence interval, distribution-free) or the budget ends: "
                     f"{_span(ok['timed_steps'])} timed steps per configuration.")
        lines.append("- Throughput (the headline) = images / total timed time, every timed step counted (stalls "
                     "at epoch boundaries or from DataLoader workers included); the median step and its "
                     f"interquartile range are the stability figures; IQR/median > {NOISY_IQR_RATIO:.0%} is flagged "
                     "noisy. *of ceiling* = throughput / ceiling throughput: what the input path and loop cost; "
                     f"above {CEILING_FLAG} it is a measurement problem (flagged, not drawn).")
        lines.append("- Epoch time is measured end to end (data included) by synchronising before and after; "
                     "accuracy comes from full test-set evaluation after each epoch.")
        threads = sorted(set(int(t) for t in ok["threads"].dropna()))
        lines.append(f"- CPU threads (torch): {', '.join(map(str, threads))}.")
        data = sorted(set(ok["data"].dropna()))
        lines.append(f"- Data that ran: **{', '.join(data)}**"
                     + (" (synthetic CIFAR-10-shaped data: accuracy numbers are not CIFAR-10 accuracies)"
                        if "synthetic" in data else "") + ".")
        lines.append(f"- Input paths: {', '.join(sorted(set(ok['data_path'].dropna())))}; channels_last used in "
                     f"{int(ok['channels_last'].astype(bool).sum())} of {len(ok)} ok rows; "
                     f"torch.compile in {int(ok['compile'].astype(bool).sum())}.")
        lines.append("- FLOPs per image: `torch.utils.flop_counter.FlopCounterMode` over one forward and backward "
                     "(matmuls and convolutions). MFU = achieved FLOP/s / the measured matmul peak below (\"of "
                     "measured matmul peak\"); above 100% it is a measurement problem (flagged, not drawn).")
        lines.append("- Memory, per configuration: the dataset is placed on the device first and reported apart "
                     "(`dataset_mb`); then the high-water mark is reset (CPU: `/proc/self/clear_refs`, VmHWM; CUDA: "
                     "`reset_peak_memory_stats`), and *peak MB* is the configuration's own peak over what it started "
                     "from (weights, optimizer state, activations, workspace); the absolute peak is "
                     "`peak_memory_total_mb` in results.csv. Freed heap is returned to the system between "
                     "configurations (malloc_trim), so the sweep's order does not change a row's figure.")
        if (ok["memory_kind"] == "cpu_peak_rss").any():
            lines.append("- Rows with memory_kind cpu_peak_rss come from an older harness: the process's sampled peak "
                         "resident set, dataset and earlier configurations included.")
        lines.append("- CPU use (cpu_percent) counts the process and its children (DataLoader workers).")
    for i, s in enumerate(systems):
        if s.get("cuda_available"):
            lines.append(f"- Run {i + 1} CUDA flags: TF32 off except in tf32 rows; cudnn.benchmark per row "
                         f"(default on); cuDNN {s.get('cudnn')}, driver {s.get('driver')}.")
    return lines


def _span(values: pd.Series) -> str:
    lo, hi = int(values.min()), int(values.max())
    return str(lo) if lo == hi else f"{lo}-{hi}"


def warnings_lines(df: pd.DataFrame, systems: Sequence[dict] = ()) -> list[str]:
    lines = []
    ok = df[df["status"] == "ok"]
    noisy = ok[ok["noisy"].astype(bool)].copy()
    noisy["spread"] = noisy["step_ms_iqr"] / noisy["step_ms_median"]
    keys = ["device_key", "model", "batch_size", "precision", "data_path"]
    runs = ok.groupby(keys, sort=False).size()
    for key, g in noisy.groupby(keys, sort=False):
        device_key, model, bs, precision, data_path = key
        path = "" if data_path == "device" else f" ({data_path})"
        spread = f"{g['spread'].iloc[0]:.0%}" if len(g) == 1 else \
            f"{g['spread'].min():.0%}-{g['spread'].max():.0%} in {len(g)} of {runs[key]} runs"
        lines.append(f"- noisy: {device_key} {model} bs {bs} {precision}{path}: IQR/median {spread}")
    flagged = ok[ok["flags"].fillna("").astype(str) != ""] if "flags" in ok else ok.iloc[:0]
    for r in flagged.itertuples():
        lines.append(f"- measurement problem (flagged, left out of figures and headlines): {r.device_key} {r.model} "
                     f"bs {r.batch_size} {r.precision}: {r.flags}")
    older = ok[(ok["mfu"].fillna(0) > 1) & ~ok.index.isin(flagged.index)]  # rows from before flags existed
    if not older.empty:
        lines.append(f"- MFU above 100% in {len(older)} rows (up to {older['mfu'].max():.0%}): the matmul peak was "
                     "probed low; left out of figures and headlines.")
    for i, s in enumerate(systems):
        for d in s.get("drift", []):
            if d.get("change") is not None and abs(d["change"]) > DRIFT_WARN:
                lines.append(f"- the machine moved during run {i + 1}: the {d['device']} drift reference ran at "
                             f"{d['before_images_per_s']:,.0f} img/s before the sweep and "
                             f"{d['after_images_per_s']:,.0f} after ({d['change']:+.0%}); compare its rows with care")
        for pk in s.get("peaks", []):
            if pk.get("change") is not None and abs(pk["change"]) > DRIFT_WARN:
                lines.append(f"- the {pk['device']} {pk['precision']} matmul peak moved {pk['change']:+.0%} between "
                             "the probes before and after the sweep: MFU figures carry that uncertainty")
    for status in ("oom", "skipped", "diverged", "failed"):
        for r in df[df["status"] == status].itertuples():
            lines.append(f"- {status}: {r.device_key} {r.model} bs {r.batch_size} {r.precision}: {r.reason}")
    return lines


def summary_text(run_dirs: Sequence[Path | str], margin_pp: float = 1.0, warn=None, alpha: float = 0.05,
                 prices: dict[str, float] | None = None) -> str:
    """The headline table and the verdicts, for a terminal (the same check as `equivalence`)."""
    df, _, _ = load_runs(run_dirs, warn)
    if df.empty:
        return "(no results)"
    tp = throughput(df)
    eq = equivalence_table(run_dirs, margin_pp, alpha, warn=warn)
    text = to_markdown(headline(df, tp, eq))
    tta = tta_table(df)
    for model in models_in(df):
        s = speedups(tp, model)
        text += "".join(f"\n- {model}: {line}" for line in tta_headline(tta, model, s["speedup"] if s else None))
    counts = df["status"].value_counts()
    text += "\n\nconfigurations: " + ", ".join(f"{n} {k}" for k, n in counts.items())
    if not eq.empty:
        text += "\n" + "\n".join(f"- {r.model} bs {r.batch_size}: {r.candidate} vs {r.reference}: {r.verdict} "
                                 f"({r.diff_pp:+.2f} pp, {r.seeds} seeds)" for r in eq.itertuples())
    for line in breakeven.summary_lines(df, tp) + (cost.cost_lines(df, tp, prices) if prices else []):
        text += "\n" + line.replace("**", "")
    return text


def write_report(run_dirs: Sequence[Path | str], out: Path | str | None = None, margin_pp: float = 1.0,
                 warn=None, alpha: float = 0.05, prices: dict[str, float] | None = None) -> Path:
    """Build report.md and figures in `out` (default: the first run folder)."""
    run_dirs = [Path(d) for d in run_dirs]
    out = Path(out) if out is not None else run_dirs[0]
    df, rows, systems = load_runs(run_dirs, warn)  # validates every folder before writing anything
    out.mkdir(parents=True, exist_ok=True)
    if df.empty:
        text = "# cifar-bench report\n\nNo results recorded in " + ", ".join(map(str, run_dirs)) + ".\n"
        (out / "report.md").write_text(text)
        return out / "report.md"
    tp = throughput(df)
    colours = device_colours(df)
    eq = equivalence_table(run_dirs, margin_pp, alpha, warn=warn)
    figures = {
        "Training throughput": _lines_vs_batch(tp, colours, "images_per_s", "training throughput (images/s)",
                                               "Training throughput vs batch size", out, "throughput.png"),
        "GPU/CPU speedup": fig_speedup(tp, colours, out),
        "Epoch time": fig_epoch_time(df, tp, colours, out),
        "Test accuracy per epoch": fig_accuracy(df, colours, out),
        "Peak memory": _lines_vs_batch(tp, colours, "peak_memory_mb", "peak memory (MB)",
                                       "Peak memory vs batch size (each configuration's own peak over what it "
                                       "started from; the resident dataset apart)",
                                       out, "memory.png"),
        "Model FLOP utilisation": _lines_vs_batch(tp, colours, "mfu", "MFU (of measured matmul peak)",
                                                  "MFU vs batch size", out, "mfu.png"),
        "Input pipeline": fig_data_paths(df, colours, out),
        "Fraction of the compute-only ceiling": _lines_vs_batch(
            tp, colours, "fraction_of_ceiling", "training throughput / compute-only ceiling",
            "The harness loop against the same step on a batch already on the device", out, "ceiling.png",
            logy=False),
    }
    from bench.scaling import fig_scaling, scaling_markdown, scaling_table  # scale-out runs, when present

    scaling = scaling_table(df)
    n_ok = int((df["status"] == "ok").sum())
    data = ", ".join(sorted(set(df["data"].dropna()))) or "unknown"
    parts = [
        "# cifar-bench report",
        "",
        f"Generated {time.strftime('%Y-%m-%d %H:%M')} from {len(run_dirs)} run folder(s): "
        + ", ".join(f"`{d}`" for d in run_dirs) + f". {len(df)} configurations, {n_ok} ok. Data: **{data}**.",
        "",
        "## Summary",
        "",
        *[f"- {line}" for line in breakeven.summary_lines(df, tp) + summary_lines(df, tp, eq)],
        "",
        to_markdown(headline(df, tp, eq)),
        "",
        *breakeven.report_section(df, tp, out),
        *cost.report_section(df, tp, prices),
    ]
    for title, name in figures.items():
        if name:
            parts += [f"## {title}", "", f"![{title}]({name})", ""]
    missing = [t for t, n in figures.items() if n is None and t in ("GPU/CPU speedup", "Test accuracy per epoch")]
    if missing:
        parts += ["Not drawn for lack of data: " + ", ".join(missing)
                  + " (the speedup needs CPU and CUDA results; accuracy needs runs with epochs > 0).", ""]
    tta = tta_table(df)
    if not tta.empty:
        parts += ["## Time to accuracy", "",
                  "Wall-clock training seconds (evaluation excluded) until the test accuracy, evaluated after each "
                  "epoch, first reached the target, so the resolution is one epoch. Median over seeds; a run that "
                  "never reached the target within the epoch bound counts as slower than any that did (\"not "
                  "reached\" as the median: half or more never did). Range: the runs that reached it. The summary "
                  "compares each device's fastest configuration at one target.", "",
                  *[f"- Target: {line}" for line in target_lines(tta)], "", tta_markdown(tta), ""]
    if not scaling.empty:
        parts += ["## Scaling out (data parallel)", "", f"![Scaling]({fig_scaling(df, out)})", "",
                  *scaling_lines(df), "", scaling_markdown(scaling), ""]
    parts += ["## Accuracy equivalence", ""]
    if eq.empty:
        parts += ["No pairs to compare (accuracy runs with a CPU or CUDA fp32 reference are needed).", ""]
    else:
        spread = eq.dropna(subset=["ref_acc_sd_all_seeds"])
        parts += [f"Margin +-{margin_pp:g} percentage points; each candidate is compared with its reference seed by "
                  "seed (same initial weights, same batches); agreement and McNemar's exact test from per-example "
                  "predictions.", "", *[f"- {line}" for line in explanation(margin_pp, alpha)], ""]
        if not spread.empty:
            parts += ["Seed-to-seed spread of the reference (sd over its seeds): "
                      + "; ".join(f"{r.model} bs {r.batch_size} {r.reference}: {r.ref_acc_sd_all_seeds:.2f} pp over "
                                  f"{r.ref_seeds} seeds"
                                  for r in spread.drop_duplicates(["model", "batch_size", "reference"]).itertuples())
                      + ". A margin far below this spread cannot be shown with few seeds.", ""]
        parts += [verdict_table(eq), ""]
        parts += [f"- {r.model} bs {r.batch_size}, {r.candidate} vs {r.reference}: **{r.verdict}**: {r.reason}"
                  for r in eq.itertuples()] + [""]
    parts += ["## Methodology", "", *methodology(df, rows, systems), ""]
    warn_lines = warnings_lines(df, systems)
    none = "None: no noisy, skipped, OOM, diverged or failed configurations."
    parts += ["## Warnings", "", *(warn_lines or [none]), ""]
    parts += ["## Results", "", results_markdown(df), ""]
    parts += ["## Systems", "", system_markdown(systems), ""]
    (out / "report.md").write_text("\n".join(parts))
    return out / "report.md"


def _isnan(x) -> bool:
    return isinstance(x, float) and math.isnan(x)
