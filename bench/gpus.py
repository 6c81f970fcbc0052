"""Datasheet figures of GPUs that are not here, for the speedup bound (bench/bound.py).

The table (bench/gpus.json) holds, per GPU, the dense fp32 (no tensor cores), TF32, bf16
and fp16 TFLOP/s and the memory bandwidth, each value with its source. A user adds GPUs (or
overrides one) with a JSON file of the same shape (`--gpu-file`); a value may there be a
plain number, and its source is then the file itself. Everything is validated here, at the
edge: a bad file raises GpuError naming the value and what was expected.

These are assumptions, used for bounds and never shown as measurements.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

TABLE = Path(__file__).with_name("gpus.json")
DEFAULT_GPU = "H100 SXM"
PEAK_FIELDS = {"fp32": "fp32_tflops", "tf32": "tf32_tflops", "bf16": "bf16_tflops", "fp16": "fp16_tflops"}
FIELDS = (*PEAK_FIELDS.values(), "memory_gbps")
OPTIONAL = ("device_names",)  # what torch.cuda.get_device_name() reports, to match CUDA rows


class GpuError(ValueError):
    """A GPU table or name that cannot be used; the message is one line."""


@dataclass(frozen=True)
class GpuSpec:
    """One GPU's datasheet figures: TFLOP/s per precision (None: no such mode), memory
    bandwidth in GB/s, and the source of each value."""

    name: str
    peaks_tflops: dict
    memory_gbps: float
    sources: dict
    device_names: tuple = ()

    def peak(self, precision: str) -> float | None:
        """Dense TFLOP/s the GPU's datasheet gives for `precision` (None: not supported)."""
        return self.peaks_tflops.get(precision)


def _value(gpu: str, field: str, raw, where: str) -> tuple[float | None, str]:
    if isinstance(raw, dict):
        if "value" not in raw:
            raise GpuError(f"{where}: {gpu!r} {field} is {json.dumps(raw)}; expected a number or "
                           '{"value": number or null, "source": "..."}')
        value, source = raw["value"], raw.get("source")
        if not isinstance(source, str) or not source.strip():
            raise GpuError(f"{where}: {gpu!r} {field} has no source; expected a \"source\" string naming "
                           "the datasheet or page")
    else:
        value, source = raw, f"user file {where}"
    if value is None:
        if field == "memory_gbps":
            raise GpuError(f"{where}: {gpu!r} memory_gbps is null; expected a positive number (GB/s)")
        return None, source
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise GpuError(f"{where}: {gpu!r} {field} is {json.dumps(value)}; expected a positive number "
                       f"({'GB/s' if field == 'memory_gbps' else 'dense TFLOP/s'}) or null")
    return float(value), source


def parse_table(data, where: str) -> dict[str, GpuSpec]:
    """GpuSpecs from a decoded table: {"gpus": {name: {field: value, ...}}}."""
    gpus = data.get("gpus") if isinstance(data, dict) else None
    if not isinstance(gpus, dict) or not gpus:
        raise GpuError(f'{where}: expected a JSON object with "gpus": {{"NAME": {{{", ".join(FIELDS)}}}, ...}}')
    out = {}
    for name, entry in gpus.items():
        if not isinstance(entry, dict):
            raise GpuError(f"{where}: {name!r} is {json.dumps(entry)}; expected an object with {', '.join(FIELDS)}")
        unknown = sorted(set(entry) - set(FIELDS) - set(OPTIONAL))
        if unknown:
            raise GpuError(f"{where}: {name!r} has unknown field(s) {', '.join(unknown)}; expected "
                           f"{', '.join(FIELDS + OPTIONAL)}")
        names = entry.get("device_names", [])
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise GpuError(f"{where}: {name!r} device_names is {json.dumps(names)}; expected a list of strings")
        missing = [f for f in FIELDS if f not in entry]
        if missing:
            raise GpuError(f"{where}: {name!r} lacks {', '.join(missing)}; expected all of {', '.join(FIELDS)} "
                           "(null for a mode the GPU does not have)")
        values = {f: _value(name, f, entry[f], where) for f in FIELDS}
        out[name] = GpuSpec(name, {p: values[f][0] for p, f in PEAK_FIELDS.items()}, values["memory_gbps"][0],
                            {f: values[f][1] for f in FIELDS}, tuple(names))
    return out


def load_file(path: Path | str) -> dict[str, GpuSpec]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise GpuError(f"cannot read GPU file {path}: {e.strerror or e}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise GpuError(f"GPU file {path} is not JSON ({e.msg} at line {e.lineno}); expected "
                       '{"gpus": {"NAME": {...}}}') from None
    return parse_table(data, str(path))


def load_gpus(user_file: Path | str | None = None) -> dict[str, GpuSpec]:
    """The shipped table, with a user's file added on top (its entries win by name)."""
    table = load_file(TABLE)
    if user_file is not None:
        table.update(load_file(user_file))
    return table


def _norm(s: str) -> str:
    return "".join(c for c in s.lower() if c.isalnum())


def lookup(name: str, table: dict[str, GpuSpec]) -> GpuSpec:
    """The GPU called `name` (case and spaces, hyphens and underscores ignored)."""
    matches = [g for n, g in table.items() if _norm(n) == _norm(name)]
    if not matches:
        raise GpuError(f"unknown GPU {name!r}; expected one of {', '.join(table)} (or add it with --gpu-file)")
    return matches[-1]


def for_device(device_name: str, table: dict[str, GpuSpec]) -> GpuSpec | None:
    """The table's GPU whose device_names hold `device_name` (a CUDA row's), or None."""
    matches = [g for g in table.values() if any(_norm(n) == _norm(device_name) for n in g.device_names)]
    return matches[-1] if matches else None
