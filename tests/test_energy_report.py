"""The report's energy (bench/energy_report.py) from run folders written by hand: CPU rows
and FABRICATED CUDA rows with chosen energies, so every expected figure is arithmetic the
test did; and a run whose rows say energy was not available."""

from __future__ import annotations

import pytest
from PIL import Image
from runfolders import CPU_SYSTEM, GPU_SYSTEM, acc_row, write_folder

from bench import energy_report
from bench.cli import main
from bench.frames import load_runs, throughput
from bench.report import summary_text, write_report

W1, W2 = 3_204_720, 9_986_400  # training FLOPs per image of tutorial-w1 and -w2
# (model, batch size) -> CPU img/s, CPU J/image, GPU img/s, GPU J/image
POINTS = {("tutorial-w1", 4): (1000.0, 0.02, 500.0, 0.08), ("tutorial-w1", 16): (2000.0, 0.012, 4000.0, 0.006),
          ("tutorial-w2", 4): (400.0, 0.05, 800.0, 0.1), ("tutorial-w2", 16): (800.0, 0.04, 8000.0, 0.01)}
CPU_W, CPU_IDLE, GPU_W, GPU_IDLE = 40.0, 10.0, 300.0, 75.0


def row(device, model, bs, ips, j, watts, idle, precision):
    gpu = device == "cuda"
    return acc_row(0, None, precision, device, model=model, batch_size=bs, epochs=0, accuracy_curve=None,
                   epoch_seconds=None, flops_per_image=W1 if model.endswith("w1") else W2,
                   train_images_per_s=ips, step_ms_median=1e3 * bs / ips, mfu=0.1,
                   energy_j_per_image=j, energy_mean_w=watts, energy_idle_w=idle, energy_window_s=1.2,
                   energy_window_steps=int(1.2 * ips / bs), energy_domains="gpu0" if gpu else "package-0+dram-0",
                   energy_method="nvml-counter" if gpu else "rapl")


@pytest.fixture
def runs(tmp_path):
    cpu = write_folder(tmp_path / "cpu", [row("cpu", m, bs, c, cj, CPU_W, CPU_IDLE, "fp32")
                                          for (m, bs), (c, cj, _, _) in POINTS.items()],
                       {**CPU_SYSTEM, "energy": [{"device": "cpu", "available": True, "idle_w": CPU_IDLE,
                                                  "domains": "package-0+dram-0", "idle_seconds": 2.0}]})
    gpu = write_folder(tmp_path / "gpu", [row("cuda", m, bs, g, gj, GPU_W, GPU_IDLE, "fp16")
                                          for (m, bs), (_, _, g, gj) in POINTS.items()], GPU_SYSTEM)
    return cpu, gpu


def test_energy_above_idle_by_hand(runs):
    df, _, _ = load_runs(runs)
    ef = energy_report.energy_frame(df).set_index(["device_kind", "model", "batch_size"])
    assert ef.loc[("cpu", "tutorial-w1", 4), "j_per_image"] == pytest.approx(0.02)
    assert ef.loc[("cpu", "tutorial-w1", 4), "above_idle_j_per_image"] == pytest.approx(0.02 * (1 - 10 / 40))
    assert ef.loc[("cuda", "tutorial-w2", 16), "above_idle_j_per_image"] == pytest.approx(0.01 * (1 - 75 / 300))


def test_the_report_draws_energy_and_gives_the_gpu_cpu_ratio_on_the_size_map(runs, tmp_path):
    out = tmp_path / "report"
    text = write_report(list(runs), out).read_text()
    section = text.split("## Energy\n")[1].split("\n## ")[0]
    for png in ("energy.png", "energy_above_idle.png"):
        assert f"]({png})" in section
        with Image.open(out / png) as im:
            im.verify()
    assert "Idle power, run 1, cpu: 10.0 W (package-0+dram-0, 2.0 s" in section
    # the least energy per image: CPU tutorial-w1 at bs 16 (0.012 J), GPU tutorial-w2 at bs 16 (0.01 J)
    assert "bs 16 fp32" in section and "0.012" in section
    # GPU/CPU energy per point: 4, 0.5, 2, 0.25: less on the GPU at 2 of 4, from 0.25x to 4x
    assert "less energy than the CPU at 2 of 4 points measured on both (GPU/CPU energy per image 0.25x to 4x; gpu0 " \
           "against package-0+dram-0)" in section
    df, _, _ = load_runs(runs)
    table = energy_report.ratio_table(df, throughput(df)).set_index(["model", "batch_size"])
    for (model, bs), (c, cj, g, gj) in POINTS.items():
        assert table.loc[(model, bs), "GPU/CPU energy"] == pytest.approx(gj / cj)
        assert table.loc[(model, bs), "GPU/CPU speedup"] == pytest.approx(g / c)


def test_a_price_per_kwh_prices_the_energy(runs, tmp_path, capsys):
    text = write_report(list(runs), tmp_path / "r", prices={"cpu": 0.10, "cuda": 3.00, "kwh": 0.30}).read_text()
    cost = text.split("## Cost")[1].split("\n## ")[0]
    assert "Prices per device-hour: cpu 0.1, cuda 3." in cost and "Energy at 0.3 per kWh" in cost
    assert "energy per 1M images" in cost
    # the CPU's fastest tutorial-w2 setting is bs 16 at 0.04 J/image: 0.04e6 J = 0.0111 kWh -> 0.00333
    assert f"{0.04 * 1e6 / 3.6e6 * 0.30:.4g}" in cost
    section = text.split("## Energy\n")[1].split("\n## ")[0]
    assert "Energy priced at 0.3 per kWh." in section and f"{0.012 * 1e6 / 3.6e6 * 0.30:.4g}" in section
    assert main(["report", *map(str, runs), "--out", str(tmp_path / "r2"), "--price-kwh", "0.3"]) == 0
    assert "## Cost" not in (tmp_path / "r2" / "report.md").read_text()  # no device-hour price: energy only
    assert main(["summary", *map(str, runs), "--price-kwh", "0"]) == 2
    assert "got '0'" in capsys.readouterr().err


def test_the_summary_prints_the_energy_line(runs):
    text = summary_text(list(runs))
    line = next(x for x in text.splitlines() if x.startswith("energy:"))
    assert "cpu · Laptop CPU (laptop) tutorial-w1 0.012 J/image (bs 16 fp32, 40 W)" in line
    assert "tutorial-w2 0.01 J/image (bs 16 fp16, 300 W)" in line


def test_without_energy_the_report_says_so_in_one_line(tmp_path):
    reason = "energy: not available: no /sys/class/powercap: no powercap interface (a VM, or a kernel without " \
             "intel_rapl)"
    folder = write_folder(tmp_path / "run", [acc_row(s, 0.6, energy_reason=reason) for s in (0, 1)])
    text = write_report([folder], tmp_path / "r").read_text()
    section = text.split("## Energy\n")[1].split("\n## ")[0]
    assert section.strip() == ("Energy: not available (cpu: no /sys/class/powercap: no powercap interface (a VM, or "
                               "a kernel without intel_rapl)).")
    assert not (tmp_path / "r" / "energy.png").exists()
    assert summary_text([folder]).splitlines()[-1] == "energy: not available (cpu: no /sys/class/powercap: no " \
                                                      "powercap interface (a VM, or a kernel without intel_rapl))"
    old = write_folder(tmp_path / "old", [acc_row(0, 0.6)])  # rows from before energy was measured
    assert "cpu: not recorded" in write_report([old], tmp_path / "r3").read_text()
