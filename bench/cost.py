"""Cost: prices per device-hour turn measured throughput (and time to accuracy, when rows
have it) into money, from stored results only. Without prices nothing here runs.

Figures per model and device, at the device's fastest setting:
  $ / 1M images  price per hour / (3600 x steady-state images/s) x 1e6
  $ / run        one training run of E epochs of 50,000 images at that throughput (E: the
                 accuracy runs' epochs in these results, else the tutorial's 2). A projection
                 from steady-state throughput (no evaluation or input stalls): an estimate.
  $ to target    price x the fastest measured time to the target accuracy, where rows have it
  speedup per $  GPU/CPU speedup x CPU price / GPU price: above 1 the GPU is cheaper per image
A speedup (and so a speedup per $) is only computed from measured CPU and CUDA rows. With no
GPU run in the results every figure is labelled an estimate.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

EPOCH_IMAGES = 50_000
DEFAULT_EPOCHS = 2  # the tutorial trains two epochs
PRICED_DEVICES = ("cpu", "cuda")
ENERGY_PRICE = "kwh"  # among the prices: the price of a kWh of energy (--price-kwh; "kwh" in a price file)
EXPECTED = "DEVICE=PRICE pairs in currency units per device-hour, e.g. cpu=0.10,cuda=3.00 (devices: cpu, cuda)"


class PriceError(ValueError):
    """A price that cannot be used; the message names the value and what was expected."""


def _price(device: str, value, shown: str) -> float:
    if device not in PRICED_DEVICES and device != ENERGY_PRICE:
        raise PriceError(f"could not parse price {shown!r}: unknown device {device!r}; expected {EXPECTED}")
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise PriceError(f"could not parse price {shown!r}: {value!r} is not a number; expected {EXPECTED}") from None
    if isinstance(value, bool) or not math.isfinite(x) or x <= 0:
        raise PriceError(f"could not parse price {shown!r}: expected a positive price per device-hour "
                         f"({EXPECTED})")
    return x


def parse_prices(text: str) -> dict[str, float]:
    """`cpu=0.10,cuda=3.00` -> {"cpu": 0.1, "cuda": 3.0}."""
    prices: dict[str, float] = {}
    parts = [p.strip() for p in text.split(",")]
    if not text.strip() or any(not p for p in parts):
        raise PriceError(f"could not parse price {text!r}; expected {EXPECTED}")
    for part in parts:
        device, sep, value = part.partition("=")
        if not sep:
            raise PriceError(f"could not parse price {part!r}; expected {EXPECTED}")
        device = device.strip()
        if device in prices:
            raise PriceError(f"could not parse price {text!r}: {device} is priced twice; expected {EXPECTED}")
        prices[device] = _price(device, value.strip(), part)
    return prices


def load_price_file(path: Path | str) -> dict[str, float]:
    """A JSON object of prices per device-hour: {"cpu": 0.10, "cuda": 3.00}."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except OSError as e:
        raise PriceError(f"cannot read price file {str(path)!r}: {e.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PriceError(f"price file {str(path)!r} is not JSON ({e}); expected an object such as "
                         '{"cpu": 0.10, "cuda": 3.00}') from None
    if not isinstance(data, dict) or not data:
        raise PriceError(f"price file {str(path)!r} holds {type(data).__name__} {data!r:.60}; expected an object "
                         'such as {"cpu": 0.10, "cuda": 3.00}')
    return {str(k): _price(str(k), v, f"{k}={v} in {path}") for k, v in data.items()}


# --------------------------------------------------------------------------------------
# Tables and lines
# --------------------------------------------------------------------------------------

def run_epochs(df: pd.DataFrame) -> int:
    trained = df.loc[(df["status"] == "ok") & (df["epochs"].fillna(0) > 0), "epochs"]
    return int(trained.median()) if not trained.empty else DEFAULT_EPOCHS


def cost_table(df: pd.DataFrame, tp: pd.DataFrame, prices: dict[str, float]) -> pd.DataFrame:
    """One row per model and priced device: its fastest setting and what it costs."""
    if tp.empty or not prices:
        return pd.DataFrame()
    epochs = run_epochs(df)
    estimate = not (tp["device_kind"] == "cuda").any()
    ok = df[df["status"] == "ok"]
    rows = []
    for (key, kind, model), g in tp.groupby(["device_key", "device_kind", "model"], sort=False):
        if kind not in prices:
            continue
        best = g.loc[g["images_per_s"].idxmax()]
        per_s = prices[kind] / 3600
        row = {
            "model": model, "device": key, "price_per_hour": prices[kind],
            "setting": f"bs {best['batch_size']} {best['precision']}", "images_per_s": best["images_per_s"],
            "per_million_images": per_s * 1e6 / best["images_per_s"],
            "per_run": per_s * epochs * EPOCH_IMAGES / best["images_per_s"],
            "to_target": None, "basis": "estimate (no GPU run)" if estimate else "measured throughput",
        }
        if "time_to_target_s" in ok:
            tt = ok[(ok["device_key"] == key) & (ok["model"] == model)]["time_to_target_s"].dropna()
            if not tt.empty:
                row["to_target"] = per_s * float(tt.min())
        if ENERGY_PRICE in prices:  # the measured energy of that setting, at the price per kWh
            from bench.energy_report import per_million_images

            row["energy_per_million_images"] = per_million_images(df, key, model, best["batch_size"],
                                                                  best["precision"], prices[ENERGY_PRICE])
        rows.append(row)
    if not rows:
        return pd.DataFrame()
    size = ok.groupby("model")["flops_per_image"].median()  # smallest model first, as on the map
    table = pd.DataFrame(rows)
    order = sorted(range(len(table)), key=lambda i: (size.get(table["model"][i], math.inf), table["model"][i]))
    return table.iloc[order].reset_index(drop=True)


def cost_lines(df: pd.DataFrame, tp: pd.DataFrame, prices: dict[str, float]) -> list[str]:
    """Sentences: per model, the speedup per unit of cost where both devices measured it."""
    table = cost_table(df, tp, prices)
    if table.empty:
        return []
    lines = []
    for model, g in table.groupby("model", sort=False):
        cpu = g[g["device"].str.startswith("cpu")]
        gpu = g[g["device"].str.startswith("cuda")]
        if cpu.empty or gpu.empty:
            continue
        c, u = cpu.loc[cpu["images_per_s"].idxmax()], gpu.loc[gpu["images_per_s"].idxmax()]
        speedup = u["images_per_s"] / c["images_per_s"]
        per_cost = speedup * c["price_per_hour"] / u["price_per_hour"]
        verdict = "cheaper" if per_cost > 1 else "dearer"
        price_ratio = u["price_per_hour"] / c["price_per_hour"]
        lines.append(f"**{model}** cost: GPU/CPU speedup {speedup:.2g}x at {price_ratio:.3g}x "
                     f"the price per hour = **{per_cost:.2g}x speedup per unit of cost**: the GPU is {verdict} per "
                     f"image ({u['per_million_images']:.3g} vs {c['per_million_images']:.3g} per million images).")
    if not (tp["device_kind"] == "cuda").any():
        lines.append("Cost figures are **estimates**: these results hold no GPU run, so no GPU cost or speedup "
                     "per unit of cost is shown.")
    return lines


def report_section(df: pd.DataFrame, tp: pd.DataFrame, prices: dict[str, float] | None) -> list[str]:
    """The report's cost section; empty without prices."""
    from bench.markdown import to_markdown

    hourly = {k: v for k, v in (prices or {}).items() if k != ENERGY_PRICE}
    if not hourly:  # (a price per kWh alone is shown in the energy section)
        return []
    table = cost_table(df, tp, prices)
    energy = f" Energy at {prices[ENERGY_PRICE]:g} per kWh: what the measured energy of that setting costs." \
        if ENERGY_PRICE in prices else ""
    head = ["## Cost", "", "Prices per device-hour: " + ", ".join(f"{k} {v:g}" for k, v in hourly.items())
            + f". A training run = {run_epochs(df)} epochs of {EPOCH_IMAGES:,} images at the fastest measured "
              "throughput (an estimate: no evaluation or input stalls)." + energy, ""]
    if table.empty:
        return head + ["No results on a priced device.", ""]
    view = table.rename(columns={"price_per_hour": "price/h", "images_per_s": "img/s",
                                 "per_million_images": "per 1M images", "per_run": "per run (est.)",
                                 "to_target": "to target", "energy_per_million_images": "energy per 1M images"})
    fmts = ("", "", "g", "", ",.0f", ".4g", ".4g", ".4g", "") + ((".4g",) if ENERGY_PRICE in prices else ())
    return head + [*[f"- {line}" for line in cost_lines(df, tp, prices)], "", to_markdown(view, floatfmt=fmts), ""]
