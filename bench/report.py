"""report.md, built from stored results only (nothing is re-run): the summary in words, the
headline table, tables, methodology and warnings; figures: bench/figures.py, frames:
bench/frames.py.

Several run folders can be merged (a CPU run from a laptop with a GPU run from a server).
Figures are PNGs beside report.md, linked relatively. Colour identifies a device (one per
device and machine), line style a precision.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from bench import accuracy_report, bound_report, breakeven, cost, energy_report, method
from bench.equivalence import equivalence_table
from bench.figures import fig_accuracy, fig_data_paths, fig_epoch_time, fig_speedup, lines_vs_batch
from bench.frames import (
    amp_gain,
    device_colours,
    flagged_points,
    fmt_ips,
    load_runs,
    models_in,
    speedups,
    throughput,
)
from bench.markdown import to_markdown
from bench.report_warnings import not_run_lines, reliability_line, warnings_lines
from bench.results import markdown_table
from bench.time_to_accuracy import choice_lines, headline_cell, target_lines, tta_markdown, tta_table
from bench.time_to_accuracy import headline as tta_headline

# --------------------------------------------------------------------------------------
# Conclusions in plain words
# --------------------------------------------------------------------------------------

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
            if not s["common"]:
                text += "No batch size was measured on both devices, so where the GPU starts to win is unknown."
            elif s["wins_from"] is None:
                text += "The GPU never beats the CPU at the batch sizes measured on both. "
            elif s["wins_from"] == s["common"][0]:
                text += f"The GPU is faster at every batch size measured on both (from {s['wins_from']}). "
            else:
                text += f"The GPU wins from batch size **{s['wins_from']}** on. "
            if s["common"]:
                small = s["common"][0]
                text += f"At batch {small}: {s['ratio_by_bs'][small]:.2f}x."
        else:
            sub = tp[tp["model"] == model] if not tp.empty else tp
            if sub.empty:
                measured_acc = eq is not None and not eq.empty and (eq["model"] == model).any()
                text = ("no throughput measured (accuracy runs only: the throughput grid measures speed)."
                        if measured_acc else "no successful measurements.")
                if not measured_acc:
                    lines.append(head + text)
                    continue
            else:
                best = sub.loc[sub["images_per_s"].idxmax()]
                text = (f"Best {fmt_ips(best['images_per_s'])} on {best['device_key']} at batch "
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
            row["GPU wins from bs"] = "not measured on both" if not s["common"] else \
                "never" if s["wins_from"] is None else str(s["wins_from"])
        if not eq.empty:
            v = eq[eq["model"] == model]["verdict"].value_counts()
            row["accuracy"] = ", ".join(f"{n} {k}" for k, n in v.items())
        rows.append(row)
    return pd.DataFrame(rows).fillna("")


# --------------------------------------------------------------------------------------
# Tables and text
# --------------------------------------------------------------------------------------

def results_markdown(df: pd.DataFrame) -> str:
    cols = ["device_key", "model", "batch_size", "precision", "channels_last", "data_path", "seed", "epochs",
            "world_size", "status", "train_images_per_s", "train_images_per_s_low", "train_images_per_s_high",
            "passes_run", "step_ms_median", "step_ms_iqr", "eval_images_per_s", "fraction_of_ceiling", "test_accuracy",
            "epoch_seconds", "achieved_tflops", "mfu", "peak_memory_mb", "flags"]
    return markdown_table(df, cols)


SYSTEM_FIELDS = ("host", "cpu_model", "cpu_physical_cores", "cpu_logical_cores", "ram_gb", "os", "python", "torch",
                 "torchvision", "torch_cuda_build", "cpu_capability", "cpu_features", "onednn", "mkl",
                 "torch_threads_default", "gpu_name", "gpu_memory_gb", "gpu_capability", "driver", "cudnn",
                 "git_commit", "run_dir")


def _fact(s: dict, k: str):
    if k == "cpu_features" and isinstance(s.get(k), dict):
        return " ".join(f if on else f"no-{f}" for f, on in s[k].items())
    return s.get(k)


def system_markdown(systems: list[dict]) -> str:
    table = {f"run {i + 1}": {k: _fact(s, k) for k in SYSTEM_FIELDS} for i, s in enumerate(systems)}
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
                 "divides by the higher of the two, not by datasheet numbers):\n\n"
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
        "- Global img/s = global images / the slowest rank's total timed time (bench/measure.py `time_training`: "
        "every rank runs the same number of timed steps, agreed before each round; the rank whose steps took "
        "longest in total sets the job's speed). Per-rank median steps are in results.jsonl "
        "(`rank_step_ms_median`).",
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
        lines += method.timing_lines(rows) + method.figure_lines() + method.accuracy_lines(df)
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
                     "(matmuls and convolutions). MFU = achieved FLOP/s / the higher of the two matmul peak probes "
                     "below, before and after the sweep (\"of measured matmul peak\"); above 100% it is a measurement "
                     "problem (flagged, drawn hollow).")
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


def summary_text(run_dirs: Sequence[Path | str], margin_pp: float = 1.0, warn=None, alpha: float = 0.05,
                 prices: dict[str, float] | None = None, gpu=None, gpus=None) -> str:
    """The headline table and the verdicts, for a terminal (the same check as `equivalence`).
    `gpu`/`gpus`: the GPU of the speedup bound and the table (bench/gpus.py; None: the CUDA rows'
    GPU when the table knows it, else H100 SXM)."""
    df, _, systems = load_runs(run_dirs, warn)
    if df.empty:
        return "(no results)"
    tp = throughput(df)
    eq = equivalence_table(run_dirs, margin_pp, alpha, warn=warn)
    lead = accuracy_report.lead_lines(eq, systems)
    text = "".join(f"{line.replace('**', '')}\n\n" for line in lead) + to_markdown(headline(df, tp, eq))
    reliability = reliability_line(df, systems)
    if reliability:
        text += "\n\n" + reliability.replace("**", "")
    tta = tta_table(df)
    for model in models_in(df):
        s = speedups(tp, model)
        text += "".join(f"\n- {model}: {line}" for line in tta_headline(tta, model, s["speedup"] if s else None))
    counts = df["status"].value_counts()
    text += "\n\nconfigurations: " + ", ".join(f"{n} {k}" for k, n in counts.items())
    text += "".join(f"\n{line}" for line in not_run_lines(systems))  # a sweep cut short says what it lacks
    if not eq.empty:
        text += "\n" + "\n".join(f"- {r.model} bs {r.batch_size}: {r.candidate} vs {r.reference}: {r.verdict} "
                                 f"({r.diff_pp:+.2f} pp, {r.seeds} seeds)" for r in eq.itertuples())
    for line in (breakeven.summary_lines(df, tp) + (cost.cost_lines(df, tp, prices) if prices else [])
                 + bound_report.summary_lines(df, tp, systems, gpu, gpus)):
        text += "\n" + line.replace("**", "")
    text += "\n" + energy_report.summary_line(df)
    return text


def write_report(run_dirs: Sequence[Path | str], out: Path | str | None = None, margin_pp: float = 1.0,
                 warn=None, alpha: float = 0.05, prices: dict[str, float] | None = None, gpu=None,
                 gpus=None) -> Path:
    """Build report.md and figures in `out` (default: the first run folder). `gpu`/`gpus`:
    the GPU of the speedup bound and the table (bench/gpus.py; None: the CUDA rows' GPU when
    the table knows it, else H100 SXM)."""
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
    gpu_bound = bound_report.Section(df, tp, systems, gpu, gpus)  # the size map's contour, then its section
    parts = [
        *_title(run_dirs, df),
        "## Summary", "",
        *[f"- {line}" for line in accuracy_report.lead_lines(eq, systems) + breakeven.summary_lines(df, tp)
          + summary_lines(df, tp, eq) + bound_report.summary_lines(df, tp, systems, gpu, gpus)[:1]
          + [x for x in [reliability_line(df, systems)] if x]],
        "", to_markdown(headline(df, tp, eq)), "",
        *breakeven.report_section(df, tp, out, overlay=gpu_bound.overlay),
        *gpu_bound.lines(),
        *cost.report_section(df, tp, prices),
        *energy_report.report_section(df, systems, tp, colours, out, prices),
        *_figure_parts(_figures(df, tp, colours, out)),
        *_time_to_accuracy_parts(df),
        *_scaling_parts(df, out),
        *accuracy_report.section(eq, margin_pp, alpha, systems),
        "## Methodology", "", *methodology(df, rows, systems), "",
        "## Warnings", "",
        *(warnings_lines(df, systems) or ["None: no noisy, skipped, OOM, diverged or failed configurations."]), "",
        "## Results", "", results_markdown(df), "",
        "## Systems", "", system_markdown(systems), "",
    ]
    (out / "report.md").write_text("\n".join(parts))
    return out / "report.md"


def _title(run_dirs: Sequence[Path], df: pd.DataFrame) -> list[str]:
    n_ok = int((df["status"] == "ok").sum())
    data = ", ".join(sorted(set(df["data"].dropna()))) or "unknown"
    return ["# cifar-bench report", "",
            f"Generated {time.strftime('%Y-%m-%d %H:%M')} from {len(run_dirs)} run folder(s): "
            + ", ".join(f"`{d}`" for d in run_dirs) + f". {len(df)} configurations, {n_ok} ok. Data: **{data}**.",
            ""]


def _figures(df: pd.DataFrame, tp: pd.DataFrame, colours: dict, out: Path) -> dict[str, str | None]:
    """The figures that follow the summary: {title: PNG name, or None when not drawn}."""
    hollow = flagged_points(df)
    return {
        "Training throughput": lines_vs_batch(tp, colours, "images_per_s", "training throughput (images/s)",
                                              "Training throughput vs batch size (bars: each row's interval for "
                                              "a repeat run; hollow: flagged)", out, "throughput.png",
                                              flagged=hollow),
        "GPU/CPU speedup": fig_speedup(tp, colours, out),
        "Epoch time": fig_epoch_time(df, tp, colours, out),
        "Test accuracy per epoch": fig_accuracy(df, colours, out),
        "Peak memory": lines_vs_batch(tp, colours, "peak_memory_mb", "peak memory (MB)",
                                      "Peak memory vs batch size (each configuration's own peak over what it "
                                      "started from; the resident dataset apart)",
                                      out, "memory.png"),
        "Model FLOP utilisation": lines_vs_batch(tp, colours, "mfu", "MFU (of measured matmul peak)",
                                                 "MFU vs batch size", out, "mfu.png", flagged=hollow),
        "Input pipeline": fig_data_paths(df, colours, out),
        "Fraction of the compute-only ceiling": lines_vs_batch(
            tp, colours, "fraction_of_ceiling", "training throughput / compute-only ceiling",
            "The harness loop against the same step on a batch already on the device", out, "ceiling.png",
            logy=False, flagged=hollow),
    }


def _figure_parts(figures: dict[str, str | None]) -> list[str]:
    parts = []
    for title, name in figures.items():
        if name:
            parts += [f"## {title}", "", f"![{title}]({name})", ""]
    missing = [t for t, n in figures.items() if n is None and t in ("GPU/CPU speedup", "Test accuracy per epoch")]
    if missing:
        parts += ["Not drawn for lack of data: " + ", ".join(missing)
                  + " (the speedup needs CPU and CUDA results; accuracy needs runs with epochs > 0).", ""]
    return parts


def _time_to_accuracy_parts(df: pd.DataFrame) -> list[str]:
    tta = tta_table(df)
    if tta.empty:
        return []
    return ["## Time to accuracy", "",
            "Wall-clock training seconds (evaluation excluded) until the test accuracy, evaluated after each "
            "epoch, first reached the target, so the resolution is one epoch. Median over seeds; a run that "
            "never reached the target within the epoch bound counts as slower than any that did (\"not "
            "reached\" as the median: half or more never did). Range: the runs that reached it. The summary "
            "compares each device's fastest configuration at one target.", "",
            *[f"- Target: {line}" for line in target_lines(tta)],
            *[f"- Batch sizes: {line}" for line in choice_lines(df)], "", tta_markdown(tta), ""]


def _scaling_parts(df: pd.DataFrame, out: Path) -> list[str]:
    from bench.scaling import fig_scaling, scaling_markdown, scaling_table  # scale-out runs, when present

    scaling = scaling_table(df)
    if scaling.empty:
        return []
    return ["## Scaling out (data parallel)", "", f"![Scaling]({fig_scaling(df, out)})", "",
            *scaling_lines(df), "", scaling_markdown(scaling), ""]
