"""CIFAR-10 for every device: real files (local or downloaded, checksummed, parsed without
running code), learnable synthetic data of the same shape, and a device-resident batch
iterator.

Why device-resident: CIFAR-10 is 180 MB as uint8, small enough to live on any GPU (or in
RAM) whole. Indexing it there and normalising on the device removes the per-sample Python
work and the per-step host-to-device copy of the classic DataLoader pipeline; `classic_loader`
keeps that pipeline for comparison.

Why a counter-based hash for shuffling and augmentation (`epoch_plan`): a CPU run and a
CUDA run of one seed must see identical batches in identical order, so that accuracy
differences between them come from arithmetic alone; exact integer arithmetic gives that on
every device, and the plan is made where the data lives, so no epoch boundary copies
anything from the host (a blocking copy is a host-device sync inside a timed loop).
"""

from __future__ import annotations

import copy
import hashlib
import io
import os
import pickle
import shutil
import socket
import tarfile
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import torch

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
CLASSES = ("plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# Per-channel statistics of the CIFAR-10 training set, used for both datasets so that
# the device path and the classic Normalize transform compute the same numbers.
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)

DATA_KINDS = ("auto", "cifar10", "synthetic")


class DataError(Exception):
    """A data problem the user can fix; the message names the file and the remedy."""


REMEDY = ("Remedy: delete the folder and fetch CIFAR-10 again (--data cifar10 with network access, or the "
          "official cifar-10-python.tar.gz extracted into --data-dir), or run with --data synthetic.")


def bad_file(path: Path, problem: str) -> DataError:
    return DataError(f"{path}: {problem}. {REMEDY}")


@dataclass(frozen=True)
class Cifar10Arrays:
    """The whole dataset as uint8 NCHW images and int64 labels, on the CPU."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    source: str  # "cifar10" or "synthetic": what really ran
    folder: str | None = None  # where real files came from

    def subset(self, train_size: int | None, test_size: int | None) -> Cifar10Arrays:
        """The first `train_size` / `test_size` examples (all when None)."""
        for name, n, have in (("train", train_size, len(self.train_y)), ("test", test_size, len(self.test_y))):
            if n is not None and not 0 < n <= have:
                raise DataError(f"{name} size {n} is out of range: the dataset has {have} {name} images")
        return Cifar10Arrays(
            self.train_x[:train_size], self.train_y[:train_size],
            self.test_x[:test_size], self.test_y[:test_size], self.source, self.folder,
        )


# --------------------------------------------------------------------------------------
# Real CIFAR-10: checksums and a pickle reader that cannot run code
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


# --------------------------------------------------------------------------------------
# Synthetic CIFAR-10: learnable, not saturated
# --------------------------------------------------------------------------------------

# Each class is a smooth random colour pattern (a 4x4 grid of colours, upsampled). An
# image is its class pattern, shifted by up to SHIFT pixels, plus a weaker pattern of
# another class (DISTRACTOR), a strong per-image random smooth pattern (CLUTTER, the
# nuisance the network must learn to ignore), per-image contrast jitter and pixel noise.
# A share of labels (LABEL_NOISE) is replaced by a uniformly random class in both splits,
# which caps the best possible test accuracy near 100% - LABEL_NOISE * 90%.
# Tuned on this project's CPU (seed 0): the tutorial Net reaches about 70% after 2 epochs
# (bs 4, lr 1e-3: 64%, 71%; bs 32: 64%, 70%) and is still improving at epoch 3 (74%), so
# accuracy differences between devices or precisions have room to show.
SYNTH_SHIFT = 4
SYNTH_DISTRACTOR = 0.5
SYNTH_CLUTTER = 1.8
SYNTH_NOISE = 48.0
SYNTH_LABEL_NOISE = 0.05


def synthetic_cifar10(train_size: int = 50_000, test_size: int = 10_000, seed: int = 0) -> Cifar10Arrays:
    """Deterministic synthetic CIFAR-10 (uint8 NCHW, 10 classes), generated in memory.

    The class patterns depend only on `seed`, so datasets of any size are samples of the
    same task."""
    g = torch.Generator().manual_seed(seed)
    grid = torch.rand(10, 3, 4, 4, generator=g) * 2 - 1
    protos = torch.nn.functional.interpolate(grid, size=(32, 32), mode="bicubic", align_corners=True)
    protos = protos / protos.abs().amax(dim=(1, 2, 3), keepdim=True)
    # Every (class, shift) image precomputed once: an image is then a row lookup.
    pad, n_shifts = SYNTH_SHIFT, 2 * SYNTH_SHIFT + 1
    padded = torch.nn.functional.pad(protos, (pad, pad, pad, pad), mode="replicate")
    shifted = torch.stack([padded[:, :, dy:dy + 32, dx:dx + 32]
                           for dy in range(n_shifts) for dx in range(n_shifts)], dim=1)
    shifted = shifted.reshape(10 * n_shifts * n_shifts, 3, 32, 32)

    def make(n: int, split_seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        sg = torch.Generator().manual_seed(seed * 1_000_003 + split_seed)
        y = torch.randint(0, 10, (n,), generator=sg)
        other = (y + torch.randint(1, 10, (n,), generator=sg)) % 10
        shift = torch.randint(0, n_shifts * n_shifts, (n,), generator=sg)
        contrast = 0.6 + 0.8 * torch.rand(n, 1, 1, 1, generator=sg)
        flip = torch.rand(n, generator=sg) < SYNTH_LABEL_NOISE
        labels = torch.where(flip, torch.randint(0, 10, (n,), generator=sg), y)
        out = torch.empty(n, 3, 32, 32, dtype=torch.uint8)
        for s in range(0, n, 8192):  # chunks bound the float working set to ~100 MB
            e = min(s + 8192, n)
            img = shifted[y[s:e] * n_shifts * n_shifts + shift[s:e]]
            img += SYNTH_DISTRACTOR * protos[other[s:e]]
            clutter = torch.rand(e - s, 3, 4, 4, generator=sg) * 2 - 1
            img += SYNTH_CLUTTER * torch.nn.functional.interpolate(
                clutter, size=(32, 32), mode="bicubic", align_corners=True)
            img.mul_(70 * contrast[s:e]).add_(128)
            img += torch.randn(e - s, 3, 32, 32, generator=sg) * SYNTH_NOISE
            out[s:e] = img.clamp_(0, 255).round_().to(torch.uint8)
        return out, labels

    train_x, train_y = make(train_size, 1)
    test_x, test_y = make(test_size, 2)
    return Cifar10Arrays(train_x, train_y, test_x, test_y, source="synthetic")


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


# --------------------------------------------------------------------------------------
# Device-resident batches
# --------------------------------------------------------------------------------------

# The epoch plan (order, crop offsets, flips) is made on the device from a counter-based hash:
# every value is a pure function of (example index, seed, epoch), computed in int64 with
# explicit 32-bit masking, so the CPU and CUDA compute bit-identical plans, and nothing is
# copied from the host: the salts are Python ints that travel as kernel arguments. A CPU
# generator's plan would have to be copied to the GPU at every epoch boundary, a blocking copy
# (a host-device sync) inside the timed loop.
_MASK32 = 0xFFFFFFFF


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2**32 for x in [0, 2**32): split c into 16-bit halves so that no product
    exceeds 2**49 (int64 never overflows, on any device)."""
    lo, hi = c & 0xFFFF, c >> 16
    return (x * lo + (((x * hi) & 0xFFFF) << 16)) & _MASK32


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A bijective 32-bit integer mixer (Wellons' `lowbias32`); x holds values in [0, 2**32),
    so every right shift acts on a non-negative value."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def _salts(seed: int, epoch: int, stream: str) -> tuple[int, int]:
    """Two 32-bit salts per (seed, epoch, stream): distinct inputs never share a plan (unlike
    seed * k + epoch, where seed 1 epoch 0 would meet seed 0 epoch k)."""
    digest = hashlib.blake2b(f"{seed}:{epoch}:{stream}".encode(), digest_size=8).digest()
    return int.from_bytes(digest[:4], "little"), int.from_bytes(digest[4:], "little")


def _hash32(index: torch.Tensor, seed: int, epoch: int, stream: str) -> torch.Tensor:
    """A uniform-looking 32-bit value (int64 in [0, 2**32)) per example index."""
    a, b = _salts(seed, epoch, stream)
    return _mix32(_mix32(index ^ a) ^ b)


def epoch_plan(
    n: int, device: torch.device, seed: int, epoch: int, shuffle: bool, augment: bool
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Order, crop offsets (0-8), flips for one epoch, made on `device` without a host copy.

    The order sorts unique keys (hash * 2**bits + index), so ties cannot exist and any sort
    implementation on any device returns the same permutation."""
    index = torch.arange(n, device=device, dtype=torch.int64)
    if shuffle:
        bits = max(n - 1, 1).bit_length()
        order = torch.argsort((_hash32(index, seed, epoch, "order") << bits) | index)
    else:
        order = index
    if not augment:
        return order, None, None, None
    dy = _hash32(index, seed, epoch, "dy") % 9
    dx = _hash32(index, seed, epoch, "dx") % 9
    flip = (_hash32(index, seed, epoch, "flip") >> 31).bool()
    return order, dy, dx, flip


class DeviceBatches:
    """Normalised float batches from a uint8 dataset that lives on `device`.

    Each epoch makes its order, crop offsets and flips on the device from a hash of (example
    index, seed, epoch) (`epoch_plan`: the same integers on every device, no copy from the
    host); each step is then one gather (crop and flip fused into the index; a plain row
    gather without augmentation) and one multiply-add that casts uint8 to float on the fly,
    all on the device, with no host-device copy and no sync, at epoch boundaries too. The
    data is kept in the layout the model consumes (NCHW, or NHWC for channels_last), so a
    batch needs no layout copy: every temporary per step costs allocator work that shows at
    large batches on a CPU.

    Data-parallel sharding: `batch_size` is the global batch; with `world_size` > 1 the
    process of rank `rank` yields its contiguous 1/world_size slice of each global batch.
    Every rank makes the same seeded plan, so the ranks' slices are disjoint and together
    are exactly the one-process batch (same examples, same crops and flips). Unlike
    DistributedSampler (which deals whole epochs out rank by rank), this keeps the global
    batch of an N-process step identical to the one-process step, which is what the
    accuracy equivalence check compares."""

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
        device: torch.device | str = "cpu",
        *,
        shuffle: bool = True,
        augment: bool = False,
        drop_last: bool = True,
        seed: int = 0,
        channels_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ):
        if batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {batch_size}")
        _check_shard(batch_size, rank, world_size)
        self.device = torch.device(device)
        self.n = len(y)
        self.batch_size = batch_size
        self.shuffle, self.augment, self.drop_last = shuffle, augment, drop_last
        self.seed = seed
        self.channels_last = channels_last
        self.rank, self.world_size = rank, world_size
        if drop_last and self.n < batch_size:
            raise ValueError(f"batch size {batch_size} is larger than the {self.n} examples")
        x = x.to(self.device)
        if augment:  # zero padding, as torchvision's RandomCrop(32, padding=4)
            x = torch.nn.functional.pad(x, (4, 4, 4, 4))
        # channels_last: NHWC storage, batches are permuted views of NHWC gathers
        self.x = x.permute(0, 2, 3, 1).contiguous() if channels_last else x.contiguous()
        self.y = y.to(self.device)
        std = torch.tensor(STD, device=self.device)
        shape = (3,) if channels_last else (3, 1, 1)  # broadcast over the channel dimension
        # Materialised per image (3 x 32 x 32 values), so the multiply-add broadcasts over the batch
        # alone: a size-3 innermost broadcast (NHWC) does not vectorise and cost 5x more on a CPU.
        image = (32, 32, 3) if channels_last else (3, 32, 32)
        self.scale = (1.0 / (255.0 * std)).reshape(shape).expand(image).contiguous()
        self.shift = (-torch.tensor(MEAN, device=self.device) / std).reshape(shape).expand(image).contiguous()
        self.ar = torch.arange(32, device=self.device)
        self.channel = torch.arange(3, device=self.device)

    def view(self, **changes) -> DeviceBatches:
        """The same device-resident data with other batch size, seed, order or layout
        settings (no copy of the data)."""
        other = copy.copy(self)
        for name, value in changes.items():
            if name == "channels_last" and value != self.channels_last:
                raise TypeError("channels_last is fixed at construction (it decides the stored layout)")
            if name not in ("batch_size", "seed", "shuffle", "drop_last", "channels_last", "rank", "world_size"):
                raise TypeError(f"cannot change {name}")
            setattr(other, name, value)
        if other.batch_size < 1 or (other.drop_last and other.n < other.batch_size):
            raise ValueError(f"batch size {other.batch_size} does not fit {other.n} examples")
        _check_shard(other.batch_size, other.rank, other.world_size)
        return other

    def __len__(self) -> int:
        """Steps per epoch (global batches: the same on every rank)."""
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)

    def plan(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """The epoch's order and augmentation parameters, moved to the CPU (tests compare
        these; the epoch itself never leaves the device)."""
        return tuple(t if t is None else t.cpu() for t in self._plan(epoch))

    def _plan(self, epoch: int):
        return epoch_plan(self.n, self.device, self.seed, epoch, self.shuffle, self.augment)

    def epoch(self, epoch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order, dy, dx, flip = self._plan(epoch)
        ar = self.ar
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            if self.world_size > 1:  # this rank's slice (a final partial batch splits as evenly as it can)
                idx = idx.tensor_split(self.world_size)[self.rank]
            if self.augment:
                rows = dy[idx, None] + ar  # (B, 32)
                cols = torch.where(flip[idx, None], dx[idx, None] + 31 - ar, dx[idx, None] + ar)
                if self.channels_last:  # (B, 32, 32, 3)
                    xb = self.x[idx[:, None, None], rows[:, :, None], cols[:, None, :]]
                else:  # (B, 3, 32, 32)
                    xb = self.x[idx[:, None, None, None], self.channel[:, None, None],
                                rows[:, None, :, None], cols[:, None, None, :]]
            else:  # index_select: a plain row gather, far cheaper than advanced indexing on a CPU
                xb = self.x.index_select(0, idx)
            xb = torch.addcmul(self.shift, xb, self.scale)  # uint8 -> float32 in the same pass
            if self.channels_last:
                xb = xb.permute(0, 3, 1, 2)
            yield xb, self.y.index_select(0, idx)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.epoch(0)


def _check_shard(batch_size: int, rank: int, world_size: int) -> None:
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside a world of {world_size} processes")
    # Unequal shards would make DDP's average of the ranks' mean gradients differ from the
    # mean over the global batch.
    if batch_size % world_size:
        raise ValueError(f"global batch size {batch_size} does not divide among {world_size} processes")


# --------------------------------------------------------------------------------------
# The classic input pipeline, for comparison
# --------------------------------------------------------------------------------------

def classic_dataset(data: Cifar10Arrays, train: bool, augment: bool = False):
    """A torchvision `CIFAR10` dataset (PIL image per sample, ToTensor, Normalize) over
    `data`: the tutorial's input pipeline. Real data is read by torchvision itself; synthetic
    data is placed into the same class so that every sample takes the same code path."""
    from torchvision import transforms
    from torchvision.datasets import CIFAR10

    steps = [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()] if augment else []
    transform = transforms.Compose([*steps, transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
    x, y = (data.train_x, data.train_y) if train else (data.test_x, data.test_y)
    ds = CIFAR10.__new__(CIFAR10)
    # VisionDataset.__init__ sets root/transform bookkeeping; CIFAR10.__init__ would re-read
    # and re-verify the files, which `data` already did.
    super(CIFAR10, ds).__init__(data.folder or "synthetic", transform=transform)
    ds.train = train
    ds.data = x.permute(0, 2, 3, 1).contiguous().numpy()  # HWC uint8, as torchvision keeps it
    ds.targets = y.tolist()
    ds.classes = list(CLASSES)
    return ds


def classic_loader(
    data: Cifar10Arrays,
    batch_size: int,
    train: bool = True,
    *,
    workers: int = 2,
    pin_memory: bool = False,
    augment: bool = False,
    seed: int = 0,
    drop_last: bool = True,
) -> torch.utils.data.DataLoader:
    """The tutorial's DataLoader (2 workers by default), seeded shuffling."""
    ds = classic_dataset(data, train, augment)
    g = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(
        ds, batch_size=batch_size, shuffle=train, num_workers=workers, pin_memory=pin_memory,
        drop_last=drop_last and train, generator=g, persistent_workers=workers > 0,
    )
