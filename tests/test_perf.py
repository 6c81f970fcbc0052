"""`cifar-bench perf` measures with the sweep's protocol and writes as it goes."""

import pandas as pd
import pytest

import bench.perf
from bench.cli import main

ARGS = ["perf", "--models", "tutorial", "--repeats", "2", "--seconds", "0.02", "--workers", "0",
        "--data", "synthetic"]


def test_perf_writes_its_table_with_the_protocols_rounds(tmp_path, capsys):
    assert main([*ARGS, "--batch-sizes", "8", "--out", str(tmp_path)]) == 0
    (md,) = tmp_path.glob("*.md")
    (csv,) = tmp_path.glob("*.csv")
    table = pd.read_csv(csv)
    assert list(table["batch_size"]) == [8] and (table["rounds"] >= 2).all()
    for v in bench.perf.VARIANTS:
        assert (table[f"{v}_img_s"] > 0).all()
    text = md.read_text()
    assert "bench/protocol.py" in text and "Partial" not in text and "| tutorial" in text


def test_an_interrupted_perf_keeps_the_batch_sizes_it_finished(tmp_path, monkeypatch):
    real = bench.perf.measure_batch_size

    def measure(args, data, model, bs, log=print):
        if bs == 16:
            raise KeyboardInterrupt
        return real(args, data, model, bs, log)

    monkeypatch.setattr(bench.perf, "measure_batch_size", measure)
    assert main([*ARGS, "--batch-sizes", "8,16", "--out", str(tmp_path)]) == 130
    (md,) = tmp_path.glob("*.md")
    assert "Partial" in md.read_text()
    assert list(pd.read_csv(next(tmp_path.glob("*.csv")))["batch_size"]) == [8]


@pytest.mark.parametrize("bad", [["--repeats", "0"], ["--seconds", "-1"], ["--batch-sizes", "8,x"]])
def test_bad_perf_values_are_one_line(bad, tmp_path, capsys):
    assert main(["perf", *bad, "--out", str(tmp_path)]) == 2
    assert "could not parse value" in capsys.readouterr().err
