"""Run folders written by hand for report and equivalence tests: accuracy rows with chosen
accuracies, per-example predictions with chosen discordant counts, and time-to-accuracy
rows. Nothing here trains; CUDA rows are fabricated and live in tmp folders only."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from bench.results import COLUMNS, ResultsStore, read_jsonl

CPU_SYSTEM = {"host": "laptop", "cpu_model": "Laptop CPU", "cuda_available": False}
GPU_SYSTEM = {"host": "server", "cpu_model": "Server CPU", "cuda_available": True, "gpu_name": "NVIDIA H100"}


def acc_row(seed: int, accuracy: float | None, precision: str = "fp32", device: str = "cpu", **kw) -> dict:
    """An ok accuracy run (2 epochs, tutorial, batch 32, synthetic) with the given test accuracy."""
    r = dict.fromkeys(COLUMNS)
    r.update(device=device, device_name="NVIDIA H100" if device.startswith("cuda") else "Laptop CPU",
             host="server" if device.startswith("cuda") else "laptop", model="tutorial", batch_size=32,
             precision=precision, channels_last=False, compile=False, data_path="device", status="ok", seed=seed,
             epochs=2, threads=2, data="synthetic", train_size=50000, test_size=1000, world_size=1, lr=0.008,
             augment=False, train_images_per_s=8000.0, step_ms_median=4.0, step_ms_iqr=0.1, noisy=False,
             timed_steps=20, warmup_steps=3, warmup_seconds=0.1, timing_method="perf_counter",
             eval_images_per_s=20000.0, peak_memory_mb=500.0, epoch_seconds=6.0, test_accuracy=accuracy,
             accuracy_curve=None if accuracy is None else [accuracy - 0.05, accuracy])
    r.update(kw)
    return r


def predictions(n: int, ref_right: int, b: int, c: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels, reference predictions, candidate predictions) on n examples: the reference is
    right on `ref_right`, of which the candidate gets `b` wrong; the candidate is right on `c`
    of the reference's wrong ones."""
    assert b <= ref_right and c <= n - ref_right
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    wrong = (labels + 1) % 10
    ref = np.where(np.arange(n) < ref_right, labels, wrong)
    cand = ref.copy()
    cand[:b] = wrong[:b]  # reference right, candidate wrong
    cand[ref_right:ref_right + c] = labels[ref_right:ref_right + c]  # reference wrong, candidate right
    return labels, ref.astype(np.uint8), cand.astype(np.uint8)


def write_folder(folder: Path, rows: list[dict], system: dict | None = None,
                 preds: dict[int, tuple[np.ndarray, np.ndarray]] | None = None) -> Path:
    """results.jsonl (+ csv) and system.json; preds maps a row's index to (predictions, labels)."""
    folder = Path(folder)
    folder.mkdir(parents=True)
    store = ResultsStore(folder)
    for i, r in enumerate(rows):
        r = dict(r)
        if preds and i in preds:
            r["predictions_file"] = store.save_predictions(f"row{i}", *preds[i])
        store.append(r)
    (folder / "system.json").write_text(json.dumps(system or CPU_SYSTEM))
    return folder


def pair_folder(folder: Path, cases: list[tuple[int, int, int, int]], n: int = 1000, ref_precision="fp32",
                cand_precision="bf16") -> Path:
    """A reference and a candidate side, one (seed, ref_right, b, c) per seed, with predictions."""
    rows, preds = [], {}
    for seed, ref_right, b, c in cases:
        labels, ref, cand = predictions(n, ref_right, b, c, seed)
        preds[len(rows)] = (ref, labels)
        rows.append(acc_row(seed, ref_right / n, ref_precision, test_size=n))
        preds[len(rows)] = (cand, labels)
        rows.append(acc_row(seed, (ref_right - b + c) / n, cand_precision, test_size=n))
    return write_folder(folder, rows, preds=preds)


def one_seed_copy(src: Path, dst: Path, seed: int) -> Path:
    """The rows of one seed of a stored run folder (with their prediction files) in a new folder."""
    src, dst = Path(src), Path(dst)
    (dst / "predictions").mkdir(parents=True)
    rows = [r for r in read_jsonl(src / "results.jsonl") if r.get("seed") == seed and (r.get("epochs") or 0) > 0]
    with open(dst / "results.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
            if r.get("predictions_file"):
                shutil.copy(src / r["predictions_file"], dst / r["predictions_file"])
    shutil.copy(src / "system.json", dst / "system.json")
    return dst
