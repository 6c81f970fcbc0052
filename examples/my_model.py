"""A user model for cifar-bench: any callable that returns an nn.Module for 3x32x32 inputs
and 10 classes. This file lives outside the package; load it by path or as a module:

    cifar-bench run --preset quick --models examples/my_model.py:build
    PYTHONPATH=examples cifar-bench run --preset quick --models my_model:build

The harness builds it under its seeded RNG (same initial weights on every device), counts
its FLOPs, and trains it with the tutorial Net's recipe (SGD, learning rate 1e-3 x batch/4
capped at 0.02, no weight decay, no augmentation) unless told otherwise.
"""

from torch import nn


def build(width: int = 16) -> nn.Module:
    """A small all-convolutional net: two conv-BN-ReLU stages with pooling, then a linear
    classifier on globally averaged features (24,346 parameters at width 16)."""
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, padding=1, bias=False), nn.BatchNorm2d(2 * width), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(2 * width, 4 * width, 3, padding=1, bias=False), nn.BatchNorm2d(4 * width), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * width, 10),
    )
