"""Batches for training and evaluation: the device-resident iterator every measured loop uses,
and the classic DataLoader pipeline it is compared with.

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
from collections.abc import Iterator

import torch

from cnn.data.arrays import CLASSES, MEAN, STD, Cifar10Arrays

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
