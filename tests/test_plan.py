"""`cifar-bench run --plan`: the sweep's visits in its own order, the fewest steps by
construction, the estimate's arithmetic, and the gpu-check preset sized to its stage limit
with a third to spare (no GPU needed)."""

import re
import subprocess
from pathlib import Path

import pytest

from bench import energy, passes, plan
from bench.cli import build_parser, main
from bench.cli_run import plan_sweep, sweep_plan
from bench.config import PRESET_TABLE, RunConfig, SweepRequest, build_sweep
from helpers import tiny

ROOT = Path(__file__).resolve().parent.parent


def gpu_check_plan(tmp_path):
    args = build_parser().parse_args(["run", "--preset", "gpu-check", "--devices", "cuda", "--data", "synthetic",
                                      "--out", str(tmp_path / "run")])
    configs, out, from_file = plan_sweep(args, check=False)
    return sweep_plan(args, configs, out, from_file)


def sweep_stage_limit() -> int:
    out = subprocess.run([str(ROOT / "scripts" / "gpu-check.sh"), "--print-bound"], capture_output=True, text=True,
                         check=True).stdout
    return next(int(line.split()[1]) for line in out.splitlines() if line.split()[0] == "sweep")


def test_the_gpu_check_plan_fits_its_stage_with_a_third_to_spare(tmp_path):
    p = gpu_check_plan(tmp_path)
    assert p.limit_s == sweep_stage_limit()  # the preset's sizing names the script's own limit
    total, extra = p.total(), p.extra_s()
    assert total is not None and total <= 2 / 3 * p.limit_s, total
    assert total + extra <= p.limit_s  # every extra pass the runner may add still fits
    assert p.fits()
    parts = ("accuracy", "grid", "tta")
    assert total == pytest.approx(p.start_s + p.checks_s + sum(p.total(part) for part in parts))
    # every part of the arithmetic is in it
    assert sum(v.followup for v in p.visits) > 0 and sum(v.pass_index == 2 for v in p.visits) > 0
    assert any(v.pass_index == 1 and v.cfg.energy_window for v in p.visits)
    assert any(v.pass_index == 1 and v.cfg.profile_step for v in p.visits)
    assert any(v.cfg.device == "cpu" and v.cfg.epochs > 0 for v in p.visits)  # the CPU references
    assert any(v.cfg.device == "cpu" and v.pass_index for v in p.visits)  # the CPU grid
    assert all(v.source == "assumed" for v in p.visits)


def test_the_docs_state_the_gpu_check_plans_figures(tmp_path):
    p = gpu_check_plan(tmp_path)
    total, extra = round(p.total()), round(p.total() + p.extra_s())
    flat = lambda name: re.sub(r"\s+", " ", (ROOT / name).read_text())  # noqa: E731
    assert f"estimates {total} s" in flat("docs/gpu-check.md") and f"{extra} s with every extra pass" in \
        flat("docs/gpu-check.md")
    assert f"its plan estimates {total} s on an H200" in flat("docs/running.md")
    config = flat("bench/config.py")
    assert f"= {total} s, a third of {p.limit_s:g} s spare" in config and f"extra pass the runner may add " \
        f"({passes.EXTRA_TIME_SHARE:.0%} of the grid's passes) {extra} s" in config


def test_time_to_accuracy_in_the_gpu_check_plan_takes_batch_sizes_that_can_reach_the_target(tmp_path):
    p = gpu_check_plan(tmp_path)
    tta = [v.cfg for v in p.visits if v.followup]
    assert {c.device for c in tta} == {"cuda", "cpu"}
    preset = PRESET_TABLE["gpu-check"]
    assert all(c.epochs == preset.tta_epochs and c.stop_at_target for c in tta)
    from bench.targets import reachable

    assert all(reachable(c.model, "synthetic", c.batch_size, c.train_size, c.epochs)[0] for c in tta)
    assert 2048 not in {c.batch_size for c in tta}  # the fastest on a GPU, but 12 steps an epoch


def test_the_plan_follows_the_sweeps_own_order():
    configs = build_sweep(SweepRequest(preset="quick", devices=("cpu",), models=("tutorial",), passes=2))
    p = plan.build(configs, plan.StepTimes())
    assert [(v.cfg, v.pass_index) for v in p.visits] == passes.visit_order(configs)
    assert p.visits[0].cfg.epochs > 0 and p.visits[0].pass_index is None  # references first
    assert {v.pass_index for v in p.visits if v.cfg.epochs == 0} == {1, 2}


def test_fewest_steps_by_construction():
    grid = tiny(passes=2, min_steps=10)
    assert plan.fewest_steps(grid, 1) == 2 + 2 * 5 + 1  # warm-up, loop and ceiling (half each), profiled step
    assert plan.fewest_steps(grid, 2) == 2 + 2 * 5
    assert plan.fewest_steps(tiny(passes=2, min_steps=10, compile=True, profile_step=False), 1) == 3 + 2 * 5
    assert plan.fewest_steps(tiny(epochs=3, train_size=1000, batch_size=64), None) == 3 * 15  # full batches


def test_a_visits_estimate_is_its_arithmetic():
    k = {"visit_s": 0.2, "startup_s": {"tutorial": 1.0}, "profile_s": 0.5}
    cfg = tiny(passes=2, min_steps=10, max_seconds=0.4, eval_max_seconds=0.1, warmup_seconds=0.3)
    step = 0.05
    evaluation = step / 3
    second = 0.2 + (step + min(0.3, 3 * step)) + max(0.2, 10 * step) + (3 * evaluation + max(0.05, 5 * evaluation))
    assert plan.visit_seconds(cfg, 2, step, k) == pytest.approx(second)
    first = second + 1.0 + (energy.WINDOW_AIM * energy.MIN_WINDOW_S + step) + (0.5 + 2 * step)
    assert plan.visit_seconds(cfg, 1, step, k) == pytest.approx(first)
    no_once = tiny(passes=2, min_steps=10, max_seconds=0.4, eval_max_seconds=0.1, warmup_seconds=0.3,
                   energy_window=False, profile_step=False)
    assert plan.visit_seconds(no_once, 1, step, k) == pytest.approx(second + 1.0)
    accuracy = tiny(epochs=2, train_size=1000, test_size=100, batch_size=100)
    assert plan.visit_seconds(accuracy, None, step, k) == pytest.approx(0.2 + 2 * (10 * step + 1 * evaluation))
    assert plan.visit_seconds(cfg, 1, None, k) is None


def test_measured_step_times_come_from_the_run_folders_rows():
    cfg = tiny(batch_size=32)
    rows = [{"status": "ok", "epochs": 0, "step_ms_median": 4.0, "config": __import__("dataclasses").asdict(cfg)}]
    times = plan.StepTimes.from_rows(rows, PRESET_TABLE["gpu-check"].sizing)
    assert times.step(cfg) == pytest.approx(0.004) and times.source(cfg) == "measured"
    accuracy = tiny(batch_size=32, epochs=2, seed=3)  # the same step as its grid twin
    assert times.step(accuracy) == pytest.approx(0.004)
    other = tiny(batch_size=64)
    assert times.source(other) == "assumed"  # the preset's sizing knows the CPU
    assert plan.StepTimes().step(other) is None


def test_plan_prints_and_runs_nothing_even_for_cuda_without_a_gpu(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "--preset", "gpu-check", "--devices", "cuda", "--data", "synthetic", "--out", str(out),
                 "--plan"]) == 0
    text = capsys.readouterr().out
    assert not out.exists()  # nothing ran, nothing was written
    assert "nothing is run" in text and re.search(r"\| pass 2/2 +\|", text) and "| time to accuracy" in text
    assert re.search(r"Limit: 190 s \(the sweep stage of scripts/gpu-check.sh\): the estimate leaves \d+% of it "
                     r"spare, \d+ s with every extra pass: fits", text)
    assert "* assumed step times, not measured" in text


def test_a_plan_without_step_times_says_so(tmp_path, capsys):
    assert main(["run", "--preset", "quick", "--devices", "cpu", "--models", "tutorial", "--data", "synthetic",
                 "--out", str(tmp_path / "run"), "--plan"]) == 0
    text = capsys.readouterr().out
    assert "No time estimate for" in text and ">= " in text


def test_a_resumed_plan_uses_what_the_folder_measured(tmp_path, capsys):
    from bench.results import ResultsStore

    cfg = RunConfig("cpu", "tutorial", 32, "fp32", channels_last=True, train_size=8192, test_size=1000, passes=1,
                    **{k: v for k, v in PRESET_TABLE["quick"].budget.items()})
    from dataclasses import asdict

    from bench.results import COLUMNS

    out = tmp_path / "run"
    out.mkdir()
    ResultsStore(out).append({**dict.fromkeys(COLUMNS), **asdict(cfg), "config": asdict(cfg), "config_key": cfg.key(),
                              "status": "ok", "step_ms_median": 2.0})
    assert main(["run", "--preset", "quick", "--devices", "cpu", "--models", "tutorial", "--batch-sizes", "32",
                 "--precisions", "fp32", "--epochs", "0", "--data", "synthetic", "--out", str(out), "--plan"]) == 0
    text = capsys.readouterr().out
    assert "Estimate:" in text and "assumed" not in text


def test_a_resumed_plan_plans_only_what_is_missing():
    from dataclasses import asdict

    configs = build_sweep(SweepRequest(preset="quick", devices=("cpu",), models=("tutorial",), passes=2))
    grid = [c for c in configs if c.epochs == 0]
    done = grid[0]
    rows = [{"status": "ok", "epochs": 0, "config": asdict(done), "config_key": done.key(), "step_ms_median": 1.0,
             "pass_results": [{"pass": 1, "status": "ok"}]}]  # its first pass only
    p = plan.build(configs, plan.StepTimes.from_rows(rows), rows=rows)
    visits = [(v.cfg.key(), v.pass_index) for v in p.visits]
    assert (done.key(), 1) not in visits and (done.key(), 2) in visits
    assert len(visits) == len(plan.build(configs, plan.StepTimes()).visits) - 1
