"""CIFAR-10 for every device: real files (local or downloaded, checksummed, parsed without
running code: `cifar10`), learnable synthetic data of the same shape (`synthetic`), and the
device-resident batch iterator with the classic DataLoader beside it (`batches`).
`get_dataset` chooses the source; every public name is importable from `cnn.data`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

from cnn.data.arrays import CLASSES, MEAN, STD, Cifar10Arrays, DataError
from cnn.data.batches import DeviceBatches, classic_dataset, classic_loader, epoch_plan
from cnn.data.cifar10 import (
    CIFAR10_FOLDER,
    CIFAR10_MD5,
    CIFAR10_TGZ_MD5,
    CIFAR10_URL,
    NO_DOWNLOAD_ENV,
    REMEDY,
    TEST_FILES,
    TRAIN_FILES,
    bad_file,
    download_cifar10,
    find_cifar10_folder,
    load_cifar10,
    md5sum,
    read_batch_file,
    verify_cifar10,
)
from cnn.data.synthetic import (
    SYNTH_CLUTTER,
    SYNTH_DISTRACTOR,
    SYNTH_LABEL_NOISE,
    SYNTH_NOISE,
    SYNTH_SHIFT,
    synthetic_cifar10,
)

DATA_KINDS = ("auto", "cifar10", "synthetic")


def get_dataset(
    kind: str = "auto",
    data_dir: Path | str | None = None,
    download: bool = True,
    synthetic_seed: int = 0,
    synthetic_sizes: tuple[int, int] = (50_000, 10_000),
    warn: Callable[[str], None] | None = None,
) -> Cifar10Arrays:
    """`cifar10`: real files from `data_dir` (downloaded there if missing and allowed).
    `synthetic`: generated. `auto`: real if present or downloadable, else synthetic with
    a one-line warning. The returned `source` says which one ran. `synthetic_sizes`:
    (train, test) images to generate when synthetic data is used."""
    if kind not in DATA_KINDS:
        raise DataError(f"unknown data {kind!r}; expected one of {', '.join(DATA_KINDS)}")
    if kind == "synthetic":
        return synthetic_cifar10(*synthetic_sizes, seed=synthetic_seed)
    root = Path(data_dir) if data_dir is not None else Path("data")
    folder = find_cifar10_folder(root)
    if folder is not None:  # present: use it, and fail loudly if it is damaged
        return load_cifar10(folder)
    try:
        if not download:
            raise DataError(f"no CIFAR-10 files under {root} and downloading is off")
        return load_cifar10(download_cifar10(root))
    except DataError as e:
        if kind == "cifar10":
            raise
        (warn or (lambda m: warnings.warn(m, stacklevel=2)))(
            f"CIFAR-10 unavailable ({e}); using synthetic data of the same shape")
        return synthetic_cifar10(*synthetic_sizes, seed=synthetic_seed)


__all__ = [
    "CIFAR10_FOLDER", "CIFAR10_MD5", "CIFAR10_TGZ_MD5", "CIFAR10_URL", "CLASSES", "DATA_KINDS", "MEAN",
    "NO_DOWNLOAD_ENV", "REMEDY", "STD", "SYNTH_CLUTTER", "SYNTH_DISTRACTOR", "SYNTH_LABEL_NOISE", "SYNTH_NOISE",
    "SYNTH_SHIFT", "TEST_FILES", "TRAIN_FILES", "Cifar10Arrays", "DataError", "DeviceBatches", "bad_file",
    "classic_dataset", "classic_loader", "download_cifar10", "epoch_plan", "find_cifar10_folder", "get_dataset",
    "load_cifar10", "md5sum", "read_batch_file", "synthetic_cifar10", "verify_cifar10",
]
