import json
import time

import pytest

import cnn.train
from bench.results import COLUMNS, read_jsonl
from bench.runfolder import RunFolderError
from bench.runner import Runner
from helpers import inject_oom, tiny


def run(tmp_path, configs, resume=False, name="run"):
    runner = Runner(tmp_path / name, data_kind="synthetic", log=lambda m: None, progress=False,
                    probe_seconds=0.02, drift_seconds=0)
    return runner, runner.run(configs, resume=resume)


def test_a_sweep_writes_every_column_and_its_files(tmp_path):
    configs = [tiny(batch_size=8), tiny(batch_size=16, precision="bf16", epochs=1)]
    _, rows = run(tmp_path, configs)
    folder = tmp_path / "run"
    assert {p.name for p in folder.iterdir()} >= {"results.jsonl", "results.csv", "system.json", "sweep.json",
                                                    "predictions"}
    assert [r["status"] for r in rows] == ["ok", "ok"]
    for r in rows:
        assert set(COLUMNS) <= set(r), set(COLUMNS) - set(r)
        assert r["data"] == "synthetic" and r["flops_per_image"] > 0 and r["peak_memory_mb"] > 0
    grid, accuracy = rows
    assert grid["train_images_per_s"] > 0 and grid["step_ms_median"] > 0 and 0 < grid["mfu"] < 5
    assert len(grid["step_samples_s"]) == grid["timed_steps"] >= 2 and grid["warmup_steps"] >= 1
    assert grid["passes_run"] == 1 and [e["pass"] for e in grid["pass_results"]] == [1]
    # an accuracy run is timed epoch by epoch, end to end; its throughput is the grid's business
    assert accuracy["train_images_per_s"] is None and accuracy["epoch_seconds"] > 0
    assert grid["test_accuracy"] is None and 0 <= accuracy["test_accuracy"] <= 1
    assert len(rows[1]["accuracy_curve"]) == 1 and (folder / rows[1]["predictions_file"]).exists()
    system = json.loads((folder / "system.json").read_text())
    assert {"cpu_model", "torch", "ram_gb", "peaks"} <= set(system)
    assert {(p["device"], p["precision"]) for p in system["peaks"]} == {("cpu", "fp32"), ("cpu", "bf16")}
    header = (folder / "results.csv").read_text().splitlines()[0].split(",")
    assert header == list(COLUMNS)


def test_unsupported_combinations_are_skipped_with_the_reason(tmp_path):
    _, rows = run(tmp_path, [tiny(precision="fp16"), tiny(precision="tf32"), tiny()])
    assert [r["status"] for r in rows] == ["skipped", "skipped", "ok"]
    assert "CUDA-only" in rows[0]["reason"] and "no TF32" in rows[1]["reason"]


def test_an_injected_out_of_memory_is_recorded_and_the_sweep_goes_on(tmp_path, monkeypatch):
    inject_oom(monkeypatch, 32)
    _, rows = run(tmp_path, [tiny(batch_size=8), tiny(batch_size=32), tiny(batch_size=16)])
    assert [r["status"] for r in rows] == ["ok", "oom", "ok"]
    assert "out of memory" in rows[1]["reason"] and "20.00 GiB" in rows[1]["reason"]
    assert len(read_jsonl(tmp_path / "run" / "results.jsonl")) == 3


def test_a_cpu_allocation_failure_counts_as_oom(tmp_path, monkeypatch):
    def step(self, x, y):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")

    monkeypatch.setattr(cnn.train.Trainer, "step", step)
    _, rows = run(tmp_path, [tiny()])
    assert rows[0]["status"] == "oom"


def test_divergence_is_recorded_and_the_sweep_goes_on(tmp_path):
    _, rows = run(tmp_path, [tiny(lr=1e5, epochs=1), tiny()])
    assert [r["status"] for r in rows] == ["diverged", "ok"]
    assert "training loss is" in rows[0]["reason"]


def test_other_errors_are_recorded_as_failed_with_a_traceback_log(tmp_path, monkeypatch):
    def step(self, x, y):
        raise ValueError("something odd")

    monkeypatch.setattr(cnn.train.Trainer, "step", step)
    _, rows = run(tmp_path, [tiny()])
    assert rows[0]["status"] == "failed" and rows[0]["reason"] == "ValueError: something odd"
    assert "Traceback" in (tmp_path / "run" / "errors.log").read_text()


def test_resume_runs_only_what_is_missing(tmp_path):
    configs = [tiny(batch_size=8), tiny(batch_size=16), tiny(batch_size=32)]
    run(tmp_path, configs[:2])
    with pytest.raises(RunFolderError, match="already holds 2 results; add --resume"):
        run(tmp_path, configs)
    _, rows = run(tmp_path, configs, resume=True)
    assert [r["batch_size"] for r in rows] == [32]
    all_rows = read_jsonl(tmp_path / "run" / "results.jsonl")
    assert sorted(r["batch_size"] for r in all_rows) == [8, 16, 32]
    _, rows = run(tmp_path, configs, resume=True)
    assert rows == []


def test_the_budget_predictor_scales_the_steady_step_of_a_smaller_batch(tmp_path):
    runner = Runner(tmp_path / "run", data_kind="synthetic", log=lambda m: None, progress=False)
    cfg = tiny(batch_size=8192, max_config_seconds=2.0)  # min_steps 2: 2 timed + 2 ceiling steps
    assert runner.over_budget(cfg) is None  # nothing measured yet on this line
    runner._history[runner._line(cfg)] = [(8, 0.002), (4, 0.001)]
    reason = runner.over_budget(cfg)  # from batch 8: 2 s a step, 4 steps = 8 s > 2 s
    assert reason.startswith("over the time budget: batch 8 took 0.002 s per steady step")
    assert "about 2 s per step and 8 s for the fewest steps" in reason
    assert runner.over_budget(tiny(batch_size=512, max_config_seconds=2.0)) is None  # 0.13 s x 4: fits
    assert runner.over_budget(tiny(batch_size=8192, max_config_seconds=2.0, epochs=1)) is None  # accuracy runs run


def test_a_slow_first_step_is_warm_up_not_a_reason_to_skip(tmp_path, monkeypatch):
    # The first step takes 3 s (as compilation or cuDNN autotuning do); the budget of 2 s
    # covers the timed steps, which take milliseconds. Before the protocol, the first step
    # was taken as the step time and the configuration was skipped.
    real_step, calls = cnn.train.Trainer.step, []

    def step(self, x, y):
        calls.append(1)
        if len(calls) == 1:
            time.sleep(3.0)
        return real_step(self, x, y)

    monkeypatch.setattr(cnn.train.Trainer, "step", step)
    _, rows = run(tmp_path, [tiny(max_config_seconds=2.0)])
    assert rows[0]["status"] == "ok", rows[0]["reason"]
    assert rows[0]["startup_seconds"] >= 2.9 and rows[0]["warmup_steps"] >= 2
    assert rows[0]["step_ms_median"] < 1000


def test_a_steady_step_over_the_budget_is_skipped_with_the_arithmetic(tmp_path):
    _, rows = run(tmp_path, [tiny(model="resnet18", batch_size=64, max_config_seconds=0.01)])
    assert rows[0]["status"] == "skipped"
    assert "over the time budget: a steady step takes" in rows[0]["reason"] and "> 0.01 s" in rows[0]["reason"]


def test_out_pointing_at_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunFolderError, match="is a file, expected a folder"):
        run(tmp_path, [tiny()], name="file")
