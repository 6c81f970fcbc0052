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
    assert "expected a" in capsys.readouterr().err


def test_the_layout_budget_is_sized_for_the_two_variants_it_times(tmp_path):
    import argparse

    args = argparse.Namespace(repeats=3, seconds=0.5)
    assert bench.perf.perf_policy(args).max_seconds == pytest.approx(0.5 * 3 * len(bench.perf.VARIANTS))
    assert bench.perf.perf_policy(args, 2).max_seconds == pytest.approx(0.5 * 3 * 2)  # each layout its own share


def test_perf_measures_under_cudnn_benchmark_as_the_sweep_does(tmp_path, monkeypatch):
    import contextlib

    from bench.config import RunConfig

    entered = []

    @contextlib.contextmanager
    def spy(device, on):
        entered.append(on)
        yield

    real = bench.perf.measure_batch_size
    monkeypatch.setattr(bench.perf, "cudnn_benchmark", spy)
    monkeypatch.setattr(bench.perf, "measure_batch_size",
                        lambda *a, **k: (entered.append("measured"), real(*a, **k))[1])
    assert main([*ARGS, "--batch-sizes", "8", "--out", str(tmp_path)]) == 0
    assert entered == [RunConfig.cudnn_benchmark, "measured"] and RunConfig.cudnn_benchmark is True


def test_the_timer_cost_times_the_marks_not_the_creation_of_events():
    from bench import timing

    clock = [0.0]

    class Event:
        """As torch.cuda.Event: the object is cheap, its CUDA handle is created at the first
        record() (slow); later records only queue the marker. start() must do both."""

        def __init__(self, enable_timing=False):
            clock[0] += 1.0
            self.created = False

        def record(self):
            clock[0] += 1e-6 if self.created else 1.0
            self.created = True

        def synchronize(self):
            pass

        def elapsed_time(self, other):
            return 0.0

    cost = timing.mark_cost("cuda", calls=100, clock=lambda: clock[0], events=Event, sync=lambda d: None)
    assert cost == pytest.approx(1e-6)
