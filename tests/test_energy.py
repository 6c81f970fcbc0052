"""Energy counters and windows (bench/energy.py, bench/nvml.py) on fakes: a powercap tree
written by the test (wraparound, unreadable and missing files), a fake NVML (the energy
counter and the power-sampling fallback), fake clocks and meters. Nothing reads a real
counter and nothing depends on the machine's speed."""

from __future__ import annotations

import json
import sys
import time

import pytest

from bench import energy, nvml
from bench.nvml import NvmlError

MAX_RANGE = 262_143_328_850  # a real package zone's max_energy_range_uj


@pytest.fixture(autouse=True)
def fresh_probes():
    energy.forget()
    yield
    energy.forget()


def zone(folder, name, energy_uj, max_range=MAX_RANGE):
    folder.mkdir(parents=True)
    (folder / "name").write_text(name + "\n")
    (folder / "energy_uj").write_text(f"{energy_uj}\n")
    (folder / "max_energy_range_uj").write_text(f"{max_range}\n")
    return folder


def powercap(root, nested=False):
    """Two packages, a DRAM and a core subzone under package 0, and a psys zone: sysfs's flat
    layout (every zone linked at the top), or zones nested in their parents."""
    root.mkdir()
    (root / "intel-rapl").mkdir()
    (root / "intel-rapl" / "enabled").write_text("1\n")
    top = root / "intel-rapl" if nested else root
    p0 = zone(top / "intel-rapl:0", "package-0", 1_000_000)
    sub = p0 if nested else root
    zone(sub / "intel-rapl:0:0", "dram", 5_000_000)
    zone(sub / "intel-rapl:0:1", "core", 7_000_000)
    zone(top / "intel-rapl:1", "package-1", MAX_RANGE - 2_000_000)
    zone(top / "intel-rapl:2", "psys", 9_000_000)
    return root


def write(root, zone_id, value, nested=False):
    path = next(p for p in root.rglob(zone_id) if p.is_dir())
    (path / "energy_uj").write_text(f"{value}\n")


# ---- RAPL ---------------------------------------------------------------------------------

@pytest.mark.parametrize("nested", [False, True])
def test_package_and_dram_zones_are_found_and_overlapping_ones_left_out(tmp_path, nested):
    zones = energy.rapl_zones(powercap(tmp_path / "powercap", nested))
    assert [z.domain for z in zones] == ["package-0", "dram-0", "package-1"]  # core and psys overlap them
    assert all(z.max_range_uj == MAX_RANGE for z in zones)


def test_a_window_is_the_difference_of_the_counters_and_a_wraparound_adds_the_range(tmp_path):
    root = powercap(tmp_path / "powercap")
    meter = energy.cpu_meter(root)
    start = meter.begin()
    write(root, "intel-rapl:0", 31_000_000)  # +30 J
    write(root, "intel-rapl:0:0", 7_500_000)  # +2.5 J
    write(root, "intel-rapl:1", 3_000_000)  # wrapped: 2 J up to the range, then 3 J
    assert meter.end(start) == {"package-0": 30.0, "dram-0": 2.5, "package-1": 5.0}


def test_the_powercap_root_comes_from_the_environment(tmp_path, monkeypatch):
    root = powercap(tmp_path / "elsewhere")
    monkeypatch.setenv(energy.ENV_ROOT, str(root))
    entry = energy.for_device("cpu")
    assert entry.reason is None and entry.meter.domains == ("package-0", "dram-0", "package-1")
    monkeypatch.setenv(energy.ENV_ROOT, str(tmp_path / "nothing"))
    entry = energy.for_device("cpu")  # another root, probed anew
    assert entry.meter is None and f"no {tmp_path / 'nothing'} (from {energy.ENV_ROOT})" in entry.reason


def test_no_powercap_is_not_available_with_the_reason(tmp_path):
    entry = energy.probe("cpu", root=tmp_path / "absent")
    assert entry.meter is None
    assert entry.reason == f"no {tmp_path / 'absent'}: no powercap interface (a VM, or a kernel without intel_rapl)"
    (tmp_path / "empty").mkdir()
    assert "no RAPL package zone under" in energy.probe("cpu", root=tmp_path / "empty").reason


def test_an_unreadable_counter_makes_energy_not_available_and_names_the_file(tmp_path):
    root = powercap(tmp_path / "powercap")
    dram = root / "intel-rapl:0:0" / "energy_uj"

    def read(path):  # root reads anything: the test plays the kernel's 0400 file
        if path == dram:
            raise PermissionError(13, "Permission denied", str(path))
        return energy.read_int(path)

    with pytest.raises(energy.Unavailable) as e:
        energy.rapl_zones(root, read)
    assert str(e.value).startswith(f"{dram} is not readable (permission denied)") and "root" in str(e.value)
    dram.write_text("garbage\n")
    with pytest.raises(energy.Unavailable, match="does not hold a counter"):
        energy.rapl_zones(root)
    dram.unlink()
    dram.mkdir()  # a counter that cannot be opened as a file
    with pytest.raises(energy.Unavailable, match="cannot be read"):
        energy.rapl_zones(root)


# ---- NVML -----------------------------------------------------------------------------------

class FakeNvml:
    """pynvml's calls: an energy counter (mJ) that reads `energy` in turn, and power (mW)."""

    def __init__(self, energy=None, power=None, counter_error=None):
        self.energy, self.power, self.counter_error = list(energy or []), list(power or []), counter_error

    def nvmlInit(self):
        pass

    def nvmlDeviceGetHandleByIndex(self, index):
        return f"handle{index}"

    def nvmlDeviceGetTotalEnergyConsumption(self, handle):
        if self.counter_error is not None:
            raise NvmlError(self.counter_error, "Not Supported" if self.counter_error == 3 else "No permission")
        return self.energy.pop(0)

    def nvmlDeviceGetPowerUsage(self, handle):
        if not self.power:
            raise NvmlError(nvml.NVML_ERROR_NOT_SUPPORTED, "Not Supported")
        return self.power.pop(0)


def test_the_gpu_counter_gives_joules_from_millijoules():
    fake = FakeNvml(energy=[5_000, 1_000_000, 1_250_500])  # the first read is the probe
    meter = nvml.gpu_meter(fake, "h", "gpu0")
    assert meter.method == "nvml-counter"
    assert meter.end(meter.begin()) == {"gpu0": pytest.approx(250.5)}


def test_without_the_counter_power_is_sampled_and_integrated():
    now = [0.0]
    fake = FakeNvml(counter_error=nvml.NVML_ERROR_NOT_SUPPORTED, power=[99_000, 100_000, 200_000, 200_000])
    meter = nvml.gpu_meter(fake, "h", "gpu0", clock=lambda: now[0], thread=False)
    assert meter.method == "nvml-power-sampled"
    meter.begin()  # 100 W at 0 s
    now[0] = 0.5
    meter.sample()  # 200 W at 0.5 s
    now[0] = 1.0
    assert meter.end() == {"gpu0": pytest.approx(0.5 * 150 + 0.5 * 200)}  # trapezoids


def test_the_sampler_thread_samples_between_begin_and_end():
    fake = FakeNvml(counter_error=3, power=[50_000] * 100_000)
    meter = nvml.gpu_meter(fake, "h", "gpu0", clock=iter(range(100_000)).__next__)  # a clock that ticks per read
    meter.interval = 0.001
    meter.begin()
    while len(meter._samples) < 3:
        time.sleep(0.001)
    joules = meter.end()["gpu0"]
    assert joules == pytest.approx(50.0 * (len(meter._samples) - 1))  # 50 W over one tick per sample


def test_a_gpu_without_counter_or_power_and_a_refused_counter_say_why():
    with pytest.raises(RuntimeError, match="neither its energy counter"):
        nvml.gpu_meter(FakeNvml(counter_error=3), "h", "gpu0")
    with pytest.raises(RuntimeError, match="NVML energy counter: No permission"):
        nvml.gpu_meter(FakeNvml(counter_error=4), "h", "gpu0")


def test_a_gpu_meter_adds_the_host_where_rapl_is_readable(tmp_path, monkeypatch):
    monkeypatch.setattr(nvml, "handle_for", lambda nv, index: f"handle{index}")
    source = lambda: (FakeNvml(energy=[0]), "fake")  # noqa: E731
    with_host = energy.probe("cuda:1", root=powercap(tmp_path / "powercap"), nvml_source=source)
    assert with_host.meter.domains == ("gpu1", "package-0", "dram-0", "package-1")
    assert with_host.meter.method == "nvml-counter+rapl" and "host (RAPL)" in with_host.note
    gpu_only = energy.probe("cuda:0", root=tmp_path / "absent", nvml_source=source)
    assert gpu_only.meter.domains == ("gpu0",) and "not counted: no " in gpu_only.note


def test_no_nvml_is_not_available_with_the_reason(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # nvidia-ml-py not installed
    monkeypatch.setattr(nvml, "LIBRARY", "libnvidia-ml-absent.so.1")
    with pytest.raises(RuntimeError, match="nvidia-ml-py is not installed and libnvidia-ml-absent.so.1 cannot be"):
        nvml.load()
    entry = energy.probe("cuda:0", nvml_source=nvml.load)
    assert entry.meter is None and entry.reason.startswith("no NVML")


FAKE_LIBNVML = r"""
#include <string.h>
static unsigned long long energy_mj = 1000000;
static int device = 7;
int nvmlInit_v2(void) { return 0; }
const char *nvmlErrorString(int rc) { return rc == 6 ? "Not Found" : "Unknown Error"; }
int nvmlDeviceGetHandleByIndex_v2(unsigned int index, void **handle) {
    if (index != 0) return 6;
    *handle = &device; return 0;
}
int nvmlDeviceGetHandleByUUID(const char *uuid, void **handle) {
    if (strcmp(uuid, "GPU-1234") != 0) return 6;
    *handle = &device; return 0;
}
int nvmlDeviceGetTotalEnergyConsumption(void *handle, unsigned long long *mj) {
    if (handle != &device) return 2;
    energy_mj += 1500; *mj = energy_mj; return 0;  /* 1.5 J more at every read */
}
int nvmlDeviceGetPowerUsage(void *handle, unsigned int *mw) {
    if (handle != &device) return 2;
    *mw = 123456; return 0;
}
"""


def test_the_ctypes_binding_passes_handles_and_counters_as_the_c_api_expects(tmp_path):
    """A stand-in libnvidia-ml.so.1 with the C signatures of nvml.h, built here: the binding's
    argument and result types are checked on a CPU (the real library is the GPU machine's)."""
    import shutil
    import subprocess

    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler to build the stand-in NVML library")
    (tmp_path / "fake.c").write_text(FAKE_LIBNVML)
    lib = tmp_path / "libnvidia-ml-fake.so"
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(lib), str(tmp_path / "fake.c")], check=True)
    nv = nvml.CtypesNvml(str(lib))
    nv.nvmlInit()
    handle = nv.nvmlDeviceGetHandleByUUID("GPU-1234")
    assert nv.nvmlDeviceGetHandleByIndex(0).value == handle.value
    with pytest.raises(NvmlError, match="Not Found") as e:
        nv.nvmlDeviceGetHandleByUUID("GPU-other")
    assert e.value.value == 6
    meter = nvml.gpu_meter(nv, handle, "gpu0")
    assert meter.method == "nvml-counter" and meter.end(meter.begin()) == {"gpu0": 1.5}
    assert nv.nvmlDeviceGetPowerUsage(handle) == 123456


# ---- windows --------------------------------------------------------------------------------

class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


class FakeMeter:
    """`watts` over the fake clock's time between begin and end."""

    method = "rapl"

    def __init__(self, clock, watts=50.0, domain="package-0"):
        self.clock, self.watts, self.domains = clock, watts, (domain,)

    def begin(self):
        return self.clock()

    def end(self, start):
        return {self.domains[0]: self.watts * (self.clock() - start)}


def loop_at(clock, step_s, calls=None):
    """A protocol.Loop whose steps take `step_s` each on the fake clock."""
    def loop(n, on_step):
        if calls is not None:
            calls.append(n)
        for _ in range(n):
            clock.t += step_s
            on_step()
    return loop


def window(clock, **kw):
    return dict(clock=clock, sync=lambda d: None, **kw)


def test_a_window_covers_the_minimum_from_the_steady_step_and_gives_joules_per_image():
    clock, calls = Clock(), []
    entry = energy.DeviceEnergy("cpu", FakeMeter(clock, watts=50.0), idle={"idle_w": 20.0})
    row = energy.training_energy(loop_at(clock, 0.01, calls), 0.01, "cpu", 32, entry=entry, **window(clock))
    assert calls == [120]  # 1.2 s at 10 ms per step
    assert row["energy_window_s"] == pytest.approx(1.2) and row["energy_window_steps"] == 120
    assert row["energy_j_per_image"] == pytest.approx(50.0 * 1.2 / (120 * 32))
    assert row["energy_mean_w"] == pytest.approx(50.0) and row["energy_idle_w"] == 20.0
    assert row["energy_domains"] == "package-0" and row["energy_method"] == "rapl" and row["energy_reason"] is None
    assert row["energy_joules"] == {"package-0": pytest.approx(60.0)}


def test_a_window_that_came_out_short_is_extended_from_the_pace_it_measured():
    clock, calls = Clock(), []
    entry = energy.DeviceEnergy("cpu", FakeMeter(clock))
    # the steady step said 10 ms, the window ran at 5 ms: 0.6 s, then 120 more steps
    row = energy.training_energy(loop_at(clock, 0.005, calls), 0.01, "cpu", 8, entry=entry, **window(clock))
    assert calls == [120, 120] and row["energy_window_s"] == pytest.approx(1.2)
    assert row["energy_j_per_image"] == pytest.approx(50.0 * 1.2 / (240 * 8))


def test_a_window_still_too_short_is_refused_never_counted():
    clock, calls = Clock(), []

    def stalls(n, on_step):  # its data runs out: 0.1 s whatever was asked
        calls.append(n)
        clock.t += 0.1

    entry = energy.DeviceEnergy("cpu", FakeMeter(clock))
    row = energy.training_energy(stalls, 0.01, "cpu", 8, entry=entry, **window(clock))
    assert len(calls) == energy.EXTENSIONS + 1
    assert row == {"energy_reason": "energy: not available: the energy window lasted 0.40 s < 1 s after 3 "
                                    "extensions: too short to measure, not counted"}


def test_a_counter_that_did_not_move_is_refused():
    clock = Clock()
    entry = energy.DeviceEnergy("cpu", FakeMeter(clock, watts=0.0))
    row = energy.training_energy(loop_at(clock, 0.1), 0.1, "cpu", 8, entry=entry, **window(clock))
    assert row["energy_reason"].endswith("the energy counters did not move over a 1.20 s window: not counted")


def test_a_counter_that_fails_mid_window_is_a_reason_not_a_failed_configuration():
    clock = Clock()

    class Gone(FakeMeter):
        def end(self, start):
            raise FileNotFoundError(2, "No such file or directory", "/sys/class/powercap/intel-rapl:0/energy_uj")

    entry = energy.DeviceEnergy("cpu", Gone(clock))
    row = energy.training_energy(loop_at(clock, 0.1), 0.1, "cpu", 8, entry=entry, **window(clock))
    assert row["energy_reason"].startswith("energy: not available: reading the energy counters failed: "
                                           "FileNotFoundError: [Errno 2] No such file or directory")


def test_without_a_meter_nothing_runs_and_the_row_says_why():
    def never(n, on_step):
        raise AssertionError("no meter: no energy window")

    entry = energy.DeviceEnergy("cpu", None, "no /sys/class/powercap: no powercap interface")
    row = energy.training_energy(never, 0.01, "cpu", 8, entry=entry)
    assert row == {"energy_reason": "energy: not available: no /sys/class/powercap: no powercap interface"}
    assert energy.training_energy(never, 0.01, "cpu", 8, distributed=True) == \
        {"energy_reason": f"energy: not available: {energy.NOT_DISTRIBUTED}"}


def test_idle_power_is_measured_once_and_said_once():
    clock, lines = Clock(), []
    meter = FakeMeter(clock, watts=35.0)
    energy.use("cpu", energy.DeviceEnergy("cpu", meter))

    def sleep(s):
        clock.t += s

    out = energy.machine_check(["cpu", "cpu"], lines.append, seconds=2.0, sleep=sleep, clock=clock,
                               sync=lambda d: None)
    assert len(out) == 1 and out[0]["idle_w"] == pytest.approx(35.0) and out[0]["idle_seconds"] == 2.0
    assert lines == ["energy: cpu via rapl (package-0); idle 35.0 W over 2.0 s"]
    assert energy.for_device("cpu").idle["idle_w"] == pytest.approx(35.0)  # the rows' energy_idle_w
    energy.use("cpu", energy.DeviceEnergy("cpu", None, "no powercap here"))
    lines.clear()
    out = energy.machine_check(["cpu"], lines.append)
    assert out == [{"device": "cpu", "available": False, "reason": "no powercap here"}]
    assert lines == ["energy: not available on cpu: no powercap here"]


def test_the_numbers_the_docs_and_the_schema_state_are_the_codes():
    from pathlib import Path

    from bench.results import COLUMNS

    doc = " ".join((Path(__file__).parents[1] / "docs" / "energy.md").read_text().split())
    words = {1: "once", 2: "twice", 3: "three times"}
    for text in (f"at least {energy.MIN_WINDOW_S:g} s at the steady step", f"over {energy.IDLE_SECONDS:g} s with",
                 f"sampled every {nvml.SAMPLE_INTERVAL_S * 1e3:g} ms", f"(up to {words[energy.EXTENSIONS]})",
                 f"A window costs at least {energy.MIN_WINDOW_S:g} s"):
        assert text in doc, text
    assert f"(at least {energy.MIN_WINDOW_S:g}:" in COLUMNS["energy_window_s"]


# ---- in a sweep -------------------------------------------------------------------------------

def test_a_sweep_without_counters_says_so_once_and_in_every_row(tmp_path, monkeypatch):
    from bench.runner import Runner
    from helpers import tiny

    monkeypatch.setenv(energy.ENV_ROOT, str(tmp_path / "no-powercap"))
    lines = []
    rows = Runner(tmp_path / "run", data_kind="synthetic", log=lines.append, progress=False, probe_seconds=0.02,
                  drift_seconds=0).run([tiny(batch_size=8), tiny(batch_size=16)])
    reason = (f"no {tmp_path / 'no-powercap'} (from {energy.ENV_ROOT}): no powercap interface (a VM, or a kernel "
              "without intel_rapl)")
    assert [m for m in lines if m.startswith("energy")] == [f"energy: not available on cpu: {reason}"]
    assert [r["energy_reason"] for r in rows] == [f"energy: not available: {reason}"] * 2
    assert all(r["energy_j_per_image"] is None for r in rows)
    system = json.loads((tmp_path / "run" / "system.json").read_text())
    assert system["energy"] == [{"device": "cpu", "available": False, "reason": reason}]


def test_a_sweep_with_a_meter_fills_the_columns(tmp_path, monkeypatch):
    """A meter of 40 W on the real clock (the window's own): the columns reach the rows, the
    CSV and system.json. Windows shortened so the test stays fast."""
    from bench.runner import Runner
    from helpers import tiny

    class Watts40:
        method, domains = "rapl", ("package-0",)

        def begin(self):
            return time.perf_counter()

        def end(self, start):
            return {"package-0": 40.0 * (time.perf_counter() - start)}

    monkeypatch.setattr(energy, "MIN_WINDOW_S", 0.05)
    monkeypatch.setattr(energy, "IDLE_SECONDS", 0.02)
    energy.use("cpu", energy.DeviceEnergy("cpu", Watts40()))
    rows = Runner(tmp_path / "run", data_kind="synthetic", log=lambda m: None, progress=False, probe_seconds=0.02,
                  drift_seconds=0).run([tiny(batch_size=8)])
    r = rows[0]
    assert r["status"] == "ok" and r["energy_reason"] is None and r["energy_window_s"] >= 0.05
    assert r["energy_mean_w"] == pytest.approx(40.0, rel=0.2) and r["energy_idle_w"] == pytest.approx(40.0, rel=0.2)
    assert r["energy_j_per_image"] == pytest.approx(r["energy_mean_w"] * r["energy_window_s"]
                                                    / (r["energy_window_steps"] * 8))
    header = (tmp_path / "run" / "results.csv").read_text().splitlines()[0].split(",")
    start = header.index("energy_j_per_image")
    assert header[start:start + 8] == ["energy_j_per_image", "energy_mean_w", "energy_domains", "energy_method",
                           "energy_window_s", "energy_window_steps", "energy_idle_w", "energy_reason"]
    system = json.loads((tmp_path / "run" / "system.json").read_text())
    assert system["energy"][0]["available"] and system["energy"][0]["domains"] == "package-0"


def test_a_configuration_measured_in_passes_has_one_energy_window_carried_to_its_row(tmp_path, monkeypatch):
    from bench import passes as sweep_passes
    from bench.results import read_jsonl
    from bench.runner import Runner
    from helpers import tiny

    windows = []

    class Counted:
        method, domains = "rapl", ("package-0",)

        def begin(self):
            windows.append(1)
            return time.perf_counter()

        def end(self, start):
            return {"package-0": 40.0 * (time.perf_counter() - start)}

    monkeypatch.setattr(energy, "MIN_WINDOW_S", 0.05)
    monkeypatch.setattr(energy, "IDLE_SECONDS", 0.02)
    # no extra passes: whether passes disagree enough to earn one depends on the machine's load
    monkeypatch.setattr(sweep_passes, "EXTRA_PASSES", 0)
    counts = {}
    for passes in (1, 3):
        windows.clear()
        energy.forget()
        energy.use("cpu", energy.DeviceEnergy("cpu", Counted()))
        out = tmp_path / f"p{passes}"
        (r,) = Runner(out, data_kind="synthetic", log=lambda m: None, progress=False, probe_seconds=0.02,
                      drift_seconds=0).run([tiny(batch_size=8, passes=passes)])
        counts[passes] = len(windows)
        assert r["passes_run"] == passes and r["energy_j_per_image"] > 0
        lines = read_jsonl(out / "results.jsonl")
        assert len({line["energy_window_s"] for line in lines}) == 1  # every pass's line: the first pass's window
    assert counts[3] == counts[1]  # the idle window and one window per configuration, whatever the passes


@pytest.mark.cuda
def test_the_gpus_own_counter_measures_a_busy_window():
    """On a GPU machine: NVML (nvidia-ml-py, or the ctypes binding where it is not installed)
    gives a counted window of matmuls with a plausible board power."""
    import torch

    entry = energy.probe("cuda")
    assert entry.meter is not None, entry.reason
    x = torch.randn(4096, 4096, device="cuda")

    def run(n):
        for _ in range(n):
            x @ x

    w = energy.run_window(entry.meter, run, 0.005, torch.device("cuda"))
    assert energy.refusal(w) is None and w.seconds >= energy.MIN_WINDOW_S
    gpu = next(j for d, j in w.joules.items() if d.startswith("gpu")) / w.seconds
    assert 20 < gpu < 2000, f"{gpu:.0f} W"


def test_a_pynvml_that_takes_no_str_uuid_falls_back_to_the_index(monkeypatch):
    """Old pynvml releases pass a str UUID to ctypes.c_char_p, a TypeError, not NVML's error:
    the handle then comes by index, as for a MIG slice, and never crashes the sweep."""
    import torch

    class Props:
        uuid = "0badc0de-0000-0000-0000-000000000000"

    class OldPynvml:
        NVMLError = RuntimeError

        @staticmethod
        def nvmlDeviceGetHandleByUUID(uuid):  # noqa: N802
            raise TypeError("bytes or integer address expected instead of str instance")

        @staticmethod
        def nvmlDeviceGetHandleByIndex(index):  # noqa: N802
            return f"handle{index}"

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: Props())
    monkeypatch.setattr(torch.cuda, "_get_nvml_device_index", lambda index: index + 1, raising=False)
    assert nvml.handle_for(OldPynvml, 0) == "handle1"
