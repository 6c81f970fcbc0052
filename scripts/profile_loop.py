"""Profile one input path of the training loop (tutorial Net, fp32, CPU by default).

Run a path for some seconds, under py-spy (`pip install py-spy`) to see where the processes spend
their time, or with --torch-profiler for an operator table of 50 steps:

    py-spy record -s -r 200 -f raw -o dl32.txt -- python scripts/profile_loop.py --path dataloader --batch-size 32
    python scripts/profile_loop.py --summarize dl32.txt
    python scripts/profile_loop.py --path device --batch-size 128 --torch-profiler

Paths: ceiling (one batch already on the device), device (the harness's device-resident batches),
dataloader (torchvision CIFAR10 + ToTensor/Normalize + DataLoader, 2 workers). Findings on the
reference VM: reports/performance/vm-cpu-20261127-profile.md.
"""

from __future__ import annotations

import argparse
import collections
import re
import sys

# Functions whose share of samples the summary reports (inclusive: a nested one is part of its parent).
MAIN_FRAMES = {"Trainer.step": "Trainer.step (forward, backward, optimizer)",
               "Trainer.prepare": "  of which Trainer.prepare (batch to the device and the model's layout)",
               "_MultiProcessingDataLoaderIter._next_data": "DataLoader: waiting for and receiving a batch",
               "rebuild_storage_fd": "  of which rebuild_storage_fd (shared-memory tensors from the workers)",
               "DeviceBatches.epoch": "DeviceBatches: gather, crop/flip, normalise on the device"}
WORKER_FRAMES = {"CIFAR10.__getitem__": "CIFAR10.__getitem__ (per image)",
                 "fromarray": "  of which PIL Image.fromarray",
                 "ToTensor.__call__": "  of which ToTensor",
                 "Normalize.__call__": "  of which Normalize",
                 "default_collate": "default_collate (stacking a batch)",
                 "Queue._feed": "Queue._feed (sending batches to the main process)",
                 "Queue.get": "Queue.get (waiting for indices)"}


def summarize(path: str, rate: float) -> str:
    """Shares of py-spy raw samples (`-s -f raw`): the main loop's parts and the workers' work."""
    main: collections.Counter = collections.Counter()
    workers: collections.Counter = collections.Counter()
    worker_pids = set()
    with open(path) as f:
        for line in f:
            stack, count = line.rstrip().rsplit(" ", 1)
            frames = [re.sub(r"\s*\(.*", "", fr) for fr in stack.split(";")]
            n = int(count)
            if len(frames) > 1 and frames[1].startswith("process "):  # a child process (DataLoader worker)
                worker_pids.add(frames[1].split(":")[0])
                workers["all"] += n
                workers.update({k: n for k in WORKER_FRAMES if k in frames})
            elif "train_epoch" in frames:
                main["train_epoch"] += n
                main.update({k: n for k in MAIN_FRAMES if k in frames})
    lines = [f"main process, training loop: {main['train_epoch'] / rate:.1f} s sampled"]
    lines += [f"  {main[k] / max(main['train_epoch'], 1):6.1%}  {label}" for k, label in MAIN_FRAMES.items() if main[k]]
    if workers["all"]:
        lines.append(f"{len(worker_pids)} worker processes: {workers['all'] / rate:.1f} CPU-s sampled")
        lines += [f"  {workers[k] / workers['all']:6.1%}  {label}" for k, label in WORKER_FRAMES.items() if workers[k]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--path", choices=("ceiling", "device", "dataloader"), default="device")
    p.add_argument("--model", default="tutorial")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--torch-profiler", action="store_true", help="print an operator table of 50 steps instead")
    p.add_argument("--summarize", metavar="RAW", help="summarise a py-spy raw profile and exit")
    p.add_argument("--rate", type=float, default=200.0, help="py-spy sampling rate of --summarize's file")
    args = p.parse_args(argv)
    if args.summarize:
        print(summarize(args.summarize, args.rate))
        return 0

    import torch

    from bench import protocol
    from bench.config import default_channels_last
    from bench.perf import build_bench, measure_variants
    from cnn.data import get_dataset

    device = torch.device(args.device)
    data = get_dataset("synthetic", None, warn=lambda *a: None)
    cl = default_channels_last(args.device, args.model, args.batch_size)
    b = build_bench(data, args.model, args.batch_size, device, "fp32", cl, args.workers)
    loop = b.loops[args.path]
    if args.torch_profiler:
        from torch.profiler import ProfilerActivity, profile

        loop(5, lambda: False)  # warm-up (workers start)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            loop(50, lambda: False)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
        return 0
    # the harness's own method for `--seconds` of timed steps (bench/protocol.py)
    policy = protocol.Policy(min_steps=10, max_seconds=args.seconds, target_ci=0.0, max_steps=10**9)
    rounds = measure_variants(b, (args.path,), policy)
    m = rounds.measurement(args.path, args.batch_size, "")
    print(f"{args.path} {args.model} bs {args.batch_size}: {m.items_per_second:,.0f} img/s over {len(m.samples)} "
          f"steps (median step {1e3 * m.median:.2f} ms, IQR {1e3 * m.iqr:.2f} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
