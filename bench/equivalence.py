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

Per pair and seed: both accuracies, the agreement rate of per-example predictions, McNemar's
exact test on the discordant examples (b: reference right and candidate wrong, c: the
reverse), and the test-set sampling error of the accuracy difference,
sqrt(b + c - (b - c)^2 / n) / n. Across seeds: the paired accuracy differences go into two
one-sided t-tests (TOST) against a margin (default 1.0 percentage point). Verdicts:
  equivalent       the (1 - 2 alpha) confidence interval of the mean difference lies inside
                   (-margin, +margin), i.e. both one-sided tests reject at alpha;
  not equivalent   the interval lies wholly outside the margin; with one seed, only a
                   difference beyond SINGLE_SEED_FACTOR (5) x the margin with McNemar's test
                   significant at alpha;
  inconclusive     anything else, with the observed difference and the reason. One seed is
                   inconclusive below that: it says nothing about the seed-to-seed spread
                   (about 1.1 pp sd for the paired difference of the tutorial Net, more than
                   the margin), and McNemar's test asks whether two trained models differ at
                   all, not whether they differ beyond the margin.
The sd of the differences is floored at the root mean square of the seeds' sampling errors,
so identical differences across seeds (common with 2-3 seeds on a small test set) give an
interval as wide as the test set allows, never a zero-width one; without predictions to
bound it, identical differences are inconclusive. McNemar's p is reported Holm-adjusted over
a pair's seeds (the smallest adjusted p: did any seed's two models differ?). Each pair is
tested at alpha on its own; "all pairs equivalent" makes no family-wise claim.
A seed recorded twice on one side keeps its first run (results.jsonl order), with a warning.

`cifar-bench equivalence` exits 0 when every pair is equivalent or inconclusive,
3 (EXIT_NOT_EQUIVALENT) when at least one pair is not equivalent, 1 on an error (results
that cannot be compared: EquivalenceError), 2 on bad usage.
"""

from __future__ import annotations

import math
import warnings
import zipfile
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
# A lone seed is called "not equivalent" only when its difference exceeds this many margins
# (and McNemar's test rejects). Seed-to-seed sd of the paired difference measured on the
# tutorial Net (10 seeds, bf16 vs fp32, reports/equivalence-tutorial-cpu-bf16-20261127):
# about 1.1 pp; with the default 1 pp margin, 5 pp is over 4 such sds.
SINGLE_SEED_FACTOR = 5.0
EXIT_NOT_EQUIVALENT = 3  # `cifar-bench equivalence`: a verdict, not an error (1) or bad usage (2)


@dataclass(frozen=True)
class SeedComparison:
    seed: int
    ref_accuracy: float  # percent
    cand_accuracy: float
    agreement: float | None  # fraction of test examples with the same prediction
    discordant_ref_only: int | None  # reference right, candidate wrong
    discordant_cand_only: int | None
    mcnemar_p: float | None
    n_test: int | None = None  # test examples both runs were evaluated on

    @property
    def diff_se_pp(self) -> float | None:
        """Test-set sampling error of this seed's accuracy difference (percentage points):
        the standard error of a paired difference of two classifiers on the same n examples,
        sqrt(b + c - (b - c)^2 / n) / n, from the discordant counts."""
        b, c, n = self.discordant_ref_only, self.discordant_cand_only, self.n_test
        if b is None or c is None or not n:
            return None
        return 100 * math.sqrt(max(b + c - (b - c) ** 2 / n, 0.0)) / n


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input order (family-wise over the list)."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: a binomial test of b successes in b + c at 1/2."""
    if b + c == 0:
        return 1.0
    return float(stats.binomtest(min(b, c), b + c, 0.5).pvalue)


class EquivalenceError(Exception):
    """Stored results that cannot be compared (different test sets, unreadable predictions):
    an error, not a verdict. The message names the runs."""


def _predictions(folder: str, row: dict):
    try:
        return load_predictions(folder, row)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
        where = Path(folder) / str(row.get("predictions_file"))
        raise EquivalenceError(f"cannot read the predictions of {row.get('device')} {row.get('precision')} "
                               f"seed {row.get('seed')} ({where}): {e}") from None


def compare_seed(seed: int, ref: dict, cand: dict, ref_dir: str, cand_dir: str) -> SeedComparison:
    ref_acc, cand_acc = 100 * ref["test_accuracy"], 100 * cand["test_accuracy"]
    pr, pc = _predictions(ref_dir, ref), _predictions(cand_dir, cand)
    if pr is None or pc is None:
        return SeedComparison(seed, ref_acc, cand_acc, None, None, None, None)
    (pred_r, labels_r), (pred_c, labels_c) = pr, pc
    if labels_r.shape != labels_c.shape or not np.array_equal(labels_r, labels_c):
        raise EquivalenceError(f"seed {seed}: the two runs were evaluated on different test sets "
                               f"({ref_dir}: {ref.get('device')} {ref.get('precision')}; "
                               f"{cand_dir}: {cand.get('device')} {cand.get('precision')})")
    right_r, right_c = pred_r == labels_r, pred_c == labels_c
    b = int(np.sum(right_r & ~right_c))
    c = int(np.sum(~right_r & right_c))
    return SeedComparison(seed, ref_acc, cand_acc, float(np.mean(pred_r == pred_c)), b, c, mcnemar_exact(b, c),
                          int(labels_r.size))


@dataclass(frozen=True)
class Verdict:
    verdict: str
    reason: str
    mean_diff: float  # candidate - reference, percentage points
    ci_low: float
    ci_high: float
    tost_p: float | None


def spread_floor(seeds: Sequence[SeedComparison]) -> float | None:
    """The least seed-to-seed sd of the differences the data can support (percentage
    points): the root mean square of the seeds' test-set sampling errors. None without
    per-example predictions."""
    ses = [c.diff_se_pp for c in seeds if c.diff_se_pp is not None]
    return math.sqrt(sum(x * x for x in ses) / len(ses)) if ses else None


def tost(diffs: Sequence[float], margin: float, alpha: float = 0.05,
         seeds: Sequence[SeedComparison] = ()) -> Verdict:
    """Equivalence of paired differences (percentage points) within +-margin."""
    d = np.asarray(diffs, dtype=float)
    n = len(d)
    mean = float(d.mean()) if n else math.nan
    if n == 0:
        return Verdict("inconclusive", "no seed present on both sides", mean, math.nan, math.nan, None)
    if n == 1:
        return _one_seed(mean, margin, alpha, seeds[0].mcnemar_p if seeds else None)
    sd = float(d.std(ddof=1))
    floor = spread_floor(seeds)
    note = ""
    if floor is not None and sd < floor:
        note = f"; sd {sd:.2f} pp raised to the floor {floor:.2f} pp, the test-set sampling error"
        sd = floor
    if sd == 0:
        if len(seeds) == n and all(c.discordant_ref_only == 0 and c.discordant_cand_only == 0 for c in seeds):
            return Verdict("equivalent", f"identical predictions on every test example in all {n} seeds",
                           mean, mean, mean, 0.0)
        return Verdict("inconclusive", f"identical differences ({mean:+.2f} pp) in all {n} seeds and no per-example "
                       "predictions to bound the spread: no evidence about it", mean, math.nan, math.nan, None)
    se = sd / math.sqrt(n)
    t_crit = float(stats.t.ppf(1 - alpha, n - 1))
    ci_low, ci_high = mean - t_crit * se, mean + t_crit * se
    p_low = float(stats.t.sf((mean + margin) / se, n - 1))  # H0: diff <= -margin
    p_high = float(stats.t.cdf((mean - margin) / se, n - 1))  # H0: diff >= +margin
    p = max(p_low, p_high)
    level = f"{100 * (1 - 2 * alpha):g}%"
    interval = f"{level} CI [{ci_low:+.2f}, {ci_high:+.2f}] pp"
    if -margin < ci_low and ci_high < margin:
        return Verdict("equivalent", f"{interval} inside +-{margin:g} pp (TOST p = {p:.2g}, {n} seeds{note})",
                       mean, ci_low, ci_high, p)
    if ci_low >= margin or ci_high <= -margin:
        return Verdict("not equivalent", f"{interval} wholly outside +-{margin:g} pp ({n} seeds{note})",
                       mean, ci_low, ci_high, p)
    return Verdict("inconclusive", f"{interval} crosses the +-{margin:g} pp margin ({n} seeds{note}); more seeds "
                   "would narrow it", mean, ci_low, ci_high, p)


def _one_seed(diff: float, margin: float, alpha: float, p: float | None) -> Verdict:
    """One seed says nothing about the seed-to-seed spread: inconclusive, unless the
    difference is SINGLE_SEED_FACTOR margins or more away and McNemar's test rejects."""
    far = SINGLE_SEED_FACTOR * margin
    mcnemar = "no per-example predictions" if p is None else f"McNemar p = {p:.2g}"
    if abs(diff) > far and p is not None and p < alpha:
        return Verdict("not equivalent", f"one seed: difference {diff:+.2f} pp is more than {SINGLE_SEED_FACTOR:g}x "
                       f"the {margin:g} pp margin, beyond any plausible seed-to-seed spread, and {mcnemar} < "
                       f"{alpha:g}", diff, math.nan, math.nan, None)
    return Verdict("inconclusive", f"one seed: observed difference {diff:+.2f} pp ({mcnemar}); the seed-to-seed spread "
                   f"is unknown, so one seed shows neither equivalence nor a difference beyond the margin (it fails "
                   f"only beyond {far:g} pp); run 2 or more seeds", diff, math.nan, math.nan, None)


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
    """Finished accuracy runs (status ok, epochs > 0) from all folders, with their folder.
    Time-to-accuracy runs that stopped at their target are left out: their final accuracy is
    the first one past the target, not the accuracy after a fixed number of epochs."""
    rows = []
    for i, folder in enumerate(run_dirs):
        _, raw, _ = load_run(folder, warn)
        for r in raw:
            if r.get("status") == "ok" and (r.get("epochs") or 0) > 0 and r.get("test_accuracy") is not None \
                    and not r.get("stop_at_target"):
                # rows from before scale-out have no world_size: one process
                rows.append({**r, "world_size": r.get("world_size") or 1, "run_index": i, "run_dir": str(folder)})
    return rows


def _by_seed(rows: list[dict], label: str, gdesc: str, warn) -> dict[int, dict]:
    """One run per seed. A seed recorded twice on one side (a rerun appended to the folder)
    keeps its first run in results.jsonl order, with a warning naming the seed and side."""
    by_seed: dict[int, dict] = {}
    repeats: dict[int, int] = {}
    for r in rows:
        if r["seed"] in by_seed:
            repeats[r["seed"]] = repeats.get(r["seed"], 1) + 1
        else:
            by_seed[r["seed"]] = r
    for seed, count in repeats.items():
        warn(f"seed {seed} appears {count} times on side {label} ({gdesc}) in {by_seed[seed]['run_dir']}; "
             "using the first recorded run, ignoring the later ones")
    return by_seed


def equivalence_table(run_dirs: Sequence[Path | str], margin_pp: float = 1.0, alpha: float = 0.05,
                      warn=None) -> pd.DataFrame:
    """One row per (group, candidate side): the comparison with its verdict. Each pair is
    tested at `alpha` on its own (no correction across pairs)."""
    warn = warn or (lambda m: warnings.warn(m, stacklevel=3))
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
        group = dict(zip(GROUP_KEYS, gkey))
        gdesc = f"{group['model']} bs {group['batch_size']}, {group['epochs']} epochs, {group['data']}"
        ref_side = dict(zip(SIDE_KEYS, ref_key))
        ref_label = _side_label(ref_side, multi_run)
        ref_by_seed = _by_seed(sides[ref_key], ref_label, gdesc, warn)
        ref_accs = [100 * r["test_accuracy"] for r in ref_by_seed.values()]
        ref_sd = float(np.std(ref_accs, ddof=1)) if len(ref_accs) > 1 else math.nan
        for side_key in order:
            if side_key == ref_key:
                continue
            cand_side = dict(zip(SIDE_KEYS, side_key))
            cand_label = _side_label(cand_side, multi_run, ref_side)
            cand_by_seed = _by_seed(sides[side_key], cand_label, gdesc, warn)
            seeds = sorted(set(ref_by_seed) & set(cand_by_seed))
            comps = [compare_seed(s, ref_by_seed[s], cand_by_seed[s], ref_by_seed[s]["run_dir"],
                                  cand_by_seed[s]["run_dir"]) for s in seeds]
            v = tost([c.cand_accuracy - c.ref_accuracy for c in comps], margin_pp, alpha, comps)
            cand_accs = [c.cand_accuracy for c in comps]
            agreements = [c.agreement for c in comps if c.agreement is not None]
            tested = [c for c in comps if c.mcnemar_p is not None]
            adjusted = dict(zip((c.seed for c in tested), holm([c.mcnemar_p for c in tested])))
            out.append({
                **group,
                "reference": ref_label, "candidate": cand_label,
                "ref_device": ref_side["device"], "ref_precision": ref_side["precision"],
                "cand_device": cand_side["device"], "cand_precision": cand_side["precision"],
                "seeds": len(comps),
                "ref_seeds": len(ref_accs),
                "ref_acc_mean": float(np.mean([c.ref_accuracy for c in comps])) if comps else math.nan,
                "ref_acc_sd_all_seeds": ref_sd,
                "cand_acc_mean": float(np.mean(cand_accs)) if comps else math.nan,
                "cand_acc_sd": float(np.std(cand_accs, ddof=1)) if len(comps) > 1 else math.nan,
                "diff_pp": v.mean_diff, "ci_low_pp": v.ci_low, "ci_high_pp": v.ci_high,
                "margin_pp": margin_pp, "alpha": alpha, "tost_p": v.tost_p,
                "spread_floor_pp": spread_floor(comps),
                "agreement": float(np.mean(agreements)) if agreements else math.nan,
                "mcnemar_p_holm_min": min(adjusted.values()) if adjusted else math.nan,
                "seeds_differing": sum(p < alpha for p in adjusted.values()) if adjusted else math.nan,
                "per_seed": "; ".join(_seed_text(c, adjusted.get(c.seed)) for c in comps),
                "verdict": v.verdict, "reason": v.reason,
            })
    return pd.DataFrame(out)


def _seed_text(c: SeedComparison, holm_p: float | None) -> str:
    text = f"seed {c.seed}: {c.ref_accuracy:.2f} vs {c.cand_accuracy:.2f}"
    if c.agreement is not None:
        text += f" (agree {100 * c.agreement:.1f}%, McNemar p={c.mcnemar_p:.2g}, Holm-adjusted {holm_p:.2g})"
    return text


def verdict_table(frame: pd.DataFrame) -> str:
    """A compact markdown table of the verdicts, for the terminal and the report."""
    if frame.empty:
        return "(no pairs to compare)"
    cols = ["model", "batch_size", "epochs", "data", "reference", "candidate", "seeds", "ref_acc_mean",
            "cand_acc_mean", "diff_pp", "ci_low_pp", "ci_high_pp", "agreement", "mcnemar_p_holm_min", "verdict"]
    view = frame[cols].rename(columns={"batch_size": "batch", "ref_acc_mean": "ref acc %",
                                       "cand_acc_mean": "cand acc %", "diff_pp": "diff pp",
                                       "ci_low_pp": "CI low", "ci_high_pp": "CI high",
                                       "mcnemar_p_holm_min": "McNemar p (Holm min)"})
    return to_markdown(view, floatfmt=".3g")


# What the table's columns and the verdicts mean: printed by `equivalence`, written into the report.
def explanation(margin_pp: float, alpha: float) -> list[str]:
    level = f"{100 * (1 - 2 * alpha):g}%"
    return [
        f"Verdicts: two one-sided t-tests over seeds on the paired accuracy differences, margin +-{margin_pp:g} pp, "
        f"alpha {alpha:g} ({level} CI). The seed-to-seed sd is never taken below the test-set sampling error of the "
        "differences (from the per-example predictions), so identical differences do not give a zero-width "
        f"interval. One seed is inconclusive unless it differs by more than {SINGLE_SEED_FACTOR:g}x the margin with "
        "McNemar's test significant.",
        "McNemar p (Holm min): the smallest per-seed McNemar p after Holm's adjustment over the pair's seeds. Below "
        "alpha, in at least one seed the two trained models' error rates differ beyond test-set chance. It does not "
        "bear on the margin (models trained in different arithmetic are different models; their per-seed "
        "differences are part of the seed-to-seed spread the verdict already accounts for).",
        f"Each pair is tested at alpha {alpha:g} on its own: \"all pairs equivalent\" is a per-pair statement, not a "
        f"family-wise one; with k pairs, the chance that some pair is called equivalent wrongly can reach "
        f"k x {alpha:g}.",
    ]


def run_equivalence(run_dirs: Sequence[Path], margin_pp: float = 1.0, alpha: float = 0.05,
                    out: Path | None = None) -> int:
    """The `cifar-bench equivalence` command: print verdicts, write equivalence.csv, and
    return 0 when every pair is equivalent or inconclusive, EXIT_NOT_EQUIVALENT (3) when
    any pair is not equivalent. Errors raise (EquivalenceError, ResultsError)."""
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
              f"sd {r.ref_acc_sd_all_seeds:.2f} pp over {r.ref_seeds} seeds; margin {margin_pp:g} pp")
    for line in explanation(margin_pp, alpha):
        print(f"  {line}")
    print(f"equivalence: {len(frame)} pairs, {(frame['verdict'] == 'equivalent').sum()} equivalent, "
          f"{(frame['verdict'] == 'not equivalent').sum()} not equivalent, "
          f"{(frame['verdict'] == 'inconclusive').sum()} inconclusive; written to {target / 'equivalence.csv'}")
    return EXIT_NOT_EQUIVALENT if (frame["verdict"] == "not equivalent").any() else 0
