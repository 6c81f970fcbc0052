"""The report's figures (PNGs beside report.md, linked relatively), from the frames of
bench/frames.py. Colour identifies a device (one per device and machine), line style a
precision.

Headless: every figure of the harness is made by `new_figure` and written by `save_figure`,
outside pyplot, so no backend is chosen, no display is needed, and a notebook's own
backend is left as it was.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.ticker
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from bench.frames import best_per_batch, models_in, speedups

PRECISION_STYLE = {"fp32": "-", "tf32": "-.", "fp16": "--", "bf16": ":"}
PRECISION_MARKER = {"fp32": "o", "tf32": "D", "fp16": "s", "bf16": "^"}
EPOCH_IMAGES = 50_000  # a CIFAR-10 training epoch


def new_figure(rows: int, cols: int, figsize: tuple[float, float]) -> tuple[Figure, np.ndarray]:
    """A figure and its rows x cols axes (always a 2-D array), made without pyplot."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(rows, cols, squeeze=False)


def save_figure(fig: Figure, out: Path, name: str) -> str:
    """Write `fig` as out/name (110 dpi); returns `name`, the report's relative link."""
    fig.tight_layout()
    fig.savefig(out / name, dpi=110)
    return name


def _panels(n: int, width: float = 5.0, height: float = 4.0):
    # at least 9 inches wide, so a figure title fits over a single panel
    fig, axes = new_figure(1, max(n, 1), (max(width * max(n, 1), 9.0), height))
    return fig, axes[0]


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


# A throughput frame's column and the results column it comes from (flagged rows are raw rows).
RAW_COLUMN = {"images_per_s": "train_images_per_s"}


def lines_vs_batch(tp: pd.DataFrame, colours: dict, value: str, ylabel: str, title: str, out: Path,
                   name: str, logy: bool = True, models: list[str] | None = None,
                   flagged: pd.DataFrame | None = None) -> str | None:
    """One panel per model, a line per device, precision and variant. Where the frame has the
    value's interval (`<value>_low/_high`), error bars show it; `flagged` rows (measurement
    problems, left out of the lines) are drawn hollow at their value."""
    raw = RAW_COLUMN.get(value, value)
    hollow = flagged if flagged is not None and raw in flagged and not flagged[raw].dropna().empty else None
    if (tp.empty or tp[value].dropna().empty) and hollow is None:
        return None
    models = models or models_in(pd.concat([tp[["model"]] if "model" in tp else pd.DataFrame(),
                                            hollow[["model"]] if hollow is not None else pd.DataFrame()]))
    fig, axes = _panels(len(models))
    for ax, model in zip(axes, models):
        sub = tp[tp["model"] == model] if not tp.empty else tp
        for (dkey, prec, variant), g in sub.groupby(["device_key", "precision", "variant"]) if not sub.empty else ():
            g = g.sort_values("batch_size").dropna(subset=[value])
            if g.empty:
                continue
            colour = colours.get(dkey, "k")
            ax.plot(g["batch_size"], g[value], PRECISION_STYLE.get(prec, "-"), marker=PRECISION_MARKER.get(prec, "o"),
                    color=colour, label=f"{dkey} {prec}{variant}", markersize=4)
            if f"{value}_low" in g and g[f"{value}_low"].notna().any():
                lo, hi = g[f"{value}_low"].to_numpy(float), g[f"{value}_high"].to_numpy(float)
                ax.errorbar(g["batch_size"], g[value], yerr=[g[value] - lo, hi - g[value]], fmt="none",
                            ecolor=colour, elinewidth=0.8, capsize=2, alpha=0.7)
        if hollow is not None:
            for (dkey, prec), g in hollow[hollow["model"] == model].groupby(["device_key", "precision"]):
                ax.scatter(g["batch_size"], g[raw], marker=PRECISION_MARKER.get(prec, "o"), s=40,
                           facecolors="none", edgecolors=colours.get(dkey, "k"), linewidths=1.2,
                           label=f"{dkey} {prec}: flagged, not in the lines (see Warnings)", zorder=5)
        if logy:
            ax.set_yscale("log")
        _batch_axis(ax, [*sub.get("batch_size", []), *(hollow[hollow["model"] == model]["batch_size"]
                                                       if hollow is not None else [])])
        ax.set_xlabel("batch size (images per step)")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{model}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    return save_figure(fig, out, name)


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
    return save_figure(fig, out, "speedup.png")


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
    return save_figure(fig, out, "epoch_time.png")


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
    return save_figure(fig, out, "accuracy.png")


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
    return save_figure(fig, out, "data_paths.png")


