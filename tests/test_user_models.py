"""A user's own model (`module:callable`, `path/to/file.py:callable`) through the command line:
validation in one line (exit 2) before anything runs, then the sweep, report and equivalence."""

import json
from pathlib import Path

import pandas as pd
import pytest

from bench.cli import main
from bench.equivalence import EXIT_NOT_EQUIVALENT

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "my_model.py"

BAD = '''
from torch import nn
NOT_CALLABLE = 3
def not_a_module():
    return [1, 2]
def wrong_shape():
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 100))
def does_not_fit():
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.LazyLinear(10))  # a grey-scale model
'''


def fails(capsys, argv, message):
    assert main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.count("\n") == 0, err
    assert err.startswith("cifar-bench: error:") and message in err, err
    assert "Traceback" not in err and "configurations ->" not in captured.out  # refused before the sweep


@pytest.mark.parametrize("model,message", [
    ("no_such_pkg_xyz.models:build", "cannot import module 'no_such_pkg_xyz.models'"),
    ("{file}:missing", "has no attribute 'missing'"),
    ("{file}:NOT_CALLABLE", "is a int, not callable"),
    ("{file}:not_a_module", "returned a list, not a torch.nn.Module"),
    ("{file}:wrong_shape", "gave output (2, 100) for a batch of 2 images; expected (2, 10) logits"),
    ("{file}:does_not_fit", "does not fit a batch of 2x3x32x32 images"),
    ("/no/such/dir/model.py:build", "no such file '/no/such/dir/model.py'"),
    ("my model:build", "unknown model 'my model:build'"),
])
def test_bad_user_models_give_one_line_and_exit_2(capsys, tmp_path, model, message):
    bad = tmp_path / "bad_models.py"
    bad.write_text(BAD)
    model = model.format(file=bad)
    fails(capsys, ["run", "--models", model, "--devices", "cpu", "--out", str(tmp_path / "run")], message)
    assert not (tmp_path / "run").exists()


def test_perf_validates_user_models_too(capsys, tmp_path):
    bad = tmp_path / "bad_models.py"
    bad.write_text(BAD)
    fails(capsys, ["perf", "--models", f"{bad}:wrong_shape"], "expected (2, 10) logits")


def test_a_user_model_from_a_file_runs_through_sweep_report_and_equivalence(tmp_path, capsys):
    out = tmp_path / "run"
    model = f"{EXAMPLE}:build"
    assert main(["run", "--preset", "quick", "--models", model, "--batch-sizes", "16", "--precisions", "fp32,bf16",
                 "--epochs", "1", "--data", "synthetic", "--train-size", "256", "--test-size", "64", "--threads", "1",
                 "--max-config-seconds", "600", "--out", str(out), "--no-progress"]) == 0
    frame = pd.read_csv(out / "results.csv")
    assert list(frame["model"]) == [model] * 4 and list(frame["status"]) == ["ok"] * 4  # 2 accuracy runs, 2 grid
    assert (frame["flops_per_image"] > 0).all()
    assert frame.loc[frame["epochs"] == 1, "test_accuracy"].notna().all()
    assert frame.loc[frame["epochs"] == 0, "train_images_per_s"].notna().all()
    assert main(["report", str(out)]) == 0
    report = (out / "report.md").read_text()
    assert f"**{model}**" in report
    code = main(["equivalence", str(out)])
    verdicts = pd.read_csv(out / "equivalence.csv")
    assert list(verdicts["model"]) == [model]
    # a verdict either way (1 would be an error, 2 bad usage): 3 exactly when the pair is not equivalent
    assert code == (EXIT_NOT_EQUIVALENT if (verdicts["verdict"] == "not equivalent").any() else 0)
    assert json.loads((out / "sweep.json").read_text())[0]["model"] == model


def test_a_user_model_as_a_module_on_pythonpath(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLE.parent))
    out = tmp_path / "run"
    assert main(["run", "--preset", "quick", "--models", "my_model:build", "--batch-sizes", "8", "--precisions",
                 "fp32", "--data", "synthetic", "--train-size", "256", "--test-size", "64", "--threads", "1",
                 "--max-config-seconds", "600", "--out", str(out), "--no-progress"]) == 0
    assert list(pd.read_csv(out / "results.csv")["status"]) == ["ok"]
