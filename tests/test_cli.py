import re
import subprocess
import sys

import pandas as pd
import pytest
import torch

from bench.cli import main
from bench.results import COLUMNS


def fails(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err  # one line
    assert err.startswith("cifar-bench: error:") and message in err, err
    assert "Traceback" not in err


@pytest.mark.parametrize("argv,message", [
    (["run", "--batch-sizes", "0"], "got '0'; expected a comma-separated list of positive"),
    (["run", "--batch-sizes", "-4"], "'-4'"),
    (["run", "--batch-sizes", "32,abc"], "'32,abc'"),
    (["run", "--models", "lenet"], "unknown model 'lenet'; expected one or more of tutorial, tutorial-wide, resnet18"),
    (["run", "--precisions", "fp8"], "unknown precision 'fp8'; expected one or more of fp32, tf32, fp16, bf16"),
    (["run", "--devices", "tpu"], "unknown device 'tpu'; expected cpu, cuda or cuda:N"),
    (["run", "--preset", "huge"], "invalid choice: 'huge'"),
    (["run", "--epochs", "-1"], "'-1'"),
    (["run", "--target-accuracy", "150"], "'150'"),
    (["frobnicate"], "invalid choice"),
    (["report", "/nonexistent/run"], "/nonexistent/run is not a run folder"),
    (["equivalence", "/nonexistent/run"], "/nonexistent/run is not a run folder"),
])
def test_bad_values_give_one_line_and_exit_status_2(capsys, argv, message):
    fails(capsys, argv, message)


def test_cuda_without_a_gpu_says_what_torch_reports(capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    fails(capsys, ["run", "--devices", "cuda"], f"torch.cuda.is_available() is False (torch {torch.__version__}")


def test_out_pointing_at_a_file(capsys, tmp_path):
    f = tmp_path / "f"
    f.write_text("")
    fails(capsys, ["run", "--out", str(f)], "is a file, expected a folder")


def test_report_of_a_folder_without_results(capsys, tmp_path):
    fails(capsys, ["report", str(tmp_path)], "holds no results.jsonl")


def test_no_traceback_from_the_real_command(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "bench", "run", "--batch-sizes", "0"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_quick_preset_end_to_end(tmp_path, capsys):
    out = tmp_path / "quick"
    assert main(["run", "--preset", "quick", "--devices", "cpu", "--data", "synthetic", "--out", str(out),
                 "--no-progress"]) == 0
    frame = pd.read_csv(out / "results.csv")
    assert list(frame.columns) == list(COLUMNS)
    assert set(frame["status"]) <= {"ok", "skipped"} and (frame["status"] == "ok").any()
    assert frame.loc[frame["status"] == "skipped", "reason"].notna().all()
    assert (frame["data"] == "synthetic").all()
    printed = capsys.readouterr().out
    assert "| device" in printed and "configurations run" in printed


def test_a_reader_that_leaves_the_pipe_is_not_an_error():
    import os
    import subprocess
    import sys

    # `cifar-bench run ... --plan | head -0`: the reader is gone before the first write, and the
    # plan (hundreds of lines) outgrows the output buffer while the command still runs
    read, write = os.pipe()
    os.close(read)
    try:
        done = subprocess.run([sys.executable, "-m", "bench", "run", "--preset", "standard", "--devices", "cuda",
                               "--data", "synthetic", "--plan"], stdout=write, stderr=subprocess.PIPE, timeout=120)
    finally:
        os.close(write)
    assert done.returncode == 0 and "Traceback" not in done.stderr.decode(), done.stderr.decode()


@pytest.mark.parametrize("command", ["run", "perf", "compare"])
def test_help_states_each_default_once_as_typed(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "(default: None)" not in text and "(default: False)" not in text and "(default: (" not in text
    assert not re.search(r"\(default: [^)]*\) \(default:", text)
    if command == "run":
        assert "cpu,cuda (default: cpu)" in text and text.count("(default: standard)") == 1
