"""Passes across the sweep: the order in which a throughput grid is visited, and the figures
derived from its repeats. Pure functions, no I/O and no clocks.

A configuration's consecutive steps share the machine's mood (another process, a clock
change, a noisy neighbour on a VM), so their spread understates how much a repeat would
differ. So the throughput grid is measured in `passes` passes, as asv's interleaved rounds
and pyperf's separate processes do: each pass visits every configuration once, in a freshly
shuffled (seeded) order, with 1/passes of its budget (`pass_budget`). A slow minute of the
machine then lands on one pass of many configurations instead of on every step of one.

- Order (`pass_order`): configurations that a ratio compares (the precisions, layouts,
  input paths and devices of one model and batch size) form a group and run back to back,
  in shuffled order; the groups are shuffled. The first pass keeps each model's batch sizes
  ascending (its groups are interleaved at random with the other models'), so the sweep can
  predict a configuration over budget from a smaller batch before running it.
- A row (`merge`): every pass is kept (`pass_results`, one entry each); the row's throughput is the
  median over its passes, and so are the other rates; ratios (fraction of the ceiling) are
  formed within each pass, then their median taken.
- Its interval (`intervals`): where a repeat run's value is expected, from the spread of
  log throughput between passes, moderated by the sweep's pooled pass-to-pass spread (a row
  with three passes that happen to agree does not get a falsely narrow interval), as a
  Student t prediction interval for a repeat of the same number of passes.
- Extra passes (`needs_extra_pass`): a configuration whose passes disagree by more than
  EXTRA_PASS_SPREAD gets more, while the sweep's time allows (bench/runner.py).

Accuracy runs and time-to-accuracy runs (epochs > 0) are not part of the grid: each runs once.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import replace

from scipy import stats

from bench.config import RunConfig, is_reference

ORDER_SEED = 0  # pass p's order is random.Random(f"{ORDER_SEED}:{p}"): the same sweep, the same orders
EXTRA_ORDER = 100  # extra pass k is ordered as pass EXTRA_ORDER + k (an order of its own)
MIN_PASS_STEPS = 3  # timed steps per variant and pass, at least
EXTRA_PASS_SPREAD = 0.10  # passes that disagree by more than this (fastest / slowest - 1) ask for extra passes
EXTRA_PASSES = 2  # at most this many extra passes per configuration
EXTRA_TIME_SHARE = 0.10  # extra passes take at most this share of the time the planned passes took
INTERVAL_LEVEL = 0.90  # a repeat run's value should fall inside a row's interval this often
PRIOR_DF = 2  # weight, in degrees of freedom, of the sweep's pooled spread in each row's spread
# The variance of the median of n normal samples over that of their mean (1 / the median's
# relative efficiency: 0.743 at n = 3, 0.838 at 4, 0.697 at 5), pi/2 in the limit; the median
# of two is their mean.
MEDIAN_VARIANCE = {1: 1.0, 2: 1.0, 3: 1.346, 4: 1.193, 5: 1.435}

# What a pass entry keeps of the row its visit produced (raw samples stay in that row's own
# line of results.jsonl; the latest line holds the newest pass's samples).
PASS_FIELDS = ("status", "reason", "train_images_per_s", "ceiling_images_per_s", "fraction_of_ceiling",
               "eval_images_per_s", "step_ms_median", "step_ms_iqr", "median_ci", "timed_steps", "rounds",
               "warmup_steps", "warmup_seconds", "warmup_settled", "startup_seconds", "compile_seconds",
               "compile_frames", "recompiles",
               "peak_memory_mb", "peak_memory_total_mb", "cpu_percent", "step_ms_no_sync", "comm_share",
               "visit_seconds", "finished_at")
# Measured in the first pass only (bench/measure.py `once`) and carried over to later rows.
ONCE_PREFIXES = ("energy_", "step_ops", "step_state_bytes", "step_saved_bytes", "step_min_bytes")
RATE_FIELDS = ("train_images_per_s", "ceiling_images_per_s", "fraction_of_ceiling", "eval_images_per_s",
               "step_ms_median", "step_ms_iqr", "median_ci", "cpu_percent", "step_ms_no_sync", "comm_share")


def is_grid(cfg: RunConfig) -> bool:
    """A throughput configuration (measured in passes), not an accuracy run."""
    return cfg.epochs == 0


def pass_budget(cfg: RunConfig) -> RunConfig:
    """The budget of one of `cfg.passes` passes: the timed seconds, steps and the
    configuration's bound divided among the passes (at least MIN_PASS_STEPS timed steps)."""
    p = cfg.passes if is_grid(cfg) else 1
    if p <= 1:
        return cfg
    return replace(cfg, max_seconds=cfg.max_seconds / p, eval_max_seconds=cfg.eval_max_seconds / p,
                   max_config_seconds=cfg.max_config_seconds / p,
                   min_steps=max(MIN_PASS_STEPS, math.ceil(cfg.min_steps / p)),
                   max_steps=max(MIN_PASS_STEPS, math.ceil(cfg.max_steps / p)))


# --------------------------------------------------------------------------------------
# Order
# --------------------------------------------------------------------------------------

def group_key(cfg: RunConfig) -> tuple:
    """Configurations a ratio compares: one model at one batch size (every device,
    precision, layout and input path)."""
    return cfg.model, cfg.batch_size


def pass_order(configs: Sequence[RunConfig], pass_index: int, seed: int = ORDER_SEED) -> list[RunConfig]:
    """The order of pass `pass_index` (1-based): groups shuffled, members of a group shuffled
    and back to back; in pass 1 each model's batch sizes ascend (see the module docstring)."""
    rng = random.Random(f"{seed}:{pass_index}")
    groups: dict[tuple, list[RunConfig]] = {}
    for c in configs:
        groups.setdefault(group_key(c), []).append(c)
    for members in groups.values():
        rng.shuffle(members)
    keys = list(groups)
    if pass_index == 1:
        lines: dict[str, list[tuple]] = {}
        for k in sorted(keys, key=lambda k: k[1]):
            lines.setdefault(k[0], []).append(k)
        keys = []
        while lines:  # a uniformly random interleaving of the models' ascending sequences
            models = list(lines)
            model = rng.choices(models, weights=[len(lines[m]) for m in models])[0]
            keys.append(lines[model].pop(0))
            if not lines[model]:
                del lines[model]
    else:
        rng.shuffle(keys)
    return [c for k in keys for c in groups[k]]


def visit_order(configs: Sequence[RunConfig], rows: dict[str, dict] | None = None,
                retry_all: bool = False) -> list[tuple[RunConfig, int | None]]:
    """The sweep's visits, (configuration, pass index or None), in order: accuracy runs
    first (the CPU fp32 references first of all), once each; then the throughput grid in
    passes, each pass in its own shuffled order (`pass_order`), a configuration only in the
    passes its row in `rows` (by config key) lacks (all of them when its row is to run again:
    not ok, and failed or `retry_all`). The runner follows it; `cifar-bench run --plan` prints it."""
    from bench.runfolder import has_pass  # (runfolder imports this module)

    rows = rows or {}
    one_off = sorted((c for c in configs if not is_grid(c)), key=lambda c: not is_reference(c))
    grid = [c for c in configs if is_grid(c)]
    visits: list[tuple[RunConfig, int | None]] = [(c, None) for c in one_off]

    def again(row: dict | None) -> bool:
        return row is not None and row.get("status") != "ok" and (retry_all or row.get("status") == "failed")

    for p in range(1, max((c.passes for c in grid), default=0) + 1):
        todo = [c for c in grid if c.passes >= p and (again(rows.get(c.key())) or not has_pass(rows.get(c.key()), p))]
        visits += [(c, p) for c in pass_order(todo, p)]
    return visits


# --------------------------------------------------------------------------------------
# One row from its passes
# --------------------------------------------------------------------------------------

def _median(values: Iterable) -> float | None:
    xs = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return statistics.median(xs) if xs else None


def pass_entry(visit: dict, pass_index: int) -> dict:
    return {"pass": pass_index, **{k: visit.get(k) for k in PASS_FIELDS}}


def merge(previous: dict | None, visit: dict, pass_index: int) -> dict:
    """The row after pass `pass_index`: the visit's own row (its configuration facts and raw
    samples) with every pass so far in `pass_results` and the figures taken over the ok ones."""
    entries = [e for e in (previous or {}).get("pass_results") or [] if e["pass"] != pass_index]
    entries = sorted([*entries, pass_entry(visit, pass_index)], key=lambda e: e["pass"])
    once = {k: v for k, v in (previous or {}).items() if k.startswith(ONCE_PREFIXES) and v is not None}
    row = {**visit, **{k: v for k, v in once.items() if visit.get(k) is None}, "pass_results": entries}
    ok = [e for e in entries if e["status"] == "ok"]
    row["passes_run"] = len(ok)
    if not ok:
        return row
    if visit.get("status") != "ok":  # a later pass that failed: the row keeps the passes it has
        row = {**previous, "pass_results": entries, "passes_run": len(ok)}
    row.update(status="ok", reason=None)
    for k in RATE_FIELDS:
        row[k] = _median(e.get(k) for e in ok)
    first = ok[0]  # the cold start: later passes may reuse caches (compiled code, cuDNN plans)
    row.update(startup_seconds=first.get("startup_seconds"), compile_seconds=first.get("compile_seconds"),
               compile_frames=first.get("compile_frames"),
               recompiles=max((e["recompiles"] for e in ok if e.get("recompiles") is not None), default=None),
               timed_steps=sum(e.get("timed_steps") or 0 for e in ok), rounds=sum(e.get("rounds") or 0 for e in ok),
               warmup_steps=sum(e.get("warmup_steps") or 0 for e in ok),
               warmup_seconds=sum(e.get("warmup_seconds") or 0 for e in ok),
               warmup_settled=all(e.get("warmup_settled") is not False for e in ok),
               peak_memory_mb=max((e["peak_memory_mb"] for e in ok if e.get("peak_memory_mb") is not None),
                                  default=None))
    rates = [e["train_images_per_s"] for e in ok if e.get("train_images_per_s")]
    row["pass_spread"] = max(rates) / min(rates) - 1 if len(rates) > 1 else None
    if row.get("step_ms_median") and row.get("step_ms_iqr") is not None:
        from bench.timing import NOISY_IQR_RATIO

        row["noisy"] = row["step_ms_iqr"] / row["step_ms_median"] > NOISY_IQR_RATIO
    if row.get("flops_per_image") and row.get("train_images_per_s") and row.get("peak_tflops"):
        row["achieved_tflops"] = row["flops_per_image"] * row["train_images_per_s"] / 1e12
        row["mfu"] = row["achieved_tflops"] / row["peak_tflops"]
    return row


def needs_extra_pass(row: dict, planned: int) -> bool:
    """Passes that disagree by more than EXTRA_PASS_SPREAD, and extra passes left."""
    return (row.get("status") == "ok" and (row.get("pass_spread") or 0) > EXTRA_PASS_SPREAD
            and (row.get("passes_run") or 0) < planned + EXTRA_PASSES)


# --------------------------------------------------------------------------------------
# Intervals and ratios
# --------------------------------------------------------------------------------------

def pass_values(row: dict, field: str = "train_images_per_s") -> dict[int, float]:
    """{pass index: value} of a row's ok passes (empty for a row measured without passes)."""
    return {e["pass"]: e[field] for e in row.get("pass_results") or []
            if e.get("status") == "ok" and e.get(field) is not None and e[field] > 0}


def _log_var(values: Sequence[float]) -> float:
    return statistics.variance([math.log(v) for v in values])


def pooled_variance(rows: Sequence[dict]) -> tuple[float, int] | None:
    """The pass-to-pass variance of log throughput pooled over rows with two or more passes
    (each weighted by its degrees of freedom), and its degrees of freedom."""
    num, df = 0.0, 0
    for r in rows:
        v = list(pass_values(r).values())
        if len(v) >= 2:
            num += (len(v) - 1) * _log_var(v)
            df += len(v) - 1
    return (num / df, df) if df else None


def interval(row: dict, pool: tuple[float, int] | None, level: float = INTERVAL_LEVEL) -> dict | None:
    """The row's interval for a repeat run's value (a repeat of as many passes), or None with
    fewer than two passes. Log scale: sd moderated with the pool (PRIOR_DF), Student t."""
    v = list(pass_values(row).values())
    n = len(v)
    if n < 2 or not row.get("train_images_per_s"):
        return None
    own, df = _log_var(v), n - 1
    var = own
    if pool is not None:
        var, df = (PRIOR_DF * pool[0] + df * own) / (PRIOR_DF + df), PRIOR_DF + df
    half = stats.t.ppf(0.5 + level / 2, df) * math.sqrt(var * 2 * MEDIAN_VARIANCE.get(n, math.pi / 2) / n)
    centre = row["train_images_per_s"]
    return {"low": centre * math.exp(-half), "high": centre * math.exp(half), "log_sd": math.sqrt(var), "df": df,
            "half_width_log": half}


def intervals(rows: Sequence[dict]) -> dict[int, dict]:
    """{index in rows: interval} for every row with two or more passes, each device kind's
    rows pooled apart (a GPU's pass-to-pass spread says nothing about a CPU's)."""
    out: dict[int, dict] = {}
    kinds = {str(r.get("device") or "").split(":")[0] for r in rows}
    for kind in kinds:
        idx = [i for i, r in enumerate(rows) if str(r.get("device") or "").split(":")[0] == kind
               and r.get("status") == "ok"]
        pool = pooled_variance([rows[i] for i in idx])
        for i in idx:
            iv = interval(rows[i], pool)
            if iv is not None:
                out[i] = iv
    return out


def paired_ratio(a: dict, b: dict, field: str = "train_images_per_s") -> tuple[float, int] | None:
    """a / b formed within each pass both ran (same run folder), then the median; with the
    number of passes paired. None when they share no pass."""
    if a.get("run_dir") != b.get("run_dir"):
        return None
    va, vb = pass_values(a, field), pass_values(b, field)
    common = sorted(set(va) & set(vb))
    if not common:
        return None
    return statistics.median(va[p] / vb[p] for p in common), len(common)
