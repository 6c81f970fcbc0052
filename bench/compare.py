"""`cifar-bench compare BASE NEW`: two runs' throughput, configuration by configuration.

Configurations are paired by `RunConfig.key()` (what was measured, not how long), so two
runs of one sweep pair up across commits, torch versions or machines. For each pair:
  ratio        NEW / BASE throughput, with its interval: each side's median over passes has
               the variance its own pass-to-pass spread says (bench/passes.py), the log
               ratio's interval is Student t with the smaller side's degrees of freedom.
  verdict      faster / slower when the ratio is beyond the threshold (default 5%) and its
               interval excludes 1; "no change" otherwise ("not significant" when it is
               beyond the threshold but the interval includes 1), as asv compare and pyperf
               compare_to say "not significant" rather than print noise as a change.
  normalised   the ratio divided by the ratio of each run's own measured matmul peak (the
               higher of its probes before and after the sweep, system.json) and, separately,
               of each run's drift reference (the same short measurement at its start and end):
               "the code got slower" against "the machine was slower that day".
Repeatability of the method (two back-to-back runs of one sweep): the share of pairs within
the threshold of each other, the share whose NEW value falls inside BASE's stated interval
(coverage), the median width of those intervals, the median and worst deviation.

Rows measured without passes state their precision from consecutive steps (`median_ci`);
compare uses it as their interval and labels them, which is how the issue that introduced
passes measured that such intervals cover a repeat less often than they claim.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from scipy import stats

from bench import passes
from bench.config import RunConfig
from bench.figures import new_figure, save_figure
from bench.markdown import to_markdown
from bench.results import load_run, row_key

THRESHOLD = 0.05
LEVEL = passes.INTERVAL_LEVEL


class CompareError(ValueError):
    """The runs cannot be compared; the message says why."""


@dataclass(frozen=True)
class Estimate:
    """A row's throughput on the log scale: its centre, the variance of that centre, the
    degrees of freedom behind it, and how it was obtained."""

    log: float
    var: float | None  # None: no spread known (one pass)
    df: float
    method: str  # "passes" | "consecutive steps" | "one pass"


def estimate(row: dict, pool: tuple[float, int] | None) -> Estimate:
    value = row["train_images_per_s"]
    v = list(passes.pass_values(row).values())
    if len(v) >= 2:
        iv = passes.interval(row, pool)
        # the interval is for a repeat: the variance of the row's own centre is half of it
        t = stats.t.ppf(0.5 + LEVEL / 2, iv["df"])
        return Estimate(math.log(value), (iv["half_width_log"] / t) ** 2 / 2, iv["df"], "passes")
    if row.get("pass_results") is None and row.get("median_ci"):
        # older method: a 95% CI of the median step from consecutive steps
        sd = math.log1p(row["median_ci"]) / stats.norm.ppf(0.975)
        return Estimate(math.log(value), sd ** 2, max(1, (row.get("timed_steps") or 2) - 1), "consecutive steps")
    return Estimate(math.log(value), None, math.inf, "one pass")


def stated_interval(row: dict, est: Estimate) -> tuple[float, float] | None:
    """The interval the row itself states for a repeat (derived rows carry it; an older row:
    its median_ci around its value)."""
    if row.get("train_images_per_s_low") is not None:
        return row["train_images_per_s_low"], row["train_images_per_s_high"]
    if est.method == "consecutive steps":
        ci = row["median_ci"]
        return row["train_images_per_s"] / (1 + ci), row["train_images_per_s"] / max(1e-9, 1 - ci)
    return None


def _grid(folder: Path | str) -> tuple[dict[str, dict], dict]:
    _, rows, system = load_run(folder)
    grid = [r for r in rows if r.get("status") == "ok" and not r.get("epochs") and r.get("train_images_per_s")
            and (r.get("world_size") or 1) == 1]
    return {row_key(r): r for r in grid}, system


def _peak(system: dict, row: dict) -> float | None:
    """The highest of the run's matmul peak probes (before and after the sweep) for the row's
    device and precision; the row's own stored peak for runs without probes recorded."""
    for p in system.get("peaks") or []:
        if (p.get("device"), p.get("precision")) == (row.get("device"), row.get("precision")):
            values = [v for v in (p.get("tflops"), p.get("tflops_after")) if v]
            if values:
                return max(values)
    return row.get("peak_tflops")


def _drift(system: dict, device: str) -> float | None:
    for d in system.get("drift") or []:
        if d.get("device") == device:
            vals = [d.get(k) for k in ("before_images_per_s", "after_images_per_s") if d.get(k)]
            return statistics.mean(vals) if vals else None
    return None


def _label(row: dict) -> str:
    cfg = RunConfig.from_dict(row["config"]) if isinstance(row.get("config"), dict) else None
    if cfg is None:
        return f"{row.get('device')} {row.get('model')} bs={row.get('batch_size')} {row.get('precision')}"
    return cfg.label()


def deviation(ratio: float) -> float:
    """How far apart two values are, symmetric: max(r, 1/r) - 1."""
    return max(ratio, 1 / ratio) - 1


def compare_runs(base: Path | str, new: Path | str, threshold: float = THRESHOLD) -> tuple[pd.DataFrame, dict]:
    """(one row per pair, the unpaired and repeatability facts)."""
    b_rows, b_sys = _grid(base)
    n_rows, n_sys = _grid(new)
    if not b_rows or not n_rows:
        empty = base if not b_rows else new
        raise CompareError(f"{empty} holds no ok throughput rows to compare")
    pools = {}
    for side, rows in (("base", b_rows), ("new", n_rows)):
        for kind in {str(r["device"]).split(":")[0] for r in rows.values()}:
            pools[side, kind] = passes.pooled_variance(
                [r for r in rows.values() if str(r["device"]).split(":")[0] == kind])
    out = []
    for key in [k for k in b_rows if k in n_rows]:
        b, n = b_rows[key], n_rows[key]
        kind = str(b["device"]).split(":")[0]
        eb, en = estimate(b, pools["base", kind]), estimate(n, pools["new", kind])
        ratio = n["train_images_per_s"] / b["train_images_per_s"]
        low = high = None
        if eb.var is not None and en.var is not None:
            half = stats.t.ppf(0.5 + LEVEL / 2, min(eb.df, en.df)) * math.sqrt(eb.var + en.var)
            low, high = ratio * math.exp(-half), ratio * math.exp(half)
        if ratio > 1 + threshold and (low is None or low > 1):
            verdict = "faster"
        elif ratio < 1 - threshold and (high is None or high < 1):
            verdict = "slower"
        elif abs(ratio - 1) > threshold:
            verdict = "not significant"
        else:
            verdict = "no change"
        stated = stated_interval(b, eb)
        pb, pn = _peak(b_sys, b), _peak(n_sys, n)
        peak = pn / pb if pb and pn else None
        drift_b, drift_n = _drift(b_sys, b["device"]), _drift(n_sys, n["device"])
        out.append({
            "configuration": _label(b), "device": b["device"], "model": b["model"], "batch_size": b["batch_size"],
            "precision": b["precision"], "base": b["train_images_per_s"], "new": n["train_images_per_s"],
            "ratio": ratio, "ratio_low": low, "ratio_high": high, "verdict": verdict,
            "deviation": deviation(ratio),
            "base_low": stated[0] if stated else None, "base_high": stated[1] if stated else None,
            "covered": (stated[0] <= n["train_images_per_s"] <= stated[1]) if stated else None,
            "base_width": (stated[1] - stated[0]) / b["train_images_per_s"] if stated else None,
            "base_method": eb.method, "new_method": en.method,
            "ratio_by_peak": ratio / peak if peak else None,
            "ratio_by_drift": ratio / (drift_n / drift_b) if drift_b and drift_n else None,
        })
    frame = pd.DataFrame(out)
    facts = {"base": str(base), "new": str(new), "threshold": threshold, "pairs": len(frame),
             "only_base": sorted(_label(b_rows[k]) for k in b_rows if k not in n_rows),
             "only_new": sorted(_label(n_rows[k]) for k in n_rows if k not in b_rows),
             "base_commit": b_sys.get("git_commit"), "new_commit": n_sys.get("git_commit"),
             "base_torch": b_sys.get("torch"), "new_torch": n_sys.get("torch"),
             "base_cpu": b_sys.get("cpu_model"), "new_cpu": n_sys.get("cpu_model")}
    if frame.empty:
        raise CompareError(f"{base} and {new} have no configuration in common (compare pairs by configuration: "
                           "model, batch size, precision, layout, data, sizes, seed)")
    facts.update(repeatability(frame, threshold))
    return frame, facts


def repeatability(frame: pd.DataFrame, threshold: float) -> dict:
    """The shares a repeat run is judged by (module docstring)."""
    cov = frame["covered"].dropna()
    widths = frame["base_width"].dropna()
    worst = frame.loc[frame["deviation"].idxmax()]
    facts = {
        "within": float((frame["deviation"] <= threshold).mean()),
        "coverage": float(cov.astype(bool).mean()) if len(cov) else None, "covered_pairs": int(len(cov)),
        "median_width": float(widths.median()) if len(widths) else None,
        "median_deviation": float(frame["deviation"].median()),
        "worst": float(worst["deviation"]), "worst_configuration": worst["configuration"],
        "worst_ratio": float(worst["ratio"]),
        "verdicts": frame["verdict"].value_counts().to_dict(),
        "methods": sorted(set(frame["base_method"]) | set(frame["new_method"])),
    }
    for col in ("ratio_by_peak", "ratio_by_drift"):
        r = frame[col].dropna()
        if len(r):
            dev = r.map(deviation)
            facts[f"{col}_within"] = float((dev <= threshold).mean())
            facts[f"{col}_median_deviation"] = float(dev.median())
    return facts


def summary_lines(facts: dict) -> list[str]:
    thr = facts["threshold"]
    lines = [f"{facts['pairs']} configurations paired; {facts['within']:.0%} within {thr:.0%} of each other "
             f"(median deviation {facts['median_deviation']:.1%}, worst {facts['worst_ratio']:.2f}x: "
             f"{facts['worst_configuration']})."]
    if facts.get("coverage") is not None:
        lines.append(f"NEW inside BASE's stated interval: {facts['coverage']:.0%} of {facts['covered_pairs']} "
                     f"configurations; median interval width {facts['median_width']:.1%} of the value "
                     f"(intervals from {', '.join(m for m in facts['methods'] if m != 'one pass')}).")
    else:
        lines.append("BASE states no intervals (one pass): coverage cannot be judged.")
    for col, name in (("ratio_by_peak", "each run's matmul peak"), ("ratio_by_drift", "each run's drift reference")):
        if f"{col}_within" in facts:
            lines.append(f"Normalised by {name}: {facts[f'{col}_within']:.0%} within {thr:.0%} "
                         f"(median deviation {facts[f'{col}_median_deviation']:.1%}).")
    v = facts["verdicts"]
    lines.append("Verdicts: " + ", ".join(f"{v[k]} {k}" for k in ("faster", "slower", "not significant", "no change")
                                         if k in v) + ".")
    return lines


def figure(frame: pd.DataFrame, threshold: float, out: Path) -> str:
    f = frame.sort_values("ratio").reset_index(drop=True)
    height = max(3.0, 0.18 * len(f) + 1.5)
    fig, axes = new_figure(1, 1, (9, height))
    ax = axes[0][0]
    y = range(len(f))
    colours = f["verdict"].map({"faster": "#2ca02c", "slower": "#d62728"}).fillna("#555555")
    has = f["ratio_low"].notna()
    ax.errorbar(f.loc[has, "ratio"], [i for i in y if has[i]],
                xerr=[f.loc[has, "ratio"] - f.loc[has, "ratio_low"], f.loc[has, "ratio_high"] - f.loc[has, "ratio"]],
                fmt="none", ecolor="#999999", elinewidth=1)
    ax.scatter(f["ratio"], list(y), c=list(colours), s=14, zorder=3)
    ax.axvspan(1 - threshold, 1 + threshold, color="#dddddd", alpha=0.6, label=f"+-{threshold:.0%}")
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_xscale("log")
    ax.set_yticks(list(y))
    ax.set_yticklabels(f["configuration"], fontsize=6)
    ax.set_xlabel(f"NEW / BASE throughput (bars: {LEVEL:.0%} interval)")
    ax.set_title("cifar-bench compare: each configuration's ratio")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(True, axis="x", which="both", alpha=0.3)
    return save_figure(fig, out, "compare.png")


def write_compare(base: Path | str, new: Path | str, out: Path | str | None = None,
                  threshold: float = THRESHOLD) -> tuple[Path, pd.DataFrame, dict]:
    frame, facts = compare_runs(base, new, threshold)
    out = Path(out) if out is not None else Path(new)
    out.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out / "compare.csv", index=False)
    fig = figure(frame, threshold, out)
    view = frame.sort_values("ratio")[["configuration", "base", "new", "ratio", "ratio_low", "ratio_high", "verdict",
                                       "covered", "ratio_by_peak", "ratio_by_drift"]]
    view = view.astype(object).where(view.notna(), None)
    side = ["| | BASE | NEW |", "|---|---|---|",
            f"| folder | `{facts['base']}` | `{facts['new']}` |",
            f"| commit | {facts['base_commit']} | {facts['new_commit']} |",
            f"| torch | {facts['base_torch']} | {facts['new_torch']} |",
            f"| CPU | {facts['base_cpu']} | {facts['new_cpu']} |"]
    parts = ["# cifar-bench compare", "", *side, "", "## Summary", "",
             *[f"- {line}" for line in summary_lines(facts)], "",
             f"![ratios]({fig})", "", "## Method", "",
             "- Pairs: configurations with the same key (bench/config.py `RunConfig.key`) that finished ok in both; "
             "throughput rows only (accuracy runs are compared by `cifar-bench equivalence`).",
             f"- Ratio interval: {LEVEL:.0%}, Student t on the log ratio; each side's variance from its pass-to-pass "
             "spread (moderated with its run's pooled spread, bench/passes.py), or for rows measured before passes "
             "from their `median_ci` (consecutive steps).",
             f"- Verdict: faster/slower beyond +-{threshold:.0%} with an interval that excludes 1; \"not "
             "significant\" beyond it with an interval that includes 1; otherwise no change.",
             "- covered: NEW's value inside the interval BASE states for a repeat run.",
             "- ratio_by_peak / ratio_by_drift: the ratio over the ratio of the two runs' measured matmul peaks / "
             "drift references (how much of a change the machine itself explains).", "",
             "## Configurations", "",
             to_markdown(view, floatfmt=("", ",.0f", ",.0f", ".3f", ".3f", ".3f", "", "", ".3f", ".3f")), ""]
    for name, items in (("Only in BASE", facts["only_base"]), ("Only in NEW", facts["only_new"])):
        if items:
            parts += [f"## {name}", "", *[f"- {x}" for x in items], ""]
    (out / "compare.md").write_text("\n".join(parts))
    return out / "compare.md", frame, facts
