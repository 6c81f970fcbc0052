"""The accuracy equivalence part of a report: the verdicts that lead the summary when a pair
is not equivalent, and the section with its table, each precision verdict beside the
arithmetic features of the machine that produced it (a bf16 verdict on a CPU with native
bf16 dot products need not hold on one that emulates them).
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from bench.equivalence import explanation, verdict_table
from bench.system import CPU_FEATURES


def features_text(system: dict) -> str | None:
    """"AMD EPYC: avx512_bf16 yes, amx_bf16 no, ...; oneDNN 3.12.0, MKL 2024.2" or None."""
    feats = system.get("cpu_features")
    if not feats:
        return None
    shown = ", ".join(f"{f} {'yes' if feats.get(f) else 'no'}" for f in CPU_FEATURES if f in feats)
    libs = ", ".join(f"{name} {system[key]}" for key, name in (("onednn", "oneDNN"), ("mkl", "MKL")) if system.get(key))
    return f"{system.get('cpu_model') or 'CPU'}: {shown}" + (f"; {libs}" if libs else "")


def _machine(r, systems: Sequence[dict]) -> str | None:
    """The arithmetic facts behind a CPU reduced-precision verdict (None for other pairs)."""
    if r.cand_device != "cpu" or r.cand_precision == "fp32":
        return None
    texts = {t for s in systems if (t := features_text(s))}
    return "; ".join(sorted(texts)) if texts else "CPU features not recorded (a run from before they were)"


def lead_lines(eq: pd.DataFrame, systems: Sequence[dict] = ()) -> list[str]:
    """The summary's first lines: every pair found not equivalent, a finding that comes before
    any speed figure."""
    if eq.empty:
        return []
    lines = []
    for r in eq[eq["verdict"] == "not equivalent"].itertuples():
        machine = _machine(r, systems)
        lines.append(f"**Accuracy: {r.candidate} is not equivalent to {r.reference}** ({r.model}, batch "
                     f"{r.batch_size}, {r.seeds} seeds): {r.diff_pp:+.2f} pp, CI [{r.ci_low_pp:+.2f}, "
                     f"{r.ci_high_pp:+.2f}] against a +-{r.margin_pp:g} pp margin"
                     + (f". Machine: {machine}" if machine else "") + ".")
    return lines


def section(eq: pd.DataFrame, margin_pp: float, alpha: float, systems: Sequence[dict] = ()) -> list[str]:
    parts = ["## Accuracy equivalence", ""]
    if eq.empty:
        return parts + ["No pairs to compare (accuracy runs with a CPU or CUDA fp32 reference are needed).", ""]
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
    for r in eq.itertuples():
        machine = _machine(r, systems)
        parts.append(f"- {r.model} bs {r.batch_size}, {r.candidate} vs {r.reference}: **{r.verdict}**: {r.reason}"
                     + (f"{'' if str(r.reason).rstrip().endswith('.') else '.'} Arithmetic of the machine: "
                        f"{machine}." if machine else ""))
    return parts + [""]
