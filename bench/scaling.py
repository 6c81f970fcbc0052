"""Scale-out results: scaling efficiency and its figure (runs with world_size > 1)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

SCALING_KEYS = ["device_kind", "model", "precision", "batch_size", "backend_family"]


def scaling_table(df: pd.DataFrame) -> pd.DataFrame:
    """Global images/s per world size, and efficiency = ips(N) / (N * ips(1)) for the same
    model, precision, device kind and global batch size."""
    ok = df[(df["status"] == "ok") & (df["data_path"] == "device")].copy()
    if ok.empty or ok["world_size"].fillna(1).max() <= 1:
        return pd.DataFrame()
    ok["world_size"] = ok["world_size"].fillna(1).astype(int)
    ok["backend_family"] = ok["device_kind"]
    g = ok.groupby([*SCALING_KEYS, "world_size"])["train_images_per_s"].median().reset_index()
    rows = []
    for key, s in g.groupby(SCALING_KEYS):
        base = s[s["world_size"] == 1]["train_images_per_s"]
        for r in s.itertuples():
            eff = r.train_images_per_s / (r.world_size * base.iloc[0]) if not base.empty else float("nan")
            rows.append({**dict(zip(SCALING_KEYS, key)), "world_size": r.world_size,
                         "images_per_s": r.train_images_per_s, "efficiency": eff})
    out = pd.DataFrame(rows)
    return out[out.groupby(SCALING_KEYS)["world_size"].transform("max") > 1]


def fig_scaling(df: pd.DataFrame, out: Path) -> str | None:
    table = scaling_table(df)
    if table.empty:
        return None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for key, s in table.groupby(SCALING_KEYS):
        s = s.sort_values("world_size")
        label = f"{key[0]} {key[1]} {key[2]} global bs {key[3]}"
        ax1.plot(s["world_size"], s["images_per_s"], marker="o", label=label)
        ax2.plot(s["world_size"], 100 * s["efficiency"], marker="o", label=label)
    ax1.set_xlabel("processes (world size)")
    ax1.set_ylabel("global training throughput (images/s)")
    ax2.set_xlabel("processes (world size)")
    ax2.set_ylabel("scaling efficiency (%) = ips(N) / (N x ips(1))")
    ax2.axhline(100, color="black", linewidth=1)
    for ax in (ax1, ax2):
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Data-parallel scaling (DistributedDataParallel)")
    fig.tight_layout()
    fig.savefig(out / "scaling.png", dpi=110)
    plt.close(fig)
    return "scaling.png"
