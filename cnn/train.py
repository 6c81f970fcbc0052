"""One training epoch and one evaluation pass, shared by every device and precision.

Precision modes:
  fp32  float32 everywhere; on CUDA, TF32 is switched off so it is true fp32.
  tf32  CUDA only: float32 tensors, TF32 tensor-core matmuls and convolutions.
  fp16  CUDA only: autocast to float16 with a GradScaler (fp16 gradients underflow without it).
  bf16  autocast to bfloat16, no scaler (bf16 has fp32's exponent range).

The hot loop never synchronises with the device: the loss is accumulated on the device
and read once per epoch, where a non-finite value raises `Diverged`.

Data parallel: `make_trainer(..., process_group=pg)` wraps the model in
DistributedDataParallel; each rank then steps on its shard of the global batch and DDP
averages the gradients, which equals the one-process gradient of the mean loss when the
shards are equal. The epoch's loss is averaged over the ranks, so every rank reads the same
value and a divergence stops all of them at once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from cnn.models import build_model, default_lr

PRECISIONS = ("fp32", "tf32", "fp16", "bf16")
AUTOCAST_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
WEIGHT_DECAY = {"tutorial": 0.0, "tutorial-wide": 0.0, "resnet18": 5e-4}
MOMENTUM = 0.9


class Diverged(RuntimeError):
    """The training loss became NaN or infinite."""


class Unsupported(ValueError):
    """A device/precision/option combination this machine cannot run; the message says why."""


def unsupported_reason(device: str, precision: str) -> str | None:
    """Why `precision` cannot run on `device` here, or None when it can."""
    if precision not in PRECISIONS:
        return f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}"
    kind = torch.device(device).type
    if kind == "cuda":
        if not torch.cuda.is_available():
            return "CUDA is not available in this torch build / machine"
        if precision == "bf16" and not torch.cuda.is_bf16_supported():
            return f"{torch.cuda.get_device_name()} does not support bf16"
        return None
    if kind == "cpu":
        if precision == "tf32":
            return "tf32 is a CUDA tensor-core mode; the CPU has no TF32"
        if precision == "fp16":
            return "fp16 training (autocast + GradScaler) is CUDA-only here; use bf16 on the CPU"
        return None
    return f"unsupported device type {kind!r}; expected cpu or cuda"


@contextlib.contextmanager
def matmul_precision(device: torch.device, precision: str) -> Iterator[None]:
    """Set TF32 for the block (on for tf32, off otherwise), restoring the flags after."""
    if device.type != "cuda":
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = precision == "tf32"
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@dataclass
class Trainer:
    """Model, optimizer and precision machinery for one run on one device."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    device: torch.device
    precision: str
    channels_last: bool = False
    scaler: torch.amp.GradScaler | None = None
    compiled: nn.Module | None = None  # the torch.compile'd model, when compiling
    lr: float = 0.0
    model_name: str = ""
    momentum: float = MOMENTUM
    weight_decay: float = 0.0
    compile_mode: str | None = None
    _autocast_dtype: torch.dtype | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self._autocast_dtype = AUTOCAST_DTYPES.get(self.precision)

    @property
    def module(self) -> nn.Module:
        """The network itself, unwrapped from DistributedDataParallel."""
        return self.model.module if isinstance(self.model, DistributedDataParallel) else self.model

    @property
    def net(self) -> nn.Module:
        """What a step calls: the compiled model when compiling. (Not `compiled or model`:
        truth-testing a module calls its `__len__`, which a compiled plain module lacks.)"""
        return self.model if self.compiled is None else self.compiled

    @property
    def distributed(self) -> bool:
        return isinstance(self.model, DistributedDataParallel)

    def reset(self, seed: int) -> None:
        """Back to the seed's initial weights with fresh optimizer and scaler state; a
        compiled model keeps its compiled code. Under DDP every rank loads the same seeded
        weights in place, so the replicas start equal again."""
        fresh = build_model(self.model_name, seed=seed)
        self.module.load_state_dict(fresh.state_dict())
        self.optimizer = sgd_with_zero_buffers(self.model, self.device, self.lr, self.momentum, self.weight_decay)
        if self.scaler is not None:
            self.scaler = torch.amp.GradScaler(self.device.type)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self._autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self._autocast_dtype)

    def prepare(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """On the device, in the trainer's memory format. No-ops for device-resident batches;
        the DataLoader path copies here (asynchronously when its host memory is pinned)."""
        x = x.to(self.device, non_blocking=True)
        y = y.to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y

    def step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One forward, backward and optimizer step. Returns the loss, detached, unsynced."""
        x, y = self.prepare(x, y)
        net = self.net
        if self.compile_mode == "reduce-overhead":
            # CUDA graphs replay into the same output buffers: mark each training step so
            # the previous step's outputs are not overwritten while still in use.
            torch.compiler.cudagraph_mark_step_begin()
        with self.autocast():
            loss = F.cross_entropy(net(x), y)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()


def sgd_with_zero_buffers(
    model: nn.Module, device: torch.device, lr: float, momentum: float, wd: float, fused: bool | None = None
) -> torch.optim.SGD:
    """SGD with every momentum buffer already in its state, zero.

    On CUDA the fused kernel updates every parameter in one launch and takes the
    GradScaler's inf check on the device; the unfused path reads it with .item(), a
    host-device sync per fp16 step. `fused` defaults to that choice (True on CUDA).

    Why zero buffers: on its first step the fused kernel allocates the buffers with
    `empty_like` and, when the scaler found an inf (a first fp16 step that overflows, which
    the scaler's initial scale of 2**16 can cause), returns before writing them; the next step
    then read uninitialised memory. With dampening 0, a zero buffer gives exactly SGD's first step
    (buf = 0.9 * 0 + grad = grad) on every path, fused or not."""
    fused = device.type == "cuda" if fused is None else fused
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=wd,
                                fused=fused or None)
    if momentum:
        for group in optimizer.param_groups:
            for p in group["params"]:
                optimizer.state[p]["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    return optimizer


def make_trainer(
    model_name: str,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    *,
    batch_size: int = 4,
    seed: int = 0,
    lr: float | None = None,
    momentum: float = MOMENTUM,
    weight_decay: float | None = None,
    channels_last: bool = False,
    compile: bool = False,
    compile_mode: str | None = None,
    process_group: dist.ProcessGroup | None = None,
) -> Trainer:
    """Build the seeded model on the CPU, move it to `device`, and set up SGD and AMP.
    With `process_group`, wrap it in DistributedDataParallel over that group (`device` is
    then this rank's device; the learning rate follows the global `batch_size`).

    Raises `Unsupported` for combinations the device cannot run."""
    device = torch.device(device)
    reason = unsupported_reason(str(device), precision)
    if reason:
        raise Unsupported(reason)
    model = build_model(model_name, seed=seed).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if process_group is not None:
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                        process_group=process_group)
    lr = default_lr(model_name, batch_size) if lr is None else lr
    wd = WEIGHT_DECAY.get(model_name, 0.0) if weight_decay is None else weight_decay
    optimizer = sgd_with_zero_buffers(model, device, lr, momentum, wd)
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    compiled = torch.compile(model, mode=compile_mode) if compile else None
    return Trainer(model, optimizer, device, precision, channels_last, scaler, compiled, lr,
                   model_name, momentum, wd, compile_mode if compile else None)


@dataclass(frozen=True)
class EpochResult:
    steps: int
    mean_loss: float


def train_epoch(
    trainer: Trainer,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    on_step: Callable[[], bool] | None = None,
) -> EpochResult:
    """Train over `batches`. `on_step` runs after every step (the harness's timer hooks in
    here) and ends the epoch early by returning True; it must not synchronise. Raises
    `Diverged` if the mean loss is not finite."""
    trainer.model.train()
    total = torch.zeros((), device=trainer.device)
    steps = 0
    with matmul_precision(trainer.device, trainer.precision):
        for x, y in batches:
            total += trainer.step(x, y)
            steps += 1
            if on_step is not None and on_step():
                break
    if trainer.distributed:  # every rank ran `steps` steps: the sum over ranks / ranks is the global mean
        group = trainer.model.process_group
        dist.all_reduce(total, group=group)
        total /= dist.get_world_size(group)
    mean = (total / max(steps, 1)).item()  # the epoch's one host-device sync
    if not torch.isfinite(torch.tensor(mean)):
        raise Diverged(f"training loss is {mean} after {steps} steps")
    return EpochResult(steps, mean)


@dataclass(frozen=True)
class EvalResult:
    accuracy: float  # fraction of the test set, 0..1
    predictions: torch.Tensor  # uint8 class per test example, on the CPU
    mean_loss: float


@torch.no_grad()
def evaluate(
    trainer: Trainer,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    on_step: Callable[[], bool] | None = None,
) -> EvalResult:
    """Accuracy and per-example predictions over `batches` (in order). `on_step` as in
    `train_epoch` (the harness times inference throughput with it)."""
    trainer.model.eval()
    # Under DDP evaluation runs on one rank with the bare module: DDP's forward may talk to
    # the other ranks (buffer broadcast). A compiled DDP model is evaluated uncompiled.
    net = trainer.module if trainer.distributed else trainer.net
    preds, correct, loss_sum, n = [], torch.zeros((), dtype=torch.int64, device=trainer.device), \
        torch.zeros((), device=trainer.device), 0
    with matmul_precision(trainer.device, trainer.precision):
        for x, y in batches:
            x, y = trainer.prepare(x, y)
            with trainer.autocast():
                logits = net(x)
            p = logits.argmax(dim=1)
            correct += (p == y).sum()
            loss_sum += F.cross_entropy(logits.float(), y, reduction="sum")
            preds.append(p.to(torch.uint8))
            n += len(y)
            if on_step is not None and on_step():
                break
    trainer.model.train()
    predictions = torch.cat(preds).cpu() if preds else torch.empty(0, dtype=torch.uint8)
    n = max(n, 1)
    return EvalResult(correct.item() / n, predictions, loss_sum.item() / n)
