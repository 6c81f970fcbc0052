"""gpu-check's first stage: can this Python import everything gpu-check runs, and on what
machine is it? Prints one machine line (and nvidia-smi's facts) and exits 0; or names every
missing module, says how to bring it to an air-gapped machine, and exits 4.

Standard library only until the imports are checked, so it can say what is missing."""

from __future__ import annotations

import importlib
import platform
import shutil
import subprocess
import sys

EXIT_MISSING = 4
# module -> the distribution pip installs it from. Nothing else: tables are written by
# bench/markdown.py, so tabulate is not needed (the GPU machine has none).
REQUIRED = {
    "torch": "torch", "torchvision": "torchvision", "numpy": "numpy", "pandas": "pandas",
    "matplotlib": "matplotlib", "psutil": "psutil", "scipy": "scipy", "tqdm": "tqdm", "filelock": "filelock",
    "pytest": "pytest", "pytest_benchmark": "pytest-benchmark",
}


def missing_modules() -> dict[str, str]:
    """module -> why it cannot be imported."""
    missing = {}
    for module in REQUIRED:
        try:
            importlib.import_module(module)
        except Exception as e:  # a broken install (OSError from a shared library, ...) counts too
            missing[module] = f"{type(e).__name__}: {e}"
    return missing


def platform_flags() -> str:
    """pip download's --platform flags for this machine's wheels. pip matches manylinux_2_Y
    tags exactly, so every common glibc level up to this machine's is named."""
    libc, version = platform.libc_ver()
    if sys.platform != "linux" or libc != "glibc" or not version:
        return "--platform <this machine's tags: `python -m pip debug --verbose` on it lists them>"
    minor, arch = int(version.split(".")[1]), platform.machine()
    levels = [y for y in (17, 24, 27, 28, 31, 34, 35, 39) if y <= minor]
    return " ".join([f"--platform manylinux2014_{arch}"] + [f"--platform manylinux_2_{y}_{arch}" for y in levels])


def offline_recipe(packages: list[str]) -> str:
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    names = " ".join(packages)
    return (
        "To bring them to a machine without network access:\n"
        f"  1. on a machine with network access: python3 -m pip download --dest wheelhouse --only-binary=:all: "
        f"--python-version {py} {platform_flags()} {names}\n"
        "  2. carry the wheelhouse/ folder with the working tree\n"
        f"  3. here: {sys.executable} -m pip install --no-index --find-links wheelhouse {names}\n"
        "(torch from PyPI comes with its CUDA libraries: the wheelhouse is large; a machine with torch installed "
        "usually lacks only the small packages.)")


def nvidia_smi() -> str:
    if shutil.which("nvidia-smi") is None:
        return "nvidia-smi: not found"
    try:
        proc = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                               "--format=csv"], capture_output=True, text=True, timeout=5)
    except subprocess.TimeoutExpired:
        return "nvidia-smi: no answer within 5 s"
    return (proc.stdout + proc.stderr).strip()


def main() -> int:
    missing = missing_modules()
    if missing:
        print(f"missing on {platform.node()} (python {sys.executable}, {platform.python_version()}):")
        for module, why in missing.items():
            print(f"  {module} (pip: {REQUIRED[module]}): {why}")
        print(offline_recipe([REQUIRED[m] for m in missing]))
        return EXIT_MISSING
    import torch

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    blocked = any(type(f).__name__ == "GpuMachineImports" for f in sys.meta_path)  # scripts/gpu_env
    packages = "the GPU machine's package set (import blocker on)" if blocked else "as installed"
    print(f"machine: {platform.node()}, python {platform.python_version()}, torch {torch.__version__}, "
          f"cuda {torch.version.cuda}, gpu {gpu}; packages: {packages}")
    print(nvidia_smi())
    return 0


if __name__ == "__main__":
    sys.exit(main())
