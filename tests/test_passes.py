"""Passes across the sweep (bench/passes.py): their order, their budget, a row from its passes,
the interval a row states and ratios formed within passes. Timing logic runs on a fake
machine (a fake clock that the steps advance), never on this one's speed."""

from __future__ import annotations

import math
import statistics

import pandas as pd
import pytest
import torch

from bench import passes, protocol
from bench.config import PRESET_TABLE, SweepRequest, build_sweep
from bench.frames import ratio, ratio_spread
from helpers import tiny


def grid(**kw):
    return [c for c in build_sweep(SweepRequest(preset="standard", devices=("cpu",), **kw)) if passes.is_grid(c)]


# --------------------------------------------------------------------------------------
# Order and budget
# --------------------------------------------------------------------------------------

def test_every_pass_visits_every_configuration_once_in_its_own_seeded_order():
    configs = grid()
    orders = [passes.pass_order(configs, p) for p in (1, 2, 3)]
    for order in orders:
        assert sorted(c.key() for c in order) == sorted(c.key() for c in configs)
    assert orders[1] != orders[2] and orders[0] != orders[1]
    assert passes.pass_order(configs, 2) == orders[1]  # seeded: the same sweep, the same order


def test_the_first_pass_keeps_each_models_batch_sizes_ascending_and_groups_together():
    order = passes.pass_order(grid(), 1)
    for model in PRESET_TABLE["standard"].models:
        sizes = [c.batch_size for c in order if c.model == model]
        assert sizes == sorted(sizes), model
    models = [c.model for c in order]
    assert models != sorted(models, key=PRESET_TABLE["standard"].models.index)  # the models interleave
    # the members of a group (one model and batch size) run back to back, in every pass
    for p in (1, 2):
        keys = [passes.group_key(c) for c in passes.pass_order(grid(), p)]
        runs = [k for i, k in enumerate(keys) if i == 0 or keys[i - 1] != k]
        assert len(runs) == len(set(keys))


def test_a_pass_gets_its_share_of_the_budget_and_accuracy_runs_run_once():
    cfg = tiny(passes=3, max_seconds=3.0, eval_max_seconds=0.6, max_config_seconds=30.0, min_steps=10,
               max_steps=900)
    one = passes.pass_budget(cfg)
    assert (one.max_seconds, one.eval_max_seconds, one.max_config_seconds) == pytest.approx((1.0, 0.2, 10.0))
    assert (one.min_steps, one.max_steps) == (4, 300) and one.key() == cfg.key()
    assert passes.pass_budget(tiny(passes=3, epochs=2)) == tiny(passes=3, epochs=2)
    assert passes.pass_budget(tiny(passes=1)) == tiny(passes=1)


def test_presets_measure_the_grid_in_passes_and_accuracy_runs_once():
    standard = build_sweep(SweepRequest(preset="standard", devices=("cpu",)))
    assert {c.passes for c in standard if passes.is_grid(c)} == {3}
    assert {c.passes for c in standard if not passes.is_grid(c)} == {1}
    # the accuracy runs' batch size has its own throughput configurations in the grid
    assert {(c.batch_size, c.precision) for c in standard if passes.is_grid(c) and c.model == "tutorial"
            and c.data_path == "device"} >= {(32, "fp32"), (32, "bf16")}
    assert {c.passes for c in build_sweep(SweepRequest(preset="quick", devices=("cpu",)))} == {1}
    assert {c.passes for c in build_sweep(SweepRequest(preset="quick", devices=("cpu",), passes=2))
            if passes.is_grid(c)} == {2}


def test_warm_up_is_bounded_by_time_in_every_preset_not_by_a_step_cap_that_defeats_it():
    for name, preset in PRESET_TABLE.items():
        assert preset.budget["warmup_steps"] >= 20, name  # the settle rule needs room to settle
        assert preset.budget["warmup_seconds"] > 0, name


# --------------------------------------------------------------------------------------
# A fake machine: steps advance a fake clock by their cost times the machine's slowness
# --------------------------------------------------------------------------------------

class FakeMachine:
    """Each step advances the clock by its cost x the pass's slowness x the step's own."""

    def __init__(self, per_pass=None, per_step=None):
        self.now, self.steps, self.pass_index = 0.0, 0, 1
        self.per_pass = per_pass or {}  # {pass: slowness of the whole pass}
        self.per_step = per_step or (lambda n: 1.0)  # slowness of the n-th step

    def clock(self) -> float:
        return self.now

    def loop(self, step_seconds: float) -> protocol.Loop:
        def run(n, on_step):
            for _ in range(n):
                self.steps += 1
                self.now += step_seconds * self.per_pass.get(self.pass_index, 1.0) * self.per_step(self.steps)
                if on_step():
                    break
        return run


def visit(machine: FakeMachine, step_seconds: float, batch: int = 32) -> dict:
    """One pass of one configuration through the protocol (warm-up, rounds of loop and ceiling)."""
    policy = protocol.Policy(min_steps=10, max_steps=200, max_seconds=1.0, target_ci=0.01, clock=machine.clock)
    cpu = torch.device("cpu")
    loop, ceiling = machine.loop(step_seconds), machine.loop(step_seconds * 0.95)
    warm = protocol.warm_up(loop, cpu, policy)
    rounds = protocol.measure({"loop": loop, "ceiling": ceiling}, warm.steady, cpu, policy)
    m, c = rounds.measurement("loop", batch, ""), rounds.measurement("ceiling", batch, "")
    return {"status": "ok", "device": "cpu", "train_images_per_s": m.items_per_second,
            "ceiling_images_per_s": c.items_per_second, "fraction_of_ceiling": m.items_per_second / c.items_per_second,
            "step_ms_median": m.median * 1e3, "step_ms_iqr": m.iqr * 1e3, "median_ci": m.ci_relative,
            "timed_steps": len(m.samples)}


def sweep_rows(machine: FakeMachine, steps: list[float], n_passes: int = 3) -> list[dict]:
    rows: dict[int, dict] = {}
    for p in range(1, n_passes + 1):
        machine.pass_index = p
        for i, step in enumerate(steps):
            rows[i] = passes.merge(rows.get(i), visit(machine, step), p)
    return list(rows.values())


STEPS = [0.010, 0.012, 0.020, 0.031, 0.045, 0.050]  # six configurations, each a pass of ~1 s


def width(row: dict, rows: list[dict]) -> float:
    iv = passes.intervals(rows)[rows.index(row)]
    return iv["high"] / iv["low"] - 1


def test_an_interval_widens_when_the_machine_slows_between_passes_not_within_one():
    # Between passes: the whole of pass 2 runs 30% slower (another job came and went).
    between = FakeMachine(per_pass={2: 1.3})
    # Within a pass: every configuration's steps alternate fast and 30% slow, the same in
    # every pass: consecutive steps scatter, yet each pass sees the same machine.
    within = FakeMachine(per_step=lambda n: 1.3 if n % 2 else 1.0)
    steady = FakeMachine()
    rows = {name: sweep_rows(m, STEPS) for name, m in (("between", between), ("within", within),
                                                        ("steady", steady))}
    w = {name: statistics.median(width(r, rs) for r in rs) for name, rs in rows.items()}
    assert w["steady"] < 1e-6 and w["within"] < 0.01  # the passes agree: a narrow interval
    assert w["between"] > 0.2  # the passes disagree by ~30%: the interval says so
    # consecutive steps told the opposite story: wide within a pass, narrow between passes
    assert statistics.median(r["step_ms_iqr"] / r["step_ms_median"] for r in rows["within"]) > 0.2
    # a row's value is the median over its passes, and a repeat at the slow pass's speed stays inside
    slow = rows["between"][0]
    values = sorted(passes.pass_values(slow).values())
    assert slow["train_images_per_s"] == pytest.approx(values[1])
    iv = passes.intervals(rows["between"])[0]
    assert iv["low"] < values[0] * 1.02 and iv["high"] > values[-1] * 0.98


def test_one_pass_states_no_interval():
    rows = sweep_rows(FakeMachine(), STEPS, n_passes=1)
    assert passes.intervals(rows) == {}


def test_a_row_with_agreeing_passes_borrows_the_sweeps_spread():
    rows = [{"status": "ok", "device": "cpu", "train_images_per_s": 100.0,
             "pass_results": [{"pass": p, "status": "ok", "train_images_per_s": v} for p, v in enumerate(vals, 1)]}
            for vals in ([100, 100, 100], [90, 110, 100], [80, 120, 100])]
    ivs = passes.intervals(rows)
    assert ivs[0]["high"] > ivs[0]["low"] * 1.05  # its own passes agree exactly, the sweep's do not
    assert ivs[0]["high"] - ivs[0]["low"] < ivs[2]["high"] - ivs[2]["low"]
    # by hand: pooled variance of the logs, moderated, Student t with PRIOR_DF + 2 df
    logs = [[math.log(v) for v in vals] for vals in ([90, 110, 100], [80, 120, 100])]
    pool = sum(statistics.variance(x) for x in logs) * 2 / 6  # (0 + 2 s1 + 2 s2) / 6 df
    var = passes.PRIOR_DF * pool / (passes.PRIOR_DF + 2)
    from scipy import stats
    half = stats.t.ppf(0.95, passes.PRIOR_DF + 2) * math.sqrt(var * 2 * 1.346 / 3)  # a median of 3
    assert ivs[0]["low"] == pytest.approx(100 * math.exp(-half))


# --------------------------------------------------------------------------------------
# A row from its passes, and ratios
# --------------------------------------------------------------------------------------

def entry_row(rate, ceiling, status="ok", **kw):
    return {"status": status, "reason": None if status == "ok" else "why", "device": "cpu",
            "train_images_per_s": rate, "ceiling_images_per_s": ceiling,
            "fraction_of_ceiling": None if rate is None else rate / ceiling, "peak_memory_mb": kw.pop("mem", 10.0),
            "step_ms_median": 1.0, "step_ms_iqr": 0.01, "timed_steps": 10, "flops_per_image": 1e6,
            "peak_tflops": 1.0, **kw}


def test_merge_takes_medians_over_passes_and_the_ceiling_fraction_within_each():
    row = None
    for p, (rate, ceil) in enumerate([(100, 200), (300, 310), (200, 190)], 1):
        row = passes.merge(row, entry_row(rate, ceil, mem=10.0 * p), p)
    assert row["train_images_per_s"] == 200 and row["ceiling_images_per_s"] == 200
    assert row["fraction_of_ceiling"] == pytest.approx(statistics.median([0.5, 300 / 310, 200 / 190]))
    assert row["passes_run"] == 3 and row["pass_spread"] == pytest.approx(2.0) and row["peak_memory_mb"] == 30
    assert row["timed_steps"] == 30 and row["mfu"] == pytest.approx(1e6 * 200 / 1e12)
    assert [e["pass"] for e in row["pass_results"]] == [1, 2, 3]


def test_a_later_pass_that_fails_keeps_the_row_and_its_passes():
    row = passes.merge(None, entry_row(100, 110), 1)
    row = passes.merge(row, entry_row(None, 1, status="failed"), 2)
    assert row["status"] == "ok" and row["passes_run"] == 1 and row["train_images_per_s"] == 100
    assert [e["status"] for e in row["pass_results"]] == ["ok", "failed"]


def test_extra_passes_go_to_rows_whose_passes_disagree():
    row = None
    for p, rate in enumerate([100, 130, 110], 1):
        row = passes.merge(row, entry_row(rate, 200), p)
    assert passes.needs_extra_pass(row, planned=3)
    row = passes.merge(row, entry_row(115, 200), 4)
    row = passes.merge(row, entry_row(112, 200), 5)
    assert not passes.needs_extra_pass(row, planned=3)  # two extra passes at most
    agree = passes.merge(None, entry_row(100, 200), 1)
    assert not passes.needs_extra_pass(passes.merge(agree, entry_row(104, 200), 2), planned=3)


def tp_row(values, run_dir="run"):
    pv = dict(enumerate(values, 1))
    return pd.Series({"images_per_s": statistics.median(values), "pass_values": pv, "run_dir": run_dir})


def test_ratios_are_formed_within_passes_then_their_median():
    # pass 2 ran on a slow machine for both sides: within each pass the ratio is 2, 2, 1.5
    a, b = tp_row([100, 200, 150]), tp_row([50, 100, 100])
    assert ratio(a, b) == pytest.approx(2.0)  # the ratio of the medians would say 1.5
    assert ratio_spread(a, b) == (pytest.approx(1.5), pytest.approx(2.0), 3)
    # rows of different run folders share no pass: the ratio of their medians
    assert ratio(a, tp_row([50, 100, 100], run_dir="other")) == pytest.approx(1.5)
    assert ratio_spread(a, tp_row([50, 100, 100], run_dir="other")) is None


def test_stored_intervals_are_derived_when_rows_are_read(tmp_path):
    from bench.results import ResultsStore, load_run

    store = ResultsStore(tmp_path)
    tmp_path.mkdir(exist_ok=True)
    for i, vals in enumerate(([90, 110, 100], [80, 120, 100])):
        row = None
        for p, v in enumerate(vals, 1):
            row = passes.merge(row, {**entry_row(v, 200), "config": tiny(batch_size=8 * (i + 1)).__dict__}, p)
            store.append(row)
    frame, rows, _ = load_run(tmp_path)
    assert len(frame) == 2 and frame["train_images_per_s_low"].notna().all()
    assert (frame["train_images_per_s_low"] < frame["train_images_per_s"]).all()
    assert (frame["train_images_per_s_high"] > frame["train_images_per_s"]).all()
    assert rows[0]["train_images_per_s_low"] == frame["train_images_per_s_low"][0]
    assert len((tmp_path / "results.jsonl").read_text().splitlines()) == 6  # every pass kept
    assert "train_images_per_s_low" in (tmp_path / "results.csv").read_text().splitlines()[0]
