"""Energy: the counters of each device, the energy window around a block of training steps,
and the idle power measured once before a sweep.

  cpu   RAPL through the powercap files (`/sys/class/powercap`, or `CIFAR_BENCH_POWERCAP=DIR`):
        every package zone (`intel-rapl:N`, name `package-N`) and its DRAM subzone (name
        `dram`), read at the start and end of a window. AMD CPUs expose their RAPL through the
        same `intel-rapl` control type (`amd-rapl:*` is read too, should a kernel name it so).
        Core, uncore and psys zones overlap these and are left out. A counter that wrapped
        within the window (end < start) gets its `max_energy_range_uj` added back.
  cuda  NVML (bench/nvml.py): the board's energy counter, else sampled power; plus the host's
        RAPL domains where they are readable, since a GPU step runs on the host too.

A counter that cannot be read (a VM without powercap; energy_uj readable by root only, as
on Linux since 5.10) makes the device's energy "not available", with the reason: said once
per run by the sweep and in every row's `energy_reason`, never replaced by a guess.

NVML's counter moves about every 100 ms, so a window lasts at least MIN_WINDOW_S: enough
steps of the configuration's training loop to cover it at the steady step time, extended
when it came out short, and refused (never counted) when it is still short or the counter
did not move. The clock and the device synchronisation come from bench/timing.py.
"""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from bench import nvml, timing

ENV_ROOT = "CIFAR_BENCH_POWERCAP"
DEFAULT_ROOT = "/sys/class/powercap"
MIN_WINDOW_S = 1.0  # ten updates of NVML's counter; RAPL updates every ~1 ms
WINDOW_AIM = 1.2  # windows are sized for 1.2x the minimum, so a step a little faster still clears it
EXTENSIONS = 3  # a window that came out short is extended at most this many times
IDLE_SECONDS = 2.0
ZONE = re.compile(r"^(intel|amd)-rapl:(\d+)(?::(\d+))?$")
NOT_DISTRIBUTED = "not measured in data-parallel runs (the ranks share the counters)"


class Unavailable(Exception):
    """A device's energy cannot be measured; the message says why."""


# --------------------------------------------------------------------------------------
# RAPL (powercap)
# --------------------------------------------------------------------------------------

def read_int(path: Path) -> int:
    return int(path.read_text().strip())


@dataclass(frozen=True)
class Zone:
    domain: str  # package-0, dram-0
    path: Path  # the zone's folder (energy_uj, max_energy_range_uj)
    max_range_uj: int


def powercap_root() -> Path:
    return Path(os.environ.get(ENV_ROOT) or DEFAULT_ROOT)


def _unreadable(path: Path, e: Exception) -> Unavailable:
    if isinstance(e, PermissionError):
        return Unavailable(f"{path} is not readable (permission denied): since Linux 5.10 the RAPL counters are "
                           f"readable by root only; run as root or grant read access (chmod o+r {path})")
    if isinstance(e, ValueError):
        return Unavailable(f"{path} does not hold a counter")
    return Unavailable(f"{path} cannot be read ({getattr(e, 'strerror', None) or e})")


def rapl_zones(root: Path, read: Callable[[Path], int] = read_int) -> list[Zone]:
    """The package and DRAM zones under `root`, each read once; raises Unavailable with the
    reason (no powercap, no RAPL zone, a file that cannot be read)."""
    where = f"{root}{f' (from {ENV_ROOT})' if os.environ.get(ENV_ROOT) else ''}"
    if not root.is_dir():
        raise Unavailable(f"no {where}: no powercap interface (a VM, or a kernel without intel_rapl)")
    # Zones sit at the top (sysfs links every zone there) or nested in their parent: depth <= 3.
    found: dict[str, Path] = {}
    for pattern in ("*", "*/*", "*/*/*"):
        for p in sorted(root.glob(pattern)):
            if ZONE.match(p.name) and p.name not in found and (p / "name").exists():
                found[p.name] = p
    zones = []
    for zone_id, path in sorted(found.items()):
        try:
            name = path.joinpath("name").read_text().strip()
        except OSError as e:
            raise _unreadable(path / "name", e) from None
        package = ZONE.match(zone_id).group(2)
        if name.startswith("package"):
            domain = name
        elif name == "dram":
            domain = f"dram-{package}"
        else:  # core, uncore (inside the package), psys (the platform: overlaps both)
            continue
        values = {}
        for f in ("energy_uj", "max_energy_range_uj"):
            try:
                values[f] = read(path / f)
            except (OSError, ValueError) as e:
                raise _unreadable(path / f, e) from None
        zones.append(Zone(domain, path, values["max_energy_range_uj"]))
    if not any(z.domain.startswith("package") for z in zones):
        raise Unavailable(f"no RAPL package zone under {where} (looked for intel-rapl:N and amd-rapl:N)")
    return zones


class RaplMeter:
    """Joules per RAPL domain between begin() and end(), one wraparound per counter handled."""

    method = "rapl"

    def __init__(self, zones: list[Zone], read: Callable[[Path], int] = read_int):
        self.zones, self.read = zones, read
        self.domains = tuple(z.domain for z in zones)

    def begin(self) -> dict[str, int]:
        return {z.domain: self.read(z.path / "energy_uj") for z in self.zones}

    def end(self, start: dict[str, int]) -> dict[str, float]:
        out = {}
        for z in self.zones:
            delta = self.read(z.path / "energy_uj") - start[z.domain]
            if delta < 0:  # the counter wrapped past max_energy_range_uj (once: windows last seconds)
                delta += z.max_range_uj
            out[z.domain] = delta / 1e6
        return out


class Combined:
    """Several meters read as one window (a GPU and its host)."""

    def __init__(self, meters: list):
        self.meters = meters
        self.domains = tuple(d for m in meters for d in m.domains)
        self.method = "+".join(m.method for m in meters)

    def begin(self) -> list:
        return [m.begin() for m in self.meters]

    def end(self, states: list) -> dict[str, float]:
        return {k: v for m, s in zip(self.meters, states) for k, v in m.end(s).items()}


# --------------------------------------------------------------------------------------
# Which meter a device has (probed once per process and device)
# --------------------------------------------------------------------------------------

@dataclass
class DeviceEnergy:
    """A device's meter, or the reason it has none; the idle power once measured."""

    device: str
    meter: object | None
    reason: str | None = None
    note: str | None = None  # what was left out (a GPU's host when RAPL is unreadable)
    idle: dict | None = None


def cpu_meter(root: Path | None = None, read: Callable[[Path], int] = read_int) -> RaplMeter:
    return RaplMeter(rapl_zones(root or powercap_root(), read), read)


def probe(device: str, root: Path | None = None, nvml_source=nvml.load) -> DeviceEnergy:
    """The meter of `device` ("cpu", "cuda", "cuda:N"), or why there is none."""
    d = torch.device(device)
    try:
        host = cpu_meter(root)
        host_reason = None
    except Unavailable as e:
        host, host_reason = None, str(e)
    if d.type == "cpu":
        return DeviceEnergy("cpu", host, host_reason)
    index = d.index if d.index is not None else torch.cuda.current_device()
    try:
        gpu, source = nvml.probe(index, nvml_source)
    except RuntimeError as e:
        return DeviceEnergy(f"cuda:{index}", None, str(e))
    if host is None:
        return DeviceEnergy(f"cuda:{index}", gpu, note=f"GPU only (NVML via {source}); the host's CPU and memory "
                                                        f"are not counted: {host_reason}")
    return DeviceEnergy(f"cuda:{index}", Combined([gpu, host]), note=f"GPU (NVML via {source}) and host (RAPL)")


_probed: dict[tuple[str, str], DeviceEnergy] = {}


def _key(device) -> tuple[str, str]:
    d = torch.device(device)
    return ("cpu" if d.type == "cpu" else f"{d.type}:{d.index or 0}"), str(powercap_root())


def for_device(device) -> DeviceEnergy:
    """`probe`, once per process for each device and powercap root."""
    key = _key(device)
    if key not in _probed:
        _probed[key] = probe(str(device))
    return _probed[key]


def use(device, entry: DeviceEnergy) -> None:
    """Make `entry` the device's meter (tests; a caller that probed differently)."""
    _probed[_key(device)] = entry


def forget() -> None:
    _probed.clear()


# --------------------------------------------------------------------------------------
# Windows
# --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Window:
    """What one energy window measured: joules per domain over `seconds`, `steps` steps."""

    seconds: float
    joules: dict[str, float] = field(default_factory=dict)
    steps: int = 0

    @property
    def total(self) -> float:
        return sum(self.joules.values())

    @property
    def watts(self) -> float:
        return self.total / self.seconds if self.seconds > 0 else float("nan")


def steps_for(seconds: float, step_s: float) -> int:
    """Steps that cover `seconds` at `step_s` per step (at least one)."""
    return max(1, math.ceil(seconds / step_s)) if step_s > 0 else 1


def _read(fn, *args):
    """A meter's reading; a counter that fails mid-sweep (a driver error, a file gone) makes
    the window not available, and never fails the configuration whose energy it was."""
    try:
        return fn(*args)
    except Exception as e:  # OSError, ValueError, NVML's errors: all said as the reason
        raise Unavailable(f"reading the energy counters failed: {type(e).__name__}: {e}") from e


def run_window(meter, run: Callable[[int], object], step_s: float, device: torch.device | str,
               min_seconds: float | None = None, clock: timing.Clock = timing.now,
               sync: Callable = timing.synchronize) -> Window:
    """`run(n)` runs n steps; enough of them inside one window of `meter` to cover
    `min_seconds` (MIN_WINDOW_S), sized from `step_s` and extended (up to EXTENSIONS times)
    from the pace measured in the window when it came out short. The device is idle at both
    ends."""
    min_seconds = MIN_WINDOW_S if min_seconds is None else min_seconds
    sync(device)
    t0 = clock()
    state = _read(meter.begin)
    steps, elapsed = 0, 0.0
    for _ in range(EXTENSIONS + 1):
        pace = elapsed / steps if steps else step_s
        n = steps_for(min_seconds * WINDOW_AIM - elapsed, pace)
        run(n)
        sync(device)
        steps += n
        elapsed = clock() - t0
        if elapsed >= min_seconds:
            break
    joules = _read(meter.end, state)
    return Window(clock() - t0, joules, steps)


def idle_window(meter, device: torch.device | str, seconds: float | None = None, sleep=time.sleep,
                clock: timing.Clock = timing.now, sync: Callable = timing.synchronize) -> Window:
    """The meter over `seconds` (IDLE_SECONDS) of this process asleep (the rest of the machine
    is not)."""
    seconds = IDLE_SECONDS if seconds is None else seconds
    sync(device)
    t0 = clock()
    state = _read(meter.begin)
    sleep(seconds)
    joules = _read(meter.end, state)
    return Window(clock() - t0, joules)


def refusal(w: Window, min_seconds: float | None = None) -> str | None:
    """Why a window cannot be counted, or None."""
    min_seconds = MIN_WINDOW_S if min_seconds is None else min_seconds
    if w.seconds < min_seconds:
        return (f"the energy window lasted {w.seconds:.2f} s < {min_seconds:g} s after {EXTENSIONS} extensions: "
                "too short to measure, not counted")
    if not w.total > 0:
        return f"the energy counters did not move over a {w.seconds:.2f} s window: not counted"
    return None


# --------------------------------------------------------------------------------------
# Row columns and the sweep's hooks
# --------------------------------------------------------------------------------------

def not_measured(reason: str) -> dict:
    return {"energy_reason": f"energy: not available: {reason}"}


def columns(w: Window, images: int, entry: DeviceEnergy) -> dict:
    """A row's energy columns from a counted window (bench/results.py documents them)."""
    return {"energy_j_per_image": w.total / images, "energy_mean_w": w.watts,
            "energy_domains": "+".join(w.joules), "energy_method": entry.meter.method, "energy_window_s": w.seconds,
            "energy_window_steps": w.steps, "energy_idle_w": (entry.idle or {}).get("idle_w"),
            "energy_reason": None, "energy_joules": dict(w.joules)}


def training_energy(loop, step_s: float, device: torch.device, batch_size: int,
                    phase: Callable[[str], None] = lambda p: None, distributed: bool = False,
                    entry: DeviceEnergy | None = None, **window) -> dict:
    """The energy columns of one configuration: a window of its training loop (a
    bench.protocol.Loop) when its device has a meter, else the reason."""
    if distributed:
        return not_measured(NOT_DISTRIBUTED)
    entry = entry or for_device(device)
    if entry.meter is None:
        return not_measured(entry.reason)
    phase("energy")
    try:
        w = run_window(entry.meter, lambda n: loop(n, lambda: False), step_s, device, **window)
    except Unavailable as e:
        return not_measured(str(e))
    reason = refusal(w, window.get("min_seconds"))
    return not_measured(reason) if reason else columns(w, w.steps * batch_size, entry)


def machine_check(devices, log: Callable[[str], None] = print, seconds: float | None = None,
                  distributed: bool = False, **window) -> list[dict]:
    """Before a sweep: each device's meter and idle power, said once; what system.json keeps."""
    if distributed:
        log(f"energy: {NOT_DISTRIBUTED}")
        return [{"device": d, "available": False, "reason": NOT_DISTRIBUTED} for d in dict.fromkeys(devices)]
    out = []
    for device in dict.fromkeys(devices):
        entry = for_device(device)
        if entry.meter is None:
            log(f"energy: not available on {device}: {entry.reason}")
            out.append({"device": device, "available": False, "reason": entry.reason})
            continue
        try:
            w = idle_window(entry.meter, device, seconds, **window)
        except Unavailable as e:
            log(f"energy: the idle window on {device} failed: {e}")
            out.append({"device": device, "available": True, "idle_w": None, "reason": str(e)})
            continue
        entry.idle = {"device": device, "available": True, "method": entry.meter.method,
                      "domains": "+".join(entry.meter.domains), "idle_w": w.watts if w.total > 0 else None,
                      "idle_seconds": w.seconds, "idle_joules": dict(w.joules), "note": entry.note}
        idle = f"{w.watts:.1f} W" if w.total > 0 else "not measured (the counters did not move)"
        log(f"energy: {device} via {entry.meter.method} ({entry.idle['domains']}); idle {idle} over "
            f"{w.seconds:.1f} s" + (f"; {entry.note}" if entry.note else ""))
        out.append(entry.idle)
    return out
