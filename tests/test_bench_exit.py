"""`make bench-cpu`'s exit status and what it prints last, with a stub `cifar-bench` (no
sweep runs): a finished sweep and report exit 0 whatever the accuracy verdict, which is
printed last; GATE=1 makes a pair that is not equivalent fail (3); a failed configuration
still gets its report and exits 1; an equivalence error is an error."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")

STUB = """#!/bin/sh
out=""
prev=""
for a in "$@"; do [ "$prev" = "--out" ] && out="$a"; prev="$a"; done
case "$1" in
  run) mkdir -p "$out"; echo "sweep ran"; exit {run};;
  report) echo "cifar-bench: report written to $2/report.md"; exit 0;;
  equivalence) echo "| table |"; echo "- tutorial bs=32: bf16 vs fp32: {verdict}: the reason"
               echo "  seed-to-seed spread of the reference"
               echo "equivalence: 1 pairs, 0 equivalent, 1 not equivalent; written to $2/equivalence.csv"
               exit {eq};;
esac
"""


def bench_cpu(tmp_path: Path, run: int = 0, eq: int = 0, verdict: str = "EQUIVALENT", gate: str = ""):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    stub = bin_dir / "cifar-bench"
    stub.write_text(STUB.format(run=run, eq=eq, verdict=verdict))
    stub.chmod(0o755)
    stamp = tmp_path / "installed"
    stamp.touch()
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    return subprocess.run(["make", "-s", "bench-cpu", f"BIN={bin_dir}", f"STAMP={stamp}", f"RUNS={tmp_path / 'runs'}",
                           f"GATE={gate}"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


def test_a_verdict_is_a_finding_printed_last_and_the_job_exits_0(tmp_path):
    done = bench_cpu(tmp_path, eq=3, verdict="NOT EQUIVALENT")
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.strip().splitlines()
    assert "NOT EQUIVALENT" in lines[-2] and lines[-1].startswith("equivalence: 1 pairs")
    assert "report: " in done.stdout and "| table |" not in done.stdout  # the table stays in equivalence.txt
    (txt,) = (tmp_path / "runs").glob("*/equivalence.txt")
    assert "| table |" in txt.read_text()


def test_gate_1_makes_a_pair_that_is_not_equivalent_fail(tmp_path):
    gated = bench_cpu(tmp_path, eq=3, verdict="NOT EQUIVALENT", gate="1")
    assert gated.returncode == 2  # make's own status for a failed recipe
    assert "GATE=1: a pair is not equivalent (exit 3)" in gated.stdout
    assert bench_cpu(tmp_path, eq=0, gate="1").returncode == 0


def test_a_failed_configuration_still_gets_its_report_and_fails(tmp_path):
    failed = bench_cpu(tmp_path, run=1)
    assert failed.returncode == 2 and "Error 1" in failed.stderr
    assert "report written" in failed.stdout and "a configuration failed" in failed.stdout


def test_an_equivalence_error_is_an_error(tmp_path):
    broken = bench_cpu(tmp_path, eq=1)
    assert broken.returncode == 2 and "equivalence: error (exit 1" in broken.stdout
