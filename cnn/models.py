"""Named models. `build_model(name, seed=...)` is the only way the rest of the code gets one.

Names: the fixed models (`tutorial`, `tutorial-wide`, `resnet18`), the width family of the
tutorial Net (`tutorial-w1` ... `tutorial-w32`: every conv and fc width times the
multiplier, so training FLOPs per image grow about 600x from w1 to w32), and a user's own
model, `package.module:callable` (module importable, e.g. on PYTHONPATH) or
`path/to/file.py:callable` (a file anywhere): a callable that takes no arguments and
returns an `nn.Module` mapping Nx3x32x32 inputs to Nx10 logits.

Weights are always initialised on the CPU under a private, seeded RNG and moved to the
target device afterwards, so one seed gives bit-identical initial weights on every device
and building a model never disturbs the global RNG. A user's callable is built the same
way, so seeding, FLOPs counting and everything downstream treat it like a named model.

Training recipe: the family and user models take the tutorial's (`recipe_model`): its
learning-rate rule, no weight decay, no augmentation, and its channels_last default.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import re
import sys
from collections.abc import Callable
from pathlib import Path

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


def scaled_tutorial(width: int) -> TutorialNet:
    """The tutorial Net with every conv and fc width times `width` (1: the tutorial's)."""
    return TutorialNet(conv1=6 * width, conv2=16 * width, fc1=120 * width, fc2=84 * width)


# The width family: one architecture, a continuous size axis for the break-even map.
# Convolution and hidden-layer FLOPs grow with width squared (conv1, whose input is the
# image's 3 channels, and fc3, whose output is 10 classes, grow linearly).
FAMILY_WIDTHS = (1, 2, 4, 8, 16, 32)
FAMILY = tuple(f"tutorial-w{w}" for w in FAMILY_WIDTHS)

# tutorial-wide: the tutorial's "make it wider" exercise taken far enough that the GPU
# has work to do: about 67x the tutorial's training FLOPs per image (tests check >= 50x).
MODELS: dict[str, Callable[[], nn.Module]] = {
    "tutorial": TutorialNet,
    "tutorial-wide": lambda: TutorialNet(conv1=64, conv2=192, fc1=512, fc2=256),
    "resnet18": CifarResNet18,
    **{name: functools.partial(scaled_tutorial, w) for name, w in zip(FAMILY, FAMILY_WIDTHS)},
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
    """The named models (user models, `module:callable`, are accepted besides these)."""
    return list(MODELS)


def recipe_model(name: str) -> str:
    """The named model whose training defaults (learning rate, weight decay, augmentation,
    layout) `name` uses: itself for the fixed models, the tutorial's for the width family
    and for user models (a user who wants another recipe passes --lr/--augment/...)."""
    return name if name in LR_RULES else "tutorial"


def default_lr(name: str, batch_size: int) -> float:
    base, ref_batch, cap = LR_RULES[recipe_model(name)]
    return min(base * batch_size / ref_batch, max(base, cap))


def build_model(name: str, seed: int | None = 0) -> nn.Module:
    """Build model `name` on the CPU. With a seed, initialisation uses a private RNG seeded
    with it (bit-identical on every machine for one torch version); move it with `.to()`.
    Raises ModelError (a ValueError) for an unknown name or a user model that cannot load."""
    factory = MODELS.get(name) or (load_user_model(name) if is_user_model(name) else None)
    if factory is None:
        raise ModelError(f"unknown model {name!r}; expected one of {', '.join(MODELS)}, "
                         "or a user model as package.module:callable or path/to/file.py:callable")
    if seed is None:
        return _checked(name, factory)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _checked(name, factory)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@functools.cache
def parameter_count(name: str) -> int:
    """Parameters of model `name` (cached: one build per name and process)."""
    return count_parameters(build_model(name, seed=0))


# --------------------------------------------------------------------------------------
# User models: `package.module:callable` or `path/to/file.py:callable`
# --------------------------------------------------------------------------------------

class ModelError(ValueError):
    """A model name that cannot give a usable model; the message is one line naming the value
    and what was expected."""


_USER = re.compile(r"^(?P<module>[^:]+):(?P<attr>[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*)$")
_DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def is_user_model(name: str) -> bool:
    """Whether `name` has the shape of a user model (module or file, a colon, a callable)."""
    m = _USER.match(name)
    return m is not None and (m["module"].endswith(".py") or _DOTTED.match(m["module"]) is not None)


def _import_file(path: Path):
    """Import a .py file as a module under a private name derived from its absolute path,
    so two files called my_model.py do not collide and a re-load reuses the module."""
    key = "cifar_bench_user_" + re.sub(r"\W", "_", str(path))
    if key in sys.modules:
        return sys.modules[key]
    spec = importlib.util.spec_from_file_location(key, path)
    if spec is None or spec.loader is None:
        raise ModelError(f"cannot load {str(path)!r} as a Python module; expected a .py file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[key] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[key]
        raise
    return module


@functools.cache
def load_user_model(name: str) -> Callable[[], nn.Module]:
    """The callable a user model name points at (imported once per process)."""
    if not is_user_model(name):
        raise ModelError(f"could not parse model {name!r}; expected package.module:callable or "
                         "path/to/file.py:callable")
    module_name, attr = name.rsplit(":", 1)
    try:
        if module_name.endswith(".py"):
            path = Path(module_name).expanduser().resolve()
            if not path.is_file():
                raise ModelError(f"model {name!r}: no such file {module_name!r}")
            module = _import_file(path)
        else:
            module = importlib.import_module(module_name)
    except ModelError:
        raise
    except ModuleNotFoundError as e:
        raise ModelError(f"model {name!r}: cannot import module {module_name!r} ({e}); expected a module on "
                         "PYTHONPATH or a path/to/file.py") from None
    except Exception as e:  # the user's module raised while importing: say what, in one line
        raise ModelError(f"model {name!r}: importing {module_name!r} raised {_one_line(e)}") from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ModelError(f"model {name!r}: module {module_name!r} has no attribute {attr!r}; expected a "
                             "callable returning an nn.Module")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ModelError(f"model {name!r}: {attr!r} is a {type(obj).__name__}, not callable; expected a "
                         "callable returning an nn.Module")
    return obj


def _checked(name: str, factory: Callable[[], nn.Module]) -> nn.Module:
    if name in MODELS:
        return factory()
    try:
        model = factory()
    except Exception as e:
        raise ModelError(f"model {name!r}: calling it raised {_one_line(e)}; expected it to take no arguments "
                         "and return an nn.Module") from None
    if not isinstance(model, nn.Module):
        raise ModelError(f"model {name!r} returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    if len(text) > 300:
        text = text[:297] + "..."
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


INPUT_SHAPE = (3, 32, 32)
NUM_CLASSES = 10


def check_model(name: str, batch_size: int = 2) -> None:
    """Build model `name` and train it one step's worth (forward and backward) on a batch of
    `batch_size` CIFAR-shaped zeros on the CPU; raise ModelError (one line) when it cannot
    load, is not an nn.Module, raises, or does not give `batch_size` x 10 logits. Named
    models pass by construction; the sweep calls this for user models before it starts."""
    model = build_model(name, seed=0)
    if not any(p.requires_grad for p in model.parameters()):
        raise ModelError(f"model {name!r} has no trainable parameters; expected an nn.Module with some")
    x = torch.zeros(batch_size, *INPUT_SHAPE)
    try:
        out = model.train()(x)
    except Exception as e:
        raise ModelError(f"model {name!r} does not fit a batch of {batch_size}x{'x'.join(map(str, INPUT_SHAPE))} "
                         f"images: the forward pass raised {_one_line(e)}") from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (batch_size, NUM_CLASSES):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ModelError(f"model {name!r} gave output {got} for a batch of {batch_size} images; expected "
                         f"({batch_size}, {NUM_CLASSES}) logits")
    try:
        out.float().sum().backward()
    except Exception as e:
        raise ModelError(f"model {name!r}: the backward pass raised {_one_line(e)}") from None
