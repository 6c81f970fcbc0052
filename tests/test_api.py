"""bench.api: keyword arguments become the command line's flags (same checks, same messages,
same sweep), run folders become DataFrames, the report shows itself in Jupyter and a terminal."""

from __future__ import annotations

import pytest
from runfolders import acc_row, predictions, write_folder

import bench.runner
from bench import api, cli

# ---- arguments: the command line's, checked by its parser -----------------------------------


@pytest.mark.parametrize("options, argv", [
    (dict(batch_sizes=[0]), ["run", "--batch-sizes", "0"]),
    (dict(devices="gpu"), ["run", "--devices", "gpu"]),
    (dict(preset="nope"), ["run", "--preset", "nope"]),
    (dict(seeds="x"), ["run", "--seeds", "x"]),
    (dict(models=["no-such-model"]), ["run", "--models", "no-such-model"]),
    (dict(resume=True), ["run", "--resume"]),
    (dict(retry_all=True, out="runs/x"), ["run", "--retry-all", "--out", "runs/x"]),
])
def test_a_bad_argument_raises_bench_error_with_the_message_the_cli_prints(options, argv, capsys):
    assert cli.main(argv) == 2
    printed = capsys.readouterr().err.strip()
    with pytest.raises(api.BenchError) as e:
        api.run(**options)
    assert f"cifar-bench: error: {e.value}" == printed
    assert e.value.exit_status == 2 and isinstance(e.value, ValueError)


def test_report_options_are_checked_as_the_cli_checks_them(tmp_path, capsys):
    folder = write_folder(tmp_path / "run", [acc_row(0, 0.7)])
    runs = api.load(folder)
    for options, argv in ((dict(alpha=0.7), ["--alpha", "0.7"]), (dict(price="cpu=-1"), ["--price", "cpu=-1"])):
        assert cli.main(["report", str(folder), *argv]) == 2
        printed = capsys.readouterr().err.strip()
        with pytest.raises(api.BenchError) as e:
            runs.report(out=tmp_path / "r", **options)
        assert f"cifar-bench: error: {e.value}" == printed


def test_a_missing_run_folder_is_the_clis_message(tmp_path, capsys):
    assert cli.main(["summary", str(tmp_path / "typo")]) == 2
    with pytest.raises(api.BenchError) as e:
        api.load(tmp_path / "typo")
    assert f"cifar-bench: error: {e.value}" == capsys.readouterr().err.strip()


def test_keywords_map_to_flags():
    argv = api.command_line("run", dict(preset="quick", devices=["cpu"], batch_sizes=(8, 32), channels_last=True,
                                        augment=False, no_cpu_reference=True, compile=False, seeds=None,
                                        target_accuracy=0.6))
    assert argv == ["run", "--preset", "quick", "--devices", "cpu", "--batch-sizes", "8,32", "--channels-last", "on",
                    "--augment", "off", "--no-cpu-reference", "--target-accuracy", "0.6"]


def test_an_unknown_keyword_names_the_flags_there_are():
    with pytest.raises(api.BenchError, match=r"unknown option 'batch_size': .* has no --batch-size; expected one of "
                                             r".*batch_sizes"):
        api.run(batch_size=32)


def test_a_switch_takes_a_boolean():
    with pytest.raises(api.BenchError, match="no_cpu_reference='yes': expected True or False"):
        api.run(no_cpu_reference="yes")


def test_scale_out_is_left_to_the_command_line():
    with pytest.raises(api.BenchError, match=r"nproc: .* `cifar-bench run --nproc N`"):
        api.run(nproc=2)


class RecordingRunner:
    """Stands in for bench.runner.Runner: records the configurations it is given."""

    seen: list = []

    def __init__(self, out, **kw):
        self.store = type("Store", (), {"load": lambda self, **kw: [], "jsonl": out / "results.jsonl"})()

    def run(self, configs, **kw):
        RecordingRunner.seen.append(list(configs))
        return []


@pytest.mark.parametrize("options, flags", [
    (dict(preset="quick"), ["--preset", "quick"]),
    (dict(preset="quick", seed=3), ["--preset", "quick", "--seed", "3"]),
    (dict(seeds=3, seed=2), ["--seeds", "3", "--seed", "2"]),
    (dict(preset="quick", seeds=[0, 5], channels_last=False, augment=True),
     ["--preset", "quick", "--seeds", "0,5", "--channels-last", "off", "--augment", "on"]),
    (dict(models=["tutorial", "resnet18"], batch_sizes=[8], precisions="bf16", epochs=1, threads=1),
     ["--models", "tutorial,resnet18", "--batch-sizes", "8", "--precisions", "bf16", "--epochs", "1",
      "--threads", "1"]),
    (dict(preset="quick", compile_mode="reduce-overhead", no_cpu_reference=True, data_paths=["device", "dataloader"]),
     ["--preset", "quick", "--compile-mode", "reduce-overhead", "--no-cpu-reference", "--data-paths",
      "device,dataloader"]),
    (dict(preset="quick", max_seconds=0.1, max_config_seconds=2, train_size=512, target_accuracy=55),
     ["--preset", "quick", "--max-seconds", "0.1", "--max-config-seconds", "2", "--train-size", "512",
      "--target-accuracy", "55"]),
])
def test_keywords_plan_the_sweep_the_command_plans(options, flags, tmp_path, monkeypatch):
    monkeypatch.setattr(bench.runner, "Runner", RecordingRunner)
    RecordingRunner.seen = []
    assert cli.main(["run", *flags, "--out", str(tmp_path / "cli"), "--no-progress"]) == 0
    (from_cli,) = RecordingRunner.seen
    configs, out, from_file = api.plan(api.parse("run", {**options, "out": tmp_path / "api"}))
    assert configs == from_cli and not from_file and out == tmp_path / "api"


# ---- reading run folders and the report -------------------------------------------------------

@pytest.fixture
def folder(tmp_path):
    """Four seeds of CPU fp32 and bf16 accuracy runs, with per-example predictions, and the
    throughput grid's row of each precision."""
    rows, preds = [], {}
    for seed in range(4):
        labels, ref, cand = predictions(1000, 700, 20, 25, seed)
        for precision, p in (("fp32", ref), ("bf16", cand)):
            preds[len(rows)] = (p, labels)
            rows.append(acc_row(seed, (p == labels).mean(), precision=precision, train_images_per_s=None))
    rows += [acc_row(0, None, precision=p, epochs=0, train_images_per_s=ips)
             for p, ips in (("fp32", 8150.0), ("bf16", 8650.0))]
    return write_folder(tmp_path / "run", rows, preds=preds)


def test_run_folders_read_as_frames(folder):
    runs = api.load(folder)
    assert "10 configurations, 10 ok" in repr(runs)
    tp = runs.throughput()
    assert sorted(tp["precision"]) == ["bf16", "fp32"] and tp["images_per_s"].tolist() == [8650.0, 8150.0]
    assert len(runs.accuracy()) == 8
    eq = runs.equivalence()
    assert len(eq) == 1 and eq.iloc[0]["seeds"] == 4 and eq.iloc[0]["verdict"] in ("equivalent", "inconclusive")
    assert runs.equivalence(margin=0.01).iloc[0]["margin_pp"] == 0.01
    assert runs.time_to_accuracy().empty
    summary = runs.summary()
    assert "tutorial" in str(summary) and summary._repr_markdown_() == str(summary)


def test_the_report_shows_itself_in_jupyter_and_the_terminal(folder, tmp_path):
    report = api.load(folder).report(out=tmp_path / "report")
    assert report.path == tmp_path / "report" / "report.md"
    assert str(report) == report.path.read_text()
    assert report.sections[0] == "Summary" and "Accuracy equivalence" in report.sections
    assert str(report.summary).startswith("## Summary\n") and "\n## " not in str(report.summary)
    shown = report._repr_markdown_()
    assert "](throughput.png)" in str(report) and "](throughput.png)" not in shown
    assert shown.count("](data:image/png;base64,") == len(report.figures) > 0
    figure = report.figure("throughput")
    assert figure._repr_png_().startswith(b"\x89PNG") and figure.path == report.figures["throughput"]
    assert report.figure("Training throughput").path == figure.path == report.figure("throughput.png").path
    with pytest.raises(api.BenchError, match="no figure 'nope'.* expected one of throughput"):
        report.figure("nope")
    with pytest.raises(api.BenchError, match="no section 'Nope'"):
        report.section("Nope")


def test_results_that_cannot_be_compared_are_bench_error_with_status_1(folder, monkeypatch):
    import bench.equivalence

    def fail(*a, **kw):
        raise bench.equivalence.EquivalenceError("two runs of seed 0 were evaluated on different test sets")

    monkeypatch.setattr(bench.equivalence, "equivalence_table", fail)
    with pytest.raises(api.BenchError, match="different test sets") as e:
        api.load(folder).equivalence()
    assert e.value.exit_status == 1


def test_the_progress_bar_follows_the_runners_lines(capsys):
    progress = api._Progress(enabled=True)
    for line in ("data: synthetic", "[1/3] a", "[2/3] b", "[3/3] c", "time to accuracy: 2 runs", "[1/2] d"):
        progress(line)
    assert (progress.bar.n, progress.bar.total) == (1, 2)
    progress.close()
    assert progress.lines[-1] == "[1/2] d"


# ---- a real sweep -----------------------------------------------------------------------------

@pytest.mark.slow  # peaks and drift probes: about 30 s on a loaded 2-core machine
def test_a_tiny_sweep_runs_and_reports(tmp_path):
    runs = api.run(preset="quick", models="tutorial", batch_sizes=[16], precisions=["fp32"], epochs=0,
                   data="synthetic", train_size=256, test_size=64, max_seconds=0.05, max_config_seconds=2, threads=1,
                   out=tmp_path / "run", progress=False)
    assert runs.run_dirs == [tmp_path / "run"] and (runs.results["status"] == "ok").all()
    assert len(runs.throughput()) == 1
    report = runs.report()
    assert report.path == tmp_path / "run" / "report.md" and "throughput" in report.figures
