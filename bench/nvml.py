"""The GPU's energy, from NVML: the board's cumulative energy counter
(`nvmlDeviceGetTotalEnergyConsumption`, millijoules since the driver loaded; Volta and newer),
else its power reading (`nvmlDeviceGetPowerUsage`, milliwatts) sampled in a thread and
integrated over the window (older GPUs).

NVML comes from `nvidia-ml-py` (module `pynvml`) when it is installed, else from a ctypes
binding to the driver's own `libnvidia-ml.so.1` with the few calls used here, under pynvml's
names: the GPU machine has the driver but not the Python package. Every function takes the
NVML object as an argument, so tests drive this code on a CPU with a fake one.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable

from bench import timing

NVML_ERROR_NOT_SUPPORTED = 3  # an nvmlReturn_t value (nvml.h)
LIBRARY = "libnvidia-ml.so.1"
SAMPLE_INTERVAL_S = 0.02  # the sampled fallback reads power 50 times a second


class NvmlError(Exception):
    """A failed NVML call of the ctypes binding; `value` is the nvmlReturn_t, as in pynvml."""

    def __init__(self, value: int, message: str):
        super().__init__(message)
        self.value = value


def not_supported(e: Exception) -> bool:
    """NVML said the call is not supported on this GPU (pynvml's NVMLError or ours)."""
    return getattr(e, "value", None) == NVML_ERROR_NOT_SUPPORTED


def errors(nvml) -> tuple[type[Exception], ...]:
    """What a failed call of this NVML raises: pynvml's NVMLError, or our NvmlError."""
    return (NvmlError, getattr(nvml, "NVMLError", NvmlError))


class CtypesNvml:
    """The calls this project uses, straight from libnvidia-ml.so.1, with pynvml's names."""

    def __init__(self, library: str = LIBRARY):
        self._lib = ctypes.CDLL(library)  # OSError when the driver is absent
        self._lib.nvmlErrorString.restype = ctypes.c_char_p

    def _check(self, rc: int) -> None:
        if rc != 0:
            raise NvmlError(rc, self._lib.nvmlErrorString(rc).decode(errors="replace"))

    def nvmlInit(self) -> None:
        self._check(self._lib.nvmlInit_v2())

    def _handle(self, fn, arg) -> ctypes.c_void_p:
        handle = ctypes.c_void_p()
        self._check(fn(arg, ctypes.byref(handle)))
        return handle

    def nvmlDeviceGetHandleByIndex(self, index: int) -> ctypes.c_void_p:
        return self._handle(self._lib.nvmlDeviceGetHandleByIndex_v2, ctypes.c_uint(index))

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> ctypes.c_void_p:
        return self._handle(self._lib.nvmlDeviceGetHandleByUUID, ctypes.c_char_p(uuid.encode()))

    def nvmlDeviceGetTotalEnergyConsumption(self, handle) -> int:
        mj = ctypes.c_ulonglong()
        self._check(self._lib.nvmlDeviceGetTotalEnergyConsumption(handle, ctypes.byref(mj)))
        return mj.value

    def nvmlDeviceGetPowerUsage(self, handle) -> int:
        mw = ctypes.c_uint()
        self._check(self._lib.nvmlDeviceGetPowerUsage(handle, ctypes.byref(mw)))
        return mw.value


def load() -> tuple[object, str]:
    """An initialised NVML and where it came from; raises RuntimeError with the reason."""
    try:
        import pynvml as nvml

        source = "nvidia-ml-py"
    except ImportError:
        try:
            nvml, source = CtypesNvml(LIBRARY), LIBRARY
        except OSError as e:
            raise RuntimeError(f"no NVML: nvidia-ml-py is not installed and {LIBRARY} cannot be loaded ({e})") from None
    try:
        nvml.nvmlInit()
    except errors(nvml) as e:  # the driver refused: said as the reason
        raise RuntimeError(f"NVML ({source}) failed to initialise: {e}") from None
    return nvml, source


def handle_for(nvml, index: int) -> object:
    """NVML's handle of torch's CUDA device `index`: by UUID where torch knows it (NVML numbers
    GPUs in PCI order, CUDA may not, and CUDA_VISIBLE_DEVICES renumbers), else by torch's own
    mapping of its index to NVML's."""
    import torch

    uuid = getattr(torch.cuda.get_device_properties(index), "uuid", None)
    if uuid is not None:
        try:
            return nvml.nvmlDeviceGetHandleByUUID(f"GPU-{uuid}")
        # an older driver or a MIG slice (NVML's error); a pynvml without nvidia-ml-py's str-to-bytes
        # wrapper (TypeError from ctypes.c_char_p): by index below
        except (TypeError, *errors(nvml)):
            pass
    nvml_index = getattr(torch.cuda, "_get_nvml_device_index", lambda i: i)(index)
    return nvml.nvmlDeviceGetHandleByIndex(nvml_index)


class CounterMeter:
    """Joules from the difference of NVML's cumulative energy counter (millijoules)."""

    method = "nvml-counter"

    def __init__(self, nvml, handle, domain: str):
        self.nvml, self.handle, self.domains = nvml, handle, (domain,)

    def begin(self) -> int:
        return self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle)

    def end(self, start: int) -> dict[str, float]:
        return {self.domains[0]: (self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle) - start) / 1e3}


def integrate(samples: list[tuple[float, float]]) -> float:
    """Joules from (seconds, watts) samples: the trapezoid rule."""
    return sum((t1 - t0) * (w0 + w1) / 2 for (t0, w0), (t1, w1) in zip(samples, samples[1:]))


class SampledMeter:
    """Joules from NVML's power reading sampled every `interval` seconds in a thread and
    integrated over the window (GPUs without the energy counter). `thread=False` leaves the
    sampling to the caller's `sample()` (tests with a fake clock)."""

    method = "nvml-power-sampled"

    def __init__(self, nvml, handle, domain: str, interval: float = SAMPLE_INTERVAL_S,
                 clock: timing.Clock = timing.now, thread: bool = True):
        self.nvml, self.handle, self.domains = nvml, handle, (domain,)
        self.interval, self.clock, self.thread = interval, clock, thread
        self._samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        self._error: Exception | None = None

    def sample(self) -> None:
        self._samples.append((self.clock(), self.nvml.nvmlDeviceGetPowerUsage(self.handle) / 1e3))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.sample()
            except errors(self.nvml) as e:  # kept for end() to raise in the caller's thread
                self._error = e
                return

    def begin(self) -> None:
        self._samples, self._error = [], None
        self.sample()
        if self.thread:
            self._stop.clear()
            self._worker = threading.Thread(target=self._run, name="nvml-power", daemon=True)
            self._worker.start()

    def end(self, _state=None) -> dict[str, float]:
        if self._worker is not None:
            self._stop.set()
            self._worker.join()
            self._worker = None
        if self._error is not None:
            raise self._error
        self.sample()
        return {self.domains[0]: integrate(self._samples)}


def gpu_meter(nvml, handle, domain: str, clock: timing.Clock = timing.now,
              thread: bool = True) -> CounterMeter | SampledMeter:
    """The counter where the GPU has one, else sampled power; raises RuntimeError when the
    GPU reports neither (the reason names both calls)."""
    try:
        nvml.nvmlDeviceGetTotalEnergyConsumption(handle)
        return CounterMeter(nvml, handle, domain)
    except errors(nvml) as e:
        if not not_supported(e):
            raise RuntimeError(f"NVML energy counter: {e}") from None
    try:
        nvml.nvmlDeviceGetPowerUsage(handle)
    except errors(nvml) as e:
        raise RuntimeError(f"this GPU reports neither its energy counter (not supported: before Volta) nor its "
                           f"power ({e})") from None
    return SampledMeter(nvml, handle, domain, clock=clock, thread=thread)


def probe(index: int, nvml_source: Callable[[], tuple[object, str]] = load) -> tuple[object, str]:
    """(meter, NVML source) for torch's CUDA device `index`; raises RuntimeError with the reason."""
    nvml, source = nvml_source()
    try:
        handle = handle_for(nvml, index)
    except errors(nvml) as e:
        raise RuntimeError(f"NVML has no handle for cuda:{index}: {e}") from None
    return gpu_meter(nvml, handle, f"gpu{index}"), source
