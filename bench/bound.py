"""The bound on a GPU's speedup, computed from stored rows only (docs/gpu-bound.md).

An eager training step on a GPU cannot take less than the largest of
  host     step_ops x the least host cost of one operator on this machine (system.json),
  compute  training FLOPs per step / the GPU's dense peak at the precision it runs,
  memory   the least bytes a step moves / the GPU's memory bandwidth,
so its speedup over this CPU is at most (the CPU's step) / that. With CUDA graphs the host
term drops out. The operators and bytes were measured on this CPU (bench/stepcost.py); the
GPU's figures are datasheet assumptions (bench/gpus.json).

Which GPU precision: the bound is over every precision the GPU could run, so it is the
smallest lower step of fp32 (no tensor cores), tf32, bf16 and fp16. fp32 and tf32 take an
fp32 row's operators and bytes; bf16 and fp16 take a bf16 row's, or an fp32 row's with the
saved activations halved (bf16 is the narrowest type autocast uses) and its operators (autocast
and a GradScaler only add operators): each a floor of what that precision needs.

The same arithmetic on a measured row of its own device (its measured matmul peak and memory
bandwidth in place of a datasheet) must stay below what that row achieved: `self_check`.
With CUDA rows, each measured speedup is set against the bound for the GPU that ran, and one
above it is flagged with its likeliest cause: `measured_vs_bound`.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from bench.frames import best_per_batch, models_in
from bench.gpus import GpuSpec, for_device

TERMS = ("host", "compute", "memory")
GPU_PRECISIONS = ("fp32", "tf32", "bf16", "fp16")
MEASURED = ("step_ops", "step_min_bytes", "step_saved_bytes")


# --------------------------------------------------------------------------------------
# Per-sweep facts from system.json
# --------------------------------------------------------------------------------------

def _system_of(systems: list[dict], run_dir) -> dict:
    for s in systems:
        if str(s.get("run_dir")) == str(run_dir):
            return s
    return {}


def host_us_per_op(system: dict) -> float | None:
    h = system.get("host_op") or {}
    values = [v for v in (h.get("us_per_op"), h.get("us_per_op_after")) if v]
    return min(values) if values else None


def bandwidth_gbps(system: dict, device_kind: str) -> float | None:
    values = [max(v for v in (m.get("gbps"), m.get("gbps_after")) if v)
              for m in system.get("memory_bandwidth", []) if str(m.get("device", "")).split(":")[0] == device_kind]
    return max(values) if values else None


def measured_peak(system: dict, device_kind: str, precision: str) -> float | None:
    """The device's measured matmul peak in `precision` (TFLOP/s), the larger probe."""
    values = [max(v for v in (p.get("tflops"), p.get("tflops_after")) if v) for p in system.get("peaks", [])
              if str(p.get("device", "")).split(":")[0] == device_kind and p.get("precision") == precision]
    return max(values) if values else None


# --------------------------------------------------------------------------------------
# The arithmetic
# --------------------------------------------------------------------------------------

def lower_step(ops: float | None, host_us: float | None, flops: float, tflops: float | None, nbytes: float | None,
               gbps: float | None, graphs: bool = False) -> dict:
    """Seconds a step cannot beat, by term, and the largest (`step`) and which it is."""
    terms = {
        "host": None if graphs or ops is None or host_us is None else ops * host_us * 1e-6,
        "compute": None if not tflops or flops is None else flops / (tflops * 1e12),
        "memory": None if nbytes is None or not gbps else nbytes / (gbps * 1e9),
    }
    present = {k: v for k, v in terms.items() if v is not None}
    binds = max(present, key=present.get) if present else None
    return {**terms, "step": present[binds] if binds else None, "binds": binds}


def _num(x) -> float | None:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def gpu_inputs(rows: pd.DataFrame) -> dict[str, dict]:
    """Operators and bytes per GPU precision from one (device, model, batch size)'s CPU
    rows (see the module docstring); a precision without a floor is left out."""
    fp32 = rows[rows["precision"] == "fp32"].dropna(subset=["step_ops", "step_min_bytes"])
    bf16 = rows[rows["precision"] == "bf16"].dropna(subset=["step_ops", "step_min_bytes"])
    out = {}
    if not fp32.empty:
        full = {"ops": float(fp32["step_ops"].min()), "bytes": float(fp32["step_min_bytes"].min())}
        out["fp32"] = out["tf32"] = full
    half = []
    if not fp32.empty:
        half.append({"ops": float(fp32["step_ops"].min()),
                     "bytes": float((fp32["step_min_bytes"] - fp32["step_saved_bytes"].fillna(0)).min())})
    if not bf16.empty:
        half.append({"ops": float(bf16["step_ops"].min()), "bytes": float(bf16["step_min_bytes"].min())})
    if half:
        out["bf16"] = out["fp16"] = {"ops": min(h["ops"] for h in half), "bytes": min(h["bytes"] for h in half)}
    return out


def best_gpu_step(inputs: dict[str, dict], flops: float, host_us: float | None, gpu: GpuSpec,
                  graphs: bool = False) -> dict | None:
    """The smallest lower step over the GPU's precisions, with its precision and terms."""
    best = None
    for q in GPU_PRECISIONS:
        if q not in inputs or gpu.peak(q) is None:
            continue
        r = lower_step(inputs[q]["ops"], host_us, flops, gpu.peak(q), inputs[q]["bytes"], gpu.memory_gbps, graphs)
        if r["step"] is not None and (best is None or r["step"] < best["step"]):
            best = {**r, "precision": q, **inputs[q]}
    return best


def bound_table(df: pd.DataFrame, tp: pd.DataFrame, systems: list[dict], gpu: GpuSpec) -> pd.DataFrame:
    """Per CPU device, model and batch size: this CPU's best throughput (tp, as the headline),
    the GPU's lower step by term, and the bound on the speedup in eager mode and with CUDA
    graphs. `available` is False (with `reason`) where the rows lack the measurements."""
    cpu_tp = tp[tp["device_kind"] == "cpu"] if not tp.empty else tp
    if cpu_tp.empty:
        return pd.DataFrame()
    best = cpu_tp.loc[cpu_tp.groupby(["device_key", "model", "batch_size"])["images_per_s"].idxmax()]
    ok = df[(df["status"] == "ok") & (df["device_kind"] == "cpu") & (df["data_path"] == "device")
            & (df["world_size"] == 1)]
    out = []
    for b in best.itertuples():
        rows = ok[(ok["device_key"] == b.device_key) & (ok["model"] == b.model) & (ok["batch_size"] == b.batch_size)]
        flops = _num(rows["flops_per_image"].median()) if "flops_per_image" in rows else None
        host = [host_us_per_op(_system_of(systems, d)) for d in rows["run_dir"].unique()]
        host_us = min((h for h in host if h), default=None)
        base = {"device_key": b.device_key, "model": b.model, "batch_size": int(b.batch_size),
                "cpu_precision": b.precision, "cpu_images_per_s": float(b.images_per_s),
                "cpu_step_ms": 1e3 * b.batch_size / b.images_per_s, "flops_per_image": flops,
                "host_us_per_op": host_us, "gpu": gpu.name}
        missing = [c for c in MEASURED if c not in rows or rows[c].isna().all()]
        inputs = {} if missing else gpu_inputs(rows)
        reason = None
        if missing:
            reason = "rows written before operators and bytes per step were measured (rerun the sweep)"
        elif host_us is None:
            reason = "no host cost per operator in system.json (a sweep before the bound's probes)"
        elif flops is None:
            reason = "no FLOPs per image in the rows"
        elif not inputs:
            reason = "no fp32 or bf16 row to take operators and bytes from"
        eager = graphs = None
        if reason is None:
            step_flops = flops * b.batch_size
            eager = best_gpu_step(inputs, step_flops, host_us, gpu)
            graphs = best_gpu_step(inputs, step_flops, host_us, gpu, graphs=True)
            if eager is None:
                reason = f"{gpu.name} has no figures for the precisions measured here"
        if reason is not None:
            out.append({**base, "available": False, "reason": reason})
            continue
        cpu_step = b.batch_size / b.images_per_s
        out.append({**base, "available": True, "reason": None, "flops_per_step": flops * b.batch_size,
                    "ops": eager["ops"], "bytes": eager["bytes"], "gpu_precision": eager["precision"],
                    "host_ms": _ms(eager["host"]), "compute_ms": _ms(eager["compute"]),
                    "memory_ms": _ms(eager["memory"]), "gpu_step_ms": 1e3 * eager["step"], "binds": eager["binds"],
                    "bound": cpu_step / eager["step"], "graphs_precision": graphs["precision"],
                    "graphs_step_ms": 1e3 * graphs["step"], "graphs_binds": graphs["binds"],
                    "bound_graphs": cpu_step / graphs["step"]})
    return pd.DataFrame(out)


def _ms(x: float | None) -> float | None:
    return None if x is None else 1e3 * x


# --------------------------------------------------------------------------------------
# The bound on a measured device: never above what it achieved
# --------------------------------------------------------------------------------------

def self_check(df: pd.DataFrame, systems: list[dict], device_kind: str = "cpu") -> pd.DataFrame:
    """Every ok eager one-process row of `device_kind` with the measurements: its lower step
    from its own operators and bytes, the host cost, measured matmul peak and memory
    bandwidth of its own sweep; `ratio` = measured throughput / the bound's (at most 1 when
    the method holds). Compiled rows are left out (the bound is for eager steps)."""
    if df.empty or "step_ops" not in df:
        return pd.DataFrame()
    ok = df[(df["status"] == "ok") & (df["device_kind"] == device_kind) & (df["world_size"] == 1)
            & (df["data_path"] == "device") & (df["epochs"].fillna(0) == 0)
            & (~df["compile"].fillna(False).astype(bool))].dropna(subset=["step_ops", "step_min_bytes",
                                                                          "flops_per_image", "train_images_per_s"])
    out = []
    for r in ok.itertuples():
        system = _system_of(systems, r.run_dir)
        host_us, gbps = host_us_per_op(system), bandwidth_gbps(system, device_kind)
        peak = measured_peak(system, device_kind, r.precision)
        if host_us is None or gbps is None or peak is None:
            continue
        terms = lower_step(r.step_ops, host_us, r.flops_per_image * r.batch_size, peak, r.step_min_bytes, gbps)
        ratio = r.train_images_per_s * terms["step"] / r.batch_size
        out.append({"device_key": r.device_key, "model": r.model, "batch_size": int(r.batch_size),
                    "precision": r.precision, "seed": r.seed, "images_per_s": r.train_images_per_s,
                    "step_ms": 1e3 * r.batch_size / r.train_images_per_s, "host_ms": _ms(terms["host"]),
                    "compute_ms": _ms(terms["compute"]), "memory_ms": _ms(terms["memory"]),
                    "bound_step_ms": 1e3 * terms["step"], "binds": terms["binds"], "ratio": ratio,
                    "peak_tflops": peak, "gbps": gbps, "host_us_per_op": host_us, "run_dir": str(Path(r.run_dir))})
    return pd.DataFrame(out)


def fmt_x(x: float) -> str:
    """A speedup: two significant figures, whole numbers from 10."""
    return f"{x:,.0f}x" if x >= 10 else f"{x:.2g}x"


# --------------------------------------------------------------------------------------
# CUDA rows: the measured speedup next to the bound for that GPU
# --------------------------------------------------------------------------------------

def measured_vs_bound(df: pd.DataFrame, tp: pd.DataFrame, systems: list[dict], gpu: GpuSpec,
                      gpus: dict[str, GpuSpec]) -> pd.DataFrame:
    """Per CPU/GPU pair, model and batch size both measured: the measured speedup (each
    device's best, as the break-even map) and the bound for the GPU that ran (matched by
    name in the table; else `gpu`, said in `gpu`). `above` flags a speedup over its bound,
    `why` explains it."""
    if tp.empty or not (tp["device_kind"] == "cuda").any():
        return pd.DataFrame()
    out = []
    for model in models_in(tp):
        cpu = best_per_batch(tp, "cpu", model)
        gpu_rows = best_per_batch(tp, "cuda", model)
        for gkey in gpu_rows["device_key"].unique():
            g = gpu_rows[gpu_rows["device_key"] == gkey]
            names = df.loc[df["device_key"] == gkey, "device_name"].dropna()
            spec = for_device(str(names.iloc[0]), gpus) if not names.empty else None
            matched = spec is not None
            spec = spec or gpu
            bt = bound_table(df, tp, systems, spec)
            if bt.empty:
                continue
            gsys = [_system_of(systems, d) for d in df.loc[df["device_key"] == gkey, "run_dir"].unique()]
            gpu_host = min((h for h in map(host_us_per_op, gsys) if h), default=None)
            for ckey in cpu["device_key"].unique():
                c = cpu[cpu["device_key"] == ckey]
                for bs in sorted(set(c["batch_size"]) & set(g["batch_size"])):
                    b = bt[(bt["device_key"] == ckey) & (bt["model"] == model) & (bt["batch_size"] == bs)]
                    if b.empty or not bool(b["available"].iloc[0]):
                        continue
                    b = b.iloc[0]
                    measured = g.loc[g["batch_size"] == bs, "images_per_s"].max() / \
                        c.loc[c["batch_size"] == bs, "images_per_s"].max()
                    row = {"cpu": ckey, "gpu_key": gkey, "gpu": spec.name, "matched": matched, "model": model,
                           "batch_size": int(bs), "measured": measured, "bound": b["bound"],
                           "bound_graphs": b["bound_graphs"], "binds": b["binds"], "above": measured > b["bound"],
                           "why": None}
                    if row["above"]:
                        row["why"] = _explain(b, measured, gpu_host, spec, matched)
                    out.append(row)
    return pd.DataFrame(out)


def _explain(b, measured: float, gpu_host: float | None, spec: GpuSpec, matched: bool) -> str:
    if not matched:
        return (f"the bound is for {spec.name}, not the GPU that ran (add it to a --gpu-file with its device_names), "
                "so it does not apply")
    if b["binds"] == "host" and gpu_host is not None and gpu_host < b["host_us_per_op"]:
        host_ms = b["ops"] * gpu_host * 1e-3
        with_gpu_host = b["cpu_step_ms"] / max(host_ms, b["compute_ms"] or 0, b["memory_ms"] or 0)
        if measured <= with_gpu_host:
            return (f"the GPU machine's host CPU is faster than this one: it dispatches an operator in "
                    f"{gpu_host:.2g} us against {b['host_us_per_op']:.2g} us here (with its cost the bound is "
                    f"{fmt_x(with_gpu_host)})")
    text = (f"a term was mis-measured or a datasheet figure is off: the binding term ({b['binds']}, "
            f"{b[b['binds'] + '_ms']:.3g} ms of a {b['cpu_step_ms']:.3g} ms CPU step) cannot hold for this GPU")
    if b["binds"] == "compute":
        text += (" (FLOPs are counted as direct convolutions: cuDNN's Winograd or FFT algorithms do fewer, up to "
                 "2.25x fewer multiplies for a 3x3 convolution)")
    return text
