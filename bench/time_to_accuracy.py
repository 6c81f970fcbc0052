"""Time to accuracy, from stored results: how long each configuration trained until its test
accuracy first reached a target, over seeds, and the summary's headline built on it.

A time-to-accuracy run is a result row with status ok, epochs > 0 (the bound on epochs),
`target_accuracy` set (fraction), `time_to_target_s` (training seconds, evaluation excluded,
until the accuracy evaluated after an epoch first reached the target; null if it never did
within the bound), `epochs_to_target` (null likewise) and `accuracy_curve` (per epoch).

Over the seeds of one configuration: the median time counts a run that never reached the
target as slower than any that did (so the median reads "not reached" when half or more
never did); the range covers the runs that reached it; epochs needed is the median over
those runs. The headline compares, per model, the fastest configuration of each device kind
at one target: the model's default target (bench.targets) when its rows use it, else the
target most rows use.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from bench.markdown import to_markdown
from bench.targets import default_target, reachable

KEYS = ["device_key", "device_kind", "model", "data", "batch_size", "precision", "channels_last", "compile",
        "data_path", "world_size", "target_accuracy", "epochs"]


def tta_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The time-to-accuracy runs of a results frame (bench.frames.load_runs)."""
    if df.empty or "target_accuracy" not in df:
        return df.iloc[0:0]
    sel = (df["status"] == "ok") & (df["epochs"].fillna(0) > 0) & df["target_accuracy"].notna()
    return df[sel]


def _epochs_needed(row) -> float:
    """epochs_to_target, or where the accuracy curve first reached the target (rows without it)."""
    value = row.get("epochs_to_target")
    if value is not None and not (isinstance(value, float) and math.isnan(value)):
        return float(value)
    curve = row.get("accuracy_curve")
    if row.get("time_to_target_s") is None or pd.isna(row.get("time_to_target_s")) or not isinstance(curve, list):
        return math.nan
    hit = next((i + 1 for i, acc in enumerate(curve) if acc is not None and acc >= row["target_accuracy"]), None)
    return float(hit) if hit is not None else math.nan


def tta_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration and target: seeds, median time to target (inf: not reached
    by half or more), range over the runs that reached it, median epochs, runs not reached."""
    runs = tta_rows(df)
    if runs.empty:
        return pd.DataFrame()
    out = []
    for key, g in runs.groupby(KEYS, dropna=False, sort=True):
        times = pd.to_numeric(g["time_to_target_s"], errors="coerce")
        reached = times.dropna()
        epochs = [e for e in (_epochs_needed(r) for r in g.to_dict("records")) if not math.isnan(e)]
        out.append({
            **dict(zip(KEYS, key)),
            "seeds": len(g),
            "median_s": float(np.median(times.fillna(math.inf))),
            "min_s": float(reached.min()) if len(reached) else math.nan,
            "max_s": float(reached.max()) if len(reached) else math.nan,
            "median_epochs": float(np.median(epochs)) if epochs else math.nan,
            "not_reached": int(times.isna().sum()),
            "images_per_s": float(pd.to_numeric(g["train_images_per_s"], errors="coerce").median()),
        })
    return pd.DataFrame(out)


def fmt_seconds(x: float) -> str:
    if math.isnan(x):
        return ""
    if math.isinf(x):
        return "not reached"
    return f"{x:,.0f} s" if x >= 100 else f"{x:.3g} s"


def _variant(r) -> str:
    extra = []
    if bool(r["channels_last"]):
        extra.append("cl")
    if bool(r["compile"]):
        extra.append("compiled")
    if r["data_path"] not in (None, "device"):
        extra.append(str(r["data_path"]))
    if (r["world_size"] or 1) > 1:
        extra.append(f"x{int(r['world_size'])} procs")
    return ", ".join(extra)


def tta_markdown(table: pd.DataFrame) -> str:
    rows = []
    for _, r in table.sort_values(["model", "data", "target_accuracy", "device_kind", "median_s"]).iterrows():
        rows.append({
            "device": r["device_key"], "model": r["model"], "data": r["data"], "batch": int(r["batch_size"]),
            "precision": r["precision"], "variant": _variant(r), "target": f"{r['target_accuracy']:.0%}",
            "seeds": int(r["seeds"]), "median time": fmt_seconds(r["median_s"]),
            "range (reached)": "" if math.isnan(r["min_s"]) else
            f"{fmt_seconds(r['min_s'])} - {fmt_seconds(r['max_s'])}",
            "median epochs": "" if math.isnan(r["median_epochs"]) else f"{r['median_epochs']:g}",
            "not reached": f"{int(r['not_reached'])} of {int(r['seeds'])}", "epoch bound": int(r["epochs"]),
        })
    return to_markdown(pd.DataFrame(rows))


def chosen_target(table: pd.DataFrame, model: str, data: str) -> float | None:
    """The target the headline uses for a model on one data kind."""
    sub = table[(table["model"] == model) & (table["data"] == data)]
    if sub.empty:
        return None
    default = default_target(model, data)
    targets = sub["target_accuracy"].round(6)
    if default is not None and (targets == round(default.accuracy, 6)).any():
        return default.accuracy
    return float(targets.value_counts().sort_index(ascending=False).idxmax())


def _setting(r: pd.Series, several: bool) -> str:
    where = f"{r['device_key'].split(' · ', 1)[-1]}, " if several else ""
    return f"{where}batch {int(r['batch_size'])}, {r['precision']}"


def fastest(table: pd.DataFrame, model: str) -> list[dict]:
    """Per data kind of the model's runs: the target used and, per device kind, the
    configuration with the lowest median time (its median is inf when none reached it)."""
    out = []
    if table.empty:
        return out
    for data in sorted(set(table.loc[table["model"] == model, "data"].dropna())):
        target = chosen_target(table, model, data)
        sub = table[(table["model"] == model) & (table["data"] == data)
                    & (table["target_accuracy"].round(6) == round(target, 6))]
        kinds = {}
        for kind in ("cpu", "cuda"):
            k = sub[sub["device_kind"] == kind]
            if not k.empty:
                kinds[kind] = {"best": k.sort_values(["median_s", "batch_size"]).iloc[0],
                               "several": k["device_key"].nunique() > 1, "bound": int(k["epochs"].max()),
                               "runs": int(k["seeds"].sum()), "settings": len(k)}
        if kinds:
            out.append({"data": data, "target": target, "kinds": kinds})
    return out


def _ratio(kinds: dict) -> float | None:
    """CPU time / GPU time of the fastest configurations, when both reached the target."""
    if "cpu" not in kinds or "cuda" not in kinds:
        return None
    cpu, gpu = kinds["cpu"]["best"]["median_s"], kinds["cuda"]["best"]["median_s"]
    return None if math.isinf(cpu) or math.isinf(gpu) else cpu / gpu


def _faster(ratio: float) -> str:
    return f"the GPU {ratio:.1f}x faster" if ratio >= 1 else f"the CPU {1 / ratio:.1f}x faster"


def headline(table: pd.DataFrame, model: str, throughput_speedup: float | None = None) -> list[str]:
    """Per data kind of the model's time-to-accuracy runs: "time to X% accuracy: CPU N s
    (batch b, precision p), GPU M s (...): the GPU k-times faster", with the throughput-only
    speedup beside it. CPU rows only: the CPU part alone."""
    lines = []
    for f in fastest(table, model):
        parts = []
        for kind, name in (("cpu", "CPU"), ("cuda", "GPU")):
            k = f["kinds"].get(kind)
            if k is None:
                continue
            if math.isinf(k["best"]["median_s"]):
                parts.append(f"{name} not reached within {k['bound']} epochs ({k['runs']} runs, "
                             f"{k['settings']} settings)")
            else:
                parts.append(f"{name} {fmt_seconds(k['best']['median_s'])} ({_setting(k['best'], k['several'])})")
        text = f"time to {f['target']:.0%} accuracy ({f['data']}): " + ", ".join(parts)
        ratio = _ratio(f["kinds"])
        if ratio is not None:
            text += f": {_faster(ratio)}"
            if throughput_speedup is not None:
                text += f" (throughput alone: {throughput_speedup:.1f}x at each device's best setting)"
        lines.append(text)
    return lines


def headline_cell(table: pd.DataFrame, model: str) -> str:
    """The headline table's cell: "60% (synthetic): CPU 8.25 s, GPU 1.05 s (GPU 7.9x)"."""
    cells = []
    for f in fastest(table, model):
        times = ", ".join(f"{name} {fmt_seconds(f['kinds'][kind]['best']['median_s'])}"
                          for kind, name in (("cpu", "CPU"), ("cuda", "GPU")) if kind in f["kinds"])
        ratio = _ratio(f["kinds"])
        cells.append(f"{f['target']:.0%} ({f['data']}): {times}"
                     + (f" ({_faster(ratio).removeprefix('the ')})" if ratio is not None else ""))
    return "; ".join(cells)


def target_lines(table: pd.DataFrame) -> list[str]:
    """Which targets the report shows, per model and data kind, and where each comes from."""
    lines = []
    for (model, data), g in table.groupby(["model", "data"], sort=True):
        used = sorted(set(g["target_accuracy"].round(6)))
        default = default_target(model, data)
        for t in used:
            if default is not None and round(default.accuracy, 6) == t:
                why = f"the default for {model} on {data} data (bench/targets.py; {default.basis})"
            else:
                why = "given with --target-accuracy" + (f" (the default for {model} on {data} data is "
                                                        f"{default.accuracy:.0%})" if default else "")
            lines.append(f"{model}, {data}: {t:.0%}, {why}.")
    return lines


def choice_lines(df: pd.DataFrame) -> list[str]:
    """Which batch sizes each device's time-to-accuracy runs used, and the faster batch sizes
    of the grid they passed over with why (bench/targets.py `reachable`: too few steps within
    the epoch bound for the target, at a learning rate capped from some batch size up)."""
    runs = tta_rows(df)
    if runs.empty:
        return []
    lines = []
    keys = ["run_index", "device_key", "model", "data", "target_accuracy", "epochs"]
    for (run, device, model, data, target, epochs), g in runs.groupby(keys, sort=True):
        grid = df[(df["run_index"] == run) & (df["device_key"] == device) & (df["model"] == model)
                  & (df["status"] == "ok") & (df["epochs"].fillna(0) == 0) & (df["data_path"] == "device")
                  & pd.to_numeric(df["train_images_per_s"], errors="coerce").notna()]
        used = sorted(int(b) for b in set(g["batch_size"]))
        best = grid.groupby("batch_size")["train_images_per_s"].max()
        slowest_used = min((best[b] for b in used if b in best.index), default=math.inf)
        sizes = pd.to_numeric(g["train_size"], errors="coerce").dropna() if "train_size" in g else pd.Series([])
        train = int(sizes.max()) if len(sizes) else 50_000
        passed = [f"{int(b)} ({reachable(model, data, int(b), train, int(epochs), float(target))[1]})"
                  for b, v in best.sort_values(ascending=False).items() if v > slowest_used and int(b) not in used]
        text = (f"{device}, {model}: batch {', '.join(map(str, used))}: the fastest measured that can reach "
                f"{float(target):.0%} within the {int(epochs)}-epoch bound")
        lines.append(text + (f"; faster batch sizes left out: {'; '.join(passed)}" if passed else ""))
    return lines
