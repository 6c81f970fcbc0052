import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from runfolders import acc_row, one_seed_copy, pair_folder, write_folder

from bench.cli import main
from bench.cliargs import EXIT_ERROR, EXIT_USAGE
from bench.equivalence import EXIT_NOT_EQUIVALENT, SeedComparison, equivalence_table, holm, mcnemar_exact, tost
from bench.results import load_predictions, read_jsonl
from bench.runner import Runner
from helpers import tiny

# ---- the statistics, against values worked out by hand ---------------------------------------

def test_mcnemar_exact_by_hand():
    assert mcnemar_exact(0, 10) == pytest.approx(2 * 0.5**10)  # all 10 discordant one way
    assert mcnemar_exact(5, 5) == pytest.approx(1.0)
    assert mcnemar_exact(0, 0) == 1.0


def test_holm_by_hand():
    # sorted 0.01, 0.02, 0.04 -> 3 x 0.01, max(0.03, 2 x 0.02), max(0.04, 1 x 0.04); input order kept
    assert holm([0.04, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def test_tost_two_seeds_by_hand():
    # diffs 0.1, 0.3: mean 0.2, se 0.1, df 1 (Cauchy): t_0.95 = 6.3138
    v = tost([0.1, 0.3], margin=1.0)
    assert v.verdict == "equivalent"
    assert v.ci_low == pytest.approx(0.2 - 0.63138, abs=1e-4) and v.ci_high == pytest.approx(0.83138, abs=1e-4)
    # p = max(P(T > 12), P(T < -8)) = max(0.5 - atan(12)/pi, 0.5 - atan(8)/pi)
    assert v.tost_p == pytest.approx(0.5 - math.atan(8) / math.pi)


def test_tost_not_equivalent_and_inconclusive():
    assert tost([-65.0, -66.0], 1.0).verdict == "not equivalent"
    v = tost([0.5, -2.5], 1.0)
    assert v.verdict == "inconclusive" and "crosses" in v.reason
    # identical differences: no evidence about the spread without predictions to bound it
    assert tost([0.0, 0.0], 1.0).verdict == "inconclusive"
    assert tost([1.5, 1.5], 1.0).verdict == "inconclusive"
    # ... and identical predictions in every seed are equivalent
    same = [SeedComparison(s, 60.0, 60.0, 1.0, 0, 0, 1.0, 1000) for s in (0, 1)]
    assert tost([0.0, 0.0], 1.0, seeds=same).verdict == "equivalent"


def test_one_seed_is_inconclusive_unless_clearly_different():
    tiny_diff = [SeedComparison(0, 60.0, 60.2, 0.95, 10, 12, 0.83)]
    assert tost([0.2], 1.0, seeds=tiny_diff).verdict == "inconclusive"
    big = [SeedComparison(0, 60.0, 20.0, 0.3, 500, 100, 1e-60)]
    assert tost([-40.0], 1.0, seeds=big).verdict == "not equivalent"


# ---- real training runs: the check can fail, and passes when it should --------------------

def sweep(folder, seeds, **kw):
    configs = [tiny(batch_size=32, seed=s, test_size=1000, **kw) for s in seeds]
    Runner(folder, data_kind="synthetic", log=lambda m: None, progress=False, probe_seconds=0.02).run(configs)
    return folder


@pytest.fixture(scope="module")
def short_runs(tmp_path_factory):
    """One short epoch: CPU fp32 with 1 and with 2 threads, three seeds each."""
    root = tmp_path_factory.mktemp("eq-short")
    kw = dict(epochs=1, train_size=2048)
    return sweep(root / "t1", (0, 1, 2), threads=1, **kw), sweep(root / "t2", (0, 1, 2), threads=2, **kw)


@pytest.fixture(scope="module")
def broken_runs(tmp_path_factory):
    """Two epochs: a sound reference, and the same runs with a learning rate far too high."""
    root = tmp_path_factory.mktemp("eq-broken")
    kw = dict(epochs=2, train_size=4096)
    return sweep(root / "ok", (0, 1), **kw), sweep(root / "lr", (0, 1), lr=0.5, **kw)


def test_different_thread_counts_are_equivalent(short_runs):
    table = equivalence_table(list(short_runs))
    assert len(table) == 1
    row = table.iloc[0]
    assert row["reference"].startswith("cpu fp32 t1") and row["candidate"].startswith("cpu fp32 t2")
    assert row["verdict"] == "equivalent", row["reason"]
    assert row["seeds"] == 3 and row["agreement"] > 0.9


def test_a_learning_rate_far_too_high_is_not_equivalent(broken_runs, tmp_path, capsys):
    table = equivalence_table(list(broken_runs))
    row = table.iloc[0]
    assert row["verdict"] == "not equivalent", row["reason"]
    assert "lr=0.5" in row["candidate"] and row["diff_pp"] < -10 and row["mcnemar_p_holm_min"] < 1e-6
    # the command gates: exit 3 (a verdict), csv written where asked
    assert main(["equivalence", *map(str, broken_runs), "--out", str(tmp_path)]) == 3
    out = capsys.readouterr().out
    assert "NOT EQUIVALENT" in out and "seed-to-seed spread of the reference" in out
    written = pd.read_csv(tmp_path / "equivalence.csv")
    assert list(written["verdict"]) == ["not equivalent"]


def test_the_command_passes_when_everything_is_equivalent(short_runs, tmp_path):
    assert main(["equivalence", *map(str, short_runs), "--out", str(tmp_path)]) == 0


def test_works_from_stored_files_alone_across_folders(short_runs, broken_runs):
    table = equivalence_table([short_runs[0], broken_runs[0]])
    assert table.empty  # different epochs and sizes: never paired


# ---- verdicts users can act on (issue 16) ---------------------------------------------------
# Hand-made run folders (tests/runfolders.py) and the committed 10-seed folder; nothing trains.

TEN_SEEDS = Path(__file__).resolve().parents[1] / "reports" / "equivalence-tutorial-cpu-bf16-20261127"


def stored_mcnemar_p(folder: Path) -> dict[int, float]:
    """Each seed's McNemar p of bf16 against fp32, from the folder's prediction files alone."""
    preds = {(r["seed"], r["precision"]): load_predictions(folder, r) for r in read_jsonl(folder / "results.jsonl")}
    p = {}
    for seed in sorted({s for s, _ in preds}):
        (ref, labels), (cand, cand_labels) = preds[seed, "fp32"], preds[seed, "bf16"]
        assert np.array_equal(labels, cand_labels)
        right_r, right_c = ref == labels, cand == labels
        p[seed] = mcnemar_exact(int((right_r & ~right_c).sum()), int((~right_r & right_c).sum()))
    return p


def test_no_single_seed_of_the_committed_ten_seed_run_fails_alone(tmp_path):
    # Taken alone, a seed that differs by more than the 1 pp margin, with a significant McNemar
    # test, is still inconclusive: one seed cannot show a difference beyond the margin (unless
    # it is far beyond it, 5x: test_one_seed_fails_only_far_beyond_the_margin).
    p = stored_mcnemar_p(TEN_SEEDS)
    significant_beyond_margin = []
    for seed in p:
        row = equivalence_table([one_seed_copy(TEN_SEEDS, tmp_path / f"s{seed}", seed)]).iloc[0]
        assert row["seeds"] == 1
        assert f"{row['diff_pp']:+.2f} pp" in row["reason"]  # the observed difference, with the reason
        assert abs(row["diff_pp"]) < 5 * row["margin_pp"], (seed, "the stored run no longer fits this test")
        assert row["verdict"] == "inconclusive", (seed, row["reason"])
        if abs(row["diff_pp"]) > row["margin_pp"] and p[seed] < row["alpha"]:
            significant_beyond_margin.append(seed)
    assert significant_beyond_margin, "no seed of the stored run differs significantly beyond the margin"


def test_one_seed_fails_only_far_beyond_the_margin():
    def seed(diff, p):
        return [SeedComparison(0, 70.0, 70.0 + diff, 0.8, 400, 400, p, 10000)]

    assert tost([-1.75], 1.0, seeds=seed(-1.75, 1.3e-6)).verdict == "inconclusive"
    assert tost([4.9], 1.0, seeds=seed(4.9, 1e-20)).verdict == "inconclusive"  # under 5 x the margin
    assert tost([-5.5], 1.0, seeds=seed(-5.5, 1e-20)).verdict == "not equivalent"
    assert tost([-5.5], 1.0, seeds=seed(-5.5, 0.2)).verdict == "inconclusive"  # McNemar not significant
    assert tost([-5.5], 1.0).verdict == "inconclusive"  # no predictions, no McNemar


def test_identical_differences_get_the_test_set_sampling_error_as_spread_floor():
    # b = 900, c = 980 of n = 10,000: se of the paired difference = sqrt(1880 - 80^2/1e4) / 1e4
    se = 100 * math.sqrt(1880 - 80**2 / 1e4) / 1e4  # 0.4335 pp
    comps = [SeedComparison(s, 70.0, 70.8, 0.81, 900, 980, 0.07, 10000) for s in (0, 1)]
    v = tost([0.8, 0.8], 1.0, seeds=comps)
    t = 6.313751514675  # t(0.95, 1 df)
    assert v.ci_low == pytest.approx(0.8 - t * se / math.sqrt(2), abs=1e-6)
    assert v.ci_high == pytest.approx(0.8 + t * se / math.sqrt(2), abs=1e-6)
    assert v.verdict == "inconclusive" and "floor" in v.reason
    # no predictions: nothing bounds the spread
    v = tost([0.0, 0.0, 0.0], 1.0)
    assert v.verdict == "inconclusive" and "identical" in v.reason


def test_mcnemar_column_is_holm_adjusted_over_seeds(tmp_path):
    table = equivalence_table([TEN_SEEDS])
    row = table.iloc[0]
    p = stored_mcnemar_p(TEN_SEEDS)
    # Holm's smallest adjusted p is the smallest p times the number of tests (capped at 1)
    assert len(p) == row["seeds"] == 10
    assert row["mcnemar_p_holm_min"] == pytest.approx(min(1.0, len(p) * min(p.values())), rel=1e-9)
    assert "mcnemar_p_min" not in table.columns
    from bench.equivalence import verdict_table

    text = verdict_table(table)
    assert "McNemar p (Holm min)" in text and "McNemar p (min)" not in text
    # by hand: three seeds with p = 2/2^10, 1, 1 -> Holm min = 3 * 2^-9
    folder = pair_folder(tmp_path / "h", [(0, 700, 0, 10), (1, 700, 5, 5), (2, 700, 3, 3)])
    assert equivalence_table([folder]).iloc[0]["mcnemar_p_holm_min"] == pytest.approx(3 * 2**-9)


def three_seed_folder(tmp_path, name="eq"):
    # diffs +0.2, +0.9, -0.3 pp: mean 0.267, se 0.348; 90% CI (alpha 0.05) crosses the
    # margin, 50% CI (alpha 0.25) [-0.02, +0.55] lies inside it
    rows = []
    for seed, (a, b) in enumerate([(0.700, 0.702), (0.680, 0.689), (0.690, 0.687)]):
        rows += [acc_row(seed, a, "fp32"), acc_row(seed, b, "bf16")]
    return write_folder(tmp_path / name, rows)


def test_report_and_summary_take_alpha_and_agree_with_equivalence(tmp_path, capsys):
    folder = three_seed_folder(tmp_path)
    assert equivalence_table([folder], alpha=0.05).iloc[0]["verdict"] == "inconclusive"
    assert equivalence_table([folder], alpha=0.25).iloc[0]["verdict"] == "equivalent"
    assert main(["summary", str(folder), "--alpha", "0.25"]) == 0
    assert ": equivalent" in capsys.readouterr().out
    assert main(["report", str(folder), "--alpha", "0.25", "--out", str(tmp_path / "r")]) == 0
    text = (tmp_path / "r" / "report.md").read_text()
    assert "**equivalent**" in text and "50% CI" in text
    assert main(["summary", str(folder), "--alpha", "0.7"]) == 2  # bad usage


def test_reference_spread_counts_the_reference_seeds(tmp_path, capsys):
    rows = [acc_row(s, 0.70 + 0.01 * s, "fp32") for s in range(4)]
    rows += [acc_row(s, 0.70 + 0.01 * s, "bf16") for s in range(2)]
    folder = write_folder(tmp_path / "uneven", rows)
    row = equivalence_table([folder]).iloc[0]
    assert row["seeds"] == 2 and row["ref_seeds"] == 4
    main(["equivalence", str(folder), "--out", str(tmp_path)])
    assert "over 4 seeds" in capsys.readouterr().out


def test_a_repeated_seed_warns_and_keeps_the_first_run(tmp_path):
    rows = [acc_row(0, 0.70, "fp32"), acc_row(1, 0.71, "fp32"), acc_row(0, 0.70, "bf16"), acc_row(1, 0.71, "bf16"),
            acc_row(1, 0.50, "bf16")]  # seed 1 of bf16 again, much worse
    folder = write_folder(tmp_path / "dup", rows)
    warned = []
    row = equivalence_table([folder], warn=warned.append).iloc[0]
    assert row["cand_acc_mean"] == pytest.approx(70.5)  # the first seed-1 run kept
    assert any("seed 1" in m and "cpu bf16" in m and "first" in m for m in warned), warned


def test_exit_codes(tmp_path, capsys):
    ok = three_seed_folder(tmp_path, "ok")
    assert main(["equivalence", str(ok), "--out", str(tmp_path / "o1")]) == 0  # inconclusive is not a failure
    rows = []
    for seed in range(3):
        rows += [acc_row(seed, 0.70 + 0.002 * seed, "fp32"), acc_row(seed, 0.50 - 0.003 * seed, "bf16")]
    bad = write_folder(tmp_path / "bad", rows)
    assert main(["equivalence", str(bad), "--out", str(tmp_path / "o2")]) == 3  # a verdict
    assert (tmp_path / "o2" / "equivalence.csv").exists()  # written before the exit
    # an error: the two runs of a seed were evaluated on different test sets
    labels = np.zeros(100, dtype=np.uint8)
    rows = [acc_row(s, 0.7, p) for s in (0, 1) for p in ("fp32", "bf16")]
    preds = {i: (labels, labels if i != 3 else labels + 1) for i in range(4)}
    broken = write_folder(tmp_path / "broken", rows, preds=preds)
    capsys.readouterr()
    assert main(["equivalence", str(broken), "--out", str(tmp_path / "o3")]) == 1
    err = capsys.readouterr().err
    assert "error" in err and "different test sets" in err and "Traceback" not in err
    assert main(["equivalence", str(ok), "--alpha", "0.7"]) == 2  # bad usage
    assert main(["equivalence", str(tmp_path / "missing")]) == 2


def test_equivalence_help_documents_the_exit_codes(capsys):
    with pytest.raises(SystemExit):
        main(["equivalence", "--help"])
    table = capsys.readouterr().out.split("exit status:\n")[1].split("\n\n")[0].splitlines()
    status = dict(line.split(maxsplit=1) for line in table)
    assert set(status) == {"0", str(EXIT_NOT_EQUIVALENT), str(EXIT_ERROR), str(EXIT_USAGE)}
    assert status["0"].startswith("every pair equivalent or inconclusive")
    assert status[str(EXIT_NOT_EQUIVALENT)].startswith("at least one pair is not equivalent")
    assert status[str(EXIT_ERROR)].startswith("an error")
    assert status[str(EXIT_USAGE)].startswith("bad usage")


def test_makefile_writes_the_report_before_the_equivalence_gate():
    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    recipe = makefile.split("define BENCH_STANDARD")[1].split("endef")[0]
    order = [recipe.index(f"cifar-bench {c}") for c in ("run", "report", "equivalence")]
    assert order == sorted(order)
    assert "[ $$rc -le 1 ] || exit $$rc" in recipe  # a failed configuration (exit 1) still gets its report
    for target, device in (("bench-cpu:", "cpu"), ("bench-gpu:", "cuda")):
        assert f"$(call BENCH_STANDARD,{device})" in makefile.split(target)[1].split("\n\n")[0], target


def test_runs_stopped_at_their_target_are_not_compared(tmp_path):
    # their final accuracy is the first past the target, whatever the arithmetic did
    rows = []
    for seed in range(3):
        rows += [acc_row(seed, 0.70, "fp32"), acc_row(seed, 0.61, "bf16", target_accuracy=0.6, stop_at_target=True)]
    assert equivalence_table([write_folder(tmp_path / "tta", rows)]).empty
