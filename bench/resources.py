"""What one configuration costs besides time: its own peak memory and its CPU use.

Memory is per configuration, never the process's history:
  cpu   the kernel's high-water mark of this process (VmHWM) is reset at the start
        (writing 5 to /proc/self/clear_refs) and read at the end; the configuration's own
        peak is that mark over the resident set it started from (freed heap memory is first
        handed back to the system with malloc_trim, so an earlier configuration's leftovers
        neither hide nor inflate it). Where /proc cannot be used (not Linux) the resident
        set is sampled every 0.1 s instead, and `memory_kind` says so.
  cuda  what is allocated after the dataset is placed is the baseline; the caching
        allocator's peak statistics are reset when the training loop's warm-up is over
        (`warmed_up`), so `max_memory_allocated` over the baseline is the configuration's own
        steady peak (weights, optimizer state, activations, the workspace of the algorithms
        chosen), not the workspaces cuDNN's autotuning tried during warm-up
        (cudnn.benchmark runs every candidate algorithm with its own workspace); the dataset
        is reported apart. A block without warm-up (an accuracy run) keeps the whole window.
CPU use: process CPU time over wall time, DataLoader workers and other child processes
included (100% = one core busy).

The CUDA calls go through `CudaMemory`, which tests replace with a stub.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import torch

from bench import timing

MB = 2**20
CLEAR_REFS = Path("/proc/self/clear_refs")
STATUS = Path("/proc/self/status")


def _libc():
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


_LIBC = _libc()


@contextlib.contextmanager
def startup_objects_frozen() -> Iterator[None]:
    """Inside the block, every object alive at its start (imported modules, the dataset) is
    out of the collector's reach: a full collection then costs microseconds instead of ~0.15 s
    over some 300,000 objects, and a sweep runs two per configuration visit (`release_memory`).
    Unfrozen after, so a caller in the same process (a test, a notebook) keeps whole collections."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def release_memory() -> None:
    """Free what earlier work left behind: Python garbage, glibc's free heap pages, and the
    CUDA cache."""
    gc.collect()
    if _LIBC is not None and hasattr(_LIBC, "malloc_trim"):
        _LIBC.malloc_trim(0)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def read_vm_hwm(status: Path = STATUS) -> int | None:
    """The kernel's resident high-water mark of this process in bytes (None off Linux)."""
    try:
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def reset_vm_hwm(clear_refs: Path = CLEAR_REFS) -> bool:
    """Reset VmHWM to the current resident set (Linux >= 4.0); False where it cannot be."""
    try:
        clear_refs.write_text("5")
        return True
    except OSError:
        return False


@dataclass
class CudaMemory:
    """The allocator statistics a memory window reads (replaced by a stub in tests)."""

    reset_peak = staticmethod(lambda d: torch.cuda.reset_peak_memory_stats(d))
    allocated = staticmethod(lambda d: torch.cuda.memory_allocated(d))
    max_allocated = staticmethod(lambda d: torch.cuda.max_memory_allocated(d))


class ResourceMonitor:
    """Peak memory and CPU use of the block it wraps (see the module docstring)."""

    def __init__(self, device: str | torch.device, cuda: CudaMemory | None = None, interval: float = 0.1,
                 proc: psutil.Process | None = None, hwm: bool = True):
        self.device = torch.device(device)
        self.cuda = cuda or CudaMemory()
        self.interval = interval
        self.proc = proc or psutil.Process()
        self.use_hwm = hwm
        self.peak_memory_mb = self.peak_memory_total_mb = self.cpu_percent = float("nan")
        self.memory_kind = ""
        self._sampler: threading.Thread | None = None
        self._stop = threading.Event()

    # ---- CPU time, children included ----------------------------------------------------

    def _cpu_seconds(self) -> float:
        t = self.proc.cpu_times()
        total = t.user + t.system + getattr(t, "children_user", 0.0) + getattr(t, "children_system", 0.0)
        for child in self.proc.children(recursive=True):  # live workers (reaped ones are counted above)
            try:
                c = child.cpu_times()
                total += c.user + c.system
            except psutil.Error:
                pass
        return total

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self._peak_rss = max(self._peak_rss, self.proc.memory_info().rss)

    def __enter__(self) -> ResourceMonitor:
        release_memory()
        if self.device.type == "cuda":
            self._start = self.cuda.allocated(self.device)
            self.cuda.reset_peak(self.device)
            self.memory_kind = "cuda_max_allocated"
        else:
            self._start = self.proc.memory_info().rss
            self._peak_rss = self._start
            if self.use_hwm and reset_vm_hwm() and read_vm_hwm() is not None:
                self.memory_kind = "cpu_vmhwm"
            else:
                self.memory_kind = "cpu_rss_sampled"
                self._stop.clear()
                self._sampler = threading.Thread(target=self._sample, daemon=True)
                self._sampler.start()
        self._cpu0, self._t0 = self._cpu_seconds(), timing.now()
        return self

    def warmed_up(self) -> None:
        """Warm-up is over: on CUDA the peak window opens here (the baseline stays what the
        block started from); elsewhere nothing changes."""
        if self.device.type == "cuda":
            self.cuda.reset_peak(self.device)

    def __exit__(self, *exc: object) -> None:
        wall = timing.now() - self._t0
        self.cpu_percent = 100.0 * (self._cpu_seconds() - self._cpu0) / wall if wall > 0 else float("nan")
        if self.device.type == "cuda":
            peak = self.cuda.max_allocated(self.device)
        elif self.memory_kind == "cpu_vmhwm":
            peak = read_vm_hwm() or 0
        else:
            self._stop.set()
            self._sampler.join()
            peak = max(self._peak_rss, self.proc.memory_info().rss)
        self.peak_memory_total_mb = peak / MB
        self.peak_memory_mb = max(0, peak - self._start) / MB


def is_oom(e: BaseException) -> bool:
    oom_types = tuple(t for t in (getattr(torch, "OutOfMemoryError", None),
                                  getattr(torch.cuda, "OutOfMemoryError", None)) if t is not None)
    if isinstance(e, MemoryError) or (oom_types and isinstance(e, oom_types)):
        return True
    text = str(e)
    return isinstance(e, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)
