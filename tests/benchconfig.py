"""pytest-benchmark settings of this project: a pytest plugin, registered by tests/conftest.py.

- Measured only when asked. pyproject's addopts pass --benchmark-disable, so `make test` and a
  plain `pytest` run each benchmark once, as a smoke test. Asking for results
  (--benchmark-compare, -save, -autosave, -json, -only, -compare-fail, -histogram) measures
  them, as --benchmark-enable does.
- `--benchmark-compare` also saves the run (as --benchmark-autosave): the first run on a fresh
  clone becomes the baseline, each later one is compared with the newest saved run. A gated
  compare (--benchmark-compare-fail, `make bench-compare`) saves nothing unless asked, so the
  baseline stays the run you chose, and it stops before running anything when there is no
  baseline to compare with. A failed gate ends with exit status 1 and no traceback.
- One storage folder per device: runs go to <storage>/<cpu model>__<gpu name or cpu-only>/,
  so a CPU baseline is never compared with a GPU run. pytest-benchmark's own subfolder only
  tells OS and Python versions apart. The default storage is anchored at the repository root.
- Machine info: torch, CUDA, cuDNN, GPU and thread count, and no clock frequency (it varies
  from run to run), so "machine_info is different" warns only about a real change.
- Result tables in natural order: batch 4 before batch 32.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from pytest_benchmark.session import PerformanceRegression
from pytest_benchmark.utils import get_tag

from bench import system

DEFAULT_STORAGE = "file://./.benchmarks"  # pytest-benchmark's default for --benchmark-storage
ASKS_FOR_RESULTS = ("benchmark_compare", "benchmark_save", "benchmark_autosave", "benchmark_json",
                    "benchmark_only", "benchmark_compare_fail", "benchmark_histogram")
VARYING_CPU_FIELDS = ("hz_actual", "hz_actual_friendly")  # py-cpuinfo's current clock


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def device_slug(cpu: str, gpu: str | None) -> str:
    """The storage folder of one machine's runs: CPU model, then GPU name or cpu-only."""
    return f"{slug(cpu)}__{slug(gpu) if gpu else 'cpu-only'}"


def this_device_slug() -> str:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return device_slug(system.cpu_model(), gpu)


def device_storage(storage: str, rootpath: Path, device: str) -> str:
    """`storage` (a --benchmark-storage value) with the device's folder appended. Elasticsearch
    storage is returned unchanged: it has no folders."""
    if storage == DEFAULT_STORAGE:
        return f"file://{rootpath / '.benchmarks' / device}"
    if "://" not in storage:
        storage = "file://" + storage  # pytest-benchmark reads a bare path the same way
    if not storage.startswith("file://"):
        return storage
    return f"{storage.rstrip('/')}/{device}"


def natural_key(text: str) -> list:
    # re.split with a group alternates text and digits, so equal positions compare like with like
    return [int(part) if i % 2 else part for i, part in enumerate(re.split(r"(\d+)", text))]


@pytest.hookimpl(tryfirst=True)  # before pytest-benchmark's own (trylast) pytest_configure reads the options
def pytest_configure(config: pytest.Config) -> None:
    option = config.option
    if not hasattr(option, "benchmark_storage"):  # pytest-benchmark disabled (-p no:benchmark)
        return
    if any(getattr(option, name, None) for name in ASKS_FOR_RESULTS):
        option.benchmark_enable = True
    if option.benchmark_compare and not option.benchmark_compare_fail \
            and not option.benchmark_save and not option.benchmark_autosave:
        option.benchmark_autosave = get_tag()  # the run name --benchmark-autosave gives
    option.benchmark_storage = device_storage(option.benchmark_storage, config.rootpath, this_device_slug())


def _session(config: pytest.Config):
    return getattr(config, "_benchmarksession", None)


def pytest_sessionstart(session: pytest.Session) -> None:
    # pytest-benchmark itself finds out that a gate has nothing to compare with only after
    # running every benchmark
    bs = _session(session.config)
    if bs is None or not bs.compare_fail or bs.skip or bs.disabled:
        return
    if not bs.compare:
        pytest.exit("--benchmark-compare-fail needs --benchmark-compare (the saved run to compare with)",
                    returncode=pytest.ExitCode.USAGE_ERROR)
    if not bs.compared_mapping:
        pytest.exit(f"no saved benchmark run in {bs.storage} to compare with; save a baseline first: "
                    "`make bench-baseline` (or `pytest tests/benchmarks --benchmark-autosave`)",
                    returncode=pytest.ExitCode.USAGE_ERROR)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int):
    # pytest-benchmark fails a gate by raising from its result table, which ends the run in an
    # internal-error traceback; the regressions are listed by then, so exit with status 1 instead.
    try:
        return (yield)
    except PerformanceRegression:
        pytest.exit("performance has regressed beyond --benchmark-compare-fail (listed above)",
                    returncode=pytest.ExitCode.TESTS_FAILED)


def pytest_report_header(config: pytest.Config) -> str | None:
    bs = _session(config)
    if bs is None or bs.skip:
        return None
    if bs.disabled:
        return ("benchmarks: each runs once as a smoke test; measure with --benchmark-compare, "
                "--benchmark-autosave or --benchmark-enable")
    line = f"benchmarks: measured; storage {bs.storage}"
    if bs.compare:
        names = [Path(str(path)).name for path in bs.compared_mapping]
        line += f"; comparing with {', '.join(names)}" if names else "; no saved run to compare with yet"
    if bs.save or bs.autosave:
        line += "; this run will be saved"
    return line


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict) -> None:
    cpu = machine_info.get("cpu")
    if isinstance(cpu, dict):
        for key in VARYING_CPU_FIELDS:
            cpu.pop(key, None)
    cuda = system.cuda_facts()
    machine_info.update(
        cpu_model=system.cpu_model(),
        torch=torch.__version__,
        torch_cuda_build=torch.version.cuda,
        cudnn=cuda.get("cudnn"),
        gpu_name=cuda.get("gpu_name"),
        gpu_count=cuda.get("gpu_count", 0),
        gpu_capability=cuda.get("gpu_capability"),
        driver=cuda.get("driver"),
        torch_threads=torch.get_num_threads(),
        torch_interop_threads=torch.get_num_interop_threads(),
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_benchmark_group_stats(config, benchmarks, group_by):
    outcome = yield
    outcome.force_result(sorted(outcome.get_result(), key=lambda group: natural_key(group[0] or "")))
