"""examples/cpu_vs_gpu.ipynb: committed without outputs, and executed (nbclient, a kernel of
this environment) with a smaller sweep, showing the summary, the throughput figure and the
equivalence table. The kernel is a separate process: the injected parameters make its data
synthetic, so nothing is downloaded there either."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parent.parent / "examples" / "cpu_vs_gpu.ipynb"
ROOT = NOTEBOOK.parent.parent

# After the notebook's own parameters cell: a sweep small enough for a loaded 2-core machine
# (the tutorial Net only; its two quick batch sizes in fp32 and bf16, the accuracy runs on
# 2,048 images), CPU and synthetic data.
OVERRIDES = """\
DEVICES = "cpu"
DATA = "synthetic"
OUT = Path({out!r})
OPTIONS = {{"models": ["tutorial"], "train_size": 2048, "test_size": 500}}"""


def test_the_committed_notebook_has_no_outputs():
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    assert code and all(c["outputs"] == [] and c["execution_count"] is None for c in code)
    assert sum("parameters" in c["metadata"].get("tags", []) for c in code) == 1


def kernel_of_this_environment(tmp_path: Path, monkeypatch) -> str:
    """A kernelspec running this interpreter, found first, and Jupyter's and IPython's
    files kept under tmp_path (nothing written into the user's home)."""
    name = "cifar-bench-test"
    spec = tmp_path / "jupyter" / "kernels" / name
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": name, "language": "python"}))
    for var, sub in (("JUPYTER_PATH", "jupyter"), ("JUPYTER_DATA_DIR", "data"), ("JUPYTER_CONFIG_DIR", "config"),
                     ("JUPYTER_RUNTIME_DIR", "runtime"), ("IPYTHONDIR", "ipython"), ("MPLCONFIGDIR", "mpl")):
        monkeypatch.setenv(var, str(tmp_path / sub))
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")
    # One thread: on a machine shared with other jobs, OpenMP threads waiting on each other
    # can make every step hundreds of times slower; this test checks what is shown, not speed.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    return name


def outputs(cell) -> dict[str, str]:
    """Mime type -> the cell's outputs of that type, joined."""
    found: dict[str, str] = {}
    for out in cell.outputs:
        if out.output_type == "stream":
            found[out.name] = found.get(out.name, "") + out.text
        for mime, value in out.get("data", {}).items():
            found[mime] = found.get(mime, "") + (value if isinstance(value, str) else json.dumps(value))
    return found


@pytest.mark.slow
def test_the_notebook_runs_and_shows_the_summary_figure_and_verdicts(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    kernel = kernel_of_this_environment(tmp_path, monkeypatch)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    (at,) = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    nb.cells.insert(at + 1, nbformat.v4.new_code_cell(OVERRIDES.format(out=str(tmp_path / "run"))))
    nbclient.NotebookClient(nb, timeout=300, kernel_name=kernel,
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    nbformat.write(nb, tmp_path / "executed.ipynb")  # to read when this test fails

    by_source = {c.source.splitlines()[-1]: outputs(c) for c in nb.cells if c.cell_type == "code" and c.source}
    run = by_source["runs"]
    assert "Runs(" in run["text/plain"] and "configurations run (" in run["stdout"]
    summary = by_source["report.summary"]["text/markdown"]
    assert summary.startswith("## Summary") and "**tutorial**" in summary
    assert by_source['report.figure("throughput")']["image/png"]
    throughput = by_source[next(k for k in by_source if k.startswith("runs.throughput()"))]["text/html"]
    assert "images_per_s" in throughput and "bf16" in throughput
    equivalence = by_source[next(k for k in by_source if k.startswith("equivalence[columns]"))]["text/html"]
    assert "verdict" in equivalence and "cpu bf16" in equivalence and "cpu fp32" in equivalence
    assert any(v in equivalence for v in ("equivalent", "inconclusive"))
    assert (tmp_path / "run" / "report.md").exists() and (tmp_path / "run" / "throughput.png").exists()
