"""The report's energy section, from stored rows and system.json only: energy per image
against batch size per device and precision (total, and above the idle power measured
before the sweep), each device's most frugal setting, the GPU/CPU energy ratio at the size
map's points (bench/breakeven.py) where both devices measured energy, the cost of that
energy at a price per kWh, and, when no row has energy, one line saying why.

Above idle, per image = (mean power - idle power) x window seconds / images
                      = energy per image x (1 - idle W / mean W).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from bench import breakeven, energy
from bench.cost import ENERGY_PRICE
from bench.figures import lines_vs_batch
from bench.markdown import to_markdown

J_PER_KWH = 3.6e6
PREFIX = "energy: not available: "


def energy_frame(df: pd.DataFrame) -> pd.DataFrame:
    """Median over seeds of each configuration's energy (ok one-process device-path rows with
    a counted window), with its throughput and the energy above idle."""
    if df.empty or "energy_j_per_image" not in df:
        return pd.DataFrame()
    ok = df[(df["status"] == "ok") & (df["data_path"] == "device") & (df["world_size"] == 1)
            & pd.to_numeric(df["energy_j_per_image"], errors="coerce").notna()].copy()
    if ok.empty:
        return pd.DataFrame()
    for col in ("energy_j_per_image", "energy_mean_w", "energy_idle_w", "train_images_per_s"):
        ok[col] = pd.to_numeric(ok[col], errors="coerce")
    ok["above_idle_j_per_image"] = ok["energy_j_per_image"] * (1 - ok["energy_idle_w"] / ok["energy_mean_w"])
    keys = ["device_key", "device_kind", "model", "precision", "batch_size", "channels_last", "compile"]
    agg = ok.groupby(keys, dropna=False).agg(
        j_per_image=("energy_j_per_image", "median"), mean_w=("energy_mean_w", "median"),
        idle_w=("energy_idle_w", "median"), above_idle_j_per_image=("above_idle_j_per_image", "median"),
        images_per_s=("train_images_per_s", "median"), domains=("energy_domains", "first"),
        method=("energy_method", "first"), window_s=("energy_window_s", "median"),
    ).reset_index()
    agg["variant"] = [f" ({', '.join(n for n, on in (('cl', cl), ('compiled', c)) if bool(on))})"
                      if bool(cl) or bool(c) else "" for cl, c in zip(agg["channels_last"], agg["compile"])]
    return agg


def not_available(df: pd.DataFrame) -> list[str]:
    """`device kind: reason` for each device kind none of whose rows has energy."""
    if df.empty:
        return []
    has = pd.to_numeric(df.get("energy_j_per_image"), errors="coerce").notna() \
        if "energy_j_per_image" in df else pd.Series(False, index=df.index)
    out = []
    for kind, g in df.groupby("device_kind", sort=True):
        if has[g.index].any():
            continue
        reasons = g["energy_reason"].dropna().astype(str) if "energy_reason" in g else pd.Series(dtype=str)
        reasons = reasons[reasons.str.startswith(PREFIX)].str[len(PREFIX):]
        why = "; ".join(dict.fromkeys(reasons)) or "not recorded (results from before energy was measured, or no " \
                                                    "configuration ran)"
        out.append(f"{kind}: {why}")
    return out


def most_frugal(ef: pd.DataFrame, price_kwh: float | None = None) -> pd.DataFrame:
    """Per device and model: the setting with the least energy per image."""
    if ef.empty:
        return pd.DataFrame()
    best = ef.loc[ef.groupby(["device_key", "model"], sort=False)["j_per_image"].idxmin()]
    out = pd.DataFrame({
        "device": best["device_key"], "model": best["model"],
        "setting": [f"bs {b} {p}{v}" for b, p, v in zip(best["batch_size"], best["precision"], best["variant"])],
        "J/image": best["j_per_image"], "above idle J/image": best["above_idle_j_per_image"],
        "mean W": best["mean_w"], "idle W": best["idle_w"], "img/s": best["images_per_s"],
        "domains": best["domains"]})
    if price_kwh:
        out["energy per 1M images"] = best["j_per_image"] * 1e6 / J_PER_KWH * price_kwh
    return out.reset_index(drop=True)


def energy_at(ef: pd.DataFrame, device_key: str, model: str, batch_size: int, precision: str) -> pd.Series | None:
    """The energy row of a device's fastest variant at one point, or None."""
    g = ef[(ef["device_key"] == device_key) & (ef["model"] == model) & (ef["batch_size"] == batch_size)
           & (ef["precision"] == precision)]
    return None if g.empty else g.loc[g["images_per_s"].idxmax()]


def per_million_images(df: pd.DataFrame, device_key: str, model: str, batch_size: int, precision: str,
                       price_kwh: float) -> float | None:
    """The cost of the energy of a million images at one point (bench/cost.py's table)."""
    ef = energy_frame(df)
    at = None if ef.empty else energy_at(ef, device_key, model, batch_size, precision)
    return None if at is None else float(at["j_per_image"]) * 1e6 / J_PER_KWH * price_kwh


def ratio_table(df: pd.DataFrame, tp: pd.DataFrame) -> pd.DataFrame:
    """The size map's points (each device at its fastest precision, as on the map) where both
    devices measured energy: GPU/CPU energy per image beside the speedup."""
    ef = energy_frame(df)
    mf = breakeven.map_frame(df, tp)
    if ef.empty or mf.empty:
        return pd.DataFrame()
    rows = []
    for cpu, gpu in breakeven.device_pairs(mf):
        for p in breakeven.speedup_points(mf, cpu, gpu).itertuples():
            c = energy_at(ef, cpu, p.model, p.batch_size, p.cpu_precision)
            g = energy_at(ef, gpu, p.model, p.batch_size, p.gpu_precision)
            if c is None or g is None:
                continue
            rows.append({"gpu": gpu, "cpu": cpu, "model": p.model, "batch_size": p.batch_size,
                         "MFLOP/image": p.flops_per_image / 1e6, "GPU J/image": g["j_per_image"],
                         "gpu_precision": p.gpu_precision, "CPU J/image": c["j_per_image"],
                         "cpu_precision": p.cpu_precision, "GPU/CPU energy": g["j_per_image"] / c["j_per_image"],
                         "GPU/CPU speedup": p.speedup, "gpu_domains": g["domains"], "cpu_domains": c["domains"]})
    return pd.DataFrame(rows)


def ratio_lines(table: pd.DataFrame) -> list[str]:
    lines = []
    for (gpu, cpu), g in table.groupby(["gpu", "cpu"], sort=False):
        less = g[g["GPU/CPU energy"] < 1]
        domains = " / ".join(dict.fromkeys(g["gpu_domains"])) + " against " + " / ".join(
            dict.fromkeys(g["cpu_domains"]))
        lines.append(f"**Energy** ({gpu} vs {cpu}): the GPU trains an image on less energy than the CPU at "
                     f"{len(less)} of {len(g)} points measured on both (GPU/CPU energy per image "
                     f"{g['GPU/CPU energy'].min():.2g}x to {g['GPU/CPU energy'].max():.2g}x; {domains}).")
    return lines


def idle_lines(systems: list[dict]) -> list[str]:
    lines = []
    for i, s in enumerate(systems):
        for e in s.get("energy") or []:
            if e.get("available") and e.get("idle_w") is not None:
                lines.append(f"- Idle power, run {i + 1}, {e['device']}: {e['idle_w']:.1f} W ({e['domains']}, "
                             f"{e['idle_seconds']:.1f} s with the benchmark asleep, before the sweep)"
                             + (f"; {e['note']}" if e.get("note") else "") + ".")
    return lines


def report_section(df: pd.DataFrame, systems: list[dict], tp: pd.DataFrame, colours: dict, out: Path,
                   prices: dict[str, float] | None = None) -> list[str]:
    """The report's energy section: one line when no row has energy."""
    ef = energy_frame(df)
    missing = not_available(df)
    if ef.empty:
        return ["## Energy", "", f"Energy: not available ({'; '.join(missing) or 'no results'}).", ""]
    price = (prices or {}).get(ENERGY_PRICE)
    parts = ["## Energy", ""]
    total = lines_vs_batch(ef, colours, "j_per_image", "energy per training image (J)",
                           "Energy per image vs batch size (the energy window's domains: see the table)", out,
                           "energy.png")
    parts += [f"![Energy per image]({total})", ""]
    above = ef.assign(above_idle_j_per_image=ef["above_idle_j_per_image"].where(ef["above_idle_j_per_image"] > 0))
    above_fig = lines_vs_batch(above, colours, "above_idle_j_per_image", "energy above idle per image (J)",
                               "Energy per image above the idle power measured before the sweep", out,
                               "energy_above_idle.png")
    if above_fig:
        parts += [f"![Energy above idle]({above_fig})", ""]
    parts += ["- A window of each configuration's own training loop after its timed rounds, at least "
              f"{energy.MIN_WINDOW_S:g} s (NVML's counter moves about every 100 ms), sized from the steady step time "
              "and extended when it came out short; never counted when still short or when the counters did not "
              "move. CPU: RAPL package and "
              "DRAM energy (the whole socket: other processes' work counts too). GPU: NVML's energy counter (or "
              "sampled power), plus the host's RAPL domains where readable. Above idle = energy per image x (1 - "
              "idle W / mean W)."]
    parts += idle_lines(systems)
    parts += [f"- Energy not available on {m}." for m in missing]
    if price:
        parts.append(f"- Energy priced at {price:g} per kWh.")
    table = most_frugal(ef, price)
    fmts = ["", "", "", ".4g", ".4g", ".1f", ".1f", ",.0f", ""] + ([".4g"] if price else [])
    parts += ["", "Each device's least energy per image, per model:", "", to_markdown(table, floatfmt=fmts), ""]
    ratios = ratio_table(df, tp)
    if not ratios.empty:
        ratios_view = ratios.drop(columns=["gpu_domains", "cpu_domains"])
        parts += ["On the size map's points (each device at its fastest precision there), where both devices "
                  "measured energy:", "", *[f"- {line}" for line in ratio_lines(ratios)], "",
                  to_markdown(ratios_view, floatfmt=("", "", "", "", ".4g", ".4g", "", ".4g", "", ".3g", ".3g")), ""]
    return parts


def summary_line(df: pd.DataFrame) -> str:
    """One line for `cifar-bench summary`: each device's least energy per image, or why none."""
    ef = energy_frame(df)
    missing = not_available(df)
    if ef.empty:
        return f"energy: not available ({'; '.join(missing) or 'no results'})"
    best = most_frugal(ef)
    parts = [f"{r['device']} {r['model']} {r['J/image']:.3g} J/image ({r['setting']}, {r['mean W']:.0f} W)"
             for _, r in best.iterrows()]
    return "energy: " + "; ".join(parts) + "".join(f"; not available on {m}" for m in missing)
