"""What one training step must cost on any device, measured here: the operators it launches
and the bytes it must move (per configuration, stored in the row), and what one operator and
one byte cost on this machine (per sweep, stored in system.json). bench/bound.py turns them
into the bound on a GPU's speedup (docs/gpu-bound.md).

Per configuration (`measure_step`, one extra step on the measured trainer, after its timed
loops and before its accuracy epochs, which start again from the seed's weights; the
trainer is warm, so the step has no first-call work):
  step_ops     leaf `aten::` operators of one step (forward, backward, optimizer), counted
               with torch.profiler. The optimizer is SGD as a CUDA trainer runs it (the fused
               kernel, one operator for every parameter; the CPU trainer loops over
               parameters), so the count is what a GPU step launches at least. A fused or
               foreach operator counts as one whatever it calls inside.
  step bytes   weights, gradients and optimizer state, each read once and written once;
               the distinct storages saved for backward (`saved_tensors_hooks`, parameters
               excluded), each written once and read once. Traffic a step cannot avoid.
Per sweep (`probe_machine`):
  host_op      the least host cost of one operator: an in-place add on a one-element CPU
               tensor in a loop, fastest of several runs. A CUDA launch does this dispatch
               and more, so operators x this cost is a floor of an eager step's host time
               when this machine is the host. (Not the meta device: a step there runs Python
               fake kernels, several times slower than the real CPU step.)
  memory       the device's memory bandwidth: the faster of a large reduction (bytes read)
               and a large copy (read + written), fastest of several runs.

Clocks are read through bench/timing only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
from collections.abc import Iterator

import torch
from torch.profiler import ProfilerActivity, profile

from bench import timing
from cnn.train import Trainer, matmul_precision

PHASES = ("forward", "backward", "optimizer")
HOST_OP_LOOP = 2000  # operators per timed call: the clock's own cost vanishes
MEMORY_PROBE_BYTES = {"cpu": 256 * 2**20, "cuda": 2 * 2**30}  # far beyond any cache


# --------------------------------------------------------------------------------------
# Per configuration: operators and bytes of one step
# --------------------------------------------------------------------------------------

def _is_group(name: str) -> bool:
    """A foreach or fused operator: one launch group on CUDA, whatever it calls inside."""
    return name.startswith(("aten::_foreach_", "aten::_fused_"))


def _leaf_aten(event) -> bool:
    if not event.name.startswith("aten::"):
        return False
    if _is_group(event.name):
        return True
    stack = list(event.cpu_children)
    while stack:
        child = stack.pop()
        if child.name.startswith("aten::"):
            return False
        stack.extend(child.cpu_children)
    return not any(_is_group(a.name) for a in _ancestors(event))


def _ancestors(event) -> Iterator:
    parent = event.cpu_parent
    while parent is not None:
        yield parent
        parent = parent.cpu_parent


def _phase(event) -> str:
    names = [a.name for a in _ancestors(event)]
    if any(n.startswith("autograd::engine::evaluate_function") for n in names):
        return "backward"
    if any(n.startswith("Optimizer.") for n in names):
        return "optimizer"
    return "forward"


def count_ops(events) -> dict[str, list[str]]:
    """Leaf aten operators by phase (forward, backward, optimizer), from profiler events.
    Backward: under the autograd engine; optimizer: under torch.optim's record_function
    (the step and zero_grad), or after the backward ended (a GradScaler's unscale and
    update); forward: the rest (the loss's backward seed included)."""
    leaves = [e for e in events if _leaf_aten(e)]
    engine = [e for e in events if e.name.startswith("autograd::engine::evaluate_function")]
    backward_end = max((e.time_range.end for e in engine), default=None)
    out: dict[str, list[str]] = {p: [] for p in PHASES}
    for e in leaves:
        phase = _phase(e)
        if phase == "forward" and backward_end is not None and e.time_range.start > backward_end:
            phase = "optimizer"
        out[phase].append(e.name)
    return out


def gpu_style_optimizer(trainer: Trainer) -> torch.optim.Optimizer:
    """The trainer's SGD as a CUDA trainer runs it (fused: one operator per step), sharing
    the trainer's momentum buffers (no new memory). On CUDA it is the trainer's own; where
    this torch has no fused CPU kernel, the foreach form (also one group per step)."""
    if trainer.device.type == "cuda":
        return trainer.optimizer
    group = trainer.optimizer.param_groups[0]
    kw = dict(lr=group["lr"], momentum=group["momentum"], weight_decay=group["weight_decay"])
    params = [p for g in trainer.optimizer.param_groups for p in g["params"]]
    try:
        opt = torch.optim.SGD(params, fused=True, **kw)
    except (RuntimeError, ValueError):  # torch without the fused CPU kernel
        opt = torch.optim.SGD(params, foreach=True, **kw)
    for p in params:
        state = trainer.optimizer.state.get(p, {})
        if "momentum_buffer" in state:
            opt.state[p]["momentum_buffer"] = state["momentum_buffer"]
    return opt


def _storage(t: torch.Tensor) -> tuple[int, int]:
    """(address, bytes) of the storage behind `t` (a view counts its whole storage)."""
    try:
        s = t.untyped_storage()
        return s.data_ptr(), s.nbytes()
    except (RuntimeError, NotImplementedError):  # a tensor without storage (opaque layouts)
        return id(t), t.numel() * t.element_size()


def state_bytes(trainer: Trainer) -> dict[str, int]:
    """Bytes of the weights, of their gradients (one per trainable weight) and of the
    optimizer's state tensors."""
    params = [p for p in trainer.module.parameters()]
    weights = sum(p.numel() * p.element_size() for p in params)
    grads = sum(p.numel() * p.element_size() for p in params if p.requires_grad)
    state = sum(t.numel() * t.element_size() for s in trainer.optimizer.state.values() for t in s.values()
                if isinstance(t, torch.Tensor) and t.dim() > 0)
    return {"weights": weights, "grads": grads, "optimizer_state": state}


@contextlib.contextmanager
def saved_storages(exclude: set[int]) -> Iterator[dict[int, int]]:
    """Inside the block, every storage autograd saves for backward (address -> bytes),
    each once, except those in `exclude` (the weights and optimizer state). All saved
    tensors live until the backward, so an address cannot be reused within one forward."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr, nbytes = _storage(t)
        if ptr not in exclude:
            seen[ptr] = nbytes
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield seen


@contextlib.contextmanager
def native_stderr_quiet() -> Iterator[None]:
    """The process's stderr (file descriptor 2) sent to /dev/null inside the block: kineto,
    the profiler's C++ core, prints a line at every profiler start and stop (and an error line
    on a CUDA build without a GPU) that no setting turns off, one pair per configuration of a
    sweep. Python exceptions still propagate and are printed after the block."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def step_operators(trainer: Trainer, x: torch.Tensor, y: torch.Tensor) -> dict[str, list[str]]:
    """Leaf aten operators of one step of `trainer` on (x, y), by phase (count_ops). The step
    runs under the trainer's TF32 setting, as its timed steps do: on CUDA, cuDNN keys its
    chosen algorithms on that setting, so another one would autotune every convolution again
    inside the row's memory window."""
    timing.synchronize(trainer.device)
    with native_stderr_quiet(), matmul_precision(trainer.device, trainer.precision), \
            profile(activities=[ProfilerActivity.CPU]) as prof:
        trainer.step(x, y)
        timing.synchronize(trainer.device)
    return count_ops(prof.events())


def eager_gpu_style(trainer: Trainer) -> Trainer:
    """The same trainer (weights, optimizer state, precision) stepping eagerly with the
    optimizer as on CUDA: what measure_step counts."""
    return dataclasses.replace(trainer, optimizer=gpu_style_optimizer(trainer), compiled=None, compile_mode=None)


def measure_step(trainer: Trainer, x: torch.Tensor, y: torch.Tensor) -> dict:
    """The row's columns for one step of `trainer` on (x, y), eager (a compiled trainer's
    eager model), with the GPU-style optimizer, under the profiler (operators) and
    saved-tensor hooks (bytes) at once: the hooks run Python only, no operator (a test holds
    the two counts equal). One step of training on the trainer's weights: call it after the
    timed loops, before the accuracy epochs (which reset)."""
    step = eager_gpu_style(trainer)
    sizes = state_bytes(step)
    exclude = {_storage(p)[0] for p in step.module.parameters()}
    exclude |= {_storage(t)[0] for s in step.optimizer.state.values() for t in s.values()
                if isinstance(t, torch.Tensor)}
    with saved_storages(exclude) as saved:
        ops = step_operators(step, x, y)
    saved_bytes = sum(saved.values())
    moved = 2 * (sizes["weights"] + sizes["grads"] + sizes["optimizer_state"]) + 2 * saved_bytes
    return {"step_ops": sum(len(v) for v in ops.values()),
            **{f"step_ops_{p}": len(ops[p]) for p in PHASES},
            "step_state_bytes": sizes["weights"] + sizes["grads"] + sizes["optimizer_state"],
            "step_saved_bytes": saved_bytes, "step_min_bytes": moved}


# --------------------------------------------------------------------------------------
# Per sweep: the host cost of one operator, the memory bandwidth
# --------------------------------------------------------------------------------------

def host_op_cost(seconds: float = 0.3, repeats: int = 7) -> dict:
    """The least host cost of one operator here: `t.add_(1)` on a one-element CPU tensor,
    HOST_OP_LOOP times per timed call, the fastest call of `repeats` or more."""
    t = torch.zeros(1)

    def loop() -> None:
        for _ in range(HOST_OP_LOOP):
            t.add_(1.0)

    times = timing.time_repeated(loop, "cpu", min_repeats=repeats, max_seconds=seconds, warmup=1)
    best = min(times)
    return {"us_per_op": best / HOST_OP_LOOP * 1e6, "us_per_op_median": timing.quartiles(times)[1] / HOST_OP_LOOP * 1e6,
            "ops_per_call": HOST_OP_LOOP, "repeats": len(times), "op": "add_ on a one-element CPU tensor"}


def memory_bandwidth(device: str, seconds: float = 0.5, nbytes: int | None = None) -> dict:
    """GB/s of `device`'s memory: the faster of a sum over a large fp32 tensor (its bytes
    read) and a copy into another (read + written), each the fastest of several runs."""
    d = torch.device(device)
    nbytes = nbytes or MEMORY_PROBE_BYTES[d.type]
    a = torch.ones(nbytes // 4, device=d)
    b = torch.empty_like(a)
    read = min(timing.time_repeated(lambda: a.sum(), d, min_repeats=5, max_seconds=seconds / 2, warmup=1))
    copy = min(timing.time_repeated(lambda: b.copy_(a), d, min_repeats=5, max_seconds=seconds / 2, warmup=1))
    gbps_read, gbps_copy = nbytes / read / 1e9, 2 * nbytes / copy / 1e9
    return {"device": device, "gbps": max(gbps_read, gbps_copy), "gbps_read": gbps_read, "gbps_copy": gbps_copy,
            "bytes": nbytes}


def probe_machine(store: dict, devices, seconds: float | None = None) -> None:
    """The per-sweep probes into `store` (system.json's "host_op" and "memory_bandwidth"),
    run before the first configuration and again after the last: a least cost is the
    minimum, and a bandwidth the maximum, of every probe (each probe is kept). `seconds`
    bounds each probe (None: their defaults)."""
    h = host_op_cost() if seconds is None else host_op_cost(seconds)
    if "host_op" not in store:
        store["host_op"] = h
    else:
        first = store["host_op"]
        first.update(us_per_op_after=h["us_per_op"], us_per_op=min(first["us_per_op"], h["us_per_op"]))
    mem = store.setdefault("memory_bandwidth", [])
    for device in devices:
        m = memory_bandwidth(device) if seconds is None else memory_bandwidth(device, seconds)
        known = next((x for x in mem if x["device"] == device), None)
        if known is None:
            mem.append(m)
        else:
            known.update(gbps_after=m["gbps"], gbps=max(known["gbps"], m["gbps"]))
