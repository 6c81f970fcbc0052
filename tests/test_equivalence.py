import math

import pandas as pd
import pytest

from bench.cli import main
from bench.equivalence import equivalence_table, mcnemar_exact, tost
from bench.runner import Runner
from helpers import tiny

# ---- the statistics, against values worked out by hand ---------------------------------------

def test_mcnemar_exact_by_hand():
    assert mcnemar_exact(0, 10) == pytest.approx(2 * 0.5**10)  # all 10 discordant one way
    assert mcnemar_exact(5, 5) == pytest.approx(1.0)
    assert mcnemar_exact(0, 0) == 1.0


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
    assert tost([0.0, 0.0], 1.0).verdict == "equivalent"
    assert tost([1.5, 1.5], 1.0).verdict == "not equivalent"


def test_one_seed_is_inconclusive_unless_clearly_different():
    from bench.equivalence import SeedComparison

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
    assert "lr=0.5" in row["candidate"] and row["diff_pp"] < -10 and row["mcnemar_p_min"] < 1e-6
    # the command gates: exit 1, csv written where asked
    assert main(["equivalence", *map(str, broken_runs), "--out", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "NOT EQUIVALENT" in out and "seed-to-seed spread of the reference" in out
    written = pd.read_csv(tmp_path / "equivalence.csv")
    assert list(written["verdict"]) == ["not equivalent"]


def test_the_command_passes_when_everything_is_equivalent(short_runs, tmp_path):
    assert main(["equivalence", *map(str, short_runs), "--out", str(tmp_path)]) == 0


def test_works_from_stored_files_alone_across_folders(short_runs, broken_runs):
    table = equivalence_table([short_runs[0], broken_runs[0]])
    assert table.empty  # different epochs and sizes: never paired
