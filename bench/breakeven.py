"""The break-even map: where, over model size (training FLOPs per image) and batch size, the
GPU beats the CPU, from stored results only.

With CPU and CUDA rows: the GPU/CPU speedup (each device's best precision at each model and
batch size) as a heatmap, the speedup = 1 contour, and the crossover in words ("the GPU
pays off from about N MFLOP per image at batch B"). A speedup is computed only where both
devices measured the same model at the same batch size; nothing is extrapolated. With one
device kind only: its throughput and MFU over the same axes, and where it saturates.

The grid's columns are the models' FLOPs per image. When two or more widths of the
tutorial Net family ran, they alone form the grid (one architecture, a continuous size
axis) and other models (fixed or user models) are drawn as labelled points on it.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.colors
import matplotlib.ticker
import numpy as np
import pandas as pd

from bench.figures import new_figure, save_figure
from cnn.models import FAMILY

SATURATION = 0.9  # "saturated": within 10% of the best FLOP/s the device reached


# --------------------------------------------------------------------------------------
# Shaping: one row per device, model and batch size (the device's best precision)
# --------------------------------------------------------------------------------------

def _about(x: float) -> str:
    """Two significant figures, without scientific notation (110, not 1.1e+02)."""
    return f"{float(f'{x:.2g}'):,.0f}" if x >= 100 else f"{x:.2g}"


def map_frame(df: pd.DataFrame, tp: pd.DataFrame) -> pd.DataFrame:
    """Best throughput per (device_key, model, batch size) with its FLOPs per image (as
    stored in the rows), achieved TFLOP/s and MFU. `tp` is bench.frames.throughput(df)."""
    if tp.empty or "flops_per_image" not in df:
        return pd.DataFrame()
    flops = df[df["status"] == "ok"].groupby("model")["flops_per_image"].median().dropna()
    sub = tp[tp["model"].isin(flops.index)]
    if sub.empty:
        return pd.DataFrame()
    best = sub.loc[sub.groupby(["device_key", "model", "batch_size"])["images_per_s"].idxmax()].copy()
    best["flops_per_image"] = best["model"].map(flops).astype(float)
    best["flops_per_step"] = best["flops_per_image"] * best["batch_size"]
    best["achieved_tflops"] = best["flops_per_image"] * best["images_per_s"] / 1e12
    cols = ["device_key", "device_kind", "model", "batch_size", "precision", "images_per_s", "mfu",
            "flops_per_image", "flops_per_step", "achieved_tflops"]
    return best[cols].reset_index(drop=True)


def grid_models(mf: pd.DataFrame) -> list[str]:
    """The models that form the map's columns (see the module docstring)."""
    present = set(mf["model"])
    family = [m for m in FAMILY if m in present]
    return family if len(family) >= 2 else sorted(present)


def device_pairs(mf: pd.DataFrame) -> list[tuple[str, str]]:
    """(CPU device_key, GPU device_key) pairs that measured at least one common point."""
    pairs = []
    for cpu in sorted(mf.loc[mf["device_kind"] == "cpu", "device_key"].unique()):
        for gpu in sorted(mf.loc[mf["device_kind"] == "cuda", "device_key"].unique()):
            if not speedup_points(mf, cpu, gpu).empty:
                pairs.append((cpu, gpu))
    return pairs


def speedup_points(mf: pd.DataFrame, cpu_key: str, gpu_key: str) -> pd.DataFrame:
    """Measured speedups: only (model, batch size) points both devices measured."""
    keys = ["model", "batch_size"]
    cpu = mf[mf["device_key"] == cpu_key].set_index(keys)
    gpu = mf[mf["device_key"] == gpu_key].set_index(keys)
    both = cpu.merge(gpu, how="inner", left_index=True, right_index=True, suffixes=("_cpu", "_gpu"))
    if both.empty:
        return pd.DataFrame()
    out = pd.DataFrame({
        "flops_per_image": both["flops_per_image_cpu"],
        "cpu_images_per_s": both["images_per_s_cpu"], "cpu_precision": both["precision_cpu"],
        "gpu_images_per_s": both["images_per_s_gpu"], "gpu_precision": both["precision_gpu"],
    }).reset_index()
    out["speedup"] = out["gpu_images_per_s"] / out["cpu_images_per_s"]
    return out.sort_values(["batch_size", "flops_per_image"]).reset_index(drop=True)


# --------------------------------------------------------------------------------------
# The crossover in words
# --------------------------------------------------------------------------------------

def crossovers(points: pd.DataFrame) -> list[dict]:
    """Per batch size: the FLOPs per image from which the GPU stays ahead at every larger
    model measured. kind: "from" (crossing inside the measured range, interpolated linearly
    in log speedup over log FLOPs between the two measured points around it), "always"
    (faster at every size measured) or "never" (slower or equal at the largest size)."""
    out = []
    for bs, g in points.groupby("batch_size"):
        g = g.sort_values("flops_per_image")
        x, s = g["flops_per_image"].to_numpy(float), g["speedup"].to_numpy(float)
        first = next((i for i in range(len(s)) if (s[i:] > 1).all()), None)
        row = {"batch_size": int(bs), "smallest": x[0], "largest": x[-1]}
        if first is None:
            out.append({**row, "kind": "never", "flops": None})
        elif first == 0:
            out.append({**row, "kind": "always", "flops": x[0]})
        else:
            lx0, lx1 = math.log(x[first - 1]), math.log(x[first])
            ls0, ls1 = math.log(s[first - 1]), math.log(s[first])  # ls0 <= 0 < ls1
            out.append({**row, "kind": "from", "flops": math.exp(lx0 + (0 - ls0) * (lx1 - lx0) / (ls1 - ls0))})
    return out


def mflop(x: float) -> str:
    m = x / 1e6
    return f"{m:,.0f}" if m >= 100 else f"{m:.2g}"


def crossover_sentence(points: pd.DataFrame, cpu_key: str, gpu_key: str) -> str:
    """One sentence naming the crossover, then the answer per batch size."""
    cross = crossovers(points)
    inside = [c for c in cross if c["kind"] == "from"]
    if inside:
        c = inside[0]
        head = (f"the GPU pays off from about **{mflop(c['flops'])} MFLOP per image at batch {c['batch_size']}** "
                f"({c['flops'] * c['batch_size'] / 1e9:.2g} GFLOP per step)")
        if len(inside) > 1:
            last = inside[-1]
            head += f" and from about {mflop(last['flops'])} MFLOP per image at batch {last['batch_size']}"
    elif all(c["kind"] == "always" for c in cross):
        c = cross[0]
        head = (f"the GPU pays off at every model and batch size measured (from {mflop(c['smallest'])} MFLOP "
                f"per image at batch {c['batch_size']})")
    elif all(c["kind"] == "never" for c in cross):
        head = (f"the GPU never pays off in the range measured (up to {mflop(max(c['largest'] for c in cross))} "
                f"MFLOP per image, batch up to {max(c['batch_size'] for c in cross)})")
    else:
        c = next(c for c in cross if c["kind"] == "always")
        head = f"the GPU pays off at every model size measured from batch {c['batch_size']} on"
    per_bs = []
    for c in cross:
        if c["kind"] == "from":
            per_bs.append(f"batch {c['batch_size']}: from ~{mflop(c['flops'])}")
        elif c["kind"] == "always":
            per_bs.append(f"batch {c['batch_size']}: always (>= {mflop(c['smallest'])})")
        else:
            per_bs.append(f"batch {c['batch_size']}: never (<= {mflop(c['largest'])})")
    return (f"**Break-even** ({gpu_key} vs {cpu_key}, each at its best precision): {head}. "
            f"MFLOP per image from which the GPU stays ahead: {'; '.join(per_bs)}.")


def saturation_sentence(mf: pd.DataFrame, device_key: str) -> str:
    """Where one device's achieved FLOP/s stops growing with the work per step."""
    d = mf[mf["device_key"] == device_key].sort_values("flops_per_step")
    if d.empty:
        return ""
    top = d.loc[d["achieved_tflops"].idxmax()]
    first = d[d["achieved_tflops"] >= SATURATION * top["achieved_tflops"]].iloc[0]
    mfu = f", MFU {top['mfu']:.0%}" if pd.notna(top["mfu"]) else ""
    return (f"**Saturation** ({device_key}): best {top['achieved_tflops'] * 1e3:,.0f} GFLOP/s{mfu} "
            f"({top['model']}, batch {top['batch_size']}, {top['precision']}); within {1 - SATURATION:.0%} of it "
            f"from about {_about(first['flops_per_step'] / 1e9)} GFLOP per step ({first['model']} at batch "
            f"{first['batch_size']}, {mflop(first['flops_per_image'])} MFLOP per image). Below that the "
            "steps are too small to keep it busy.")


def summary_lines(df: pd.DataFrame, tp: pd.DataFrame) -> list[str]:
    """The map's conclusions for the report's summary: a crossover per CPU/GPU pair, else
    where each device saturates."""
    mf = map_frame(df, tp)
    if mf.empty or mf["flops_per_image"].nunique() < 2:
        return []
    pairs = device_pairs(mf)
    if pairs:
        return [crossover_sentence(speedup_points(mf, c, g), c, g) for c, g in pairs]
    return [s for s in (saturation_sentence(mf, k) for k in sorted(mf["device_key"].unique())) if s]


# --------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------

def _edges(values: np.ndarray) -> np.ndarray:
    """Cell edges on a log axis: geometric midpoints, half a step beyond the ends."""
    lv = np.log(values)
    step = np.diff(lv).mean() if len(lv) > 1 else math.log(2)
    mids = (lv[:-1] + lv[1:]) / 2
    return np.exp(np.concatenate([[lv[0] - step / 2], mids, [lv[-1] + step / 2]]))


def _grid(points: pd.DataFrame, value: str, models: list[str]):
    """(x centres, y centres, Z masked) for `value` over the grid models' FLOPs x batch sizes."""
    g = points[points["model"].isin(models)]
    xs = np.array(sorted(g["flops_per_image"].unique()), dtype=float)
    ys = np.array(sorted(g["batch_size"].unique()), dtype=float)
    z = np.full((len(ys), len(xs)), np.nan)
    for r in g.itertuples():
        z[np.searchsorted(ys, r.batch_size), np.searchsorted(xs, r.flops_per_image)] = getattr(r, value)
    return xs, ys, np.ma.masked_invalid(z)


def _axes(ax, xs, ys) -> None:
    ax.set_xscale("log")
    ax.set_yscale("log", base=2)
    ax.set_yticks(ys)
    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_xticks(xs)
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: mflop(v)))
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.tick_params(axis="x", labelsize=7, rotation=45)
    ax.set_xlabel("training MFLOP per image (forward + backward)")
    ax.set_ylabel("batch size (images per step)")


def _others(ax, points: pd.DataFrame, models: list[str], value: str, cmap, norm, fmt) -> None:
    """Models outside the grid (fixed or user models) as labelled points, same colour scale."""
    rest = points[~points["model"].isin(models)]
    if rest.empty:
        return
    ax.scatter(rest["flops_per_image"], rest["batch_size"], c=rest[value], cmap=cmap, norm=norm, marker="D",
               s=60, edgecolors="black", zorder=5)
    for r in rest.itertuples():
        ax.annotate(f"{r.model}: {fmt(getattr(r, value))}", (r.flops_per_image, r.batch_size), fontsize=6,
                    xytext=(5, 4), textcoords="offset points")


def _annotate(ax, xs, ys, z, fmt) -> None:
    for i, y in enumerate(ys):
        for j, x in enumerate(xs):
            if not np.ma.is_masked(z[i, j]):
                ax.text(x, y, fmt(z[i, j]), ha="center", va="center", fontsize=6)


def fig_speedup_map(df: pd.DataFrame, tp: pd.DataFrame, out: Path, name: str = "breakeven.png") -> str | None:
    """GPU/CPU speedup heatmap per CPU/GPU pair, with the speedup = 1 contour."""
    mf = map_frame(df, tp)
    if mf.empty:
        return None
    pairs = device_pairs(mf)
    if not pairs:
        return None
    models = grid_models(mf)
    fig, axes = new_figure(1, len(pairs), (max(7.5 * len(pairs), 9.0), 5.5))
    for ax, (cpu, gpu) in zip(axes[0], pairs):
        pts = speedup_points(mf, cpu, gpu)
        pts["log2_speedup"] = np.log2(pts["speedup"])
        xs, ys, z = _grid(pts, "log2_speedup", models)
        if z.count() == 0:
            ax.set_visible(False)
            continue
        span = max(1.0, float(np.nanmax(np.abs(pts["log2_speedup"]))))
        norm = matplotlib.colors.TwoSlopeNorm(vmin=-span, vcenter=0.0, vmax=span)
        mesh = ax.pcolormesh(_edges(xs), _edges(ys), z, cmap="RdBu_r", norm=norm, shading="flat")
        _annotate(ax, xs, ys, z, lambda v: f"{2 ** v:.2g}x")
        if len(xs) >= 2 and len(ys) >= 2 and z.min() < 0 < z.max():
            cs = ax.contour(xs, ys, z, levels=[0.0], colors="black", linewidths=2)
            ax.clabel(cs, fmt={0.0: "1x"}, fontsize=8)
        _others(ax, pts, models, "log2_speedup", "RdBu_r", norm, lambda v: f"{2 ** v:.2g}x")
        _axes(ax, xs, ys)
        bar = fig.colorbar(mesh, ax=ax)
        ticks = np.arange(-math.floor(span), math.floor(span) + 1)
        bar.set_ticks(ticks)
        bar.set_ticklabels([f"{2.0 ** t:g}x" for t in ticks])
        bar.set_label("GPU/CPU speedup (red: GPU faster)")
        ax.set_title(f"{gpu}\nvs {cpu}", fontsize=9)
    fig.suptitle("Break-even map: GPU/CPU training speedup, each device at its best precision "
                 "(black line: speedup = 1)", fontsize=10)
    return save_figure(fig, out, name)


def fig_device_map(df: pd.DataFrame, tp: pd.DataFrame, out: Path, name: str = "size_map.png",
                   overlay=None) -> str | None:
    """Throughput and MFU over model size x batch size, one row of panels per device.
    `overlay(ax, device_key, models)` may draw on each panel (the GPU speedup bound = 1
    contour, bench/bound_report.py)."""
    mf = map_frame(df, tp)
    if mf.empty or mf["flops_per_image"].nunique() < 2:
        return None
    models = grid_models(mf)
    keys = sorted(mf["device_key"].unique())
    fig, axes = new_figure(len(keys), 2, (15.0, 5.0 * len(keys)))
    for row, key in zip(axes, keys):
        d = mf[mf["device_key"] == key]
        for ax, value, label, cmap, fmt in (
            (row[0], "images_per_s", "training images/s (best precision)", "viridis", lambda v: f"{v:,.0f}"),
            (row[1], "mfu", "MFU (achieved / measured matmul peak)", "magma", lambda v: f"{v:.0%}"),
        ):
            xs, ys, z = _grid(d, value, models)
            if z.count() == 0:
                ax.set_visible(False)
                continue
            norm = matplotlib.colors.LogNorm(vmin=float(z.min()), vmax=float(z.max())) if value == "images_per_s" \
                and z.min() > 0 else matplotlib.colors.Normalize(vmin=0.0, vmax=max(float(z.max()), 1e-9))
            mesh = ax.pcolormesh(_edges(xs), _edges(ys), z, cmap=cmap, norm=norm, shading="flat")
            _annotate(ax, xs, ys, z, fmt)
            _others(ax, d, models, value, cmap, norm, fmt)
            _axes(ax, xs, ys)
            if overlay is not None:
                overlay(ax, key, models)
            fig.colorbar(mesh, ax=ax).set_label(label)
            ax.set_title(f"{key}: {label}", fontsize=9)
    fig.suptitle("Model size x batch size: where the device saturates (throughput and MFU per cell)", fontsize=10)
    return save_figure(fig, out, name)


def speedup_table(df: pd.DataFrame, tp: pd.DataFrame) -> pd.DataFrame:
    """The map's numbers: every measured point with both devices' best throughput."""
    mf = map_frame(df, tp)
    if mf.empty:
        return pd.DataFrame()
    parts = []
    for cpu, gpu in device_pairs(mf):
        pts = speedup_points(mf, cpu, gpu)
        parts.append(pts.assign(cpu=cpu, gpu=gpu))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def report_section(df: pd.DataFrame, tp: pd.DataFrame, out: Path, overlay=None) -> list[str]:
    """Markdown lines of the report's break-even section (empty when there is no map);
    `overlay` draws on the size map's panels (fig_device_map)."""
    from bench.markdown import to_markdown

    speed = fig_speedup_map(df, tp, out)
    if speed is not None:
        table = speedup_table(df, tp)
        view = table[["gpu", "cpu", "model", "batch_size", "flops_per_image", "gpu_images_per_s", "gpu_precision",
                      "cpu_images_per_s", "cpu_precision", "speedup"]].copy()
        view["flops_per_image"] = view["flops_per_image"] / 1e6
        view = view.rename(columns={"flops_per_image": "MFLOP/image", "gpu_images_per_s": "GPU img/s",
                                    "cpu_images_per_s": "CPU img/s", "speedup": "GPU/CPU"})
        return ["## Break-even map", "", f"![Break-even map]({speed})", "",
                "- Each cell: the GPU's best throughput over the CPU's best at that model and batch size, both "
                "measured; cells without both are blank. The crossover is interpolated in log speedup between "
                "the two measured model sizes around it.", "",
                to_markdown(view, floatfmt=("", "", "", "", ".4g", ",.0f", "", ",.0f", "", ".3g")), ""]
    size = fig_device_map(df, tp, out, overlay=overlay)
    if size is None:
        return []
    return ["## Model size map", "", f"![Model size map]({size})", "",
            "- No CPU/GPU pair measured the same model and batch size, so no speedup is shown: add a CUDA run "
            "folder of the same models (e.g. `--preset sizes --devices cuda`) to draw the break-even map.", ""]
