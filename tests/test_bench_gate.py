"""`make bench-compare` gates regressions. A real run of one small benchmark is saved with
`make bench-baseline`; each case scales a copy of its timings and runs `make bench-compare`
against it: a baseline a million times faster than the code must fail the gate, one a million
times slower must pass. No machine is that much faster or slower than itself, however busy
(a 3 ms step becomes 3 ns or 50 minutes), so the verdicts do not depend on the machine's
speed or load; a factor of 50 was not enough on a 2-core machine kept busy by other jobs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ONE_BENCHMARK = '-p no:cacheprovider --benchmark-max-time=0.2 -k "test_train_step and cpu-tutorial-b32-fp32"'
FACTOR = 1e6
SECONDS_FIELDS = ("min", "max", "mean", "stddev", "median", "iqr", "q1", "q3", "ld15iqr", "hd15iqr", "total")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make"),
]


def make(target: str, storage: Path, stamp: Path) -> subprocess.CompletedProcess:
    """Run a Makefile target with this interpreter's environment (stamped as installed, so make
    does not build .venv) and one benchmark selected."""
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return subprocess.run(
        ["make", "-s", target, f"BIN={Path(sys.executable).parent}", f"STAMP={stamp}",
         f"BENCH_STORAGE={storage}", f"ARGS={ONE_BENCHMARK}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )


def scale_saved_run(storage: Path, factor: float) -> None:
    """Multiply every timing of the one saved run by `factor` (throughput by 1/factor)."""
    (saved,) = storage.glob("*/*/0001_*.json")  # <device>/<python>/0001_<commit>_<time>.json
    run = json.loads(saved.read_text())
    for bench in run["benchmarks"]:
        stats = bench["stats"]
        for field in SECONDS_FIELDS:
            stats[field] *= factor
        stats["ops"] /= factor
    saved.write_text(json.dumps(run))


@pytest.fixture(scope="module")
def stamp(tmp_path_factory):
    path = tmp_path_factory.mktemp("env") / "installed"
    path.touch()  # newer than pyproject.toml: make's environment rule has nothing to do
    return path


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory, stamp):
    storage = tmp_path_factory.mktemp("saved") / "benchmarks"
    saved = make("bench-baseline", storage, stamp)
    assert saved.returncode == 0, saved.stdout + saved.stderr
    return storage


@pytest.fixture
def baseline(saved_run, tmp_path):
    """A copy of the saved run, for one case to scale."""
    return shutil.copytree(saved_run, tmp_path / "benchmarks")


def test_the_gate_fails_against_a_clearly_faster_baseline(baseline, stamp):
    scale_saved_run(baseline, 1 / FACTOR)
    gated = make("bench-compare", baseline, stamp)
    out = gated.stdout + gated.stderr
    assert gated.returncode != 0 and "Error 1" in gated.stderr, out  # make reports pytest's exit status 1
    assert "Performance has regressed" in out and "test_train_step[cpu-tutorial-b32-fp32]" in out
    assert "Traceback" not in out  # a clean failure, not pytest-benchmark's internal error
    assert len(list(baseline.glob("*/*/*.json"))) == 1  # the gate saved nothing


def test_the_gate_passes_against_a_clearly_slower_baseline(baseline, stamp):
    scale_saved_run(baseline, FACTOR)
    gated = make("bench-compare", baseline, stamp)
    assert gated.returncode == 0, gated.stdout + gated.stderr
    assert "(0001_" in gated.stdout and "(NOW)" in gated.stdout  # the comparison table


def test_the_gate_without_a_baseline_says_how_to_save_one(tmp_path, stamp):
    gated = make("bench-compare", tmp_path / "empty", stamp)
    assert gated.returncode != 0
    assert "make bench-baseline" in gated.stdout + gated.stderr
    assert "passed" not in gated.stdout  # stopped before running anything
