"""The report's Warnings section: what a reader must know before trusting a figure (noisy
steps, passes that disagreed, flagged rows, an unsettled warm-up, the machine moving during
the sweep, configurations skipped, out of memory, diverged or failed, and what a sweep cut
short did not run)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from bench import passes, protocol
from bench.measure import DRIFT_WARN


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
    flags = ok["flags"].fillna("").astype(str) if "flags" in ok else pd.Series("", index=ok.index)
    unsettled = 0
    for i, text in flags.items():
        parts = [f for f in text.split("; ") if f]
        unsettled += any(f.startswith("warm-up") for f in parts)
        problems = [f for f in parts if not f.startswith("warm-up")]  # MFU > 100%, of ceiling > 1.05
        if problems:
            r = ok.loc[i]
            lines.append(f"- measurement problem (flagged: drawn hollow, left out of the lines and headlines): "
                         f"{r.device_key} {r.model} bs {r.batch_size} {r.precision}: {'; '.join(problems)}")
    if unsettled:
        lines.append(f"- warm-up reached its bound before two steps agreed within {protocol.SETTLE:.0%} in {unsettled} "
                     f"of {len(ok)} ok rows (in at least one pass: a noisy machine, or a small warm-up bound); their "
                     "timed rounds still ran to at least the minimum steps and the median's target")
    spread = ok["pass_spread"].dropna() if "pass_spread" in ok else pd.Series(dtype=float)
    wide = spread[spread > passes.EXTRA_PASS_SPREAD].sort_values(ascending=False)
    if not wide.empty:
        worst = ", ".join(f"{ok.loc[i, 'model']} bs {ok.loc[i, 'batch_size']} {ok.loc[i, 'precision']} "
                          f"({v:.0%})" for i, v in wide.head(5).items())
        lines.append(f"- passes disagreed by more than {passes.EXTRA_PASS_SPREAD:.0%} (fastest / slowest pass) in "
                     f"{len(wide)} of {len(spread)} rows measured in passes; widest: {worst}. Their intervals are "
                     "wide accordingly.")
    older = ok[(ok["mfu"].fillna(0) > 1) & (flags == "")]  # rows from before flags existed
    if not older.empty:
        lines.append(f"- MFU above 100% in {len(older)} rows (up to {older['mfu'].max():.0%}): the matmul peak was "
                     "probed low; left out of figures and headlines.")
    for i, s in enumerate(systems):
        for d in s.get("drift", []):
            for when in ("before", "after"):
                if d.get(f"{when}_error"):
                    lines.append(f"- the {d['device']} drift reference failed {when} run {i + 1}'s sweep: "
                                 f"{d[f'{when}_error']}")
            if d.get("change") is not None and abs(d["change"]) > DRIFT_WARN:
                lines.append(f"- the machine moved during run {i + 1}: the {d['device']} drift reference ran at "
                             f"{d['before_images_per_s']:,.0f} img/s before the sweep and "
                             f"{d['after_images_per_s']:,.0f} after ({d['change']:+.0%}); compare its rows with care")
        for pk in s.get("peaks", []):
            if pk.get("change") is not None and abs(pk["change"]) > DRIFT_WARN:
                lines.append(f"- the {pk['device']} {pk['precision']} matmul peak moved {pk['change']:+.0%} between "
                             "the probes before and after the sweep: MFU figures carry that uncertainty")
    lines += not_run_lines(systems)
    for status in ("oom", "skipped", "diverged", "failed"):
        for r in df[df["status"] == status].itertuples():
            lines.append(f"- {status}: {r.device_key} {r.model} bs {r.batch_size} {r.precision}: {r.reason}")
    return lines


def reliability_line(df: pd.DataFrame, systems: Sequence[dict] = ()) -> str | None:
    """One sentence for the summary: how far a throughput figure of these runs holds (its
    interval, passes that disagreed) and whether the machine moved during them."""
    epochs = df["epochs"].fillna(0) if "epochs" in df else 0
    grid = df[(df["status"] == "ok") & (epochs == 0) & df["train_images_per_s"].notna()]
    if grid.empty:
        return None
    with_iv = grid.dropna(subset=["train_images_per_s_low", "train_images_per_s_high"])
    if with_iv.empty:
        text = ("**How far these numbers hold**: the rows state no interval (one pass, or measured before passes): "
                "how much a repeat run would differ is not known from these runs")
    else:
        half = ((with_iv["train_images_per_s_high"] - with_iv["train_images_per_s_low"])
                / (2 * with_iv["train_images_per_s"])).median()
        spread = grid["pass_spread"].dropna() if "pass_spread" in grid else pd.Series(dtype=float)
        text = (f"**How far these numbers hold**: a repeat run of a throughput row should land within its interval "
                f"(90% of the time); the median interval here is +-{half:.0%} of the value")
        if not spread.empty:
            text += (f", and the passes of {int((spread > passes.EXTRA_PASS_SPREAD).sum())} of {len(spread)} rows "
                     f"disagreed by more than {passes.EXTRA_PASS_SPREAD:.0%}")
    moved = []
    for s in systems:
        for d in s.get("drift") or []:
            if d.get("change") is not None and abs(d["change"]) > DRIFT_WARN:
                moved.append(f"its drift reference {d['change']:+.0%}")
        moved += [f"the {p['precision']} matmul peak {p['change']:+.0%}" for p in s.get("peaks") or []
                  if p.get("change") is not None and abs(p["change"]) > DRIFT_WARN]
    if moved:
        text += f"; the machine moved during the sweep ({', '.join(moved)} from start to end)"
    return text + ". Read smaller differences between rows as noise (Warnings, Methodology)."


def not_run_lines(systems: Sequence[dict]) -> list[str]:
    """What a run folder's sweep.json planned that its results lack (a sweep cut short by a
    stage limit, Ctrl-C or a crash): configurations without a row, and passes not measured."""
    import json

    from bench.config import RunConfig
    from bench.passes import is_grid
    from bench.results import ResultsStore, row_key

    lines = []
    for i, s in enumerate(systems):
        folder = Path(s.get("run_dir") or "")
        try:
            planned = [RunConfig.from_dict(d) for d in json.loads((folder / "sweep.json").read_text())]
        except (OSError, ValueError, TypeError):
            continue
        rows = {row_key(r): r for r in ResultsStore(folder).load(warn=lambda m: None)}
        missing = [c for c in planned if c.key() not in rows]
        short = [c for c in planned if c.key() in rows and is_grid(c) and rows[c.key()].get("status") == "ok"
                 and rows[c.key()].get("pass_results") is not None
                 and (rows[c.key()].get("passes_run") or 0) < c.passes]
        if missing:
            shown = "; ".join(c.label() for c in missing[:8]) + (f"; and {len(missing) - 8} more"
                                                                 if len(missing) > 8 else "")
            lines.append(f"- not run: {len(missing)} of {len(planned)} configurations that run {i + 1}'s sweep.json "
                         f"planned have no result (the sweep was cut short; `cifar-bench run --out {folder} --resume` "
                         f"runs them): {shown}")
        if short:
            lines.append(f"- {len(short)} configurations of run {i + 1} have fewer passes than planned (the sweep was "
                         "cut short, or a later pass failed): their intervals rest on fewer passes")
    return lines
