"""Accuracy equivalence across devices and precisions, from stored results alone.

Pairing: runs are grouped by what must match for a fair comparison (model, batch size,
epochs, data and its sizes, augmentation, input path). Within a group each *side* is one
way of running it (run folder, host, device, precision, layout, compile, threads, learning
rate, processes). The reference side is the first one-process CPU fp32 side in the order
the run folders were given (else the first CPU fp32 side, else the first CUDA fp32 side);
every other side is compared against it, seed by seed: the two runs of one seed started
from identical weights and saw identical batches, so their differences come from
arithmetic alone. `batch_size` is the global batch, so an N-process data-parallel run
(label "x N") pairs with the one-process run at the same global batch: its ranks' shards
of each step are exactly the one-process batch, and DDP averages their gradients.

Per pair and seed: both accuracies, the agreement rate of per-example predictions, and
McNemar's exact test on the discordant examples. Across seeds: the paired accuracy
differences go into two one-sided t-tests (TOST) against a margin (default 1.0 percentage
point). Verdicts:
  equivalent       the (1 - 2 alpha) confidence interval of the mean difference lies inside
                   (-margin, +margin), i.e. both one-sided tests reject at alpha;
  not equivalent   the interval lies wholly outside the margin (or, with one seed, the
                   difference exceeds the margin and McNemar's test is significant);
  inconclusive     anything else, with the reason (too few seeds, interval too wide).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from bench.markdown import to_markdown
from bench.results import load_predictions, load_run

GROUP_KEYS = ("model", "batch_size", "epochs", "train_size", "test_size", "data", "augment", "data_path")
SIDE_KEYS = ("run_index", "host", "device", "precision", "channels_last", "compile", "threads", "lr", "world_size")
VERDICTS = ("equivalent", "not equivalent", "inconclusive")


@dataclass(frozen=True)
class SeedComparison:
    seed: int
    ref_accuracy: float  # percent
    cand_accuracy: float
    agreement: float | None  # fraction of test examples with the same prediction
    discordant_ref_only: int | None  # reference right, candidate wrong
    discordant_cand_only: int | None
    mcnemar_p: float | None


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: a binomial test of b successes in b + c at 1/2."""
    if b + c == 0:
        return 1.0
    return float(stats.binomtest(min(b, c), b + c, 0.5).pvalue)


def compare_seed(seed: int, ref: dict, cand: dict, ref_dir: str, cand_dir: str) -> SeedComparison:
    ref_acc, cand_acc = 100 * ref["test_accuracy"], 100 * cand["test_accuracy"]
    pr, pc = load_predictions(ref_dir, ref), load_predictions(cand_dir, cand)
    if pr is None or pc is None:
        return SeedComparison(seed, ref_acc, cand_acc, None, None, None, None)
    (pred_r, labels_r), (pred_c, labels_c) = pr, pc
    if labels_r.shape != labels_c.shape or not np.array_equal(labels_r, labels_c):
        raise ValueError(f"seed {seed}: the two runs were evaluated on different test sets")
    right_r, right_c = pred_r == labels_r, pred_c == labels_c
    b = int(np.sum(right_r & ~right_c))
    c = int(np.sum(~right_r & right_c))
    return SeedComparison(seed, ref_acc, cand_acc, float(np.mean(pred_r == pred_c)), b, c, mcnemar_exact(b, c))


@dataclass(frozen=True)
class Verdict:
    verdict: str
    reason: str
    mean_diff: float  # candidate - reference, percentage points
    ci_low: float
    ci_high: float
    tost_p: float | None


def tost(diffs: Sequence[float], margin: float, alpha: float = 0.05,
         seeds: Sequence[SeedComparison] = ()) -> Verdict:
    """Equivalence of paired differences (percentage points) within +-margin."""
    d = np.asarray(diffs, dtype=float)
    n = len(d)
    mean = float(d.mean()) if n else math.nan
    if n == 0:
        return Verdict("inconclusive", "no seed present on both sides", mean, math.nan, math.nan, None)
    if n == 1:
        p = seeds[0].mcnemar_p if seeds else None
        if abs(mean) >= margin and p is not None and p < alpha:
            return Verdict("not equivalent", f"one seed: difference {mean:+.2f} pp exceeds the {margin:g} pp "
                           f"margin and McNemar p = {p:.2g} < {alpha:g}", mean, math.nan, math.nan, None)
        return Verdict("inconclusive", "one seed only: the seed-to-seed spread is unknown; run 2 or more seeds",
                       mean, math.nan, math.nan, None)
    sd = float(d.std(ddof=1))
    se = sd / math.sqrt(n)
    if se == 0:
        ci_low = ci_high = mean
        p = 0.0 if abs(mean) < margin else 1.0
    else:
        t_crit = float(stats.t.ppf(1 - alpha, n - 1))
        ci_low, ci_high = mean - t_crit * se, mean + t_crit * se
        p_low = float(stats.t.sf((mean + margin) / se, n - 1))  # H0: diff <= -margin
        p_high = float(stats.t.cdf((mean - margin) / se, n - 1))  # H0: diff >= +margin
        p = max(p_low, p_high)
    level = f"{100 * (1 - 2 * alpha):g}%"
    interval = f"{level} CI [{ci_low:+.2f}, {ci_high:+.2f}] pp"
    if -margin < ci_low and ci_high < margin:
        return Verdict("equivalent", f"{interval} inside +-{margin:g} pp (TOST p = {p:.2g}, {n} seeds)",
                       mean, ci_low, ci_high, p)
    if ci_low >= margin or ci_high <= -margin:
        return Verdict("not equivalent", f"{interval} wholly outside +-{margin:g} pp ({n} seeds)",
                       mean, ci_low, ci_high, p)
    return Verdict("inconclusive", f"{interval} crosses the +-{margin:g} pp margin ({n} seeds); more seeds "
                   "would narrow it", mean, ci_low, ci_high, p)


def _side_label(side: dict, multi_run: bool, ref: dict | None = None) -> str:
    text = f"{side['device']} {side['precision']}"
    if side.get("channels_last"):
        text += " cl"
    if side.get("compile"):
        text += " compiled"
    text += f" t{side['threads']}"
    if (side.get("world_size") or 1) > 1:
        text += f" x{side['world_size']}"
    if ref is not None and side.get("lr") != ref.get("lr"):
        text += f" lr={side['lr']:g}"
    if multi_run:
        text += f" @{side['host']}#{side['run_index'] + 1}"
    return text


def accuracy_rows(run_dirs: Sequence[Path | str], warn=None) -> list[dict]:
    """Finished accuracy runs (status ok, epochs > 0) from all folders, with their folder."""
    rows = []
    for i, folder in enumerate(run_dirs):
        _, raw, _ = load_run(folder, warn)
        for r in raw:
            if r.get("status") == "ok" and (r.get("epochs") or 0) > 0 and r.get("test_accuracy") is not None:
                # rows from before scale-out have no world_size: one process
                rows.append({**r, "world_size": r.get("world_size") or 1, "run_index": i, "run_dir": str(folder)})
    return rows


def equivalence_table(run_dirs: Sequence[Path | str], margin_pp: float = 1.0, alpha: float = 0.05,
                      warn=None) -> pd.DataFrame:
    """One row per (group, candidate side): the comparison with its verdict."""
    rows = accuracy_rows(run_dirs, warn)
    multi_run = len(run_dirs) > 1
    out = []
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r.get(k) for k in GROUP_KEYS), []).append(r)
    for gkey, members in groups.items():
        sides: dict[tuple, list[dict]] = {}
        for r in members:
            sides.setdefault(tuple(r.get(k) for k in SIDE_KEYS), []).append(r)
        order = sorted(sides, key=lambda s: (s[0], s[2] != "cpu", s[3] != "fp32", str(s)))
        ws = SIDE_KEYS.index("world_size")
        ref_key = next((s for s in order if s[2] == "cpu" and s[3] == "fp32" and s[ws] == 1), None) or \
            next((s for s in order if s[2] == "cpu" and s[3] == "fp32"), None) or \
            next((s for s in order if str(s[2]).startswith("cuda") and s[3] == "fp32"), None)
        if ref_key is None:
            continue
        ref_by_seed = {r["seed"]: r for r in sides[ref_key]}
        ref_accs = [100 * r["test_accuracy"] for r in ref_by_seed.values()]
        ref_sd = float(np.std(ref_accs, ddof=1)) if len(ref_accs) > 1 else math.nan
        for side_key in order:
            if side_key == ref_key:
                continue
            cand_by_seed = {r["seed"]: r for r in sides[side_key]}
            seeds = sorted(set(ref_by_seed) & set(cand_by_seed))
            comps = [compare_seed(s, ref_by_seed[s], cand_by_seed[s], ref_by_seed[s]["run_dir"],
                                  cand_by_seed[s]["run_dir"]) for s in seeds]
            v = tost([c.cand_accuracy - c.ref_accuracy for c in comps], margin_pp, alpha, comps)
            cand_accs = [c.cand_accuracy for c in comps]
            agreements = [c.agreement for c in comps if c.agreement is not None]
            pvalues = [c.mcnemar_p for c in comps if c.mcnemar_p is not None]
            ref_side = dict(zip(SIDE_KEYS, ref_key))
            cand_side = dict(zip(SIDE_KEYS, side_key))
            out.append({
                **dict(zip(GROUP_KEYS, gkey)),
                "reference": _side_label(ref_side, multi_run),
                "candidate": _side_label(cand_side, multi_run, ref_side),
                "ref_device": ref_side["device"], "ref_precision": ref_side["precision"],
                "cand_device": cand_side["device"], "cand_precision": cand_side["precision"],
                "seeds": len(comps),
                "ref_acc_mean": float(np.mean([c.ref_accuracy for c in comps])) if comps else math.nan,
                "ref_acc_sd_all_seeds": ref_sd,
                "cand_acc_mean": float(np.mean(cand_accs)) if comps else math.nan,
                "cand_acc_sd": float(np.std(cand_accs, ddof=1)) if len(comps) > 1 else math.nan,
                "diff_pp": v.mean_diff, "ci_low_pp": v.ci_low, "ci_high_pp": v.ci_high,
                "margin_pp": margin_pp, "tost_p": v.tost_p,
                "agreement": float(np.mean(agreements)) if agreements else math.nan,
                "mcnemar_p_min": min(pvalues) if pvalues else math.nan,
                "per_seed": "; ".join(f"seed {c.seed}: {c.ref_accuracy:.2f} vs {c.cand_accuracy:.2f}"
                                      + (f" (agree {100 * c.agreement:.1f}%, McNemar p={c.mcnemar_p:.2g})"
                                         if c.agreement is not None else "") for c in comps),
                "verdict": v.verdict, "reason": v.reason,
            })
    return pd.DataFrame(out)


def verdict_table(frame: pd.DataFrame) -> str:
    """A compact markdown table of the verdicts, for the terminal and the report."""
    if frame.empty:
        return "(no pairs to compare)"
    cols = ["model", "batch_size", "epochs", "data", "reference", "candidate", "seeds", "ref_acc_mean",
            "cand_acc_mean", "diff_pp", "ci_low_pp", "ci_high_pp", "agreement", "mcnemar_p_min", "verdict"]
    view = frame[cols].rename(columns={"batch_size": "batch", "ref_acc_mean": "ref acc %",
                                       "cand_acc_mean": "cand acc %", "diff_pp": "diff pp",
                                       "ci_low_pp": "CI low", "ci_high_pp": "CI high",
                                       "mcnemar_p_min": "McNemar p (min)"})
    return to_markdown(view, floatfmt=".3g")


def run_equivalence(run_dirs: Sequence[Path], margin_pp: float = 1.0, alpha: float = 0.05,
                    out: Path | None = None) -> int:
    """The `cifar-bench equivalence` command: print verdicts, write equivalence.csv, and
    return 1 when any pair is not equivalent."""
    frame = equivalence_table(run_dirs, margin_pp, alpha, warn=lambda m: print(f"warning: {m}"))
    target = Path(out or run_dirs[0])
    target.mkdir(parents=True, exist_ok=True)
    frame.to_csv(target / "equivalence.csv", index=False)
    if frame.empty:
        print("equivalence: no pairs to compare (needs accuracy runs, epochs > 0, with a CPU or CUDA fp32 "
              "reference and the same model, batch size and data)")
        return 0
    print(verdict_table(frame))
    for _, r in frame.iterrows():
        print(f"- {r['model']} bs={r['batch_size']}: {r['candidate']} vs {r['reference']}: "
              f"{r['verdict'].upper()}: {r['reason']}")
    spread = frame.dropna(subset=["ref_acc_sd_all_seeds"]).drop_duplicates(["model", "batch_size", "reference"])
    for r in spread.itertuples():
        print(f"  seed-to-seed spread of the reference ({r.model} bs {r.batch_size}, {r.reference}): "
              f"sd {r.ref_acc_sd_all_seeds:.2f} pp over {r.seeds} seeds; margin {margin_pp:g} pp")
    print(f"equivalence: {len(frame)} pairs, {(frame['verdict'] == 'equivalent').sum()} equivalent, "
          f"{(frame['verdict'] == 'not equivalent').sum()} not equivalent, "
          f"{(frame['verdict'] == 'inconclusive').sum()} inconclusive; written to {target / 'equivalence.csv'}")
    return 1 if (frame["verdict"] == "not equivalent").any() else 0
