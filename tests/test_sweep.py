"""The sweep's bookkeeping around the protocol: resume, per-configuration memory, CPU use of
children, refusals, flags, compile, time to accuracy, drift and peaks. CPU only, tiny data."""

import dataclasses
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
    small, large = tiny(batch_size=8), tiny(batch_size=64, max_config_seconds=1e-6)
    _, rows = sweep(tmp_path, [small, large])
    assert [r["status"] for r in rows] == ["ok", "skipped"]  # predicted from batch 8's steps
    assert "--resume --retry-all --max-config-seconds" in rows[1]["reason"]
    _, rows = sweep(tmp_path, [small, large], resume=True)
    assert rows == []  # a skip is the configuration's own outcome
    larger_budget = dataclasses.replace(large, max_config_seconds=60.0)  # the same configuration
    runner, rows = sweep(tmp_path, [small, larger_budget], resume=True, retry_all=True)
    assert [(r["batch_size"], r["status"]) for r in rows] == [(64, "ok")]  # batch 8 was ok: not run again
    assert [r["status"] for r in runner.store.load()] == ["ok", "ok"]


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
    assert row["compile_frames"] >= 1 and row["recompiles"] is not None  # Dynamo's own count, reset per configuration


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


# ---- issue 21: what the GPU run's numbers mean ------------------------------------------------

class WarmUpStub:
    """CUDA allocator statistics on a CPU: cuDNN's autotuning during warm-up takes a 2 GiB
    workspace for a moment; the steady steps peak at 1 GiB over the 180 MiB dataset."""

    def __init__(self):
        self.calls = []
        self.warm = True

    def reset_peak(self, d):
        self.calls.append("reset")

    def allocated(self, d):
        return 180 * 2**20

    def max_allocated(self, d):
        resets = self.calls.count("reset")
        return (180 + 1024) * 2**20 if resets >= 2 else (180 + 2048) * 2**20


def test_the_cuda_memory_window_opens_after_warm_up():
    stub = WarmUpStub()
    mon = resources.ResourceMonitor("cuda", cuda=stub)
    with mon:
        mon.warmed_up()  # the training loop's warm-up (and cuDNN's autotuning in it) is over
    assert stub.calls == ["reset", "reset"]
    assert mon.peak_memory_mb == pytest.approx(1024)  # the workspace autotuning tried is not the configuration's
    assert mon.peak_memory_total_mb == pytest.approx(1204)
    cpu = resources.ResourceMonitor("cpu", cuda=WarmUpStub())
    with cpu:
        cpu.warmed_up()  # nothing changes on the CPU
    assert cpu.cuda.calls == []


def test_the_sweep_opens_the_memory_window_after_the_warm_up_before_the_first_timed_step(tmp_path, monkeypatch):
    import cnn.train
    from bench import measure

    steps, at_warmed = [0], []
    real_step = cnn.train.Trainer.step

    def step(self, x, y):
        steps[0] += 1
        return real_step(self, x, y)

    monkeypatch.setattr(cnn.train.Trainer, "step", step)
    monkeypatch.setattr(resources.ResourceMonitor, "warmed_up", lambda self: at_warmed.append(steps[0]))
    seen = {}
    real_time_training = measure.time_training

    def time_training(*a, **kw):
        row, s = real_time_training(*a, **kw)
        seen.update(row)
        return row, s

    monkeypatch.setattr(measure, "time_training", time_training)
    _, rows = sweep(tmp_path, [tiny(energy_window=False, profile_step=False)])
    assert rows[0]["status"] == "ok"
    assert at_warmed == [seen["warmup_steps"]]  # once, right after the warm-up's steps: no timed step before


def test_a_follow_up_does_not_overwrite_the_machine_checks_taken_before_the_sweep(tmp_path, monkeypatch):
    from bench import measure, stepcost
    from bench.targets import plan_time_to_accuracy

    drift = iter([100.0, 200.0, 300.0])
    monkeypatch.setattr(measure, "drift_reference", lambda device, seconds: next(drift))
    probes = []
    real_probe = stepcost.probe_machine
    monkeypatch.setattr(stepcost, "probe_machine", lambda store, devices, seconds=None: (
        probes.append(list(devices)), real_probe(store, devices, 0.01)))
    peaks = []
    real_peak = bench.system.measure_peak_tflops
    monkeypatch.setattr(bench.system, "measure_peak_tflops",
                        lambda *a, **k: (peaks.append(a), real_peak(*a, **k))[1])
    plan = lambda rows: plan_time_to_accuracy(rows, ("tutorial",), (0,), 2, candidates=1, target=0.01)  # noqa: E731
    runner, rows = sweep(tmp_path, [tiny(batch_size=8)], followup=plan, drift_seconds=0.05)
    assert any(r.get("stop_at_target") for r in rows)  # the follow-up ran
    (d,) = json.loads((tmp_path / "run" / "system.json").read_text())["drift"]
    assert d["before_images_per_s"] == 100.0 and d["after_images_per_s"] == 200.0  # before the grid, after all
    assert probes == [["cpu"], ["cpu"]] and len(peaks) == 2  # once before, once after


def test_system_json_says_what_cudnn_benchmark_the_cuda_rows_ran_with(tmp_path):
    runner = Runner(tmp_path / "run", data_kind="synthetic", log=lambda m: None, progress=False)
    assert "cudnn_benchmark" not in runner.system and "cudnn_benchmark" not in bench.system.cuda_facts()
    runner.system["cuda_available"] = True  # as on a GPU machine, whose process default is off
    runner._record_cudnn_benchmark([tiny(device="cuda"), tiny(device="cuda:0", batch_size=32), tiny()])
    assert runner.system["cudnn_benchmark"] is True
    runner._record_cudnn_benchmark([tiny(device="cuda"), tiny(device="cuda", cudnn_benchmark=False)])
    assert runner.system["cudnn_benchmark"] == "mixed"


def test_the_mfu_flag_names_both_causes_on_cuda():
    from bench.measure import flags

    (cuda,) = flags({"mfu": 1.3, "device": "cuda:0"})
    assert "probed low" in cuda and "Winograd or FFT" in cuda and "fewer FLOPs" in cuda
    (cpu,) = flags({"mfu": 1.3, "device": "cpu"})
    assert "probed low" in cpu and "Winograd" not in cpu


def test_a_configuration_without_its_energy_window_or_profiled_step_says_so(tmp_path):
    _, rows = sweep(tmp_path, [tiny(energy_window=False, profile_step=False), tiny(batch_size=32)])
    off, on = rows
    assert off["status"] == on["status"] == "ok"
    assert off["step_ops"] is None and on["step_ops"] > 0
    assert "its preset measures energy on a subset" in off["energy_reason"]
    assert "its preset measures energy on a subset" not in (on["energy_reason"] or "")


def test_compile_scope_resets_dynamo_records_recompiles_and_refuses_an_eager_fallback(monkeypatch):
    import torch._dynamo

    from bench.measure import compile_scope
    from cnn.train import Unsupported

    resets = []
    real_reset = torch._dynamo.reset
    monkeypatch.setattr(torch._dynamo, "reset", lambda: (resets.append(1), real_reset()))
    with compile_scope(tiny()) as record:  # eager: nothing
        pass
    assert resets == [] and record.columns() == {}
    f = torch.compile(lambda x: x * 2, backend="eager", dynamic=False)  # Dynamo alone, no code generation
    with torch._dynamo.config.patch(recompile_limit=3):
        with compile_scope(tiny(compile=True)) as record:
            f(torch.ones(1))
            record.warmed()
            f(torch.ones(2))  # a new shape: a recompile after the warm-up
        assert resets == [1] and record.columns() == {"compile_frames": 2, "recompiles": 1}
        with pytest.raises(Unsupported, match="recompile limit .* refused"):
            with compile_scope(tiny(compile=True)) as record:
                for n in range(1, 6):
                    f(torch.ones(n))  # the limit is hit: Dynamo would run the rest eager
    assert len(resets) == 2  # each compiled configuration starts from a fresh Dynamo
    assert not torch._dynamo.config.fail_on_recompile_limit_hit  # restored after the block


def test_a_budget_flag_with_resume_applies_to_the_recorded_sweep(tmp_path):
    # a skipped row's reason names `--resume --retry-all --max-config-seconds N`: the flag must reach it
    from bench.cli import build_parser
    from bench.cli_run import plan_sweep

    out = tmp_path / "run"
    out.mkdir()
    recorded = [tiny(batch_size=8, max_config_seconds=0.001), tiny(batch_size=16, max_config_seconds=0.001)]
    (out / "sweep.json").write_text(json.dumps([dataclasses.asdict(c) for c in recorded]))
    args = build_parser().parse_args(["run", "--out", str(out), "--resume", "--retry-all",
                                      "--max-config-seconds", "90", "--max-seconds", "0.5"])
    configs, _, from_file = plan_sweep(args, check=False)
    assert from_file and [c.key() for c in configs] == [c.key() for c in recorded]  # the same configurations
    assert {(c.max_config_seconds, c.max_seconds) for c in configs} == {(90.0, 0.5)}
    plain = build_parser().parse_args(["run", "--out", str(out), "--resume"])
    assert {c.max_config_seconds for c in plan_sweep(plain, check=False)[0]} == {0.001}
