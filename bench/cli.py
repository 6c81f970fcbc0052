"""`cifar-bench` / `python -m bench`: run, report, equivalence, perf.

Input is validated here, at the edge: a bad value ends the command with one line naming
the value and what was expected, and exit status 2 (no traceback). `run` exits 1 when a
configuration failed (everything else is saved first), 130 when interrupted.

`equivalence` exit status: 0 every pair equivalent or inconclusive, 3 at least one pair not
equivalent (a verdict), 1 an error (results that cannot be compared), 2 bad usage.

`run --nproc N` (and `--nnodes` ...) validates the arguments, then re-executes the same
command through torchrun (`python -m torch.distributed.run ... -m bench run ...`) without
the launch flags; each worker finds itself in a torchrun job from the environment.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

EXIT_FAILED = 1  # run: a configuration failed (after saving everything)
EXIT_ERROR = 1  # equivalence, report, summary: results that cannot be compared
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class UsageError(Exception):
    """Bad input: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not argparse's usage block
        raise UsageError(f"{message} (see `{self.prog} --help`)")


# ---- value parsers (argparse `type=`) ---------------------------------------------------

def _bad(value: str, expected: str) -> argparse.ArgumentTypeError:
    return argparse.ArgumentTypeError(f"could not parse value: {value!r}; expected {expected}")


def positive_int(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise _bad(value, "a positive integer") from None
    if n < 1:
        raise _bad(value, "a positive integer")
    return n


def non_negative_int(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise _bad(value, "an integer >= 0") from None
    if n < 0:
        raise _bad(value, "an integer >= 0")
    return n


def positive_float(value: str) -> float:
    try:
        x = float(value)
    except ValueError:
        raise _bad(value, "a positive number") from None
    if not x > 0 or x != x or x == float("inf"):
        raise _bad(value, "a positive number")
    return x


def alpha_level(value: str) -> float:
    """A significance level strictly between 0 and 0.5 (the TOST interval is 1 - 2 alpha)."""
    try:
        x = float(value)
    except ValueError:
        raise _bad(value, "a significance level between 0 and 0.5, such as 0.05") from None
    if not 0 < x < 0.5:
        raise _bad(value, "a significance level between 0 and 0.5, such as 0.05")
    return x


def fraction(value: str) -> float:
    """A fraction 0..1, or a percentage 1..100."""
    try:
        x = float(value)
    except ValueError:
        raise _bad(value, "an accuracy such as 0.6 or 60") from None
    if 1 < x <= 100:
        x /= 100
    if not 0 < x <= 1:
        raise _bad(value, "an accuracy such as 0.6 or 60")
    return x


def comma_list(item: Callable[[str], object], what: str) -> Callable[[str], tuple]:
    def parse(value: str) -> tuple:
        parts = [p.strip() for p in value.split(",")]
        if not value.strip() or any(not p for p in parts):
            raise _bad(value, f"a comma-separated list of {what}")
        out = []
        for p in parts:
            try:
                out.append(item(p))
            except argparse.ArgumentTypeError:
                raise _bad(value, f"a comma-separated list of {what}") from None
        return tuple(dict.fromkeys(out))
    return parse


def choice_list(choices: Sequence[str], what: str) -> Callable[[str], tuple]:
    def item(p: str) -> str:
        if p not in choices:
            raise argparse.ArgumentTypeError(p)
        return p

    def parse(value: str) -> tuple:
        try:
            return comma_list(item, what)(value)
        except argparse.ArgumentTypeError:
            bad = [p.strip() for p in value.split(",") if p.strip() not in choices]
            raise argparse.ArgumentTypeError(
                f"unknown {what} {', '.join(repr(b) for b in bad) or repr(value)}; "
                f"expected one or more of {', '.join(choices)}") from None
    return parse


def model_list(value: str) -> tuple:
    """Named models and user models (`package.module:callable`, `path/to/file.py:callable`).
    Only the form is checked here; `validate_user_models` loads and tries them."""
    from cnn.models import is_user_model, model_names

    names = model_names()
    try:
        return choice_list(names, "model")(value)
    except argparse.ArgumentTypeError as e:
        bad = [p.strip() for p in value.split(",") if p.strip() not in names and not is_user_model(p.strip())]
        if not bad and value.strip() and all(p.strip() for p in value.split(",")):
            return tuple(dict.fromkeys(p.strip() for p in value.split(",")))
        raise argparse.ArgumentTypeError(f"{e}, or a user model as package.module:callable or "
                                         "path/to/file.py:callable") from None


def validate_user_models(models) -> None:
    """Load each user model and run one batch through it (forward and backward, CPU) before
    anything is measured: a bad one ends the command in one line, exit status 2."""
    from cnn.models import ModelError, check_model, is_user_model

    for name in dict.fromkeys(models):
        if is_user_model(name):
            try:
                check_model(name)
            except ModelError as e:
                raise UsageError(str(e)) from None


def prices(value: str) -> dict:
    """`cpu=0.10,cuda=3.00`: price per device-hour (bench.cost)."""
    from bench.cost import PriceError, parse_prices

    try:
        return parse_prices(value)
    except PriceError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _add_price_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--price", type=prices, default=None, metavar="DEVICE=PRICE,...",
                        help="price per device-hour, e.g. cpu=0.10,cuda=3.00: adds cost per million images, per "
                             "training run and the speedup per unit of cost (default: no cost shown)")
    parser.add_argument("--price-file", type=Path, default=None,
                        help='JSON prices per device-hour, e.g. {"cpu": 0.10, "cuda": 3.00} (--price wins)')


def _prices(args: argparse.Namespace) -> dict | None:
    from bench.cost import PriceError, load_price_file

    merged = {}
    if args.price_file is not None:
        try:
            merged.update(load_price_file(args.price_file))
        except PriceError as e:
            raise UsageError(str(e)) from None
    merged.update(args.price or {})
    return merged or None


def device_item(p: str) -> str:
    if p == "cpu" or p == "cuda" or (p.startswith("cuda:") and p[5:].isdigit()):
        return p
    raise argparse.ArgumentTypeError(p)


def parse_devices(value: str) -> tuple:
    try:
        return comma_list(device_item, "devices")(value)
    except argparse.ArgumentTypeError:
        bad = [p.strip() for p in value.split(",") if not _is_device(p.strip())]
        raise argparse.ArgumentTypeError(
            f"unknown device {', '.join(repr(b) for b in bad) or repr(value)}; expected cpu, cuda or cuda:N") from None


def _is_device(p: str) -> bool:
    try:
        device_item(p)
        return True
    except argparse.ArgumentTypeError:
        return False


def port(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise _bad(value, "a TCP port 1-65535") from None
    if not 0 < n < 65536:
        raise _bad(value, "a TCP port 1-65535")
    return n


def parse_seeds(value: str) -> tuple:
    """`3` means three seeds (0, 1, 2 from --seed); `0,5,7` is a list."""
    if "," in value:
        return comma_list(non_negative_int, "seeds")(value)
    return ("count", positive_int(value))


# ---- the parser -------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    from bench.config import DATA_PATHS, PRESETS
    from cnn.data import DATA_KINDS
    from cnn.models import model_names
    from cnn.train import PRECISIONS

    parser = _Parser(prog="cifar-bench", description="CPU-versus-GPU training benchmark on CIFAR-10.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    # No abbreviations: the launcher removes its own flags from the command line by name.
    run = sub.add_parser("run", help="run a sweep and record results", allow_abbrev=False,
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                         description="Run a sweep of configurations (device x model x batch size x "
                                     "precision) and write results.jsonl, results.csv and system.json.")
    run.add_argument("--preset", choices=PRESETS, default=None, help="sweep size (default: standard)")
    run.add_argument("--devices", type=parse_devices, default=("cpu",), help="comma-separated: cpu,cuda")
    run.add_argument("--models", type=model_list, default=None,
                     help=f"comma-separated, from {','.join(model_names())}, or your own as "
                          "package.module:callable or path/to/file.py:callable (default: the preset's)")
    run.add_argument("--batch-sizes", type=comma_list(positive_int, "positive integers"), default=None,
                     help="comma-separated, e.g. 4,32,128 (default: the preset's)")
    run.add_argument("--precisions", type=choice_list(PRECISIONS, "precision"), default=None,
                     help=f"comma-separated, from {','.join(PRECISIONS)} (default: the preset's)")
    run.add_argument("--epochs", type=non_negative_int, default=None,
                     help="training epochs for accuracy on every configuration (default: the preset's "
                          "accuracy runs only)")
    run.add_argument("--data", choices=DATA_KINDS, default="auto",
                     help="cifar10 (files or download), synthetic, or auto (real if available)")
    run.add_argument("--data-dir", type=Path, default=Path("data"), help="where CIFAR-10 is or goes")
    run.add_argument("--data-paths", type=choice_list(DATA_PATHS, "data path"), default=("device",),
                     help="input pipelines to measure: device (resident, default), dataloader (classic)")
    run.add_argument("--seed", type=non_negative_int, default=None, help="one seed for every run")
    run.add_argument("--seeds", type=parse_seeds, default=None,
                     help="N seeds (from --seed or 0) or a list 0,1,2 (default: the preset's)")
    run.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's)")
    run.add_argument("--channels-last", choices=("auto", "on", "off"), default="auto",
                     help="memory format; auto uses the measured faster one per device and model")
    run.add_argument("--augment", choices=("auto", "on", "off"), default="auto",
                     help="padded random crop + flip; auto follows the model's usual recipe")
    run.add_argument("--compile", action="store_true", help="torch.compile the model (compile time is "
                                                            "reported as warm-up)")
    run.add_argument("--compile-mode", choices=("default", "reduce-overhead", "max-autotune"), default=None,
                     help="torch.compile mode (implies --compile); reduce-overhead captures CUDA graphs, "
                          "which helps tiny models whose GPU steps are launch-bound")
    run.add_argument("--train-size", type=positive_int, default=None, help="training images (default: all)")
    run.add_argument("--test-size", type=positive_int, default=None, help="test images (default: all)")
    run.add_argument("--target-accuracy", type=fraction, default=None, help="record time to this accuracy")
    run.add_argument("--max-config-seconds", type=positive_float, default=None,
                     help="time budget of one configuration's throughput loop (default: the preset's)")
    run.add_argument("--max-seconds", type=positive_float, default=None,
                     help="timed-loop seconds per configuration (default: the preset's)")
    run.add_argument("--no-cpu-reference", action="store_true",
                     help="for a CUDA-only sweep, skip the CPU fp32 runs the accuracy check compares with")
    run.add_argument("--out", type=Path, default=None, help="run folder (default: runs/<host>-<devices>-<time>)")
    run.add_argument("--resume", action="store_true",
                     help="continue the sweep recorded in --out: run what is missing and what failed")
    run.add_argument("--retry-all", action="store_true",
                     help="with --resume, also run again what was recorded oom, skipped or diverged")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    scale = run.add_argument_group("scaling out (torch.distributed, DDP, launched through torchrun)")
    scale.add_argument("--nproc", type=positive_int, default=None,
                       help="processes per node (one per GPU on CUDA); re-runs this command through torchrun. "
                            "--batch-sizes stay global: each process steps on batch / processes")
    scale.add_argument("--nnodes", type=positive_int, default=None, help="machines in the job (torchrun --nnodes)")
    scale.add_argument("--node-rank", type=non_negative_int, default=None,
                       help="this machine's index, 0 .. nnodes-1 (node 0 writes the results)")
    scale.add_argument("--master-addr", default=None, help="address of node 0, reachable from every node")
    scale.add_argument("--master-port", type=port, default=None, help="a free TCP port on node 0")
    scale.add_argument("--dist-timeout", type=positive_float, default=600.0,
                       help="seconds any process waits for the others before the job fails (instead of hanging)")

    margin_help = "equivalence margin, percentage points"
    alpha_help = "significance level of each pair's tests (the TOST interval is 1 - 2 alpha)"
    report = sub.add_parser("report", help="write report.md and figures from stored results")
    report.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR")
    report.add_argument("--out", type=Path, default=None, help="report folder (default: the first RUN_DIR)")
    report.add_argument("--margin", type=positive_float, default=1.0, help=margin_help)
    report.add_argument("--alpha", type=alpha_level, default=0.05, help=alpha_help)
    _add_price_flags(report)
    report.add_argument("--readme", type=Path, default=None,
                        help="also copy the report's headline figure and summary lines into this file, between "
                             "<!-- headline:start --> and <!-- headline:end -->")

    summ = sub.add_parser("summary", help="print the headline figures and verdicts of stored results")
    summ.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR")
    summ.add_argument("--margin", type=positive_float, default=1.0, help=margin_help)
    summ.add_argument("--alpha", type=alpha_level, default=0.05, help=alpha_help)
    _add_price_flags(summ)

    eq = sub.add_parser("equivalence", help="accuracy equivalence verdicts; exit 3 if any pair is not equivalent",
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        description="Accuracy equivalence of every accuracy run against its CPU (or CUDA) fp32 "
                                    "reference,\nseed by seed; writes equivalence.csv.\n\n"
                                    "exit status:\n"
                                    "  0  every pair equivalent or inconclusive\n"
                                    "  3  at least one pair is not equivalent (a verdict)\n"
                                    "  1  an error (e.g. two runs of a seed evaluated on different test sets)\n"
                                    "  2  bad usage (a bad flag or value, a RUN_DIR that is not a run folder)")
    eq.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR")
    eq.add_argument("--margin", type=positive_float, default=1.0, help="margin in percentage points")
    eq.add_argument("--alpha", type=alpha_level, default=0.05, help=alpha_help)
    eq.add_argument("--out", type=Path, default=None, help="where equivalence.csv goes (default: first RUN_DIR)")

    perf = sub.add_parser("perf", help="the loop against its compute ceiling and the classic DataLoader",
                          formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    perf.add_argument("--device", type=device_item, default="cpu")
    perf.add_argument("--models", type=model_list, default=("tutorial",))
    perf.add_argument("--batch-sizes", type=comma_list(positive_int, "positive integers"),
                      default=(4, 32, 128, 512))
    perf.add_argument("--precision", choices=PRECISIONS, default="fp32")
    perf.add_argument("--repeats", type=positive_int, default=5, help="interleaved rounds per variant")
    perf.add_argument("--seconds", type=positive_float, default=1.0, help="timed seconds per measurement")
    perf.add_argument("--workers", type=non_negative_int, default=2, help="DataLoader workers")
    perf.add_argument("--data", choices=DATA_KINDS, default="auto")
    perf.add_argument("--data-dir", type=Path, default=Path("data"))
    perf.add_argument("--channels-last", choices=("auto", "on", "off"), default="auto",
                      help="memory format of the measured loop; auto uses the harness's default")
    perf.add_argument("--layout", action="store_true",
                      help="also compare channels_last with the default layout, per model, on this device")
    perf.add_argument("--out", type=Path, default=Path("reports/performance"))
    return parser


# ---- commands ---------------------------------------------------------------------------

def _check_devices(devices: Sequence[str]) -> None:
    import torch

    if any(d.startswith("cuda") for d in devices):
        if not torch.cuda.is_available():
            built = f"built with CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise UsageError(f"CUDA requested but torch.cuda.is_available() is False (torch {torch.__version__}, "
                             f"{built}); run on a machine with an NVIDIA GPU or use --devices cpu")
        for d in devices:
            if ":" in d and int(d.split(":")[1]) >= torch.cuda.device_count():
                raise UsageError(f"device {d!r} does not exist: this machine has {torch.cuda.device_count()} GPU(s)")


def _default_out(devices: Sequence[str], world_size: int = 1) -> Path:
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


def cmd_run(args: argparse.Namespace) -> int:
    import json

    from bench import distributed
    from bench.config import RunConfig, SweepRequest, build_sweep
    from bench.results import to_frame
    from bench.runfolder import RunFolderError, check_run_folder
    from bench.runner import Runner
    from cnn.data import DataError

    topo = distributed.topology_from_env()
    launch = _check_launch(args, topo)
    _check_devices(args.devices)
    if args.out is not None and args.out.exists() and not args.out.is_dir():
        raise UsageError(f"--out {args.out} is a file, expected a folder")
    if args.resume and args.out is None:
        raise UsageError("--resume needs --out RUN_DIR (the folder of the sweep to continue)")
    if args.retry_all and not args.resume:
        raise UsageError("--retry-all only applies with --resume")
    grid_given = any(v is not None for v in (args.models, args.batch_sizes, args.precisions, args.epochs,
                                             args.seeds, args.seed, args.threads))
    world = (args.nproc or 1) * (args.nnodes or 1) if launch else (topo.world_size if topo else 1)
    out = args.out or _default_out(args.devices, world)
    from_file = args.resume and not grid_given and (out / "sweep.json").exists()
    if from_file:  # the sweep as recorded, planned time-to-accuracy runs included
        configs = [RunConfig.from_dict(d) for d in json.loads((out / "sweep.json").read_text())]
    else:
        seeds = None
        base = args.seed or 0
        if args.seeds is not None:
            seeds = tuple(range(base, base + args.seeds[1])) if args.seeds[0] == "count" else args.seeds
        elif args.seed is not None:
            seeds = (args.seed,)
        budget = {}
        if args.max_config_seconds is not None:
            budget["max_config_seconds"] = args.max_config_seconds
        if args.max_seconds is not None:
            budget["max_seconds"] = args.max_seconds
        req = SweepRequest(
            preset=args.preset or "standard", devices=args.devices, models=args.models, batch_sizes=args.batch_sizes,
            precisions=args.precisions, epochs=args.epochs, seeds=seeds, threads=args.threads,
            channels_last={"auto": None, "on": True, "off": False}[args.channels_last],
            compile=args.compile or args.compile_mode is not None,
            compile_mode=None if args.compile_mode in (None, "default") else args.compile_mode,
            augment={"auto": None, "on": True, "off": False}[args.augment], data_paths=args.data_paths,
            train_size=args.train_size, test_size=args.test_size,
            target_accuracy=args.target_accuracy, budget=budget,
            # A scale-out sweep is compared with a one-process run folder; CPU reference runs
            # spread over the GPU job's processes would only cost time.
            cpu_reference=False if args.no_cpu_reference or world > 1 else None,
        )
        configs = build_sweep(req)
    validate_user_models(c.model for c in configs)
    if launch:
        if (args.node_rank or 0) == 0:  # the folder lives on node 0: refuse early, in one line
            try:
                check_run_folder(out, args.resume)
            except RunFolderError as e:
                raise UsageError(str(e)) from None
        return launch_torchrun(args, out)
    if topo is not None:
        return _run_worker(args, topo, configs, out)
    print(f"cifar-bench: {len(configs)} configurations -> {out}", flush=True)
    runner = Runner(out, data_kind=args.data, data_dir=args.data_dir,
                    log=lambda m: print(m, flush=True), progress=False if args.no_progress else None)
    started = time.perf_counter()
    try:
        # a plain --resume runs what sweep.json holds; --resume --preset NAME plans the preset's follow-ups too
        followup = None if from_file and args.preset is None else _time_to_accuracy_plan(args, grid_given)
        rows = runner.run(configs, resume=args.resume, retry_all=args.retry_all, followup=followup)
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


def _time_to_accuracy_plan(args: argparse.Namespace, grid_given: bool):
    """The preset's time-to-accuracy runs, planned from the grid's results (none when the
    user chose the grid by hand, or asked for no accuracy runs with --epochs 0)."""
    from bench.config import PRESET_TABLE
    from bench.targets import plan_time_to_accuracy

    preset = PRESET_TABLE[args.preset or "standard"]
    if not preset.time_to_accuracy or grid_given or args.epochs == 0:
        return None
    return lambda rows: plan_time_to_accuracy(rows, preset.time_to_accuracy, preset.tta_seeds, preset.tta_epochs,
                                              target=args.target_accuracy)


def _finish(rows: list[dict], where: str) -> int:
    """The sweep's last line, and its exit status: 1 when a configuration failed (the
    harness or the machine, not a result: everything else was saved; --resume runs it again)."""
    n_ok = sum(r.get("status") == "ok" for r in rows)
    failed = [r for r in rows if r.get("status") == "failed"]
    print(f"cifar-bench: {len(rows)} configurations run ({n_ok} ok) {where}")
    if failed:
        print(f"cifar-bench: error: {len(failed)} configuration(s) failed (see errors.log); the other results are "
              "saved, and `--resume` runs the failed ones again", file=sys.stderr)
        return EXIT_FAILED
    return 0


def _run_worker(args: argparse.Namespace, topo, configs: list, out: Path) -> int:
    """One process of a torchrun job. Rank 0 prints and writes; the others stay quiet
    unless they fail."""
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
                        progress=False if args.no_progress else None, dist=dist)
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
    cols = ["device", "model", "batch_size", "precision", "seed", "status", "train_images_per_s",
            "step_ms_median", "step_ms_iqr", "eval_images_per_s", "test_accuracy", "mfu", "peak_memory_mb"]
    if (frame["world_size"].fillna(1) > 1).any():
        cols[cols.index("status"):cols.index("status")] = ["world_size", "backend"]
    from bench.results import markdown_table
    return markdown_table(frame, cols)


def _warn(message: str) -> None:
    print(f"cifar-bench: warning: {message}", file=sys.stderr)


def _error(message: str) -> int:
    print(f"cifar-bench: error: {message}", file=sys.stderr)
    return EXIT_ERROR


def cmd_report(args: argparse.Namespace) -> int:
    from bench.equivalence import EquivalenceError
    from bench.report import write_report
    from bench.results import ResultsError

    price = _prices(args)
    if args.readme is not None and not args.readme.is_file():
        raise UsageError(f"--readme {args.readme}: no such file; expected a markdown file with the headline markers")
    try:
        path = write_report(args.run_dirs, args.out, margin_pp=args.margin, alpha=args.alpha, warn=_warn,
                            prices=price)
    except ResultsError as e:
        raise UsageError(str(e)) from None
    except EquivalenceError as e:
        return _error(str(e))
    print(f"cifar-bench: report written to {path}")
    if args.readme is not None:
        import shlex

        from bench.headline import HeadlineError, headline_block, update_readme

        command = shlex.join(["cifar-bench", *args.argv])
        try:
            update_readme(args.readme, headline_block(path, args.readme, command))
        except HeadlineError as e:
            raise UsageError(str(e)) from None
        print(f"cifar-bench: headline of {args.readme} updated")
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    from bench.equivalence import EquivalenceError
    from bench.report import summary_text
    from bench.results import ResultsError

    try:
        print(summary_text(args.run_dirs, args.margin, alpha=args.alpha, warn=_warn, prices=_prices(args)))
    except ResultsError as e:
        raise UsageError(str(e)) from None
    except EquivalenceError as e:
        return _error(str(e))
    return 0


def cmd_equivalence(args: argparse.Namespace) -> int:
    """Exit 0 (equivalent or inconclusive), 3 (a pair not equivalent), 1 (error), 2 (usage)."""
    from bench.equivalence import EquivalenceError, run_equivalence
    from bench.results import ResultsError

    try:
        return run_equivalence(args.run_dirs, margin_pp=args.margin, alpha=args.alpha, out=args.out)
    except ResultsError as e:
        raise UsageError(str(e)) from None
    except (EquivalenceError, OSError) as e:
        return _error(str(e))


def cmd_perf(args: argparse.Namespace) -> int:
    from bench.perf import run_perf

    _check_devices([args.device])
    validate_user_models(args.models)
    return run_perf(args)


COMMANDS = {"run": cmd_run, "report": cmd_report, "summary": cmd_summary, "equivalence": cmd_equivalence,
            "perf": cmd_perf}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
        args.argv = argv  # what a launched worker re-runs, less the launch flags
        return COMMANDS[args.command](args)
    except UsageError as e:
        print(f"cifar-bench: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:  # outside a sweep (which says what it saved): nothing to keep
        print("\ncifar-bench: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
