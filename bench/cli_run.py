"""`cifar-bench run`: a sweep in this process, or re-executed through torchrun
(`--nproc`/`--nnodes`), with its exit status (0; 1 when a configuration failed, after
everything was saved; 2 bad input; 130 interrupted)."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from bench.cliargs import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE, UsageError, validate_user_models


def check_devices(devices: Sequence[str]) -> None:
    """A CUDA device asked for must exist here; else a UsageError that says what torch reports."""
    import torch

    if any(d.startswith("cuda") for d in devices):
        if not torch.cuda.is_available():
            built = f"built with CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise UsageError(f"CUDA requested but torch.cuda.is_available() is False (torch {torch.__version__}, "
                             f"{built}); run on a machine with an NVIDIA GPU or use --devices cpu")
        for d in devices:
            if ":" in d and int(d.split(":")[1]) >= torch.cuda.device_count():
                raise UsageError(f"device {d!r} does not exist: this machine has {torch.cuda.device_count()} GPU(s)")


def default_out(devices: Sequence[str], world_size: int = 1) -> Path:
    import socket

    stamp = time.strftime("%Y%m%d-%H%M%S")
    procs = f"-x{world_size}" if world_size > 1 else ""
    return Path("runs") / f"{socket.gethostname()}-{'-'.join(d.replace(':', '') for d in devices)}{procs}-{stamp}"


def _check_launch(args: argparse.Namespace, topo) -> bool:
    """Validate the scale-out flags; True when this command is to launch torchrun."""
    launch = args.nproc is not None or args.nnodes is not None
    if topo is not None and launch:
        raise UsageError("--nproc/--nnodes launch torchrun, but this process already runs under torchrun "
                         f"(WORLD_SIZE={topo.world_size}); drop them or launch with plain `cifar-bench run --nproc N`")
    given = [f for f, v in (("--node-rank", args.node_rank), ("--master-addr", args.master_addr),
                            ("--master-port", args.master_port)) if v is not None]
    if given and not launch:
        raise UsageError(f"{', '.join(given)} only apply to a launch; add --nproc N (processes per node) "
                         "and/or --nnodes N")
    nnodes = args.nnodes or 1
    if nnodes > 1 and (args.master_addr is None or args.master_port is None or args.node_rank is None):
        raise UsageError(f"--nnodes {nnodes} needs --node-rank, --master-addr and --master-port on every node "
                         "(node 0's address and a free port on it)")
    if args.node_rank is not None and args.node_rank >= nnodes:
        raise UsageError(f"--node-rank {args.node_rank} is out of range for --nnodes {nnodes}; "
                         f"expected 0 to {nnodes - 1}")
    if launch and any(d.startswith("cuda") for d in args.devices):
        import torch

        if (args.nproc or 1) > torch.cuda.device_count():
            raise UsageError(f"--nproc {args.nproc} is more than this machine's {torch.cuda.device_count()} GPU(s); "
                             "CUDA runs use one GPU per process")
    return launch


def launch_torchrun(args: argparse.Namespace, out: Path) -> int:
    """Re-run this command through torchrun; the workers write into `out`."""
    import shlex
    import subprocess

    from bench.distributed import strip_launch_flags, torchrun_command, worker_env

    worker_argv = strip_launch_flags(args.argv)
    if args.out is None:  # fixed here, so that it is known before the workers start
        worker_argv += ["--out", str(out)]
    nproc, nnodes = args.nproc or 1, args.nnodes or 1
    cmd = torchrun_command(worker_argv, nproc, nnodes, args.node_rank or 0, args.master_addr, args.master_port)
    print(f"cifar-bench: {nproc} process(es) x {nnodes} node(s) through torchrun: {shlex.join(cmd)}", flush=True)
    proc = subprocess.Popen(cmd, env=worker_env())
    try:
        rc = proc.wait()
    except KeyboardInterrupt:  # the workers got the same Ctrl-C; let torchrun stop them
        proc.wait()
        return EXIT_INTERRUPTED
    if rc != 0:
        print(f"cifar-bench: error: torchrun exited with status {rc}; the workers' messages are above. "
              f"Finished configurations are in {out}", file=sys.stderr)
    return rc


def grid_given(args: argparse.Namespace) -> bool:
    """The user chose the grid by hand (no preset follow-ups, and a --resume plans anew)."""
    return any(v is not None for v in (args.models, args.batch_sizes, args.precisions, args.epochs, args.seeds,
                                       args.seed, args.threads))


def sweep_request(args: argparse.Namespace, world: int = 1):
    """The SweepRequest the flags of `cifar-bench run` stand for (the Python API builds the
    same one)."""
    from bench.config import SweepRequest

    seeds = None
    base = args.seed or 0
    if args.seeds is not None:
        seeds = tuple(range(base, base + args.seeds[1])) if args.seeds[0] == "count" else args.seeds
    elif args.seed is not None:
        seeds = (args.seed,)
    budget = {k: getattr(args, k) for k in ("max_config_seconds", "max_seconds") if getattr(args, k) is not None}
    on_off = {"auto": None, "on": True, "off": False}
    return SweepRequest(
        preset=args.preset or "standard", devices=args.devices, models=args.models, batch_sizes=args.batch_sizes,
        precisions=args.precisions, epochs=args.epochs, seeds=seeds, threads=args.threads,
        channels_last=on_off[args.channels_last], compile=args.compile or args.compile_mode is not None,
        compile_mode=None if args.compile_mode in (None, "default") else args.compile_mode,
        augment=on_off[args.augment], data_paths=args.data_paths, train_size=args.train_size,
        test_size=args.test_size, target_accuracy=args.target_accuracy, budget=budget, passes=args.passes,
        # A scale-out sweep is compared with a one-process run folder; CPU reference runs
        # spread over the GPU job's processes would only cost time.
        cpu_reference=False if args.no_cpu_reference or world > 1 else None,
    )


def plan_sweep(args: argparse.Namespace, world: int = 1, check: bool = True) -> tuple[list, Path, bool]:
    """(configurations, run folder, whether they come from the folder's sweep.json) of the
    parsed flags of `cifar-bench run`, checked at the edge (UsageError with one line).
    `check=False`: devices asked for need not exist here (`--plan`)."""
    import dataclasses
    import json

    from bench.config import RunConfig, build_sweep

    if check:
        check_devices(args.devices)
    if args.out is not None and args.out.exists() and not args.out.is_dir():
        raise UsageError(f"--out {args.out} is a file, expected a folder")
    if args.resume and args.out is None:
        raise UsageError("--resume needs --out RUN_DIR (the folder of the sweep to continue)")
    if args.retry_all and not args.resume:
        raise UsageError("--retry-all only applies with --resume")
    out = args.out or default_out(args.devices, world)
    from_file = args.resume and not grid_given(args) and (out / "sweep.json").exists()
    if from_file:  # the sweep as recorded, planned time-to-accuracy runs included
        configs = [RunConfig.from_dict(d) for d in json.loads((out / "sweep.json").read_text())]
        # a budget flag given with --resume applies to what runs now (a skipped row, retried)
        budget = {k: v for k, v in (("max_config_seconds", args.max_config_seconds),
                                    ("max_seconds", args.max_seconds)) if v is not None}
        if budget:
            configs = [dataclasses.replace(c, **budget) for c in configs]
    else:
        configs = build_sweep(sweep_request(args, world))
    validate_user_models(c.model for c in configs)
    return configs, out, from_file


def cmd_run(args: argparse.Namespace) -> int:
    from bench import distributed
    from bench.results import to_frame
    from bench.runfolder import RunFolderError, check_run_folder
    from cnn.data import DataError

    if args.plan:
        return print_plan(args)
    topo = distributed.topology_from_env()
    launch = _check_launch(args, topo)
    world = (args.nproc or 1) * (args.nnodes or 1) if launch else (topo.world_size if topo else 1)
    configs, out, from_file = plan_sweep(args, world)
    if launch:
        if (args.node_rank or 0) == 0:  # the folder lives on node 0: refuse early, in one line
            try:
                check_run_folder(out, args.resume)
            except RunFolderError as e:
                raise UsageError(str(e)) from None
        return launch_torchrun(args, out)
    if topo is not None:
        return _run_worker(args, topo, configs, out)
    print(f"cifar-bench: {plural(len(configs), 'configuration')}, {visits_text(configs)} -> {out}", flush=True)
    estimate = sweep_plan(args, configs, out, from_file)
    if estimate.total() is not None:
        basis = "measured" if all(v.source == "measured" for v in estimate.visits) else "assumed"
        print(f"cifar-bench: estimated {estimate.total():.0f} s ({basis} step times; `--plan` shows the "
              "arithmetic)", flush=True)
    runner = runner_for(args, out, lambda m: print(m, flush=True), False if args.no_progress else None)
    started = time.perf_counter()
    try:
        rows = runner.run(configs, resume=args.resume, retry_all=args.retry_all, followup=followup_for(args, from_file))
    except (RunFolderError, DataError) as e:
        raise UsageError(str(e)) from None
    except KeyboardInterrupt:
        saved = len(runner.store.load(warn=lambda m: None)) if runner.store.jsonl.exists() else 0
        print(f"\ncifar-bench: interrupted. {saved} finished configurations are saved in "
              f"{runner.store.jsonl}; continue with: cifar-bench run --out {out} --resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    all_rows = runner.store.load()
    print(results_table(to_frame(all_rows)))
    return _finish(rows, f"in {time.perf_counter() - started:.0f} s; results in {out}")


def plan_data(args: argparse.Namespace) -> str:
    """The data kind a sweep will run, as far as it is known before it runs: `auto` takes
    CIFAR-10 when --data-dir holds it (else it would try a download, then synthetic)."""
    if args.data != "auto":
        return args.data
    from cnn.data import find_cifar10_folder

    return "cifar10" if find_cifar10_folder(Path(args.data_dir)) is not None else "synthetic"


def sweep_plan(args: argparse.Namespace, configs: list, out: Path, from_file: bool):
    """The plan of a sweep (bench/plan.py), with the step times measured in `out` where it
    holds results (a --resume), else the preset's sizing assumptions."""
    from bench import plan
    from bench.config import PRESET_TABLE
    from bench.results import ResultsStore

    rows = ResultsStore(out).load(warn=lambda m: None) if (out / "results.jsonl").exists() else []
    times = plan.StepTimes.from_rows(rows, PRESET_TABLE[args.preset or "standard"].sizing)
    followup = None if from_file and args.preset is None else time_to_accuracy_plan(args, grid_given(args))
    preset = PRESET_TABLE[args.preset or "standard"]
    return plan.build(configs, times, followup, data=plan_data(args), probe_seconds=preset.probe_seconds,
                      rows=rows if args.resume else (), retry_all=args.retry_all)


def print_plan(args: argparse.Namespace) -> int:
    """`cifar-bench run ... --plan`: the visits in order, fewest steps, estimates; runs nothing."""
    from bench import plan

    configs, out, from_file = plan_sweep(args, check=False)
    print(f"cifar-bench: the plan of `run` with these flags ({len(configs)} configurations, data "
          f"{plan_data(args)}); nothing is run")
    print(plan.render(sweep_plan(args, configs, out, from_file)), end="")
    return 0


def runner_for(args: argparse.Namespace, out: Path, log, progress: bool | None):
    """The Runner of `cifar-bench run`'s flags (the command and the Python API)."""
    from bench.config import PRESET_TABLE
    from bench.runner import Runner

    return Runner(out, data_kind=args.data, data_dir=args.data_dir, log=log, progress=progress,
                  probe_seconds=PRESET_TABLE[args.preset or "standard"].probe_seconds)


def followup_for(args: argparse.Namespace, from_file: bool):
    """The runs planned after the grid: a plain --resume runs what sweep.json holds; --resume
    --preset NAME plans the preset's follow-ups too."""
    return None if from_file and args.preset is None else time_to_accuracy_plan(args, grid_given(args))


def time_to_accuracy_plan(args: argparse.Namespace, by_hand: bool):
    """The preset's time-to-accuracy runs, planned from the grid's results (none when the
    user chose the grid by hand, or asked for no accuracy runs with --epochs 0)."""
    from bench.config import PRESET_TABLE
    from bench.targets import plan_time_to_accuracy

    preset = PRESET_TABLE[args.preset or "standard"]
    if not preset.time_to_accuracy or by_hand or args.epochs == 0:
        return None
    return lambda rows: plan_time_to_accuracy(rows, preset.time_to_accuracy, preset.tta_seeds, preset.tta_epochs,
                                              candidates=preset.tta_candidates, target=args.target_accuracy)


def plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def visits_text(configs: list) -> str:
    """How many visits a sweep plans: every throughput configuration once per pass, the
    accuracy runs once (time-to-accuracy runs come after, planned from the grid)."""
    from bench.passes import is_grid

    grid = [c for c in configs if is_grid(c)]
    passes = max((c.passes for c in grid), default=1)
    visits = sum(c.passes for c in grid) + len(configs) - len(grid)
    return f"{plural(visits, 'visit')}" + (f" (the throughput grid in {passes} passes)" if passes > 1 else "")


def _finish(rows: list[dict], where: str) -> int:
    """The sweep's last line, and its exit status: 1 when a configuration failed (the
    harness or the machine, not a result: everything else was saved; --resume runs it again)."""
    n_ok = sum(r.get("status") == "ok" for r in rows)
    failed = [r for r in rows if r.get("status") == "failed"]
    print(f"cifar-bench: {plural(len(rows), 'configuration')} run ({n_ok} ok) {where}")
    if failed:
        print(f"cifar-bench: error: {len(failed)} configuration(s) failed (see errors.log); the other results are "
              "saved, and `--resume` runs the failed ones again", file=sys.stderr)
        return EXIT_FAILED
    return 0


def _run_worker(args: argparse.Namespace, topo, configs: list, out: Path) -> int:
    """One process of a torchrun job. Rank 0 prints and writes; the others stay quiet
    unless they fail."""
    from bench.config import PRESET_TABLE
    from bench.distributed import Distributed, RankFailed
    from bench.results import to_frame
    from bench.runfolder import RunFolderError
    from bench.runner import Runner
    from cnn.data import DataError

    cuda = any(d.startswith("cuda") for d in args.devices)
    dist = Distributed(topo, cuda=cuda, timeout_s=args.dist_timeout)
    try:
        if dist.is_main:
            print(f"cifar-bench: {len(configs)} configurations -> {out} ({topo.world_size} processes on "
                  f"{topo.nodes} node(s), {dist.backend})", flush=True)
        runner = Runner(out, data_kind=args.data, data_dir=args.data_dir, log=lambda m: print(m, flush=True),
                        progress=False if args.no_progress else None, dist=dist,
                        probe_seconds=PRESET_TABLE[args.preset or "standard"].probe_seconds)
        started = time.perf_counter()
        try:
            rows = runner.run(configs, resume=args.resume, retry_all=args.retry_all)
        except (RunFolderError, DataError) as e:
            if dist.is_main:
                raise UsageError(str(e)) from None
            return EXIT_USAGE  # rank 0 says why
        except RankFailed as e:
            print(f"cifar-bench: error: {e}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:  # every process gets the Ctrl-C; rank 0 says how to go on
            if dist.is_main:
                print(f"\ncifar-bench: interrupted. Finished configurations are saved in {runner.store.jsonl}; "
                      "continue with the same command and --resume", file=sys.stderr)
            return EXIT_INTERRUPTED
        if dist.is_main:
            print(results_table(to_frame(runner.store.load())))
            return _finish(rows, f"on {topo.world_size} processes in {time.perf_counter() - started:.0f} s; "
                                 f"results in {out}")
        return 0
    finally:
        dist.close()


def results_table(frame) -> str:
    if frame.empty:
        return "(no results)"
    # MFU is the report's: it divides by the higher of the peak probes before and after the sweep
    cols = ["device", "model", "batch_size", "precision", "seed", "epochs", "status", "train_images_per_s",
            "train_images_per_s_low", "train_images_per_s_high", "epoch_seconds", "test_accuracy", "peak_memory_mb"]
    if (frame["world_size"].fillna(1) > 1).any():
        cols[cols.index("status"):cols.index("status")] = ["world_size", "backend"]
    from bench.results import markdown_table
    return markdown_table(frame, cols)


