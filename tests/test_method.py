"""The report's methodology is written from the rows and the constants that define the method
(bench/method.py): change a constant and the text changes; rows measured by an older method
are named as such."""

from __future__ import annotations

from dataclasses import asdict

import pandas as pd

from bench import method, passes, protocol
from helpers import tiny


def grid_row(values=(100.0, 110.0, 105.0), **extra):
    cfg = tiny(passes=len(values), warmup_seconds=1.0, warmup_steps=50)
    r = None
    for p, v in enumerate(values, 1):
        r = passes.merge(r, {"status": "ok", "reason": None, "device": "cpu", "epochs": 0, "config": asdict(cfg),
                             "train_images_per_s": v, "timing_method": "perf_counter", "rounds": 4,
                             "timed_steps": 12, "warmup_steps": 3, "warmup_settled": True}, p)
    return {**r, **extra}


def text(rows) -> str:
    return " ".join(method.timing_lines(rows))


def test_the_text_follows_the_constants_of_the_method(monkeypatch):
    rows = [grid_row(), grid_row((90.0, 95.0, 120.0))]
    before = text(rows)
    assert "within 10%" in before and "in 3 passes" in before and "90% of the time" in before
    assert "36 timed steps" in before and "12 rounds" in before and "bounded by 1 s" in before
    monkeypatch.setattr(protocol, "SETTLE", 0.2)
    monkeypatch.setattr(passes, "INTERVAL_LEVEL", 0.8)
    monkeypatch.setattr(passes, "EXTRA_PASS_SPREAD", 0.25)
    after = text(rows)
    assert "within 20%" in after and "80% of the time" in after and "more than 25%" in after
    assert "agree within 10%" not in after


def test_the_text_follows_the_rows():
    one = text([grid_row((100.0,))])
    assert "One pass over the grid" in one and "no interval" in one
    extra = grid_row((100.0, 130.0, 110.0, 112.0))
    extra["config"]["passes"] = 3
    assert "1 of 1 rows got them" in text([extra])


def test_rows_of_an_older_method_are_labelled():
    older = {k: v for k, v in grid_row().items() if k != "pass_results"}
    oldest = {**older, "rounds": None}
    out = text([grid_row(), older, oldest])
    assert "1 throughput rows come from an older harness" in out
    assert "1 throughput rows were measured before passes" in out
    assert "older" not in text([grid_row()])


def test_accuracy_runs_are_described_apart():
    df = pd.DataFrame({"status": ["ok", "ok"], "epochs": [0, 2]})
    assert "never part of the throughput grid" in " ".join(method.accuracy_lines(df))
    assert method.accuracy_lines(df[df["epochs"] == 0]) == []
