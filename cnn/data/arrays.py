"""The dataset as every source hands it over (`Cifar10Arrays`: uint8 images and labels on the
CPU), the statistics that normalise it, and the one error type of the data code."""

from __future__ import annotations

from dataclasses import dataclass

import torch

CLASSES = ("plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# Per-channel statistics of the CIFAR-10 training set, used for both datasets so that
# the device path and the classic Normalize transform compute the same numbers.
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)


class DataError(Exception):
    """A data problem the user can fix; the message names the file and the remedy."""


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

