"""`cifar-bench perf`: is the harness's own loop the bottleneck?

For each batch size, in one process, it measures training throughput of:
  ceiling      the trainer stepping on one batch already on the device (forward, backward,
               optimizer step only): what the hardware allows for this model and batch
  device       the harness's default input path (device-resident uint8, on-device crop,
               flip and normalisation), without timing instrumentation
  device+timed the same with the harness's per-step timer (bench.timing.StepTimer)
  dataloader   the classic pipeline: torchvision CIFAR10 + ToTensor/Normalize + DataLoader
               with workers (pinned memory and non_blocking copies on CUDA)
  loader-only  that pipeline alone, no training: how fast it can feed when it has the
               machine to itself (the training-free upper bound of the dataloader variant)
The timer's own cost is also measured directly: many StepTimer.mark() calls, per call,
against the step time (the end-to-end difference of device and device+timed is smaller
than the noise of a shared machine).
Each variant runs a fixed number of steps timed end to end by a Stopwatch (one sync each
side on CUDA). Variants are interleaved round by round (rotating the order, so none always
runs first or last) and summarised by the median over rounds; ratios are medians of the
per-round ratios, so slow drifts of the machine cancel.
"""

from __future__ import annotations

import argparse
import itertools
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from bench import system, timing
from bench.config import default_channels_last
from bench.markdown import to_markdown
from cnn.data import DeviceBatches, classic_loader, get_dataset
from cnn.train import Trainer, make_trainer, train_epoch

VARIANTS = ("ceiling", "device", "device+timed", "dataloader", "loader-only")
# Layout comparison (--layout): batch sizes per model that take seconds, not minutes, on a CPU.
LAYOUT_CASES = {"tutorial": (4, 32, 128, 512), "tutorial-wide": (32, 128), "resnet18": (4, 16, 64)}


@dataclass
class Bench:
    """Everything one batch size needs, built once and reused by every round."""

    trainer: Trainer
    batch_size: int
    fixed: tuple[torch.Tensor, torch.Tensor]
    device_stream: itertools.chain
    loader_stream: itertools.chain | None
    steps: int = 0


def _stream(make_epoch):
    return itertools.chain.from_iterable(make_epoch(e) for e in itertools.count())


def build_bench(data, model: str, batch_size: int, device: torch.device, precision: str, channels_last: bool,
                workers: int) -> Bench:
    """A seeded trainer and the three inputs it can step on: one fixed batch (ceiling), the
    device-resident batches and the classic DataLoader (workers start on first use)."""
    trainer = make_trainer(model, device, precision, batch_size=batch_size, seed=0, channels_last=channels_last)
    batches = DeviceBatches(data.train_x, data.train_y, batch_size, device, augment=False, seed=0,
                            channels_last=trainer.channels_last)
    x, y = next(batches.epoch(0))
    loader = classic_loader(data, batch_size, True, workers=workers, pin_memory=device.type == "cuda")
    return Bench(trainer, batch_size, (x.clone(), y.clone()), _stream(batches.epoch),
                 _stream(lambda e: iter(loader)))


def run_variant(b: Bench, variant: str) -> float:
    """Images per second of `b.steps` steps of `variant`."""
    device = b.trainer.device
    n = b.steps
    with timing.Stopwatch(device) as sw:
        if variant == "ceiling":
            train_epoch(b.trainer, itertools.repeat(b.fixed, n))
        elif variant == "device":
            train_epoch(b.trainer, itertools.islice(b.device_stream, n))
        elif variant == "device+timed":
            timer = timing.StepTimer(device, n, n, float("inf"))
            timer.start()
            train_epoch(b.trainer, itertools.islice(b.device_stream, n), on_step=timer.mark)
            timer.samples()  # reading the samples is part of what the harness pays
        elif variant == "dataloader":
            train_epoch(b.trainer, itertools.islice(b.loader_stream, n))
        elif variant == "loader-only":  # the input pipeline alone, batches copied to the device
            for x, y in itertools.islice(b.loader_stream, n):
                b.trainer.prepare(x, y)
        else:
            raise ValueError(variant)
    return n * b.batch_size / sw.seconds


def mark_cost(device: torch.device, calls: int = 20_000) -> float:
    """Seconds per StepTimer.mark() (the harness's per-step instrumentation)."""
    timer = timing.StepTimer(device, calls, calls, float("inf"))
    with timing.Stopwatch(device) as sw:
        timer.start()
        for _ in range(calls):
            timer.mark()
        timer.samples()
    return sw.seconds / calls


def calibrate(b: Bench, seconds: float) -> int:
    """Steps that take about `seconds` on the ceiling path (at least 5)."""
    train_epoch(b.trainer, itertools.repeat(b.fixed, 3))  # warm-up
    with timing.Stopwatch(b.trainer.device) as sw:
        train_epoch(b.trainer, itertools.repeat(b.fixed, 5))
    return max(5, round(5 * seconds / sw.seconds))


def paired_ratio(samples: dict[str, list[float]], a: str, b: str) -> float:
    """Median over rounds of a/b measured in the same round."""
    return statistics.median(x / y for x, y in zip(samples[a], samples[b]))


def median_iqr(values: list[float]) -> tuple[float, float]:
    q1, q2, q3 = timing.quartiles(values)
    return q2, q3 - q1


def measure_batch_sizes(args: argparse.Namespace, log=print) -> tuple[pd.DataFrame, str]:
    """The variants per model and batch size, and which data ran."""
    device = torch.device(args.device)
    data = get_dataset(args.data, args.data_dir, warn=log)
    rows = []
    for model in args.models:
        for bs in args.batch_sizes:
            cl = {"on": True, "off": False}.get(args.channels_last, default_channels_last(args.device, model, bs))
            b = build_bench(data, model, bs, device, args.precision, cl, args.workers)
            b.steps = calibrate(b, args.seconds)
            for v in VARIANTS:  # warm each path once: workers start, caches fill
                run_variant(b, v) if v != "dataloader" else train_epoch(b.trainer, itertools.islice(b.loader_stream, 3))
            samples: dict[str, list[float]] = {v: [] for v in VARIANTS}
            for r in range(args.repeats):
                order = VARIANTS[r % len(VARIANTS):] + VARIANTS[:r % len(VARIANTS)]
                for v in order:
                    samples[v].append(run_variant(b, v))
                log(f"  {model} bs {bs} round {r + 1}/{args.repeats}: "
                    + ", ".join(f"{v} {samples[v][-1]:,.0f}" for v in VARIANTS))
            row = {"model": model, "batch_size": bs, "precision": args.precision, "channels_last": cl,
                   "steps_per_round": b.steps,
                   "rounds": args.repeats}
            for v in VARIANTS:
                row[f"{v}_img_s"], row[f"{v}_iqr"] = median_iqr(samples[v])
            row["device_vs_ceiling"] = paired_ratio(samples, "device", "ceiling")
            row["device_vs_dataloader"] = paired_ratio(samples, "device", "dataloader")
            row["timing_overhead"] = 1 - paired_ratio(samples, "device+timed", "device")
            row["mark_us"] = 1e6 * mark_cost(device)
            row["mark_share"] = row["mark_us"] * 1e-6 * row["device_img_s"] / bs  # of one step's time
            row["loader_only_vs_device"] = paired_ratio(samples, "loader-only", "device")
            rows.append(row)
    return pd.DataFrame(rows), data.source


def measure_layout(args: argparse.Namespace, model: str, batch_sizes: tuple[int, ...], log=print) -> pd.DataFrame:
    """channels_last vs the default layout on the compute-only path, interleaved."""
    device = torch.device(args.device)
    rows = []
    for bs in batch_sizes:
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(bs, 3, 32, 32, generator=gen).to(device)
        y = torch.randint(0, 10, (bs,), generator=gen).to(device)
        benches = {}
        for layout in ("default", "channels_last"):
            cl = layout == "channels_last"
            trainer = make_trainer(model, device, args.precision, batch_size=bs, channels_last=cl)
            xl = x.contiguous(memory_format=torch.channels_last) if cl else x
            benches[layout] = Bench(trainer, bs, (xl, y), None, None)
        steps = calibrate(benches["default"], args.seconds)
        calibrate(benches["channels_last"], args.seconds)
        samples = {k: [] for k in benches}
        for r in range(args.repeats):
            for layout in (("default", "channels_last") if r % 2 == 0 else ("channels_last", "default")):
                benches[layout].steps = steps
                samples[layout].append(run_variant(benches[layout], "ceiling"))
            log(f"  {model} bs {bs} layout round {r + 1}: "
                + ", ".join(f"{k} {v[-1]:,.1f}" for k, v in samples.items()))
        row = {"model": model, "batch_size": bs, "precision": args.precision}
        for layout in benches:
            row[f"{layout}_img_s"], row[f"{layout}_iqr"] = median_iqr(samples[layout])
        row["channels_last_speedup"] = paired_ratio(samples, "channels_last", "default")
        rows.append(row)
    return pd.DataFrame(rows)


TARGETS = {  # on a CPU; the targets
    "device >= 90% of ceiling (bs 32, 128, 512)": lambda t: all(
        t.loc[t["batch_size"] == bs, "device_vs_ceiling"].iloc[0] >= 0.90 for bs in (32, 128, 512)
        if bs in set(t["batch_size"])),
    "device >= 3x dataloader (bs 32, 128)": lambda t: all(
        t.loc[t["batch_size"] == bs, "device_vs_dataloader"].iloc[0] >= 3.0 for bs in (32, 128)
        if bs in set(t["batch_size"])),
    "timing instrumentation <= 2% (direct: mark() cost per step)": lambda t: bool((t["mark_share"] <= 0.02).all()),
}


def render(table: pd.DataFrame, layout: pd.DataFrame | None, args: argparse.Namespace, info: dict,
           data_source: str, command: str, seconds: float) -> str:
    show = table[["model", "batch_size", "channels_last", "ceiling_img_s", "device_img_s", "device+timed_img_s",
                  "dataloader_img_s", "loader-only_img_s", "device_vs_ceiling", "device_vs_dataloader",
                  "timing_overhead", "mark_share", "steps_per_round"]].copy()
    show.columns = ["model", "batch", "channels_last", "ceiling img/s", "device img/s", "device+timing img/s",
                    f"DataLoader ({args.workers} workers) img/s", "DataLoader alone img/s", "device / ceiling",
                    "device / DataLoader", "timing overhead (end to end)", "timing overhead (direct)",
                    "steps per round"]
    for col in show.columns:
        if col.endswith("img/s"):
            show[col] = show[col].map(lambda v: f"{v:,.0f}")
    for col in ("device / ceiling", "device / DataLoader"):
        show[col] = show[col].map(lambda v: f"{v:.2f}")
    show["timing overhead (end to end)"] = show["timing overhead (end to end)"].map(lambda v: f"{v:+.1%}")
    show["timing overhead (direct)"] = show["timing overhead (direct)"].map(lambda v: f"{v:.3%}")
    device_name = system.device_name(args.device)
    lines = [
        f"# Loop performance: {args.device} ({device_name}), {args.precision}",
        "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M')} on `{info['host']}` ({info['cpu_model']}, "
        f"{info['cpu_logical_cores']} logical cores, torch {info['torch']}, {torch.get_num_threads()} threads), "
        f"data: **{data_source}**, {args.repeats} interleaved rounds of about {args.seconds:g} s per variant, "
        f"wall time {seconds:.0f} s.",
        "",
        f"Command: `{command}`",
        "",
        "Throughputs are medians over rounds; ratios are medians of per-round ratios. *ceiling*: the trainer "
        "stepping on one batch already on the device; *device*: the harness's device-resident input path; "
        "*device+timing*: the same with the per-step timer the harness uses; *DataLoader*: torchvision CIFAR10 "
        "with ToTensor/Normalize through a DataLoader; *DataLoader alone*: the same pipeline iterated without "
        "training. Timing overhead: *end to end* is 1 - (device+timing)/device, within the machine's noise; "
        "*direct* is the measured cost of the timer's per-step call "
        f"({table['mark_us'].median():.2f} us) over the device path's step time.",
        "",
        to_markdown(show),
        "",
    ]
    if args.device == "cpu":
        lines += ["Targets on a CPU:", ""]
        for name, check in TARGETS.items():
            lines.append(f"- {name}: **{'met' if check(table) else 'missed'}**")
        lines.append("")
    if layout is not None and not layout.empty:
        lv = layout[["model", "batch_size", "default_img_s", "channels_last_img_s", "channels_last_speedup"]].copy()
        lv.columns = ["model", "batch", "default layout img/s", "channels_last img/s", "channels_last / default"]
        for col in ("default layout img/s", "channels_last img/s"):
            lv[col] = lv[col].map(lambda v: f"{v:,.1f}" if v < 100 else f"{v:,.0f}")
        lv["channels_last / default"] = lv["channels_last / default"].map(lambda v: f"{v:.2f}")
        lines += ["## Memory layout (compute-only path)", "",
                  "Each model's compute-only step in the default NCHW layout and in channels_last (NHWC), "
                  "interleaved; the faster one is the harness's default for this device "
                  "(`bench/config.py: CHANNELS_LAST_DEFAULT`).", "",
                  to_markdown(lv), ""]
    lines += [f"Python {platform.python_version()}, {info['os']}."]
    return "\n".join(lines) + "\n"


def run_perf(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    info = system.system_info()
    print(f"perf: {args.device}, models {','.join(args.models)}, batch sizes "
          f"{','.join(map(str, args.batch_sizes))}, {args.repeats} rounds", flush=True)
    table, data_source = measure_batch_sizes(args, log=lambda m: print(m, flush=True))
    layout = None
    if args.layout:
        layout = pd.concat([measure_layout(args, model, sizes, log=lambda m: print(m, flush=True))
                            for model, sizes in LAYOUT_CASES.items()], ignore_index=True)
    seconds = time.perf_counter() - started
    command = "cifar-bench " + " ".join(sys.argv[1:]) if sys.argv and "bench" in sys.argv[0] else "cifar-bench perf"
    text = render(table, layout, args, info, data_source, command, seconds)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{info['host']}-{args.device.replace(':', '')}-{time.strftime('%Y%m%d')}"
    (out / f"{stem}.md").write_text(text)
    table.to_csv(out / f"{stem}.csv", index=False)
    if layout is not None:
        layout.to_csv(out / f"{stem}-layout.csv", index=False)
    print(text)
    print(f"perf: written to {out / (stem + '.md')}")
    return 0
