"""`make gpu-check` runs end to end on the CPU (--dry-run), so CI exercises it."""

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_gpu_check_dry_run_produces_its_outputs(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable}
    proc = subprocess.run([str(ROOT / "scripts" / "gpu-check.sh"), "--dry-run"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    files = sorted(p.name for p in out.iterdir())
    assert files == ["gpu-check.log", "report.md", "run.tar.gz", "summary.md"]  # the device returns <= 8
    tail = proc.stdout.strip().splitlines()
    assert any(line.startswith("== gpu-check summary (cpu") for line in tail[-12:])
    assert "| tutorial" in proc.stdout.split("== gpu-check summary")[1]
    with tarfile.open(out / "run.tar.gz") as tar:
        names = set(tar.getnames())
    assert {"run/results.jsonl", "run/results.csv", "run/system.json", "run/report.md",
            "run/throughput.png"} <= names
    assert any(n.startswith("run/performance/") and n.endswith(".md") for n in names)
    log = (out / "gpu-check.log").read_text()
    assert "cuda-tests: exit 0" in log and "sweep: exit 0" in log and "report: exit 0" in log
