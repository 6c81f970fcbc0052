"""`cifar-bench` / `python -m bench`: run, report, summary, equivalence, compare, perf.

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
from collections.abc import Sequence
from pathlib import Path

from bench.cli_run import check_devices, cmd_run
from bench.cliargs import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    UsageError,
    add_gpu_flags,
    add_price_flags,
    alpha_level,
    choice_list,
    comma_list,
    device_item,
    fraction,
    gpu_from_args,
    model_list,
    non_negative_int,
    parse_devices,
    parse_seeds,
    percent,
    port,
    positive_float,
    positive_int,
    prices_from_args,
    validate_user_models,
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not argparse's usage block
        raise UsageError(f"{message} (see `{self.prog} --help`)")


# ---- the parser -------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="cifar-bench", description="CPU-versus-GPU training benchmark on CIFAR-10.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_run(sub)
    _add_readers(sub)
    _add_perf(sub)
    return parser


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Appends "(default: X)" to a flag's help where the help does not already say its
    default, and only for a real default (not None, not a switch's False); tuples print
    as the comma list one would type."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if ("(default" in text or "%(default)" in text or default is None or default is False
                or default is argparse.SUPPRESS or not action.option_strings):
            return text
        if isinstance(default, (tuple, list)):
            default = ",".join(str(v) for v in default)
        return f"{text} (default: {str(default).replace('%', '%%')})"


def _add_run(sub) -> None:
    """`cifar-bench run` and its flags."""
    from bench.config import DATA_PATHS, PRESETS
    from cnn.data import DATA_KINDS
    from cnn.models import model_names
    from cnn.train import PRECISIONS

    # No abbreviations: the launcher removes its own flags from the command line by name.
    run = sub.add_parser("run", help="run a sweep and record results", allow_abbrev=False,
                         formatter_class=DefaultsHelpFormatter,
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
    run.add_argument("--passes", type=positive_int, default=None,
                     help="passes across the sweep for the throughput grid: each visits every configuration in a "
                          "fresh shuffled order with 1/N of its budget, and a row's interval comes from their "
                          "spread (default: the preset's; standard and sizes 3, quick 1)")
    run.add_argument("--no-cpu-reference", action="store_true",
                     help="for a CUDA-only sweep, skip the CPU fp32 runs the accuracy check compares with")
    run.add_argument("--out", type=Path, default=None, help="run folder (default: runs/<host>-<devices>-<time>)")
    run.add_argument("--resume", action="store_true",
                     help="continue the sweep recorded in --out: run what is missing and what failed")
    run.add_argument("--retry-all", action="store_true",
                     help="with --resume, also run again what was recorded oom, skipped or diverged")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--plan", action="store_true",
                     help="print the configurations the sweep would run, in order (each pass's visits), with the "
                          "fewest steps each needs and a time estimate where one is known; run nothing (a CUDA "
                          "sweep can be planned without a GPU)")
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


def _add_readers(sub) -> None:
    """The commands that read run folders: report, summary, equivalence, compare."""
    margin_help = "equivalence margin, percentage points"
    alpha_help = "significance level of each pair's tests (the TOST interval is 1 - 2 alpha)"
    report = sub.add_parser("report", help="write report.md and figures from stored results")
    report.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR")
    report.add_argument("--out", type=Path, default=None, help="report folder (default: the first RUN_DIR)")
    report.add_argument("--margin", type=positive_float, default=1.0, help=margin_help)
    report.add_argument("--alpha", type=alpha_level, default=0.05, help=alpha_help)
    add_price_flags(report)
    add_gpu_flags(report)
    report.add_argument("--readme", type=Path, default=None,
                        help="also copy the report's headline figure and summary lines into this file, between "
                             "<!-- headline:start --> and <!-- headline:end -->")

    summ = sub.add_parser("summary", help="print the headline figures and verdicts of stored results")
    summ.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR")
    summ.add_argument("--margin", type=positive_float, default=1.0, help=margin_help)
    summ.add_argument("--alpha", type=alpha_level, default=0.05, help=alpha_help)
    add_price_flags(summ)
    add_gpu_flags(summ)

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

    comp = sub.add_parser("compare", help="pair two runs' throughput configurations: ratios, intervals, verdicts",
                          formatter_class=argparse.RawDescriptionHelpFormatter,
                          description="Pair the throughput configurations of two run folders by configuration and "
                                      "write compare.md,\ncompare.csv and compare.png: NEW/BASE with its interval, a "
                                      "verdict per configuration,\nthe ratio normalised by each run's matmul peak and "
                                      "drift reference, and how well\nBASE's stated intervals covered NEW's values.\n\n"
                                      "exit status:\n"
                                      "  0  compared (slowdowns included, unless --fail-above)\n"
                                      "  1  --fail-above: a configuration is significantly slower by more than PCT\n"
                                      "  2  bad usage (a bad flag or value, a folder that is not a run folder, nothing "
                                      "to pair)")
    comp.add_argument("base", type=Path, metavar="BASE")
    comp.add_argument("new", type=Path, metavar="NEW")
    comp.add_argument("--out", type=Path, default=None, help="where compare.md goes (default: NEW)")
    comp.add_argument("--threshold", type=percent, default=5.0,
                      help="percent change below which a configuration counts as unchanged (default: 5)")
    comp.add_argument("--fail-above", type=percent, default=None, metavar="PCT",
                      help="exit 1 when a configuration is significantly slower by more than PCT percent "
                           "(like --benchmark-compare-fail; off by default)")


def _add_perf(sub) -> None:
    """`cifar-bench perf`."""
    from cnn.data import DATA_KINDS
    from cnn.train import PRECISIONS

    perf = sub.add_parser("perf", help="the loop against its compute ceiling and the classic DataLoader",
                          formatter_class=DefaultsHelpFormatter)
    perf.add_argument("--device", type=device_item, default="cpu", help="cpu, cuda or cuda:N")
    perf.add_argument("--models", type=model_list, default=("tutorial",), help="comma-separated model names")
    perf.add_argument("--batch-sizes", type=comma_list(positive_int, "positive integers"),
                      default=(4, 32, 128, 512), help="comma-separated")
    perf.add_argument("--precision", choices=PRECISIONS, default="fp32", help="one precision")
    perf.add_argument("--repeats", type=positive_int, default=5, help="interleaved rounds per variant")
    perf.add_argument("--seconds", type=positive_float, default=1.0, help="timed seconds per measurement")
    perf.add_argument("--workers", type=non_negative_int, default=2, help="DataLoader workers")
    perf.add_argument("--data", choices=DATA_KINDS, default="auto",
                      help="cifar10, synthetic, or auto (real if available)")
    perf.add_argument("--data-dir", type=Path, default=Path("data"), help="where CIFAR-10 is or goes")
    perf.add_argument("--channels-last", choices=("auto", "on", "off"), default="auto",
                      help="memory format of the measured loop; auto uses the harness's default")
    perf.add_argument("--layout", action="store_true",
                      help="also compare channels_last with the default layout, per model, on this device")
    perf.add_argument("--out", type=Path, default=Path("reports/performance"), help="output folder")


# ---- commands ---------------------------------------------------------------------------

def _warn(message: str) -> None:
    print(f"cifar-bench: warning: {message}", file=sys.stderr)


def _error(message: str) -> int:
    print(f"cifar-bench: error: {message}", file=sys.stderr)
    return EXIT_ERROR


def cmd_report(args: argparse.Namespace) -> int:
    from bench.equivalence import EquivalenceError
    from bench.report import write_report
    from bench.results import ResultsError

    price = prices_from_args(args)
    gpu, gpus = gpu_from_args(args)
    if args.readme is not None and not args.readme.is_file():
        raise UsageError(f"--readme {args.readme}: no such file; expected a markdown file with the headline markers")
    try:
        path = write_report(args.run_dirs, args.out, margin_pp=args.margin, alpha=args.alpha, warn=_warn,
                            prices=price, gpu=gpu, gpus=gpus)
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

    gpu, gpus = gpu_from_args(args)
    try:
        print(summary_text(args.run_dirs, args.margin, alpha=args.alpha, warn=_warn, prices=prices_from_args(args),
                           gpu=gpu, gpus=gpus))
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

    check_devices([args.device])
    validate_user_models(args.models)
    return run_perf(args)


def cmd_compare(args: argparse.Namespace) -> int:
    """Exit 0 (compared), 1 (--fail-above and a significant slowdown beyond it), 2 (usage)."""
    from bench.compare import CompareError, summary_lines, write_compare
    from bench.results import ResultsError

    try:
        path, frame, facts = write_compare(args.base, args.new, args.out, threshold=args.threshold / 100)
    except (ResultsError, CompareError) as e:
        raise UsageError(str(e)) from None
    for line in summary_lines(facts):
        print(f"- {line}")
    print(f"cifar-bench: comparison written to {path}")
    if args.fail_above is not None:
        worse = frame[(frame["verdict"] == "slower") & (frame["ratio"] < 1 - args.fail_above / 100)]
        if not worse.empty:
            for r in worse.itertuples():
                print(f"cifar-bench: slower by {1 - r.ratio:.1%} (> {args.fail_above:g}%): {r.configuration}: "
                      f"{r.base:,.0f} -> {r.new:,.0f} img/s", file=sys.stderr)
            return EXIT_ERROR
    return 0


COMMANDS = {"run": cmd_run, "report": cmd_report, "summary": cmd_summary, "equivalence": cmd_equivalence,
            "perf": cmd_perf, "compare": cmd_compare}


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
    except BrokenPipeError:  # `cifar-bench summary ... | head`: the reader left; not an error of ours
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0


if __name__ == "__main__":
    sys.exit(main())
