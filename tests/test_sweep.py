"""The sweep's bookkeeping around the protocol: resume, per-configuration memory, CPU use of
children, refusals, flags, compile, time to accuracy, drift and peaks. CPU only, tiny data."""

import json
import shutil
import subprocess
import sys

import psutil
import pytest
import torch

import bench.system
from bench import resources
from bench.cli import main
from bench.results import read_jsonl
from bench.runner import Runner
from helpers import inject_step_error, tiny


def sweep(tmp_path, configs, name="run", **kw):
    runner = Runner(tmp_path / name, data_kind="synthetic", log=lambda m: None, progress=False,
                    probe_seconds=0.02, drift_seconds=kw.pop("drift_seconds", 0))
    return runner, runner.run(configs, **kw)


def test_resume_runs_failed_rows_again_and_a_budget_change_duplicates_nothing(tmp_path, monkeypatch):
    configs = [tiny(batch_size=8), tiny(batch_size=16)]
    with monkeypatch.context() as m:
        inject_step_error(m, 16, ValueError("a passing fault"))
        _, rows = sweep(tmp_path, configs)
    assert [r["status"] for r in rows] == ["ok", "failed"]
    longer = [tiny(batch_size=8, max_seconds=0.2, min_steps=3), tiny(batch_size=16, max_seconds=0.2, min_steps=3)]
    _, rows = sweep(tmp_path, longer, resume=True)  # another budget: the same configurations
    assert [(r["batch_size"], r["status"]) for r in rows] == [(16, "ok")]  # only the failed one ran again
    runner, _ = sweep(tmp_path, longer, resume=True)
    assert [r["status"] for r in runner.store.load()] == ["ok", "ok"]  # the rerun replaced the failed row
    assert len(read_jsonl(tmp_path / "run" / "results.jsonl")) == 3  # history kept in the JSON lines


def test_retry_all_runs_skipped_rows_again(tmp_path):
    _, rows = sweep(tmp_path, [tiny(model="resnet18", batch_size=64, max_config_seconds=0.001)])
    assert rows[0]["status"] == "skipped"
    _, rows = sweep(tmp_path, [tiny(model="resnet18", batch_size=64, max_config_seconds=0.001)], resume=True)
    assert rows == []  # a skip is the configuration's own outcome
    _, rows = sweep(tmp_path, [tiny(model="resnet18", batch_size=8, train_size=64)], resume=True, retry_all=True)
    assert [r["status"] for r in rows] == ["ok"]


def test_a_configuration_that_cannot_run_by_construction_is_skipped_not_failed(tmp_path):
    _, rows = sweep(tmp_path, [tiny(batch_size=512, train_size=256)])
    assert rows[0]["status"] == "skipped"
    assert rows[0]["reason"] == "batch size 512 is larger than the 256 training images"


def test_peak_memory_is_the_configurations_own_whatever_ran_before(tmp_path):
    alone = sweep(tmp_path, [tiny(batch_size=32)], name="alone")[1][0]
    after = sweep(tmp_path, [tiny(model="resnet18", batch_size=32, min_steps=2), tiny(batch_size=32)],
                  name="after")[1]
    assert [r["status"] for r in after] == ["ok", "ok"] and alone["memory_kind"] == "cpu_vmhwm"
    a, b = alone["peak_memory_mb"], after[1]["peak_memory_mb"]
    assert abs(a - b) <= max(50, 0.1 * a), (a, b)
    assert after[0]["peak_memory_mb"] > b  # ResNet-18's own peak is larger; it does not leak into the next row
    assert alone["peak_memory_total_mb"] > alone["peak_memory_mb"] and alone["dataset_mb"] > 0


def test_cpu_use_counts_child_processes(tmp_path):
    # a child that burns 0.5 s of CPU, says so, and stays alive until the window has closed
    burn = ("import time\nt = time.process_time()\nwhile time.process_time() - t < 0.5: pass\n"
            "print(1, flush=True)\ninput()")
    with resources.ResourceMonitor("cpu") as mon:
        child = subprocess.Popen([sys.executable, "-c", burn], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        child.stdout.readline()
        child_cpu = sum(psutil.Process(child.pid).cpu_times()[:2])
        start = mon._t0
    child.communicate(b"\n")
    wall = resources.timing.now() - start  # a little more than the monitor's own window
    assert child_cpu >= 0.5 and mon.cpu_percent / 100 * wall >= child_cpu  # the child's CPU time is counted


def test_cuda_memory_bookkeeping_on_a_stub():
    class Stub:
        calls = []
        reset_peak = staticmethod(lambda d: Stub.calls.append(("reset", d)))
        allocated = staticmethod(lambda d: 180 * 2**20)  # the resident dataset
        max_allocated = staticmethod(lambda d: 1204 * 2**20)

    mon = resources.ResourceMonitor("cuda", cuda=Stub())
    with mon:
        pass
    assert Stub.calls == [("reset", torch.device("cuda"))]
    assert mon.peak_memory_mb == pytest.approx(1024) and mon.peak_memory_total_mb == pytest.approx(1204)
    assert mon.memory_kind == "cuda_max_allocated"


def test_the_dataloader_path_runs_through_the_sweep(tmp_path):
    _, rows = sweep(tmp_path, [tiny(data_path="dataloader")])
    row = rows[0]
    assert row["status"] == "ok", row["reason"]
    assert row["train_images_per_s"] > 0 and row["fraction_of_ceiling"] > 0 and row["cpu_percent"] > 0
    assert row["dataset_mb"] == 0  # nothing resident: the workers read the images


def test_time_to_accuracy_stops_at_the_target(tmp_path):
    cfg = tiny(epochs=4, target_accuracy=0.01, stop_at_target=True, lr=0.01)
    row = sweep(tmp_path, [cfg])[1][0]
    assert row["status"] == "ok" and row["epochs_to_target"] == 1 and row["epochs_run"] == 1
    assert row["time_to_target_s"] == pytest.approx(row["epoch_seconds_list"][0])
    assert len(row["accuracy_curve"]) == 1


def test_an_mfu_over_100_percent_is_flagged_never_a_headline(tmp_path, monkeypatch):
    real = bench.system.measure_peak_tflops
    monkeypatch.setattr(bench.system, "measure_peak_tflops",
                        lambda *a, **k: {**real(*a, **k), "tflops": 1e-9})  # a probe far too low
    _, rows = sweep(tmp_path, [tiny()])
    assert rows[0]["mfu"] > 1 and "MFU" in rows[0]["flags"]
    from bench.report import write_report
    text = write_report([tmp_path / "run"], tmp_path / "report").read_text()
    assert "measurement problem (flagged: drawn hollow, left out of the lines and headlines)" in text
    assert "no successful measurements" in text.split("## Summary")[1].split("##")[0]  # the row left whole
    assert "![Training throughput](throughput.png)" in text  # where the row is drawn hollow


def test_peaks_and_the_drift_reference_are_recorded_before_and_after(tmp_path):
    sweep(tmp_path, [tiny()], drift_seconds=0.05)
    system = json.loads((tmp_path / "run" / "system.json").read_text())
    (peak,) = system["peaks"]
    assert peak["tflops"] >= peak["tflops_median"] > 0 and "tflops_after" in peak and "change" in peak
    (drift,) = system["drift"]
    assert drift["before_images_per_s"] > 0 and drift["after_images_per_s"] > 0 and "change" in drift


def test_a_failed_configuration_makes_the_sweep_exit_1_after_saving_everything(tmp_path, monkeypatch, capsys):
    inject_step_error(monkeypatch, 16, ValueError("boom"))
    out = tmp_path / "run"
    rc = main(["run", "--preset", "quick", "--models", "tutorial", "--batch-sizes", "8,16", "--precisions", "fp32",
               "--epochs", "0", "--train-size", "256", "--test-size", "64", "--data", "synthetic",
               "--max-config-seconds", "600", "--out", str(out), "--no-progress"])
    assert rc == 1
    assert "1 configuration(s) failed" in capsys.readouterr().err
    assert sorted(r["status"] for r in read_jsonl(out / "results.jsonl")) == ["failed", "ok"]


@pytest.mark.slow
@pytest.mark.skipif(not any(shutil.which(c) for c in ("cc", "gcc", "g++")), reason="torch.compile on the CPU "
                    "needs a C++ compiler")
def test_a_compiled_configuration_is_ok_and_reports_its_compile_time(tmp_path):
    row = sweep(tmp_path, [tiny(compile=True, max_config_seconds=600)])[1][0]
    assert row["status"] == "ok", row["reason"]
    assert row["warmup_steps"] >= 3 and row["compile_seconds"] > 0.5  # inductor generates and compiles C++
    assert row["compile_seconds"] == row["startup_seconds"]


def test_time_to_accuracy_is_planned_from_the_grids_fastest_batch_sizes(tmp_path):
    from bench.targets import plan_time_to_accuracy

    plan = lambda rows: plan_time_to_accuracy(rows, ("tutorial",), (0, 1), 3, candidates=1, target=0.01)
    runner, rows = sweep(tmp_path, [tiny(batch_size=8), tiny(batch_size=32)], followup=plan)
    grid, tta = rows[:2], rows[2:]
    fastest = max(grid, key=lambda r: r["train_images_per_s"])
    assert [(r["batch_size"], r["seed"]) for r in tta] == [(fastest["batch_size"], 0), (fastest["batch_size"], 1)]
    assert all(r["stop_at_target"] and r["target_accuracy"] == 0.01 and r["epochs_to_target"] == 1 for r in tta)
    sweep_json = json.loads((tmp_path / "run" / "sweep.json").read_text())
    assert len(sweep_json) == 4  # the planned runs join the sweep, so --resume finishes them too
