"""Named models. `build_model(name, seed=...)` is the only way the rest of the code gets one.

Weights are always initialised on the CPU under a private, seeded RNG and moved to the
target device afterwards, so one seed gives bit-identical initial weights on every device
and building a model never disturbs the global RNG.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


class TutorialNet(nn.Module):
    """The Net of PyTorch's "Training a Classifier" tutorial (62,006 parameters at the
    default widths). The tutorial's exercise widens the two convolutions; `conv1`/`conv2`
    and the hidden sizes let `tutorial-wide` do exactly that without a second class."""

    def __init__(self, conv1: int = 6, conv2: int = 16, fc1: int = 120, fc2: int = 84):
        super().__init__()
        self.conv1 = nn.Conv2d(3, conv1, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(conv1, conv2, 5)
        self.fc1 = nn.Linear(conv2 * 5 * 5, fc1)
        self.fc2 = nn.Linear(fc1, fc2)
        self.fc3 = nn.Linear(fc2, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet18(nn.Module):
    """ResNet-18 for 32x32 inputs: a 3x3 stride-1 stem and no max-pool (the ImageNet
    stem would shrink CIFAR images to 8x8 before the first block)."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        layers, in_planes = [], 64
        for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers.append(nn.Sequential(BasicBlock(in_planes, planes, stride), BasicBlock(planes, planes)))
            in_planes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


# tutorial-wide: the tutorial's "make it wider" exercise taken far enough that the GPU
# has work to do: about 67x the tutorial's training FLOPs per image (tests check >= 50x).
MODELS: dict[str, Callable[[], nn.Module]] = {
    "tutorial": TutorialNet,
    "tutorial-wide": lambda: TutorialNet(conv1=64, conv2=192, fc1=512, fc2=256),
    "resnet18": CifarResNet18,
}

# Default SGD learning rate at a reference batch size; `default_lr` scales it linearly
# with the batch size (Goyal et al. 2017), capped, so large batches still learn in the
# few epochs a benchmark can afford. The tutorial's own setting is lr 1e-3 at batch 4.
LR_RULES: dict[str, tuple[float, int, float]] = {
    # name: (lr at reference batch, reference batch, cap)
    "tutorial": (1e-3, 4, 0.02),
    "tutorial-wide": (1e-3, 4, 0.02),
    "resnet18": (0.05, 128, 0.2),
}


def model_names() -> list[str]:
    return list(MODELS)


def default_lr(name: str, batch_size: int) -> float:
    base, ref_batch, cap = LR_RULES[name]
    return min(base * batch_size / ref_batch, max(base, cap))


def build_model(name: str, seed: int | None = 0) -> nn.Module:
    """Build model `name` on the CPU. With a seed, initialisation uses a private RNG seeded
    with it (bit-identical on every machine for one torch version); move it with `.to()`."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; expected one of {', '.join(MODELS)}")
    if seed is None:
        return MODELS[name]()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MODELS[name]()


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
