"""Scale-out results: scaling efficiency, its table and its figure (runs with world_size > 1).

Comparisons stay within one machine (`device_key`), model, precision, layout, compile and
*global* batch size, so an N-process row and its one-process baseline did the same work
per step:
  efficiency        ips(N) / (N x ips(1)): the classic definition, against one process with
                    the same threads per process (CPU) or one GPU (CUDA). 100% means N
                    processes are N times as fast as one; it uses N times the resources.
  vs 1 proc, same cores   (CPU, one node) ips(N processes x t threads) / ips(1 process x N*t
                    threads): on a fixed machine, does splitting the work into processes
                    beat giving one process all the cores?
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from bench.figures import new_figure, save_figure
from bench.markdown import to_markdown

SCALING_KEYS = ["device_key", "device_kind", "model", "precision", "batch_size", "channels_last", "compile"]


def _median_or_nan(s: pd.Series) -> float:
    s = s.dropna()
    return float(s.median()) if not s.empty else float("nan")


def scaling_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration group, world size and threads per process: global
    images/s, step time, comm share, efficiency and the same-cores ratio (module docstring).
    Empty when no run has more than one process."""
    need = {*SCALING_KEYS, "world_size", "threads", "train_images_per_s"}
    if df.empty or not need <= set(df.columns):
        return pd.DataFrame()
    epochs = df["epochs"].fillna(0) if "epochs" in df else 0  # the throughput grid only
    ok = df[(df["status"] == "ok") & (df["data_path"] == "device") & (epochs == 0)
            & df["train_images_per_s"].notna()].copy()
    ok["world_size"] = ok["world_size"].fillna(1).astype(int)
    ok["nodes"] = ok["nodes"].fillna(1).astype(int) if "nodes" in ok else 1
    if ok.empty or ok["world_size"].max() <= 1:
        return pd.DataFrame()
    if "comm_share" not in ok:
        ok["comm_share"] = np.nan
    # CUDA processes each drive their own GPU: host threads are not the scaled resource there.
    ok["threads_key"] = ok["threads"].where(ok["device_kind"] == "cpu", -1).fillna(-1).astype(int)
    cells = ok.groupby([*SCALING_KEYS, "world_size", "nodes", "threads_key"], dropna=False).agg(
        images_per_s=("train_images_per_s", "median"), step_ms=("step_ms_median", "median"),
        comm_share=("comm_share", _median_or_nan), runs=("train_images_per_s", "size")).reset_index()
    rows = []
    for key, g in cells.groupby(SCALING_KEYS, dropna=False):
        if g["world_size"].max() <= 1:
            continue
        one = g[g["world_size"] == 1].set_index("threads_key")["images_per_s"]
        for r in g.itertuples():
            base = one.get(r.threads_key) if r.threads_key != -1 else (one.median() if len(one) else None)
            same_cores = one.get(r.world_size * r.threads_key) \
                if r.device_kind == "cpu" and r.nodes == 1 and r.world_size > 1 else None
            rows.append({
                **dict(zip(SCALING_KEYS, key)), "world_size": r.world_size, "nodes": r.nodes,
                "threads_per_process": r.threads_key if r.threads_key != -1 else None,
                "images_per_s": r.images_per_s, "step_ms": r.step_ms, "comm_share": r.comm_share,
                "efficiency": r.images_per_s / (r.world_size * base) if base else float("nan"),
                "vs_one_process_same_cores": r.images_per_s / same_cores if same_cores else float("nan"),
                "runs": r.runs,
            })
    return pd.DataFrame(rows)


def _pct(x: float) -> str:
    return "" if x != x else f"{100 * x:.0f}%"


def scaling_markdown(table: pd.DataFrame) -> str:
    table = table.assign(
        images_per_s=table["images_per_s"].map(lambda x: f"{x:,.0f}"),
        step_ms=table["step_ms"].map(lambda x: f"{x:.2f}"),
        threads_per_process=table["threads_per_process"].map(lambda x: "" if x != x or x is None else f"{x:.0f}"),
        **{c: table[c].map(_pct) for c in ("comm_share", "efficiency", "vs_one_process_same_cores")})
    view = table.drop(columns=["device_kind", "channels_last", "compile", "runs"]).rename(columns={
        "device_key": "device", "batch_size": "global batch", "world_size": "processes",
        "threads_per_process": "threads/process", "images_per_s": "global img/s", "step_ms": "step ms (slowest rank)",
        "comm_share": "comm share (est.)", "vs_one_process_same_cores": "vs 1 proc, same cores"})
    view = view.sort_values(["device", "model", "precision", "global batch", "threads/process", "processes"])
    return to_markdown(view)


def fig_scaling(df: pd.DataFrame, out: Path) -> str | None:
    """One column per model. Top: global images/s vs processes, one colour per global batch
    (a one-process run with other threads, e.g. all cores, is a dashed level in that
    colour). Bottom: efficiency (solid) and the ratio to one process on the same cores
    (dashed squares), in percent."""
    table = scaling_table(df)
    if table.empty:
        return None
    models = list(dict.fromkeys(table["model"]))
    fig, axes = new_figure(2, len(models), (5.5 * len(models), 8))
    sizes = sorted(int(n) for n in table["world_size"].unique())
    several = table["device_key"].nunique() > 1 or table["precision"].nunique() > 1
    for col, model in enumerate(models):
        top, bottom = axes[0][col], axes[1][col]
        sub = table[table["model"] == model]
        colours = {}
        for key, s in sub.groupby([*SCALING_KEYS, "threads_per_process"], dropna=False):
            s = s.sort_values("world_size")
            group = key[:-1]
            if group not in colours:
                colours[group] = f"C{len(colours) % 10}"
            colour = colours[group]
            threads = key[-1]
            what = (f"{key[0]} {key[3]} " if several else "") + f"bs {key[4]}"
            per_proc = f", {int(threads)} thr/proc" if threads == threads and threads is not None else ""
            if s["world_size"].max() <= 1:  # a one-process run nothing scales from: a reference level
                top.axhline(s["images_per_s"].iloc[0], linestyle="--", linewidth=1, color=colour,
                            label=f"{what}: 1 process, {int(threads)} threads" if per_proc else f"{what}: 1 process")
                continue
            top.plot(s["world_size"], s["images_per_s"], marker="o", color=colour, label=what + per_proc)
            eff = s.dropna(subset=["efficiency"])
            if not eff.empty:
                bottom.plot(eff["world_size"], 100 * eff["efficiency"], marker="o", color=colour,
                            label=f"{what}{per_proc}: efficiency")
            same = s.dropna(subset=["vs_one_process_same_cores"])
            if not same.empty:
                bottom.plot(same["world_size"], 100 * same["vs_one_process_same_cores"], linestyle="none",
                            marker="s", markerfacecolor="none", markersize=8, color=colour,
                            label=f"{what}{per_proc}: vs 1 process on the same cores")
        top.set_title(model)
        top.set_ylabel("global training throughput (images/s)")
        bottom.set_ylabel("percent: efficiency = ips(N) / (N x ips(1));\nsquares: ips(N) / ips(1 process, same cores)",
                          fontsize=8)
        bottom.axhline(100, color="black", linewidth=1)
        for ax in (top, bottom):
            ax.set_xlabel("processes (world size)")
            ax.set_xticks(sizes)
            ax.set_xlim(min(sizes) - 0.3, max(sizes) + 0.3)
            ax.set_ylim(bottom=0)
            ax.grid(True, alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=6)
        if not bottom.get_lines()[1:]:  # only the 100% line: no baseline was given
            bottom.text(0.5, 0.5, "no one-process run of these configurations\nin the run folders given",
                        transform=bottom.transAxes, ha="center", va="center")
    fig.suptitle("Data-parallel scaling (DistributedDataParallel) at equal global batch; 1 process = no DDP")
    return save_figure(fig, out, "scaling.png")
