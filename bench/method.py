"""The report's methodology section, written from the rows' own fields (timing method,
passes, rounds, warm-up, interval) and the constants of the modules that define the method
(bench/protocol.py, bench/passes.py, bench/timing.py), so the text cannot describe a method
the rows did not use. Rows measured by an older harness are named as such.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from bench import passes, protocol
from bench.measure import CEILING_FLAG
from bench.timing import CI_LEVEL, NOISY_IQR_RATIO


def _span(values) -> str:
    xs = sorted({int(v) for v in values if v == v and v is not None})
    if not xs:
        return "?"
    return str(xs[0]) if xs[0] == xs[-1] else f"{xs[0]}-{xs[-1]}"


def _gspan(values) -> str:
    xs = sorted({float(v) for v in values if v == v and v is not None})
    if not xs:
        return "?"
    return f"{xs[0]:g}" if xs[0] == xs[-1] else f"{xs[0]:g}-{xs[-1]:g}"


def grid_raw(rows: Sequence[dict]) -> list[dict]:
    return [r for r in rows if r.get("status") == "ok" and not r.get("epochs") and r.get("train_images_per_s")]


def timing_lines(rows: Sequence[dict]) -> list[str]:
    """How the throughput grid's rows were timed, from their fields."""
    grid = grid_raw(rows)
    if not grid:
        return []
    methods = sorted({r.get("timing_method") or "?" for r in grid})
    cfgs = [r.get("config") or {} for r in grid]
    compiled = any(c.get("compile") for c in cfgs)
    lines = [
        f"- Timing (bench/protocol.py): {', '.join(methods)} (CPU: `perf_counter` after each step; CUDA: events "
        "recorded after each step, read after one synchronize per block). Warm-up runs until two consecutive steps "
        f"agree within {protocol.SETTLE:.0%} (in a later pass: or one step agrees that well with the steady step the "
        f"earlier passes measured; at least {protocol.Policy().warmup_min} steps"
        + (f", {protocol.COMPILED_WARMUP_MIN} when compiled" if compiled else "")
        + f"), bounded by {_gspan(c.get('warmup_seconds') for c in cfgs)} s after the first step (and "
        f"{_span(c.get('warmup_steps') for c in cfgs)} steps); it is never charged to the time budget, and what it "
        "cost beyond steady steps (compilation, autotuning, first allocations) is `startup_seconds`.",
    ]
    settled = sum(1 for r in grid if r.get("warmup_settled") is not False)
    lines.append(f"- Warm-up settled by its rule in {settled} of {len(grid)} throughput rows"
                 + (" (in every pass)" if any(r.get("pass_results") for r in grid) else "") + "; "
                 f"{_span(r.get('warmup_steps') for r in grid)} warm-up steps per row.")
    with_rounds = [r for r in grid if r.get("rounds")]
    if with_rounds:
        lines.append("- Then the training loop and its compute-only ceiling (the same step on one batch already on "
                     "the device) run in interleaved ABBA rounds, so a change of the machine's load hits both, until "
                     f"each median step is known within the target ({CI_LEVEL:.0%} confidence interval, "
                     "distribution-free) or the timed budget ends: "
                     f"{_span(r.get('timed_steps') for r in with_rounds)} timed steps and "
                     f"{_span(r.get('rounds') for r in with_rounds)} rounds per row.")
    return lines + passes_lines(grid) + older_lines(grid)


def passes_lines(grid: Sequence[dict]) -> list[str]:
    planned = [int((r.get("config") or {}).get("passes") or 1) for r in grid if r.get("pass_results")]
    if not planned:
        return []
    run = [int(r.get("passes_run") or 0) for r in grid if r.get("pass_results")]
    extra = sum(1 for p, n in zip(planned, run) if n > p)
    if max(planned) <= 1:
        return ["- One pass over the grid: each configuration was visited once, so a row states no interval "
                "(`--passes 3` measures its spread across the sweep)."]
    pool = passes.pooled_variance(grid)
    return [
        f"- Passes across the sweep (bench/passes.py): the grid was measured in {_span(planned)} passes, each "
        "visiting every configuration once in a freshly shuffled, seeded order (a model's batch sizes ascending in "
        "the first pass; the precisions, layouts and input paths of one model and batch size back to back) with "
        "1/passes of its budget. A row's throughput is the median over its passes; its fraction of ceiling is "
        "formed within each pass; ratios between rows (precision gains, GPU/CPU speedups) are formed within each "
        "pass both ran, then their median.",
        f"- A row's interval (`train_images_per_s_low` / `_high`) is where a repeat run's value should fall "
        f"{passes.INTERVAL_LEVEL:.0%} of the time: a Student t prediction interval on log throughput from the spread "
        f"between its passes, moderated with the run's pooled pass-to-pass spread (weight {passes.PRIOR_DF} "
        "degrees of freedom" + (f"; pooled sd {pool[0] ** 0.5:.1%} over {pool[1]} degrees of freedom" if pool else "")
        + "). It is checked against real repeats with `cifar-bench compare`.",
        f"- Passes that disagree by more than {passes.EXTRA_PASS_SPREAD:.0%} earn up to {passes.EXTRA_PASSES} extra "
        f"passes, within {passes.EXTRA_TIME_SHARE:.0%} of the time the planned passes took: {extra} of "
        f"{len(planned)} rows got them.",
    ]


def older_lines(grid: Sequence[dict]) -> list[str]:
    lines = []
    no_rounds = [r for r in grid if not r.get("rounds")]
    no_passes = [r for r in grid if r.get("pass_results") is None and r.get("rounds")]
    if no_rounds:
        lines.append(f"- {len(no_rounds)} throughput rows come from an older harness: consecutive timed steps after "
                     "one warm-up step, throughput = batch / median step, no ceiling rounds, no interval.")
    if no_passes:
        lines.append(f"- {len(no_passes)} throughput rows were measured before passes: one visit per configuration, "
                     "their stated precision (`median_ci`) comes from consecutive steps and no interval is stated.")
    return lines


def accuracy_lines(df: pd.DataFrame) -> list[str]:
    acc = df[(df["status"] == "ok") & (df["epochs"].fillna(0) > 0)]
    if acc.empty:
        return []
    return ["- Accuracy and time-to-accuracy runs are trained once each (not in passes): every epoch is timed end to "
            "end (data included, synchronised before and after), then the whole test set is evaluated outside the "
            "epoch's clock; their speed is the epoch time, never part of the throughput grid or its headlines."]


def figure_lines() -> list[str]:
    return [
        "- Throughput (the headline) = images / total timed time, every timed step counted (stalls at epoch "
        "boundaries or from DataLoader workers included); the median step and its interquartile range are the "
        f"stability figures; IQR/median > {NOISY_IQR_RATIO:.0%} is flagged noisy. *of ceiling* = throughput / ceiling "
        f"throughput: what the input path and loop cost; above {CEILING_FLAG} it is a measurement problem.",
        "- A row with a measurement problem (of ceiling above "
        f"{CEILING_FLAG}, MFU above 100%) is left out of the figures' lines and every headline entirely: it is drawn "
        "as a hollow point and "
        "listed with its reason under Warnings.",
    ]
