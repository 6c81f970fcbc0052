"""Machine and software facts (system.json), the measured peak of each device and dtype,
and FLOPs per image (resource use per configuration: bench/resources.py)."""

from __future__ import annotations

import functools
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import torch
from torch.utils.flop_counter import FlopCounterMode

from bench import timing
from cnn.models import build_model
from cnn.train import AUTOCAST_DTYPES


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# CPU features that decide reduced-precision arithmetic and speed: native bf16 dot products
# (avx512_bf16, AMX) make bf16 fast and change how it rounds; without them oneDNN emulates it.
CPU_FEATURES = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_fp16")


def cpu_features(cpuinfo: str | None = None) -> dict[str, bool] | None:
    """{feature: present} from /proc/cpuinfo's flags (None where it cannot be read)."""
    try:
        text = cpuinfo if cpuinfo is not None else Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), None)
    return None if flags is None else {f: f in flags for f in CPU_FEATURES}


def math_libraries(config: str | None = None) -> dict[str, str | None]:
    """oneDNN (MKL-DNN) and MKL versions torch was built with, from torch.__config__.show()."""
    import re

    text = config if config is not None else torch.__config__.show()
    onednn = re.search(r"MKL-DNN v([\w.]+)", text)
    mkl = re.search(r"Math Kernel Library Version ([\w.-]+)", text)
    return {"onednn": onednn.group(1) if onednn else None, "mkl": mkl.group(1) if mkl else None}


def git_commit(repo: Path | None = None) -> str | None:
    repo = repo or Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return out + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def cuda_facts() -> dict:
    if not torch.cuda.is_available():
        return {"cuda_available": False}
    props = torch.cuda.get_device_properties(0)
    driver = None
    try:
        driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=10).stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        pass
    return {
        "cuda_available": True,
        "gpu_name": props.name,
        "gpu_count": torch.cuda.device_count(),
        "gpu_memory_gb": round(props.total_memory / 2**30, 1),
        "gpu_capability": f"{props.major}.{props.minor}",
        "gpu_sm_count": props.multi_processor_count,
        "driver": driver,
        "cudnn": torch.backends.cudnn.version(),
        # The process default; the sweep records what its CUDA rows ran with as
        # `cudnn_benchmark` (bench/runner.py: each row sets it for its own block).
        "cudnn_benchmark_default": torch.backends.cudnn.benchmark,
        "tf32_matmul_default": torch.backends.cuda.matmul.allow_tf32,
        "tf32_cudnn_default": torch.backends.cudnn.allow_tf32,
        "bf16_supported": torch.cuda.is_bf16_supported(),
    }


def system_info() -> dict:
    """Static facts about this machine and software, for system.json."""
    vm = psutil.virtual_memory()
    import torchvision

    return {
        "host": socket.gethostname(),
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "cpu_model": cpu_model(),
        "cpu_physical_cores": psutil.cpu_count(logical=False),
        "cpu_logical_cores": psutil.cpu_count(logical=True),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "ram_gb": round(vm.total / 2**30, 1),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "torch_cuda_build": torch.version.cuda,
        "torch_threads_default": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "cpu_features": cpu_features(),
        **math_libraries(),
        **cuda_facts(),
        "git_commit": git_commit(),
    }


def device_name(device: str) -> str:
    d = torch.device(device)
    if d.type == "cuda":
        return torch.cuda.get_device_name(d)
    return cpu_model()


# --------------------------------------------------------------------------------------
# Measured peak: a matmul in the run's dtype, not a datasheet number
# --------------------------------------------------------------------------------------

PROBE_DTYPES = {"fp32": torch.float32, "tf32": torch.float32, **AUTOCAST_DTYPES}
PROBE_MIN_SECONDS = {"cpu": 0.05, "cuda": 0.002}
PROBE_MAX_N = {"cpu": 4096, "cuda": 16384}


def measure_peak_tflops(device: str, precision: str, seconds: float | None = None) -> dict:
    """TFLOP/s of a square matmul in `precision`'s compute dtype on `device`: a peak is a
    maximum, so the fastest of the repeats counts (the median is kept beside it). The size
    is fitted to the machine: doubled until one matmul takes PROBE_MIN_SECONDS (so clock
    and launch costs vanish), up to PROBE_MAX_N."""
    d = torch.device(device)
    dtype = PROBE_DTYPES[precision]
    target, n, max_n = PROBE_MIN_SECONDS[d.type], 256 if d.type == "cpu" else 2048, PROBE_MAX_N[d.type]
    saved = None
    if d.type == "cuda":
        saved = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    try:
        while True:
            a = torch.randn(n, n, device=d).to(dtype)
            b = torch.randn(n, n, device=d).to(dtype)
            one = min(timing.time_repeated(lambda a=a, b=b: torch.mm(a, b), d, min_repeats=2, max_seconds=0.0))
            if one >= target or n >= max_n:
                break
            n *= 2
        if seconds is None:
            seconds = 0.5 if d.type == "cuda" else 1.0
        times = timing.time_repeated(lambda: torch.mm(a, b), d, min_repeats=5, max_seconds=seconds, warmup=1)
    finally:
        if saved is not None:
            torch.backends.cuda.matmul.allow_tf32 = saved
    best, median = min(times), timing.quartiles(times)[1]
    return {"device": device, "precision": precision, "dtype": str(dtype).replace("torch.", ""),
            "n": n, "repeats": len(times), "seconds_min": best, "seconds_median": median,
            "tflops": 2 * n**3 / best / 1e12, "tflops_median": 2 * n**3 / median / 1e12}


@functools.cache
def training_flops_per_image(model_name: str) -> int:
    """Forward + backward FLOPs of one training image, counted by FlopCounterMode on a
    CPU batch of 2 (matmuls and convolutions; elementwise ops are not counted)."""
    model = build_model(model_name, seed=0)
    x = torch.randn(2, 3, 32, 32)
    counter = FlopCounterMode(display=False)
    with counter:
        model(x).sum().backward()
    return counter.get_total_flops() // 2


@functools.cache
def inference_flops_per_image(model_name: str) -> int:
    """Forward FLOPs of one image in eval mode (no backward), counted as above."""
    model = build_model(model_name, seed=0).eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    return counter.get_total_flops() // 2
