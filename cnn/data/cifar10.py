"""Real CIFAR-10: a local folder or a download, checked against the published checksums and
parsed by an unpickler that cannot run code."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import shutil
import socket
import tarfile
import tempfile
import threading
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import torch

from cnn.data.arrays import Cifar10Arrays, DataError

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_TGZ_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_FOLDER = "cifar-10-batches-py"
# The published checksums (the same ones torchvision verifies).
CIFAR10_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
    "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
}
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILES = ("test_batch",)
# Set (to anything but "" or "0") to refuse every download: the test suite sets it for itself
# and every process it starts, and an air-gapped server can set it to fail fast.
NO_DOWNLOAD_ENV = "CIFAR_BENCH_NO_DOWNLOAD"

REMEDY = ("Remedy: delete the folder and fetch CIFAR-10 again (--data cifar10 with network access, or the "
          "official cifar-10-python.tar.gz extracted into --data-dir), or run with --data synthetic.")


def bad_file(path: Path, problem: str) -> DataError:
    return DataError(f"{path}: {problem}. {REMEDY}")


# --------------------------------------------------------------------------------------
# Checksums and a pickle reader that cannot run code
# --------------------------------------------------------------------------------------

def md5sum(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# numpy pickles an ndarray as `_reconstruct(ndarray, shape, dtype)` plus a state tuple.
# These three callables are the only globals a CIFAR-10 batch needs; any other global
# (os.system, builtins.eval, ...) is what a crafted file would use to run code.
_RECONSTRUCT = np.ndarray.__reduce__(np.zeros(1))[0]
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _Refused(pickle.UnpicklingError):
    pass


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):  # noqa: D102 - pickle's hook
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise _Refused(f"global '{module}.{name}' is not allowed") from None

    def persistent_load(self, pid):  # noqa: D102 - pickle's hook
        raise _Refused("persistent ids are not allowed")


def _check_plain(obj: object, path: Path, depth: int = 0) -> None:
    """Accept only dicts, lists, strings, ints, bytes and uint8 arrays."""
    if depth > 4:
        raise bad_file(path, "nested too deeply for a CIFAR-10 batch")
    if isinstance(obj, dict):
        for k, v in obj.items():
            _check_plain(k, path, depth + 1)
            _check_plain(v, path, depth + 1)
    elif isinstance(obj, list):
        for v in obj:
            if not isinstance(v, (int, str, bytes)):
                _check_plain(v, path, depth + 1)
    elif isinstance(obj, np.ndarray):
        if obj.dtype != np.uint8:
            raise bad_file(path, f"array of dtype {obj.dtype}, expected uint8")
    elif not isinstance(obj, (str, bytes, int)) or isinstance(obj, bool):
        raise bad_file(path, f"unexpected {type(obj).__name__} in a CIFAR-10 batch")


def read_batch_file(path: Path) -> dict:
    """Parse one pickled CIFAR-10 batch without letting it run code."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise bad_file(path, f"cannot be read ({e.strerror})") from None
    try:
        obj = _RestrictedUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except _Refused as e:
        raise bad_file(path, f"refused: {e}; this is not a plain CIFAR-10 batch and nothing in it was run") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            MemoryError) as e:
        raise bad_file(path, f"truncated or corrupt ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise bad_file(path, f"expected a dict, found {type(obj).__name__}")
    _check_plain(obj, path)
    return obj


def _batch_arrays(batch: dict, path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    data, labels = batch.get("data"), batch.get("labels")
    if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        shape = getattr(data, "shape", type(data).__name__)
        raise bad_file(path, f"'data' has shape {shape}, expected (N, 3072) uint8")
    if not isinstance(labels, list) or len(labels) != data.shape[0]:
        raise bad_file(path, f"'labels' must be a list of {data.shape[0]} ints")
    y = torch.tensor(labels, dtype=torch.int64)
    if len(y) and (int(y.min()) < 0 or int(y.max()) > 9):
        raise bad_file(path, f"labels outside 0-9 (min {int(y.min())}, max {int(y.max())})")
    x = torch.from_numpy(np.ascontiguousarray(data)).view(-1, 3, 32, 32).clone()
    return x, y


def find_cifar10_folder(data_dir: Path) -> Path | None:
    """`data_dir` itself or its `cifar-10-batches-py` child, whichever holds the batches."""
    for candidate in (data_dir, data_dir / CIFAR10_FOLDER):
        if (candidate / "test_batch").exists() or (candidate / "data_batch_1").exists():
            return candidate
    return None


def verify_cifar10(folder: Path, checksums: dict[str, str] = CIFAR10_MD5) -> None:
    for name, expected in checksums.items():
        path = folder / name
        if not path.is_file():
            raise DataError(f"missing {path}. {REMEDY}")
        actual = md5sum(path)
        if actual != expected:
            raise DataError(f"checksum mismatch for {path}: md5 {actual}, expected {expected} "
                            f"(a partial or altered file). {REMEDY}")


def load_cifar10(folder: Path, checksums: dict[str, str] = CIFAR10_MD5) -> Cifar10Arrays:
    """Load the standard `cifar-10-batches-py` files after verifying their checksums."""
    folder = Path(folder)
    verify_cifar10(folder, checksums)
    parts = {}
    for split, names in (("train", TRAIN_FILES), ("test", TEST_FILES)):
        xs, ys = zip(*(_batch_arrays(read_batch_file(folder / n), folder / n) for n in names))
        parts[split] = (torch.cat(xs), torch.cat(ys))
    return Cifar10Arrays(*parts["train"], *parts["test"], source="cifar10", folder=str(folder))


def _reachable(url: str, timeout: float) -> bool:
    """Can we open a TCP connection to the download host within `timeout` seconds?
    Run in a thread because name resolution ignores socket timeouts."""
    parsed = urlparse(url)
    result: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((parsed.hostname, parsed.port or 443), timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def download_cifar10(root: Path, url: str = CIFAR10_URL, timeout: float = 5.0) -> Path:
    """Download, verify and extract CIFAR-10 under `root`; returns the batches folder.

    Everything happens in a temporary folder beside the target and is moved into place only
    after every checksum passed, so an interrupted or corrupt download never passes for a
    dataset."""
    from torchvision.datasets.utils import download_url

    root = Path(root)
    if os.environ.get(NO_DOWNLOAD_ENV, "") not in ("", "0"):
        raise DataError(f"downloading is off ({NO_DOWNLOAD_ENV} is set); "
                        f"put the extracted {CIFAR10_FOLDER} folder under {root} or use --data synthetic")
    if not _reachable(url, timeout):
        raise DataError(f"cannot reach {urlparse(url).hostname} within {timeout:g} s; "
                        f"put the extracted {CIFAR10_FOLDER} folder under {root} or use --data synthetic")
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=".download-") as tmp:
        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(timeout * 6)  # a stalled transfer fails instead of hanging
        try:
            download_url(url, tmp, filename="cifar-10-python.tar.gz", md5=CIFAR10_TGZ_MD5)
        except (OSError, RuntimeError) as e:
            raise DataError(f"download of {url} failed: {e}") from None
        finally:
            socket.setdefaulttimeout(previous)
        with tarfile.open(Path(tmp) / "cifar-10-python.tar.gz") as tar:
            tar.extractall(tmp, filter="data")
        verify_cifar10(Path(tmp) / CIFAR10_FOLDER)
        target = root / CIFAR10_FOLDER
        if target.exists():
            shutil.rmtree(target)
        os.replace(Path(tmp) / CIFAR10_FOLDER, target)
    return target
