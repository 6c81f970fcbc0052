import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from PIL import Image

from bench.cli import main
from bench.report import write_report
from bench.results import COLUMNS, ResultsStore

LAPTOP = {"host": "laptop", "cpu_model": "Laptop CPU", "torch": "2.4.0", "cuda_available": False,
          "peaks": [{"device": "cpu", "precision": "fp32", "dtype": "float32", "n": 1024, "repeats": 5,
                     "tflops": 0.2}]}
SERVER = {"host": "server", "cpu_model": "Server CPU", "torch": "2.11.0", "cuda_available": True,
          "gpu_name": "NVIDIA H100", "cudnn": 91000, "driver": "570.1",
          "peaks": [{"device": "cuda", "precision": "fp16", "dtype": "float16", "n": 8192, "repeats": 9,
                     "tflops": 700.0}]}


PEAK = {"cpu": 0.2, "cuda": 700.0}  # TFLOP/s, as the systems above say


def row(host, device, device_name, model, bs, precision, ips, status="ok", reason=None, **kw):
    r = dict.fromkeys(COLUMNS)
    r.update(device=device, device_name=device_name, host=host, model=model, batch_size=bs, precision=precision,
             channels_last=False, compile=False, data_path="device", status=status, reason=reason, seed=0,
             epochs=0, threads=2, data="synthetic", train_size=50000, test_size=10000, world_size=1)
    if status == "ok":
        step = bs / ips
        r.update(train_images_per_s=ips, step_ms_median=1e3 * step, step_ms_iqr=1e3 * step * 0.04, noisy=False,
                 timed_steps=20, warmup_steps=3, warmup_seconds=0.1, timing_method="perf_counter"
                 if device == "cpu" else "cuda_event", eval_images_per_s=3 * ips, flops_per_image=4e6,
                 achieved_tflops=4e6 * ips / 1e12, peak_tflops=PEAK[device],
                 mfu=4e6 * ips / 1e12 / PEAK[device],
                 peak_memory_mb=100 + bs, memory_kind="cpu_peak_rss")
    r.update(kw)
    return r


def write_run(folder, system, rows):
    folder.mkdir()
    store = ResultsStore(folder)
    for r in rows:
        store.append(r)
    (folder / "system.json").write_text(json.dumps(system))
    return folder


@pytest.fixture
def runs(tmp_path):
    laptop = [row("laptop", "cpu", "Laptop CPU", "tutorial", bs, p, ips)
              for bs, p, ips in [(4, "fp32", 3000), (32, "fp32", 8000), (128, "fp32", 10000),
                                 (4, "bf16", 1500), (32, "bf16", 4000), (128, "bf16", 6000)]]
    laptop += [row("laptop", "cpu", "Laptop CPU", "resnet18", bs, "fp32", ips) for bs, ips in [(4, 40), (32, 50)]]
    laptop.append(row("laptop", "cpu", "Laptop CPU", "resnet18", 128, "bf16", None, status="skipped",
                      reason="over the time budget: predicted 30 s/step"))
    laptop.append(row("laptop", "cpu", "Laptop CPU", "tutorial", 32, "fp32", 8000, epochs=2, test_accuracy=0.68,
                      accuracy_curve=[0.6, 0.68], epoch_seconds=6.5))
    server = [row("server", "cuda", "NVIDIA H100", "tutorial", bs, p, ips)
              for bs, p, ips in [(4, "fp32", 2000), (32, "fp32", 20000), (128, "fp32", 45000),
                                 (4, "fp16", 1800), (32, "fp16", 19000), (128, "fp16", 50000)]]
    server += [row("server", "cuda", "NVIDIA H100", "resnet18", bs, "fp16", ips) for bs, ips in [(4, 400), (32, 5000)]]
    server.append(row("server", "cuda", "NVIDIA H100", "resnet18", 4096, "fp32", None, status="oom",
                      reason="out of memory: Tried to allocate 30.00 GiB"))
    server.append(row("server", "cuda", "NVIDIA H100", "tutorial", 32, "fp16", 19000, epochs=2, test_accuracy=0.675,
                      accuracy_curve=[0.61, 0.675], epoch_seconds=2.6))
    return write_run(tmp_path / "laptop", LAPTOP, laptop), write_run(tmp_path / "server", SERVER, server)


def test_report_merges_machines_and_links_valid_figures(runs, tmp_path):
    out = tmp_path / "report"
    path = write_report(runs, out)
    text = path.read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert {"throughput.png", "speedup.png", "epoch_time.png", "accuracy.png", "memory.png", "mfu.png"} <= set(links)
    for name in links:
        with Image.open(out / name) as im:
            im.verify()
            assert im.format == "PNG"
    assert "Laptop CPU" in text and "NVIDIA H100" in text and "Server CPU" in text


def test_summary_states_the_speedups_in_the_data(runs, tmp_path):
    text = write_report(runs, tmp_path / "r").read_text()
    summary = text.split("## Summary")[1].split("##")[0]
    # tutorial: GPU best 50,000 (bs 128 fp16) / CPU best 10,000 (bs 128 fp32) = 5.0x;
    # at batch 4 the CPU is faster (3,000 vs 2,000), from 32 the GPU wins
    assert "**tutorial**: GPU/CPU speedup **5.0x**" in summary
    assert "The GPU wins from batch size **32** on" in summary
    assert "At batch 4: 0.67x" in summary
    # resnet18: 5,000 / 50 = 100x, faster at every common batch size
    assert "**resnet18**: GPU/CPU speedup **100.0x**" in summary
    assert "faster at every batch size measured on both" in summary
    # AMP: CPU bf16 best 6,000 / fp32 best 10,000 = 0.60x; GPU fp16 50,000 / 45,000 = 1.11x
    assert "bf16 0.60x" in summary and "fp16 1.11x" in summary


def test_warnings_name_skipped_and_oom_configurations(runs, tmp_path):
    text = write_report(runs, tmp_path / "r").read_text()
    warnings = text.split("## Warnings")[1].split("##")[0]
    assert "skipped" in warnings and "over the time budget" in warnings
    assert "oom" in warnings and "30.00 GiB" in warnings


def test_methodology_says_which_data_ran(runs, tmp_path):
    text = write_report(runs, tmp_path / "r").read_text()
    assert "Data that ran: **synthetic**" in text
    assert "Warm-up runs until two consecutive steps agree within 10%" in text


def test_report_command_writes_into_the_first_run_by_default(runs, capsys):
    assert main(["report", *map(str, runs)]) == 0
    assert (runs[0] / "report.md").exists()


def test_noisy_seeds_of_one_configuration_make_one_warning(tmp_path):
    rows = [row("laptop", "cpu", "Laptop CPU", "tutorial", 32, "fp32", 8000, seed=s, noisy=s < 3,
                step_ms_iqr=4.0 * (0.1 + 0.1 * s)) for s in range(4)]  # median 4 ms: 10%, 20%, 30% noisy
    text = write_report([write_run(tmp_path / "run", LAPTOP, rows)], tmp_path / "r").read_text()
    warnings = text.split("## Warnings")[1].split("##")[0]
    assert warnings.count("noisy:") == 1
    assert "tutorial bs 32 fp32: IQR/median 10%-30% in 3 of 4 runs" in warnings


def test_results_table_keeps_one_plain_format_per_column():
    from bench.cli_run import results_table
    from bench.results import to_frame

    rows = [row("h", "cpu", "CPU", "tutorial", 512, "fp32", 19702.4),
            row("h", "cpu", "CPU", "tutorial", 4, "fp32", 950.0),
            row("h", "cpu", "CPU", "resnet18", 512, "fp32", None, status="skipped", reason="budget")]
    for r in rows:
        r["test_accuracy"] = 0.6712 if r["status"] == "ok" else None
    text = results_table(to_frame(rows))
    assert "e+" not in text and "nan" not in text
    assert re.search(r"\|\s+19,702\s+\|", text) and re.search(r"\|\s+950\s+\|", text)
    assert re.search(r"\|\s+67\.1\s+\|", text)  # accuracy as a percentage


def test_a_cpu_and_a_gpu_run_with_no_batch_size_in_common(tmp_path):
    cpu = write_run(tmp_path / "cpu", LAPTOP, [row("laptop", "cpu", "Laptop CPU", "tutorial", 4, "fp32", 3000)])
    gpu = write_run(tmp_path / "gpu", SERVER, [row("server", "cuda", "NVIDIA H100", "tutorial", 1024, "fp16", 9e4)])
    text = write_report([cpu, gpu], tmp_path / "r").read_text()
    assert "GPU/CPU speedup **30.0x**" in text
    assert "No batch size was measured on both devices" in text and "not measured on both" in text


# ---- exit statuses, warnings from system facts, flagged values ------------------------------

def different_test_sets(folder):
    """A reference and a candidate of one seed whose predictions were made on different test sets."""
    from runfolders import acc_row, predictions, write_folder

    labels, ref, cand = predictions(100, 70, 5, 5)
    other_labels = (labels + 1) % 10
    rows = [acc_row(0, 0.70, "fp32", test_size=100), acc_row(0, 0.70, "bf16", test_size=100)]
    return write_folder(folder, rows, preds={0: (ref, labels), 1: (cand, other_labels)})


@pytest.mark.parametrize("command", ["report", "summary"])
def test_an_equivalence_error_ends_report_and_summary_with_exit_status_1(tmp_path, capsys, command):
    from bench.cliargs import EXIT_ERROR

    folder = different_test_sets(tmp_path / "run")
    assert main([command, str(folder)]) == EXIT_ERROR
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("cifar-bench: error:"), err
    assert "evaluated on different test sets" in err and "Traceback" not in err


def test_readme_at_a_missing_file_is_refused_before_anything_is_written(runs, tmp_path, capsys):
    missing = tmp_path / "no-such-README.md"
    assert main(["report", str(runs[0]), "--out", str(tmp_path / "r"), "--readme", str(missing)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"--readme {missing}: no such file" in err
    assert not missing.exists() and not (tmp_path / "r" / "report.md").exists()


def test_warnings_name_drift_and_peak_changes_beyond_the_threshold(tmp_path):
    from bench.frames import load_runs
    from bench.report_warnings import warnings_lines

    df, _, _ = load_runs([write_run(tmp_path / "run", LAPTOP, [row("laptop", "cpu", "Laptop CPU", "tutorial", 32,
                                                                   "fp32", 8000)])])
    moved = {"drift": [{"device": "cpu", "before_images_per_s": 10000.0, "after_images_per_s": 7000.0,
                        "change": -0.3}],
             "peaks": [{"device": "cpu", "precision": "bf16", "change": 0.25}]}
    steady = {"drift": [{"device": "cuda", "before_images_per_s": 5e4, "after_images_per_s": 5.001e4,
                         "change": 0.0002}],
              "peaks": [{"device": "cuda", "precision": "fp16", "change": -0.0002}]}
    broken = {"drift": [{"device": "cpu", "after_error": "RuntimeError: probe failed", "change": None}]}
    text = "\n".join(warnings_lines(df, [moved, steady, broken]))
    assert "the machine moved during run 1: the cpu drift reference ran at 10,000 img/s before the sweep and " \
           "7,000 after (-30%)" in text
    assert "the cpu bf16 matmul peak moved +25%" in text
    assert "cuda" not in text and "run 2" not in text  # a change within the threshold says nothing
    assert "the cpu drift reference failed after run 3's sweep: RuntimeError: probe failed" in text


def test_a_fraction_of_ceiling_above_the_flag_never_enters_the_throughput_frame(tmp_path):
    from bench.frames import load_runs, throughput
    from bench.measure import CEILING_FLAG

    def at(bs, seed, fraction):
        return row("laptop", "cpu", "Laptop CPU", "tutorial", bs, "fp32", 8000, seed=seed, fraction_of_ceiling=fraction)

    rows = [at(8, 0, 0.8), at(8, 1, 1.2),  # one seed flagged: the other's value stands
            at(16, 0, CEILING_FLAG - 0.01),  # just under the flag: kept
            at(32, 0, 1.3)]  # the only row flagged: no value at all
    df, _, _ = load_runs([write_run(tmp_path / "run", LAPTOP, rows)])
    tp = throughput(df).set_index("batch_size")["fraction_of_ceiling"]
    assert not (tp > CEILING_FLAG).any()
    assert tp[8] == pytest.approx(0.8) and tp[16] == pytest.approx(CEILING_FLAG - 0.01)
    assert 32 not in tp.dropna().index


HEADLESS = textwrap.dedent("""
    import sys
    from bench.report import write_report
    write_report(sys.argv[1:3], sys.argv[3])
    print("pyplot imported" if "matplotlib.pyplot" in sys.modules else "no pyplot")
""")


def test_a_report_is_written_without_a_display(runs, tmp_path):
    """In a fresh process whose matplotlib backend would need a display (and with none), the
    report still draws every figure: they are made outside pyplot, so no backend is chosen."""
    root = Path(__file__).resolve().parent.parent
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env.update(MPLBACKEND="TkAgg", PYTHONPATH=str(root))
    out = tmp_path / "report"
    proc = subprocess.run([sys.executable, "-c", HEADLESS, *map(str, runs), str(out)], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "no pyplot"
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", (out / "report.md").read_text())
    assert {"throughput.png", "speedup.png"} <= set(links)
    for name in links:  # figures, figures.py's and breakeven's, all drawn
        with Image.open(out / name) as im:
            assert im.format == "PNG" and im.size[0] > 100, name


def test_mfu_divides_by_the_higher_of_the_peak_probes(tmp_path):
    # the probe before the sweep caught a slow machine (0.1), the one after did not (0.2): a
    # row at 150% of the first probe is at 75% of the peak, so it stays in the figures
    system = {**LAPTOP, "peaks": [{**LAPTOP["peaks"][0], "tflops": 0.1, "tflops_after": 0.2}]}
    r = row("laptop", "cpu", "Laptop CPU", "tutorial", 32, "fp32", 8000)
    r.update(achieved_tflops=0.15, peak_tflops=0.1, mfu=1.5,
             flags="MFU 150.0% > 100% of the measured matmul peak: the peak was probed low (load)")
    folder = write_run(tmp_path / "run", system, [r])
    from bench.frames import load_runs, throughput
    df, _, _ = load_runs([folder])
    assert df["mfu"].iloc[0] == pytest.approx(0.75) and df["peak_tflops"].iloc[0] == pytest.approx(0.2)
    assert df["flags"].iloc[0] is None and len(throughput(df)) == 1
    text = write_report([folder], tmp_path / "r").read_text()
    assert "measurement problem (flagged" not in text.split("## Warnings")[1]
    # against a peak that never rose, it is flagged with its recomputed value
    low = write_run(tmp_path / "low", {**LAPTOP, "peaks": [{**LAPTOP["peaks"][0], "tflops": 0.1}]}, [r])
    df, _, _ = load_runs([low])
    assert df["flags"].iloc[0].startswith("MFU 150.0% > 100%") and throughput(df).empty


def test_the_summary_lists_what_a_cut_sweep_did_not_run(tmp_path):
    """A sweep stopped at a stage limit: sweep.json planned more than the results hold, and
    `cifar-bench summary` (gpu-check's last word) says so, as the report does."""
    import json
    from dataclasses import asdict

    from runfolders import CPU_SYSTEM, acc_row, write_folder

    from bench.config import RunConfig
    from bench.report import summary_text

    folder = write_folder(tmp_path / "run", [acc_row(0, None, epochs=0, train_images_per_s=8000.0)], CPU_SYSTEM)
    planned = [RunConfig("cpu", "tutorial", 32, "fp32"), RunConfig("cpu", "resnet18", 64, "fp32")]
    (folder / "sweep.json").write_text(json.dumps([asdict(c) for c in planned]))
    text = summary_text([folder])
    assert re.search(r"not run: \d of 2 configurations that run 1's sweep.json planned have no result", text)
    assert "cpu resnet18 bs=64 fp32" in text


def test_rows_without_flags_stay_without_flags(tmp_path):
    system = {**LAPTOP, "peaks": [{**LAPTOP["peaks"][0], "tflops": 0.1, "tflops_after": 0.2}]}
    folder = write_run(tmp_path / "run", system, [row("laptop", "cpu", "Laptop CPU", "tutorial", 32, "fp32", 8000)])
    from bench.frames import load_runs
    df, _, _ = load_runs([folder])
    assert df["flags"].isna().all()  # a missing flag is no flag, never the text "nan"
    text = write_report([folder], tmp_path / "r").read_text()
    assert "measurement problem" not in text.split("## Warnings")[1]
