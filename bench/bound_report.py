"""The report's "What a GPU could give" section, its summary lines and the bound = 1 contour
on the model size map, from stored rows only (the arithmetic: bench/bound.py)."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pandas as pd

from bench import bound
from bench.bound import fmt_x, measured_vs_bound
from bench.frames import models_in
from bench.gpus import DEFAULT_GPU, GpuSpec, for_device, load_gpus, lookup
from bench.markdown import to_markdown

DOC = "docs/gpu-bound.md"


def _ms(x: float) -> str:
    """Three significant figures in prose, whole numbers from 1,000 (no exponent)."""
    return f"{x:.3g}" if x < 1000 else f"{x:,.0f}"


def plain(x, digits: int = 3) -> str:
    """`digits` significant figures without an exponent (0.0000518, 20,200); blank for none."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    x = float(x)
    if x == 0:
        return "0"
    mag = math.floor(math.log10(abs(x)))
    return f"{round(x, digits - 1 - mag):,.{max(0, digits - 1 - mag)}f}"


def resolve(gpu: GpuSpec | None, gpus: dict[str, GpuSpec] | None,
            df: pd.DataFrame | None = None) -> tuple[GpuSpec, dict[str, GpuSpec]]:
    """The GPU of the bound: `gpu`; else the one GPU the CUDA rows ran on when the table
    knows it; else DEFAULT_GPU. And the table (`gpus`, else bench/gpus.json)."""
    table = gpus if gpus is not None else load_gpus()
    if gpu is not None:
        return gpu, table
    if df is not None and not df.empty:
        names = df.loc[df["device"].astype(str).str.startswith("cuda"), "device_name"].dropna().unique()
        known = {s.name: s for s in (for_device(str(n), table) for n in names) if s is not None}
        if len(known) == 1:
            return next(iter(known.values())), table
    return lookup(DEFAULT_GPU, table), table


def why(r, gpu: GpuSpec) -> str:
    """One sentence: what binds the GPU's step and what that leaves of the speedup."""
    if r.binds == "host":
        head = (f"each step launches {r.ops:.0f} operators whose dispatch alone takes at least {r.host_ms:.2g} ms "
                "here")
    elif r.binds == "compute":
        head = (f"each step is {_ms(r.flops_per_step / 1e9)} GFLOP of matmuls and convolutions, at least "
                f"{r.compute_ms:.2g} ms at the {gpu.name}'s dense {r.gpu_precision} peak of "
                f"{gpu.peak(r.gpu_precision):g} TFLOP/s")
    else:
        head = (f"each step must move at least {_ms(r.bytes / 1e6)} MB (weights, gradients and momentum read and "
                f"written, activations saved for backward written and read), at least {r.memory_ms:.2g} ms at "
                f"{gpu.memory_gbps / 1e3:.3g} TB/s")
    if r.bound >= 1:
        return f"{head}: at most {fmt_x(r.bound)} faster than this CPU's {_ms(r.cpu_step_ms)} ms step"
    return (f"{head}: at most {fmt_x(r.bound)}, so no {gpu.name} beats this CPU's {_ms(r.cpu_step_ms)} ms step in "
            "eager mode")


# --------------------------------------------------------------------------------------
# Text
# --------------------------------------------------------------------------------------

def _datasheet(gpu: GpuSpec) -> str:
    peaks = ", ".join(f"{q} {gpu.peak(q):g}" if gpu.peak(q) else f"{q} none" for q in bound.GPU_PRECISIONS)
    return f"{peaks} TFLOP/s dense; {gpu.memory_gbps / 1e3:.3g} TB/s"


def _command(model: str, batch_sizes: list[int]) -> str:
    return (f"`cifar-bench run --devices cuda --models {model} --batch-sizes "
            f"{','.join(str(b) for b in batch_sizes)}`")


def self_check_lines(sc: pd.DataFrame, kind: str) -> list[str]:
    if sc.empty:
        return []
    name = "this CPU" if kind == "cpu" else "the GPU"
    worst = sc.loc[sc["ratio"].idxmax()]
    over = sc[sc["ratio"] > 1]
    peaks = ", ".join(f"{p} {v:.3g} TFLOP/s" for p, v in sc.groupby("precision")["peak_tflops"].max().items())
    text = (f"**Self-check on {name}**: the same bound with {name}'s own measured figures in place of a datasheet "
            f"(matmul peak {peaks}; memory {sc['gbps'].max():.3g} GB/s; {sc['host_us_per_op'].min():.2g} us per "
            f"operator): measured throughput / bound = {sc['ratio'].min():.2g} to {sc['ratio'].max():.2g} over "
            f"{len(sc)} rows (tightest: {worst['model']} batch {worst['batch_size']} {worst['precision']}, bound by "
            f"{worst['binds']}). ")
    peak_low = over[over["binds"] == "compute"]
    broken = over[over["binds"] != "compute"]
    if over.empty:
        text += "Every row is at most 1, as it must be."
    if not peak_low.empty:
        text += (f"{len(peak_low)} row(s) above 1 where compute binds, i.e. MFU above 100% of the measured matmul "
                 "peak (" + "; ".join(f"{r.model} bs {r.batch_size} {r.precision}: {r.ratio:.3f}"
                                      for r in peak_low.itertuples())
                 + "): the peak was probed low (load), or an algorithm did fewer FLOPs than counted: a measurement "
                 "problem, flagged with the row's MFU. ")
    if not broken.empty:
        text += (f"**{len(broken)} row(s) above 1 where {'/'.join(sorted(set(broken['binds'])))} binds: the method "
                 "does not hold there** (" + "; ".join(f"{r.model} bs {r.batch_size} {r.precision}: {r.ratio:.2f}"
                                                       for r in broken.itertuples())
                 + f"): that floor was overstated (see {DOC}).")
    return [text.strip()]


def self_check_table(sc: pd.DataFrame) -> str:
    g = sc.groupby(["device_key", "model", "batch_size", "precision"], sort=False).agg(
        step_ms=("step_ms", "median"), host_ms=("host_ms", "max"), compute_ms=("compute_ms", "max"),
        memory_ms=("memory_ms", "max"), bound_step_ms=("bound_step_ms", "max"), binds=("binds", "first"),
        ratio=("ratio", "max")).reset_index()
    for c in ("step_ms", "host_ms", "compute_ms", "memory_ms", "bound_step_ms"):
        g[c] = g[c].map(plain)
    g = g.drop(columns="device_key").rename(columns={
        "batch_size": "batch", "step_ms": "measured step ms", "host_ms": "host ms", "compute_ms": "compute ms",
        "memory_ms": "memory ms", "bound_step_ms": "bound step ms", "ratio": "measured / bound"})
    return to_markdown(g, floatfmt=("", "", "", "", "", "", "", "", "", ".2f"))


def summary_lines(df: pd.DataFrame, tp: pd.DataFrame, systems: list[dict], gpu: GpuSpec | None = None,
                  gpus: dict[str, GpuSpec] | None = None) -> list[str]:
    """The bound in a few lines: per model the range over batch sizes, the CPU self-check,
    and with CUDA rows the measured speedups above their bound and the GPU self-check."""
    if df.empty or tp.empty:
        return []
    gpu, gpus = resolve(gpu, gpus, df)
    bt = bound.bound_table(df, tp, systems, gpu)
    lines = []
    ok = bt[bt["available"].astype(bool)] if not bt.empty else bt
    if not ok.empty:
        parts = []
        for model in models_in(ok):
            m = ok[ok["model"] == model].sort_values("batch_size")
            lo, hi = m.iloc[0], m.iloc[-1]
            text = f"{model} at most {fmt_x(lo['bound'])} at batch {lo['batch_size']} ({lo['binds']})"
            if len(m) > 1:
                text += f" to {fmt_x(hi['bound'])} at batch {hi['batch_size']} ({hi['binds']})"
            below = m[m["bound"] < 1]
            if not below.empty:
                text += f", below 1 (cannot pay off) at batch {', '.join(str(b) for b in below['batch_size'])}"
            parts.append(text)
        lines.append(f"**GPU speedup bound** ({gpu.name}, eager, from this CPU's measurements and the datasheet): "
                     + "; ".join(parts) + ". A ceiling, not a forecast: a real GPU step also pays CUDA launches, "
                     "synchronisation and kernels below peak, which the bound leaves out; measure to know.")
    elif not bt.empty:
        lines.append(f"**GPU speedup bound** ({gpu.name}): not available: {bt['reason'].dropna().iloc[0]}.")
    lines += self_check_lines(bound.self_check(df, systems, "cpu"), "cpu")
    mv = measured_vs_bound(df, tp, systems, gpu, gpus)
    if not mv.empty:
        above = mv[mv["above"]]
        lines.append(f"**Measured vs bound** ({', '.join(sorted(set(mv['gpu'])))}): {len(mv)} points, measured "
                     f"speedup / bound {(mv['measured'] / mv['bound']).min():.2g} to "
                     f"{(mv['measured'] / mv['bound']).max():.2g}; "
                     + ("none above its bound." if above.empty else
                        f"**{len(above)} above the bound (flagged)**: "
                        + "; ".join(f"{r.model} bs {r.batch_size}: {fmt_x(r.measured)} > {fmt_x(r.bound)}: {r.why}"
                                    for r in above.itertuples()) + "."))
    lines += self_check_lines(bound.self_check(df, systems, "cuda"), "cuda")
    return lines


def report_section(df: pd.DataFrame, tp: pd.DataFrame, systems: list[dict], gpu: GpuSpec | None = None,
                   gpus: dict[str, GpuSpec] | None = None, contour: str | None = None) -> list[str]:
    """Markdown lines of "What a GPU could give" (empty without CPU results)."""
    if df.empty or tp.empty or not (tp["device_kind"] == "cpu").any():
        return []
    gpu, gpus = resolve(gpu, gpus, df)
    bt = bound.bound_table(df, tp, systems, gpu)
    if bt.empty:
        return []
    host = bt["host_us_per_op"].dropna()
    parts = ["## What a GPU could give", "",
             f"An upper bound on how much faster an eager training step on an **{gpu.name}** can be than on this "
             "CPU, from what was measured here and the GPU's datasheet (an assumption, not a measurement of that "
             "GPU). A GPU step cannot take less than the largest of: *host* time (the operators one step launches, "
             "counted with torch.profiler, times the least host cost of one operator on this machine"
             + (f", {host.min():.2g} us" if not host.empty else "") + "), *compute* time (training FLOPs per step "
             "/ the dense peak at that precision, fp32 without tensor cores) and *memory* time (the bytes a step "
             "must move / the memory bandwidth); the bound takes the GPU's most favourable precision. Below 1 no "
             f"{gpu.name} can pay off in eager mode: a proof from measured floors, not an estimate. With CUDA graphs "
             "(`--compile-mode reduce-overhead`) the host term drops out: that bound is the last column. "
             f"Datasheet ({gpu.name}): {_datasheet(gpu)} (sources: bench/gpus.json; `--gpu NAME` picks another, "
             f"`--gpu-file` adds yours). Method: {DOC}.", ""]
    mv = measured_vs_bound(df, tp, systems, gpu, gpus)
    for model in models_in(bt):
        m = bt[bt["model"] == model].sort_values(["device_key", "batch_size"])
        parts += [f"### {model}", ""]
        ok = m[m["available"].astype(bool)]
        if ok.empty:
            parts += [f"Not available: {m['reason'].dropna().iloc[0]}.", ""]
            continue
        several = m["device_key"].nunique() > 1
        parts += [f"- Batch {r.batch_size}" + (f" ({r.device_key})" if several else "") + f": {why(r, gpu)}."
                  for r in ok.itertuples()]
        view = ok.assign(verdict=np.where(ok["bound"] < 1, "cannot pay off (eager)", "may pay off: measure"))
        cols = {"batch_size": "batch", "cpu_step_ms": "CPU step ms", "ops": "operators", "host_ms": "host ms",
                "compute_ms": "compute ms", "memory_ms": "memory ms", "gpu_precision": "GPU precision",
                "binds": "binds", "bound": "bound (eager)", "bound_graphs": "bound (CUDA graphs)",
                "verdict": "verdict"}
        view = view[list(cols)].rename(columns=cols)
        for c in ("CPU step ms", "host ms", "compute ms", "memory ms", "bound (eager)", "bound (CUDA graphs)"):
            view[c] = view[c].map(plain)
        if not mv.empty:
            meas = mv[mv["model"] == model].groupby("batch_size")["measured"].max()
            view.insert(9, "measured", ok["batch_size"].map(meas).map(plain).to_numpy())
        parts += ["", to_markdown(view, floatfmt=".0f"), ""]
        unavailable = m[~m["available"].astype(bool)]
        if not unavailable.empty:
            parts += [f"Not available at batch {', '.join(str(b) for b in unavailable['batch_size'])}: "
                      f"{unavailable['reason'].iloc[0]}.", ""]
        pay = ok[ok["bound"] >= 1]
        if not pay.empty:
            parts += [f"May pay off at batch {', '.join(str(b) for b in pay['batch_size'])}: measure, e.g. "
                      f"{_command(model, list(pay['batch_size']))}.", ""]
        else:
            parts += [f"At no batch size measured can a {gpu.name} pay off in eager mode; with CUDA graphs the "
                      f"bound is at most {fmt_x(ok['bound_graphs'].max())}.", ""]
    if not mv.empty:
        parts += ["### Measured speedups against the bound", ""]
        above = mv[mv["above"]]
        parts += ["Each GPU run is compared with the bound for its own GPU (matched by name: "
                  + ", ".join(sorted({f"{r.gpu_key} -> {r.gpu}" + ("" if r.matched else " (not matched)")
                                      for r in mv.itertuples()})) + ").", ""]
        if above.empty:
            parts += ["Every measured speedup is within its bound.", ""]
        else:
            parts += [f"- **flagged**: {r.model} batch {r.batch_size}: measured {fmt_x(r.measured)} > bound "
                      f"{fmt_x(r.bound)}: {r.why}." for r in above.itertuples()] + [""]
    if contour == "line":
        parts += [f"On the model size map above, the dashed white line is where the {gpu.name} bound equals 1: below "
                  "it (smaller models and batches) no GPU of that kind can pay off in eager mode.", ""]
    elif contour:
        parts += [f"On the model size map above, the {gpu.name} bound is {contour} 1 in every cell of the grid, so "
                  "no bound = 1 line crosses it.", ""]
    avail = bt[bt["available"].astype(bool)]
    if not avail.empty and (avail["bound"] >= 1).all() and (avail["binds"] == "host").any():
        parts += ["Where the host term binds the bound cannot fall below 1 on the machine that measured it: the CPU "
                  "step contains the dispatch of the same operators (the self-check below holds it to that). A "
                  "bound below 1 takes a GPU whose compute or memory floor exceeds this CPU's step; here the "
                  f"section's answer is the ceiling on the speedup ({DOC}).", ""]
    for kind in ("cpu", "cuda"):
        sc = bound.self_check(df, systems, kind)
        if not sc.empty:
            parts += [*self_check_lines(sc, kind), "", self_check_table(sc), ""]
    return parts


# --------------------------------------------------------------------------------------
# The bound = 1 contour on the size map (bench/breakeven.fig_device_map)
# --------------------------------------------------------------------------------------

def size_map_overlay(df: pd.DataFrame, tp: pd.DataFrame, systems: list[dict], gpu: GpuSpec | None = None,
                     gpus: dict[str, GpuSpec] | None = None) -> Callable | None:
    """A function (ax, device_key, models) that draws the bound = 1 contour on a CPU device's
    panel of the size map and returns "line", or, where the bound does not cross 1 inside the
    grid, says so on the panel and returns where it lies ("above", "below"); None where it
    drew nothing. None instead of the function without bounds."""
    from bench.breakeven import _grid

    gpu, gpus = resolve(gpu, gpus)
    bt = bound.bound_table(df, tp, systems, gpu)
    if bt.empty or not bt["available"].astype(bool).any():
        return None
    pts = bt[bt["available"].astype(bool)].copy()
    pts["log_bound"] = np.log2(pts["bound"].astype(float))

    def draw(ax, device_key: str, models: list[str]) -> str | None:
        d = pts[pts["device_key"] == device_key]
        if d.empty:
            return None
        xs, ys, z = _grid(d, "log_bound", models)
        if z.count() == 0:
            return None
        label = f"{gpu.name} bound = 1 (eager)"
        if len(xs) >= 2 and len(ys) >= 2 and z.min() < 0 < z.max():
            cs = ax.contour(xs, ys, z, levels=[0.0], colors="white", linestyles="--", linewidths=2)
            ax.clabel(cs, fmt={0.0: label}, fontsize=7)
            return "line"
        where = "below" if z.max() < 0 else "above" if z.min() > 0 else "on both sides of"
        ax.text(0.01, 0.01, f"{gpu.name} speedup bound (eager): {where} 1 in every cell", transform=ax.transAxes,
                fontsize=7, color="white", backgroundcolor="black")
        return where

    return draw


class Section:
    """The report's pieces for one GPU: `overlay` for the size map (bench/breakeven.py),
    then `lines()` for the section (which mentions the contour when it was drawn)."""

    def __init__(self, df: pd.DataFrame, tp: pd.DataFrame, systems: list[dict], gpu: GpuSpec | None = None,
                 gpus: dict[str, GpuSpec] | None = None):
        self.df, self.tp, self.systems = df, tp, systems
        self.gpu, self.gpus = resolve(gpu, gpus, df)
        self.contour: str | None = None
        self._draw = size_map_overlay(df, tp, systems, self.gpu, self.gpus) if not tp.empty else None

    def overlay(self, ax, device_key: str, models: list[str]) -> None:
        drawn = self._draw(ax, device_key, models) if self._draw is not None else None
        if drawn is not None and self.contour != "line":
            self.contour = drawn

    def lines(self) -> list[str]:
        return report_section(self.df, self.tp, self.systems, self.gpu, self.gpus, contour=self.contour)
