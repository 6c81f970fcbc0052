"""`make gpu-check`: its time bound, its exit statuses and verdicts (with a stand-in Python, in
seconds), its import check, the GPU machine's package set, and the whole dry run on the CPU
(slow), so CI exercises it."""

import os
import re
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gpu-check.sh"
sys.path[:0] = [str(ROOT / "scripts"), str(ROOT / "scripts" / "gpu_env")]
import gpu_machine_packages  # noqa: E402  (importing it installs nothing)
import preflight  # noqa: E402

# ---- the time bound ---------------------------------------------------------------------------

def stage_table() -> dict[str, tuple[int, int]]:
    """name -> (limit, grace), as the script itself prints them."""
    out = subprocess.run([str(SCRIPT), "--print-bound"], capture_output=True, text=True, check=True).stdout
    rows = [line.split() for line in out.splitlines() if not line.startswith("bound")]
    return {name: (int(limit), int(grace)) for name, limit, grace in rows}, out


def test_stage_limits_with_their_grace_add_up_to_under_seven_minutes():
    table, out = stage_table()
    shell = int(re.search(r"SHELL_SECONDS=(\d+)", SCRIPT.read_text()).group(1))
    bound = sum(limit + grace for limit, grace in table.values()) + shell
    assert f"bound {bound} s" in out
    assert bound < 420, table
    assert set(table) == {"machine", "cuda-tests", "sweep", "perf", "equivalence", "report", "archive", "summary"}
    assert 180 <= table["sweep"][0] <= 200 and 45 <= table["perf"][0] <= 55  # the sweep keeps what the bound allows
    assert all(grace >= 2 for _, grace in table.values())


def test_every_python_run_and_every_step_after_the_sweep_is_inside_a_stage():
    lines = [line.strip() for line in SCRIPT.read_text().splitlines()]
    code = [line for line in lines if line and not line.startswith("#")]
    python_runs = [line for line in code if '"$PY"' in line or "$PY " in line]
    assert python_runs and all(re.match(r"(run_stage|stage) [\w-]+ ", line) for line in python_runs), python_runs
    assert not [line for line in code if re.search(r"\bpython3?\b", line) and not line.startswith("PY=")]
    # each stage's process gets SIGINT at its limit and SIGKILL after its grace period
    assert sum("timeout " in line for line in code) == 1
    assert any(re.search(r'timeout -s INT -k "\$grace" "\$limit"', line) for line in code)
    for step in ("tar -czf", "bench summary", "bench report", "bench equivalence", "scripts/preflight.py"):
        assert all(re.match(r"(run_stage|stage) ", line) for line in code if step in line), step


# ---- exit statuses and verdicts, with a stand-in for Python ------------------------------------

FAKE_PYTHON = """\
#!/usr/bin/env bash
# Stands in for python: answers each gpu-check stage at once, as told by FAKE_* variables.
[[ -z ${FAKE_ARGS_LOG:-} ]] || echo "$*" >>"$FAKE_ARGS_LOG"
case "$1 $2 $3" in
    "scripts/preflight.py"*) echo "${FAKE_PREFLIGHT:-machine: fake}"; exit "${FAKE_PREFLIGHT_RC:-0}" ;;
    "-m pytest"*) exit 0 ;;
    "-m bench run") for ((i = 1; i <= $#; i++)); do [[ ${!i} == --out ]] && { j=$((i + 1)); mkdir -p "${!j}"; }; done
                    echo '{}' >"${!j}/results.jsonl"; exit "${FAKE_SWEEP_RC:-0}" ;;
    "-m bench perf") exit 0 ;;
    "-m bench equivalence") echo "equivalence: fake verdict"; exit "${FAKE_EQUIVALENCE_RC:-0}" ;;
    "-m bench report") echo "# fake report" >"$4/report.md"; exit 0 ;;
    "-m bench summary") echo "| tutorial | fake |"; exit 0 ;;
esac
echo "fake python: unexpected $*" >&2
exit 99
"""


def run_with_fake_python(tmp_path, **env):
    fake = tmp_path / "python"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    out = tmp_path / "out"
    proc = subprocess.run([str(SCRIPT)], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "OUT": str(out), "PYTHON": str(fake), **env})
    return proc, out


def test_a_not_equivalent_verdict_is_reported_not_failed(tmp_path):
    proc, out = run_with_fake_python(tmp_path, FAKE_EQUIVALENCE_RC="3")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = (out / "summary.md").read_text()
    assert "| tutorial | fake |" in summary and "Equivalence verdict: at least one pair NOT equivalent" in summary
    assert "Failed stages" not in summary and "equivalence: exit 3" in (out / "gpu-check.log").read_text()
    assert sorted(p.name for p in out.iterdir()) == ["gpu-check.log", "report.md", "run.tar.gz", "summary.md"]
    assert re.search(r"bound \d+ s", proc.stdout.splitlines()[0])  # the bound comes first


@pytest.mark.parametrize("rc", ["1", "2"])
def test_an_equivalence_error_is_a_failed_stage(tmp_path, rc):
    proc, out = run_with_fake_python(tmp_path, FAKE_EQUIVALENCE_RC=rc)
    assert proc.returncode == 1
    summary = (out / "summary.md").read_text()
    assert f"Equivalence verdict: none: the equivalence stage failed (exit {rc})" in summary
    assert f"Failed stages: equivalence (exit {rc})" in summary
    assert (out / "report.md").exists() and (out / "run.tar.gz").exists()  # everything else still comes back


def test_all_pairs_equivalent_or_inconclusive_passes(tmp_path):
    proc, out = run_with_fake_python(tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Equivalence verdict: every pair equivalent or inconclusive." in (out / "summary.md").read_text()


@pytest.mark.parametrize("files, data", [((), "synthetic"), (("test_batch",), "cifar10"),
                                         (("cifar-10-batches-py/data_batch_1",), "cifar10")])
def test_the_data_is_cifar10_when_the_folder_holds_it_else_synthetic_and_nothing_downloads(tmp_path, files, data):
    data_dir = tmp_path / "data"
    for f in files:
        (data_dir / f).parent.mkdir(parents=True, exist_ok=True)
        (data_dir / f).write_bytes(b"")
    calls = tmp_path / "calls.txt"
    proc, out = run_with_fake_python(tmp_path, GPU_CHECK_DATA_DIR=str(data_dir), FAKE_ARGS_LOG=str(calls))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    runs = [line for line in calls.read_text().splitlines() if line.startswith(("-m bench run", "-m bench perf"))]
    assert len(runs) == 2 and all(f"--data {data} --data-dir {data_dir}" in line for line in runs), runs
    assert "--data auto" not in calls.read_text()


def test_a_sweep_cut_at_its_limit_is_said_in_the_summary(tmp_path):
    proc, out = run_with_fake_python(tmp_path, FAKE_SWEEP_RC="124")
    assert proc.returncode == 1
    summary = (out / "summary.md").read_text()
    assert "The sweep stage did not finish (stopped at its time limit, exit 124): the not-run lines above" in summary
    assert "Failed stages: sweep (stopped at its time limit, exit 124)" in summary


def test_missing_modules_stop_the_run_first_and_say_how_to_bring_them(tmp_path):
    proc, out = run_with_fake_python(tmp_path, FAKE_PREFLIGHT="missing: scipy (pip: scipy)", FAKE_PREFLIGHT_RC="4")
    assert proc.returncode == 4
    assert "missing modules" in proc.stderr and "missing: scipy" in proc.stdout
    assert sorted(p.name for p in out.iterdir()) == ["gpu-check.log", "summary.md"]
    assert "cuda-tests (limit" not in (out / "gpu-check.log").read_text()  # nothing else ran


def test_the_import_check_names_what_is_missing_and_the_offline_recipe(monkeypatch, capsys):
    monkeypatch.setitem(preflight.REQUIRED, "no_such_module_xyz", "no-such-dist")
    assert preflight.main() == preflight.EXIT_MISSING
    out = capsys.readouterr().out
    assert "no_such_module_xyz (pip: no-such-dist): ModuleNotFoundError" in out
    assert "pip download --dest wheelhouse --only-binary=:all: --python-version" in out and "no-such-dist" in out
    assert "pip install --no-index --find-links wheelhouse no-such-dist" in out
    assert "torch (pip" not in out  # only what is missing


def test_the_import_check_needs_no_tabulate():
    assert "tabulate" not in preflight.REQUIRED
    assert {"torch", "torchvision", "numpy", "pandas", "matplotlib", "psutil", "scipy", "tqdm", "filelock",
            "pytest", "pytest_benchmark"} == set(preflight.REQUIRED)


# ---- the GPU machine's package set --------------------------------------------------------------

def test_the_gpu_machine_package_set_refuses_other_packages():
    """ruff (a dev tool, installed wherever the tests run) and tabulate (when installed) are not
    on the GPU machine; what is there, the standard library and the project import."""
    code = textwrap.dedent("""
        import platform  # first: on Python 3.12 it looks for `_wmi` half initialised (a lazy blocker broke there)
        import importlib.util, json, sys
        import numpy, pandas, scipy, tqdm, filelock, psutil, cnn.data
        import bench.markdown
        refused = {}
        for name in ("ruff", "tabulate"):
            try:
                __import__(name)
                refused[name] = None
            except ImportError as e:
                refused[name] = [str(e), importlib.util.find_spec(name)]
        print(json.dumps(refused, default=str))
    """)
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'scripts' / 'gpu_env'}:{ROOT}"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    import json

    refused = json.loads(proc.stdout.strip().splitlines()[-1])
    message, probe = refused["ruff"]
    assert "'ruff' (distribution ruff) is not on the GPU machine" in message
    assert probe is None  # importlib.util.find_spec sees it absent, as on the GPU machine
    assert refused["tabulate"] is not None  # absent or refused, never importable


def test_the_allowed_set_is_the_requirement_closure_without_the_projects_own_requirements():
    allowed = gpu_machine_packages.allowed_distributions()
    assert {"torch", "numpy", "filelock", "pytest", "pluggy", "cifar-bench"} <= allowed  # requirements come along
    assert "ruff" not in allowed and "tabulate" not in allowed


# ---- the whole dry run --------------------------------------------------------------------------

@pytest.mark.slow
def test_gpu_check_dry_run_produces_its_outputs(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable}
    proc = subprocess.run([str(SCRIPT), "--dry-run"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    files = sorted(p.name for p in out.iterdir())
    assert files == ["gpu-check.log", "report.md", "run.tar.gz", "summary.md"]  # the device returns <= 8
    # the summary is printed last: its header, then summary.md and nothing after it
    head, _, last = proc.stdout.rpartition("\n== gpu-check summary (cpu, ")
    assert head, proc.stdout[-3000:]
    summary = (out / "summary.md").read_text()
    assert re.fullmatch(r"\d+ s\) ==\n", last[: -len(summary)]), last[:200]
    assert last.endswith(summary)
    assert "| tutorial" in summary and len(summary.splitlines()) <= 30  # short
    with tarfile.open(out / "run.tar.gz") as tar:
        names = set(tar.getnames())
    assert {"run/results.jsonl", "run/results.csv", "run/system.json", "run/report.md",
            "run/throughput.png"} <= names
    assert any(n.startswith("run/performance/") and n.endswith(".md") for n in names)
    log = (out / "gpu-check.log").read_text()
    for stage in ("machine", "cuda-tests", "sweep", "perf", "equivalence", "report", "archive", "summary"):
        assert f"{stage}: exit 0" in log, stage
    assert "packages: the GPU machine's package set (import blocker on)" in log
    assert int(re.search(r"bound (\d+) s", log).group(1)) < 420
    assert "Equivalence verdict: " in (out / "summary.md").read_text()
