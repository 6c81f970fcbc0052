"""`cifar-bench compare`: pairing by configuration, ratios and their intervals, verdicts,
normalisation by each run's own machine checks, repeatability figures and exit codes. Run
folders are fabricated (rows with their passes), nothing is measured."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest

from bench import passes
from bench.cli import main
from bench.compare import compare_runs, deviation
from bench.results import ResultsStore
from helpers import tiny


def row(cfg, values, peak=1.0, **extra):
    r = None
    for p, v in enumerate(values, 1):
        visit = {"status": "ok", "reason": None, "device": cfg.device, "model": cfg.model, "batch_size": cfg.batch_size,
                 "precision": cfg.precision, "epochs": 0, "world_size": 1, "config": asdict(cfg),
                 "train_images_per_s": v, "peak_tflops": peak, "flops_per_image": 1e6, **extra}
        r = passes.merge(r, visit, p)
    return r


def folder(path, rows, drift=None):
    store = ResultsStore(path)
    path.mkdir(parents=True)
    for r in rows:
        store.append(r)
    (path / "system.json").write_text(json.dumps({"git_commit": "abc", "torch": "2.x", "cpu_model": "CPU",
                                                   "drift": [{"device": "cpu", "before_images_per_s": drift,
                                                              "after_images_per_s": drift}] if drift else []}))
    return path


CFGS = [tiny(batch_size=b, passes=3) for b in (4, 8, 16, 32, 64)]
NOISE = ([99, 101, 100], [98, 102, 100], [97, 103, 100], [99, 100, 101], [100, 98, 102])


@pytest.fixture
def base(tmp_path):
    return folder(tmp_path / "base", [row(c, v) for c, v in zip(CFGS, NOISE)], drift=1000)


def test_pairs_by_configuration_and_lists_the_unpaired(base, tmp_path):
    new = folder(tmp_path / "new", [row(c, v) for c, v in zip(CFGS[1:], NOISE[1:])]
                 + [row(tiny(batch_size=128, passes=3), [1, 1, 1])], drift=1000)
    frame, facts = compare_runs(base, new)
    assert facts["pairs"] == 4 and len(frame) == 4
    assert facts["only_base"] == ["cpu tutorial bs=4 fp32"] and facts["only_new"] == ["cpu tutorial bs=128 fp32"]
    # another budget (max_seconds) is the same configuration
    longer = folder(tmp_path / "longer", [row(tiny(batch_size=4, passes=3, max_seconds=9.0), [100] * 3)])
    assert compare_runs(base, longer)[1]["pairs"] == 1


def test_verdicts_need_a_change_beyond_the_threshold_and_an_interval_that_excludes_one(base, tmp_path):
    new_values = [[v * 1.3 for v in NOISE[0]],  # 30% faster, passes agree: faster
                  [v * 0.8 for v in NOISE[1]],  # 20% slower: slower
                  [v * 1.01 for v in NOISE[2]],  # 1%: no change
                  [60, 140, 108],  # +8% with passes all over the place: not significant
                  NOISE[4]]
    new = folder(tmp_path / "new", [row(c, v) for c, v in zip(CFGS, new_values)], drift=1000)
    frame, facts = compare_runs(base, new)
    by_bs = frame.set_index("batch_size")
    assert list(by_bs.loc[[4, 8, 16, 32, 64], "verdict"]) == ["faster", "slower", "no change", "not significant",
                                                            "no change"]
    assert by_bs.loc[4, "ratio"] == pytest.approx(1.3) and by_bs.loc[4, "ratio_low"] > 1
    assert by_bs.loc[32, "ratio_low"] < 1 < by_bs.loc[32, "ratio_high"]
    assert facts["within"] == pytest.approx(2 / 5)
    assert facts["worst_ratio"] == pytest.approx(1.3) and facts["worst"] == pytest.approx(0.3)


def test_the_ratio_normalised_by_each_runs_machine_separates_code_from_machine(base, tmp_path):
    # the machine was 20% slower that day: its drift reference and peak say so too
    slow = folder(tmp_path / "slow", [row(c, [v * 0.8 for v in vals], peak=0.8) for c, vals in zip(CFGS, NOISE)],
                  drift=800)
    frame, facts = compare_runs(base, slow)
    assert (frame["verdict"] == "slower").all()
    assert frame["ratio_by_drift"].tolist() == pytest.approx([1.0] * 5)
    assert frame["ratio_by_peak"].tolist() == pytest.approx([1.0] * 5)
    assert facts["ratio_by_drift_within"] == 1.0 and facts["within"] == 0.0


def test_coverage_counts_new_values_inside_the_intervals_base_states(base, tmp_path):
    new = folder(tmp_path / "new", [row(c, [v * f for v in vals])
                                    for c, vals, f in zip(CFGS, NOISE, (1.0, 1.01, 0.99, 1.5, 1.0))])
    frame, facts = compare_runs(base, new)
    assert frame.set_index("batch_size")["covered"].tolist() == [True, True, True, False, True]
    assert facts["coverage"] == pytest.approx(0.8) and 0 < facts["median_width"] < 0.2


def test_rows_from_before_passes_use_their_consecutive_step_interval(tmp_path):
    old = [{**{k: v for k, v in row(c, [100]).items() if k != "pass_results"}, "median_ci": 0.02, "timed_steps": 50}
           for c in CFGS]
    base = folder(tmp_path / "old", old)
    new = folder(tmp_path / "new", [row(c, [103, 103, 103]) for c in CFGS])
    frame, facts = compare_runs(base, new)
    assert set(frame["base_method"]) == {"consecutive steps"} and set(frame["new_method"]) == {"passes"}
    assert not frame["covered"].any()  # 103 is outside 100 +-2%
    assert "consecutive steps" in facts["methods"]


def test_deviation_is_symmetric():
    assert deviation(2.0) == deviation(0.5) == pytest.approx(1.0)


def test_command_writes_its_files_and_exits_by_the_gate(base, tmp_path, capsys):
    new = folder(tmp_path / "new", [row(c, [v * 0.8 for v in vals]) for c, vals in zip(CFGS, NOISE)])
    out = tmp_path / "cmp"
    assert main(["compare", str(base), str(new), "--out", str(out)]) == 0  # slower, but no gate asked for
    assert {p.name for p in out.iterdir()} == {"compare.md", "compare.csv", "compare.png"}
    text = (out / "compare.md").read_text()
    assert "## Summary" in text and "slower" in text and "(compare.png)" in text
    printed = capsys.readouterr().out
    assert "5 configurations paired" in printed and "0% within 5%" in printed
    assert main(["compare", str(base), str(new), "--out", str(out), "--fail-above", "10"]) == 1
    assert "slower by 20.0% (> 10%)" in capsys.readouterr().err
    assert main(["compare", str(base), str(new), "--out", str(out), "--fail-above", "25"]) == 0
    assert main(["compare", str(base), str(new), "--out", str(out), "--threshold", "30"]) == 0
    assert "0 slower" not in capsys.readouterr().out  # 20% is within a 30% threshold: no verdict


@pytest.mark.parametrize("args, message", [
    (["--threshold", "0"], "expected a percentage between 0 and 100"),
    (["--fail-above", "abc"], "expected a percentage between 0 and 100"),
])
def test_bad_values_are_one_line_and_exit_2(base, args, message, capsys):
    assert main(["compare", str(base), str(base), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_folders_that_cannot_be_compared_exit_2(base, tmp_path, capsys):
    assert main(["compare", str(base), str(tmp_path / "missing")]) == 2
    assert "not a run folder" in capsys.readouterr().err
    other = folder(tmp_path / "other", [row(tiny(batch_size=256, passes=3), [1, 1, 1])])
    assert main(["compare", str(base), str(other)]) == 2
    assert "no configuration in common" in capsys.readouterr().err
