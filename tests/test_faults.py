"""Fault injection: interrupted sweeps, killed writes, concurrent sweeps, bad data through the
command line, and reports over failed configurations. CPU only."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from filelock import FileLock

from bench.cli import main
from bench.report import write_report
from bench.results import read_jsonl
from bench.runner import Runner
from helpers import inject_oom, tiny
from test_data import fake_cifar

ROOT = Path(__file__).resolve().parent.parent
# Four quick configurations of about a second each.
SWEEP = ["run", "--preset", "quick", "--models", "tutorial", "--batch-sizes", "8,16,32,64", "--precisions", "fp32",
         "--epochs", "0", "--train-size", "512", "--test-size", "128", "--max-seconds", "0.6", "--data", "synthetic",
         "--max-config-seconds", "600", "--no-progress"]  # no configuration skipped, however busy the machine


def env():
    return {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}


def _default_sigint():
    # A test run started in the background (`cmd &`, nohup) inherits SIGINT ignored, and Python
    # keeps an ignored SIGINT ignored: give the sweep the disposition a terminal's Ctrl-C meets.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(args, **kw):
    kw.setdefault("preexec_fn", _default_sigint)
    return subprocess.Popen([sys.executable, "-m", "bench", *args], cwd=ROOT, env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def wait_for_rows(path: Path, n: int, proc, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and len([ln for ln in path.read_text().splitlines() if ln.strip()]) >= n:
            return
        if proc.poll() is not None:
            raise AssertionError(f"sweep ended early: {proc.communicate()}")
        time.sleep(0.05)
    raise AssertionError("timed out waiting for results")


def keys(folder: Path) -> set[str]:
    return {r["config_key"] for r in read_jsonl(folder / "results.jsonl")}


def test_sigint_saves_what_finished_and_resume_completes_the_sweep(tmp_path):
    out = tmp_path / "run"
    proc = start([*SWEEP, "--out", str(out)])
    wait_for_rows(out / "results.jsonl", 1, proc)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, (stdout, stderr)
    assert "Traceback" not in stderr
    assert "interrupted" in stderr and "finished configurations are saved in" in stderr
    assert f"cifar-bench run --out {out} --resume" in stderr
    saved = read_jsonl(out / "results.jsonl")
    assert 1 <= len(saved) < 4 and all(r["status"] == "ok" for r in saved)
    assert not (out / ".lock").exists() or FileLock(str(out / ".lock")).acquire(timeout=0)  # lock released

    resumed = subprocess.run([sys.executable, "-m", "bench", "run", "--out", str(out), "--resume", "--no-progress",
                              "--data", "synthetic"],
                             cwd=ROOT, env=env(), capture_output=True, text=True, timeout=180)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{len(saved)} of 4 configurations already recorded" in resumed.stdout
    assert f"{4 - len(saved)} configurations run" in resumed.stdout

    reference = tmp_path / "uninterrupted"
    assert main([*SWEEP, "--out", str(reference)]) == 0
    assert keys(out) == keys(reference) and len(read_jsonl(out / "results.jsonl")) == 4


KILL_WHILE_WRITING = textwrap.dedent("""
    import json, os, signal, sys
    import bench.results as results
    from bench.cli import main

    real_append = results.ResultsStore.append
    count = 0

    def append(self, row):
        global count
        count += 1
        if count < 3:
            return real_append(self, row)
        line = json.dumps(row)
        with open(self.jsonl, "a") as f:  # half a record reaches the disk, then the process dies
            f.write(line[: len(line) // 2])
            f.flush()
            os.fsync(f.fileno())
        os.kill(os.getpid(), signal.SIGKILL)

    results.ResultsStore.append = append
    sys.exit(main(sys.argv[1:]))
""")


def test_sigkill_while_a_record_is_written_leaves_a_readable_file(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-c", KILL_WHILE_WRITING, *SWEEP, "--out", str(out)], cwd=ROOT,
                          env=env(), capture_output=True, text=True, timeout=180)
    assert proc.returncode == -signal.SIGKILL
    text = (out / "results.jsonl").read_text()
    assert not text.endswith("\n")  # the torn record is there
    warnings = []
    rows = read_jsonl(out / "results.jsonl", warn=warnings.append)
    assert len(rows) == 2 and len(warnings) == 1 and "torn or corrupt last line" in warnings[0]
    assert (write_report([out]).read_text()).count("| cpu ·") == 2  # the report still builds

    resumed = subprocess.run([sys.executable, "-m", "bench", "run", "--out", str(out), "--resume", "--no-progress",
                              "--data", "synthetic"],
                             cwd=ROOT, env=env(), capture_output=True, text=True, timeout=180)
    assert resumed.returncode == 0, resumed.stderr
    assert "ignored a torn or corrupt last line" in resumed.stdout
    rows = read_jsonl(out / "results.jsonl", warn=lambda m: pytest.fail(m))  # repaired: no torn line left
    assert len(rows) == 4 and len({r["config_key"] for r in rows}) == 4


def test_a_real_sigkill_mid_sweep_never_breaks_the_results(tmp_path):
    out = tmp_path / "run"
    proc = start([*SWEEP, "--out", str(out)])
    wait_for_rows(out / "results.jsonl", 1, proc)
    proc.kill()
    proc.communicate(timeout=30)
    rows = read_jsonl(out / "results.jsonl", warn=lambda m: None)
    assert rows and all(r["status"] == "ok" for r in rows)
    assert main(["report", str(out)]) == 0


def test_two_sweeps_into_one_folder_are_refused(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    lock = FileLock(str(out / ".lock"))
    with lock.acquire(timeout=0):  # another sweep holds the folder
        assert main([*SWEEP, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "another sweep is writing to" in err and "choose another --out" in err
    assert not (out / "results.jsonl").exists()


def test_concurrent_processes_do_not_interleave(tmp_path):
    out = tmp_path / "run"
    # 24 configurations of about 1-2 s: the first sweep is surely still running when the
    # second starts; it is interrupted once the second has been refused
    long = [*SWEEP, "--batch-sizes", ",".join(str(8 * i) for i in range(1, 25))]
    first = start([*long, "--out", str(out)])
    wait_for_rows(out / "results.jsonl", 1, first)
    second = subprocess.run([sys.executable, "-m", "bench", *long, "--out", str(out), "--resume"], cwd=ROOT,
                            env=env(), capture_output=True, text=True, timeout=120)
    assert first.poll() is None, "the first sweep ended before the second started; the test proves nothing"
    assert second.returncode == 2 and "another sweep is writing to" in second.stderr
    first.send_signal(signal.SIGINT)
    first.communicate(timeout=60)
    rows = read_jsonl(out / "results.jsonl", warn=lambda m: pytest.fail(m))
    assert rows and len({r["config_key"] for r in rows}) == len(rows)  # each configuration once
    assert all(r["status"] == "ok" for r in rows)


@pytest.mark.parametrize("damage,message", [
    ("delete", "missing"),
    ("truncate", "checksum mismatch"),
    ("evil", "checksum mismatch"),
])
def test_damaged_data_stops_the_command_with_the_file_and_remedy(tmp_path, capsys, damage, message):
    folder = tmp_path / "data" / "cifar-10-batches-py"
    fake_cifar(folder)
    target = folder / "data_batch_1"
    if damage == "delete":
        target.unlink()
    elif damage == "truncate":
        target.write_bytes(target.read_bytes()[:100])
    else:
        target.write_bytes(b"cos\nsystem\n(S'touch pwned'\ntR.")
    code = main(["run", "--data", "cifar10", "--data-dir", str(tmp_path / "data"), "--models", "tutorial",
                 "--batch-sizes", "8", "--precisions", "fp32", "--out", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0, err
    assert message in err and "data_batch_1" in err and "Remedy:" in err
    assert not (tmp_path / "pwned").exists() and not Path("pwned").exists()
    assert not (tmp_path / "out" / "results.jsonl").exists()  # nothing ran


def test_report_of_an_unreadable_run_folder(tmp_path, capsys):
    (tmp_path / "results.jsonl").mkdir()  # a folder where the file should be
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot read" in err


def test_report_over_failed_configurations_builds_and_says_so(tmp_path, monkeypatch):
    out = tmp_path / "run"
    inject_oom(monkeypatch, 32)
    configs = [tiny(), tiny(precision="fp16"), tiny(lr=1e5, epochs=1, batch_size=8), tiny(batch_size=32)]
    Runner(out, data_kind="synthetic", log=lambda m: None, progress=False, probe_seconds=0.02).run(configs)
    statuses = {(r["batch_size"], r["precision"], r["epochs"]): r["status"] for r in read_jsonl(out / "results.jsonl")}
    assert statuses == {(16, "fp32", 0): "ok", (16, "fp16", 0): "skipped", (8, "fp32", 1): "diverged",
                        (32, "fp32", 0): "oom"}
    text = write_report([out]).read_text()
    warnings = text.split("## Warnings")[1].split("## ")[0]
    for status in ("skipped", "diverged", "oom"):
        assert f"- {status}:" in warnings
    assert json.loads((out / "system.json").read_text())["host"]
