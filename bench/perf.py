"""`cifar-bench perf`: is the harness's own loop the bottleneck?

For each batch size, in one process, it measures training throughput of:
  ceiling      the trainer stepping on one batch already on the device (forward, backward,
               optimizer step only): what the hardware allows for this model and batch
  device       the harness's default input path (device-resident uint8, on-device crop,
               flip and normalisation)
  dataloader   the classic pipeline: torchvision CIFAR10 + ToTensor/Normalize + DataLoader
               with workers (pinned memory and non_blocking copies on CUDA)
  loader-only  that pipeline alone, no training: how fast it can feed when it has the
               machine to itself (the training-free upper bound of the dataloader variant)
with the sweep's own method (bench/protocol.py): warm-up until settled, then interleaved
rounds of every variant, each step timed, until every median is known within the target or
the time ends. Throughput = images / total timed time; ratios are medians of the per-round
ratios, so slow drifts of the machine cancel. The timer's own cost is measured directly:
many StepTimer.mark() calls, per call, against the step time. Results are written after
each batch size, so an interrupted run keeps what it measured.
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

from bench import protocol, system, timing
from bench.config import RunConfig, default_channels_last
from bench.markdown import to_markdown
from bench.measure import ceiling_loop, cudnn_benchmark, endless_batches, training_loop
from cnn.data import DeviceBatches, classic_loader, get_dataset
from cnn.train import Trainer, make_trainer

VARIANTS = ("ceiling", "device", "dataloader", "loader-only")
# Layout comparison (--layout): batch sizes per model and device kind. CPU: those that take
# seconds, not minutes. CUDA: a small and a large batch of each model in the gpu-check grid
# (small ones are bound by host dispatch, where the layout hardly matters).
LAYOUT_CASES = {"cpu": {"tutorial": (4, 32, 128, 512), "tutorial-wide": (32, 128), "resnet18": (4, 16, 64)},
                "cuda": {"tutorial": (32, 2048), "tutorial-wide": (128, 2048), "resnet18": (16, 512)}}


@dataclass
class Bench:
    """Everything one batch size needs, built once: a seeded trainer and the loops it can
    step through (bench/protocol.Loop)."""

    trainer: Trainer
    batch_size: int
    loops: dict[str, protocol.Loop]


def loader_only_loop(trainer: Trainer, stream) -> protocol.Loop:
    """The input pipeline alone: batches copied to the device, no training step."""
    def run(n, on_step):
        for x, y in itertools.islice(stream, n):
            trainer.prepare(x, y)
            if on_step():
                break
    return run


def build_bench(data, model: str, batch_size: int, device: torch.device, precision: str, channels_last: bool,
                workers: int) -> Bench:
    """A seeded trainer and its loops: one fixed batch (ceiling), the device-resident batches
    and the classic DataLoader (workers start on first use)."""
    trainer = make_trainer(model, device, precision, batch_size=batch_size, seed=0, channels_last=channels_last)
    batches = DeviceBatches(data.train_x, data.train_y, batch_size, device, augment=False, seed=0,
                            channels_last=trainer.channels_last)
    device_stream = endless_batches(batches.epoch)
    loader = classic_loader(data, batch_size, True, workers=workers, pin_memory=device.type == "cuda")
    loader_stream = endless_batches(lambda e: iter(loader))
    return Bench(trainer, batch_size, {
        "ceiling": ceiling_loop(trainer, endless_batches(batches.epoch)),
        "device": training_loop(trainer, device_stream),
        "dataloader": training_loop(trainer, loader_stream),
        "loader-only": loader_only_loop(trainer, loader_stream),
    })


def perf_policy(args: argparse.Namespace, variants: int = len(VARIANTS)) -> protocol.Policy:
    """`repeats` rounds of about `seconds` per variant each, for the `variants` measured
    together, all of them used (no early stop: the point is the ratios, measured over the
    same rounds)."""
    return protocol.Policy(min_steps=args.repeats, max_seconds=args.seconds * args.repeats * variants,
                           rounds=args.repeats, target_ci=0.0, warmup_seconds=1.0, max_config_seconds=float("inf"))


def measure_variants(b: Bench, variants: tuple[str, ...], policy: protocol.Policy) -> protocol.Rounds:
    """Warm every variant (workers start, caches fill), then interleaved rounds of all."""
    device = b.trainer.device
    steady = max(protocol.warm_up(b.loops[v], device, policy).steady for v in variants)
    return protocol.measure({v: b.loops[v] for v in variants}, steady, device, policy)


def paired_ratio(rounds: protocol.Rounds, a: str, b: str, batch: int) -> float:
    """Median over rounds of a/b measured in the same round."""
    return statistics.median(x / y for x, y in zip(rounds.per_round(a, batch), rounds.per_round(b, batch)))


def median_iqr(values: list[float]) -> tuple[float, float]:
    q1, q2, q3 = timing.quartiles(values)
    return q2, q3 - q1


def measure_batch_size(args: argparse.Namespace, data, model: str, bs: int, log=print) -> dict:
    device = torch.device(args.device)
    cl = {"on": True, "off": False}.get(args.channels_last, default_channels_last(args.device, model, bs))
    b = build_bench(data, model, bs, device, args.precision, cl, args.workers)
    rounds = measure_variants(b, VARIANTS, perf_policy(args))
    row = {"model": model, "batch_size": bs, "precision": args.precision, "channels_last": cl,
           "steps_per_round": rounds.block, "rounds": rounds.rounds}
    for v in VARIANTS:
        m = rounds.measurement(v, bs, "")
        row[f"{v}_img_s"] = m.items_per_second
        row[f"{v}_iqr"] = median_iqr(rounds.per_round(v, bs))[1]
    row["device_vs_ceiling"] = paired_ratio(rounds, "device", "ceiling", bs)
    row["device_vs_dataloader"] = paired_ratio(rounds, "device", "dataloader", bs)
    row["mark_us"] = 1e6 * timing.mark_cost(device)
    row["mark_share"] = row["mark_us"] * 1e-6 * row["device_img_s"] / bs  # of one step's time
    row["loader_only_vs_device"] = paired_ratio(rounds, "loader-only", "device", bs)
    log(f"  {model} bs {bs}: {rounds.rounds} rounds of {rounds.block} steps: "
        + ", ".join(f"{v} {row[f'{v}_img_s']:,.0f}" for v in VARIANTS))
    return row


def measure_layout(args: argparse.Namespace, model: str, batch_sizes: tuple[int, ...], log=print) -> pd.DataFrame:
    """channels_last vs the default layout on the compute-only path, interleaved."""
    device = torch.device(args.device)
    rows = []
    for bs in batch_sizes:
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(bs, 3, 32, 32, generator=gen).to(device)
        y = torch.randint(0, 10, (bs,), generator=gen).to(device)
        loops = {}
        for layout in ("default", "channels_last"):
            cl = layout == "channels_last"
            trainer = make_trainer(model, device, args.precision, batch_size=bs, channels_last=cl)
            loops[layout] = ceiling_loop(trainer, iter([(x, y)]))
        b = Bench(trainer, bs, loops)
        rounds = measure_variants(b, ("default", "channels_last"), perf_policy(args, len(loops)))
        row = {"model": model, "batch_size": bs, "precision": args.precision}
        for layout in loops:
            row[f"{layout}_img_s"] = rounds.measurement(layout, bs, "").items_per_second
            row[f"{layout}_iqr"] = median_iqr(rounds.per_round(layout, bs))[1]
        row["channels_last_speedup"] = paired_ratio(rounds, "channels_last", "default", bs)
        log(f"  {model} bs {bs} layout: default {row['default_img_s']:,.1f}, channels_last "
            f"{row['channels_last_img_s']:,.1f} img/s")
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
           data_source: str, command: str, seconds: float, partial: bool = False) -> str:
    show = table[["model", "batch_size", "channels_last", "ceiling_img_s", "device_img_s", "dataloader_img_s",
                  "loader-only_img_s", "device_vs_ceiling", "device_vs_dataloader", "mark_share", "rounds",
                  "steps_per_round"]].copy()
    show.columns = ["model", "batch", "channels_last", "ceiling img/s", "device img/s",
                    f"DataLoader ({args.workers} workers) img/s", "DataLoader alone img/s", "device / ceiling",
                    "device / DataLoader", "timing overhead", "rounds", "steps per round"]
    for col in show.columns:
        if col.endswith("img/s"):
            show[col] = show[col].map(lambda v: f"{v:,.0f}")
    for col in ("device / ceiling", "device / DataLoader"):
        show[col] = show[col].map(lambda v: f"{v:.2f}")
    show["timing overhead"] = show["timing overhead"].map(lambda v: f"{v:.3%}")
    device_name = system.device_name(args.device)
    lines = [
        f"# Loop performance: {args.device} ({device_name}), {args.precision}",
        "",
        *(["**Partial: the run is still going or was interrupted; the rows below are the batch sizes finished "
           "so far.**", ""] if partial else []),
        f"Measured {time.strftime('%Y-%m-%d %H:%M')} on `{info['host']}` ({info['cpu_model']}, "
        f"{info['cpu_logical_cores']} logical cores, torch {info['torch']}, {torch.get_num_threads()} threads), "
        f"data: **{data_source}**, {args.repeats} interleaved rounds of about {args.seconds:g} s per variant, "
        f"wall time {seconds:.0f} s.",
        "",
        f"Command: `{command}`",
        "",
        "Measured with the sweep's method (bench/protocol.py): every step timed, variants interleaved round by "
        "round. Throughput = images / total timed time of the variant; ratios are medians of per-round ratios. "
        "*ceiling*: the trainer stepping on one batch already on the device; *device*: the harness's "
        "device-resident input path; *DataLoader*: torchvision CIFAR10 with ToTensor/Normalize through a "
        "DataLoader; *DataLoader alone*: the same pipeline iterated without training. Timing overhead: the "
        f"measured cost of the timer's per-step call ({table['mark_us'].median():.2f} us) over the device "
        "path's step time." + (" cuDNN autotuning (`cudnn.benchmark`) on, as in the sweep's rows."
                                if args.device.startswith("cuda") else ""),
        "",
        to_markdown(show),
        "",
    ]
    if args.device == "cpu" and not partial:
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
    """Measure, writing the .md and .csv after every batch size (a run cut short keeps
    what it measured, marked partial)."""
    started = time.perf_counter()
    info = system.system_info()
    log = lambda m: print(m, flush=True)
    log(f"perf: {args.device}, models {','.join(args.models)}, batch sizes "
        f"{','.join(map(str, args.batch_sizes))}, {args.repeats} rounds")
    command = "cifar-bench " + " ".join(sys.argv[1:]) if sys.argv and "bench" in sys.argv[0] else "cifar-bench perf"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{info['host']}-{args.device.replace(':', '')}-{time.strftime('%Y%m%d')}"
    data = get_dataset(args.data, args.data_dir, warn=log)
    rows, layout = [], None

    def write(partial: bool) -> str:
        table = pd.DataFrame(rows)
        text = render(table, layout, args, info, data.source, command, time.perf_counter() - started, partial)
        (out / f"{stem}.md").write_text(text)
        table.to_csv(out / f"{stem}.csv", index=False)
        if layout is not None:
            layout.to_csv(out / f"{stem}-layout.csv", index=False)
        return text

    # cuDNN autotuning as the sweep's rows run (RunConfig.cudnn_benchmark): the layout verdicts
    # set the layout default of those rows, so they are taken under the same algorithm choice.
    with cudnn_benchmark(torch.device(args.device), RunConfig.cudnn_benchmark):
        for model in args.models:
            for bs in args.batch_sizes:
                rows.append(measure_batch_size(args, data, model, bs, log))
                write(partial=True)
        if args.layout:
            parts = []
            for model, sizes in LAYOUT_CASES[torch.device(args.device).type].items():
                parts.append(measure_layout(args, model, sizes, log))
                layout = pd.concat(parts, ignore_index=True)
                write(partial=True)
    print(write(partial=False))
    print(f"perf: written to {out / (stem + '.md')}")
    return 0
