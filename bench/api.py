"""The Python API, for notebooks and scripts: run a sweep, read run folders as DataFrames,
build the report. Thin over the code the command line calls.

    from bench import api
    runs = api.run(preset="quick", devices="cpu", data="synthetic", out="runs/first")
    runs.throughput()              # DataFrame: one row per configuration, median over seeds
    runs.equivalence()             # DataFrame: accuracy verdicts per pair
    report = runs.report()         # report.md and figures; shows itself inline in Jupyter
    report.summary                 # the summary section; report.figure("throughput") a figure
    api.load("runs/laptop", "runs/server").report(out="reports/laptop-vs-server")

Keyword arguments are the flags of `cifar-bench run` / `report` by their names
(`batch_sizes=[32, 128]` is `--batch-sizes 32,128`, `channels_last=True` is
`--channels-last on`, `no_cpu_reference=True` is `--no-cpu-reference`): they go through the
command line's own parser, so they take the same values, defaults and checks, and a bad one
raises `BenchError` with the message the command prints. A flag added to the command line is
a keyword here without a change to this module.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd

from bench.cliargs import EXIT_ERROR, EXIT_USAGE, UsageError
from bench.display import Markdown, Report

# Scale-out flags launch torchrun, a process of its own: the command line's business.
LAUNCH_OPTIONS = ("nproc", "nnodes", "node_rank", "master_addr", "master_port", "dist_timeout")


class BenchError(ValueError):
    """Bad arguments, or run folders that cannot be read or compared. The message is the
    one `cifar-bench` prints; `exit_status` the status it would exit with (2 bad usage,
    1 results that cannot be compared)."""

    def __init__(self, message: str, exit_status: int = EXIT_USAGE):
        super().__init__(message)
        self.exit_status = exit_status


# ---- keyword arguments -> the command line's parser ---------------------------------------

def _command_parser(command: str) -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    from bench.cli import build_parser

    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return parser, subparsers.choices[command]


def _text(value) -> str:
    if isinstance(value, dict):  # prices: {"cpu": 0.1, "cuda": 3.0}
        return ",".join(f"{k}={v}" for k, v in value.items())
    if isinstance(value, (list, tuple, set, frozenset)):
        return ",".join(_text(v) for v in value)
    return str(value)


def command_line(command: str, options: dict, positional: Sequence = ()) -> list[str]:
    """The `cifar-bench` arguments that `options` (keyword: value) stand for. None leaves a
    flag at its default; a switch takes True or False; on/off flags also take booleans."""
    _, sub = _command_parser(command)
    flags = {a.dest: a for a in sub._actions if a.option_strings}
    argv = [command, *map(str, positional)]
    for name, value in options.items():
        action = flags.get(name)
        if action is None:
            known = ", ".join(sorted(d for d in flags if d != "help"))
            raise BenchError(f"unknown option {name!r}: `cifar-bench {command}` has no "
                             f"--{name.replace('_', '-')}; expected one of {known}")
        if value is None:
            continue
        flag = max(action.option_strings, key=len)
        if action.nargs == 0:  # a switch (store_true)
            if not isinstance(value, bool):
                raise BenchError(f"{name}={value!r}: expected True or False ({flag} is a switch)")
            argv += [flag] if value else []
        elif isinstance(value, bool) and action.choices and {"on", "off"} <= set(action.choices):
            argv += [flag, "on" if value else "off"]
        else:
            argv += [flag, _text(value)]
    return argv


def parse(command: str, options: dict, positional: Sequence = ()) -> argparse.Namespace:
    """The parsed arguments of `cifar-bench COMMAND ...`, or BenchError with its message."""
    parser, _ = _command_parser(command)
    argv = command_line(command, options, positional)
    try:
        args = parser.parse_args(argv)
    except UsageError as e:
        raise BenchError(str(e)) from None
    args.argv = argv
    return args


def _warn(message: str) -> None:
    print(f"cifar-bench: warning: {message}", file=sys.stderr)


# ---- running a sweep ----------------------------------------------------------------------

def plan(args: argparse.Namespace) -> tuple[list, Path, bool]:
    """(configurations, run folder, whether they come from the folder's sweep.json) for the
    parsed arguments of `cifar-bench run`, checked as the command checks them (the same
    function: bench.cli_run.plan_sweep)."""
    from bench.cli_run import plan_sweep

    return plan_sweep(args)


class _Progress:
    """A progress bar that works in a notebook and a terminal (tqdm.auto), fed by the
    runner's one line per configuration ("[i/n] ..."); other lines are printed."""

    LINE = re.compile(r"^\[(\d+)/(\d+)\] ")

    def __init__(self, enabled: bool):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=0, unit="cfg", leave=False) if enabled else None
        self.lines: list[str] = []

    def __call__(self, message: str) -> None:
        self.lines.append(message)
        m = self.LINE.match(message)
        if self.bar is not None and m:
            done, total = int(m.group(1)), int(m.group(2))
            if self.bar.total != total or done < self.bar.n:  # a new stage (time-to-accuracy runs)
                self.bar.reset(total=total)
            self.bar.update(done - self.bar.n)
        if self.bar is not None:
            self.bar.write(message)
        else:
            print(message, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run(preset: str | None = None, devices: str | Sequence[str] = "cpu", *, models=None, batch_sizes=None,
        precisions=None, epochs: int | None = None, data: str = "auto", out: str | Path | None = None,
        resume: bool = False, progress: bool = True, **options) -> Runs:
    """Run a sweep, as `cifar-bench run` does, in this process; returns its folder as Runs.

    `preset`: quick, standard (the default), full, gpu-check or sizes. Lists may be Python
    lists or comma-separated text. Every other flag of `cifar-bench run` is a keyword
    (seeds=10, max_seconds=1.0, channels_last=False, data_dir="~/datasets", ...).
    Interrupting (Ctrl-C, or the notebook's stop button) keeps what finished: continue with
    the same call and resume=True."""
    from bench.cli_run import followup_for, runner_for
    from bench.runfolder import RunFolderError
    from cnn.data import DataError

    launch = [k for k in LAUNCH_OPTIONS if options.get(k) is not None]
    if launch:
        raise BenchError(f"{', '.join(launch)}: the Python API runs the sweep in this process; for several "
                         "processes use `cifar-bench run --nproc N` (docs/scaling.md)")
    options.pop("no_progress", None)
    args = parse("run", dict(preset=preset, devices=devices, models=models, batch_sizes=batch_sizes,
                             precisions=precisions, epochs=epochs, data=data, out=out, resume=resume, **options))
    try:
        configs, out, from_file = plan(args)
    except UsageError as e:
        raise BenchError(str(e)) from None
    print(f"cifar-bench: {len(configs)} configurations -> {out}", flush=True)
    log = _Progress(progress)
    runner = runner_for(args, out, log, False)
    started = time.perf_counter()
    try:
        rows = runner.run(configs, resume=args.resume, retry_all=args.retry_all, followup=followup_for(args, from_file))
    except (RunFolderError, DataError) as e:
        raise BenchError(str(e)) from None
    except KeyboardInterrupt:
        print(f"cifar-bench: interrupted; finished configurations are saved in {out}; continue with "
              f"api.run(..., out={str(out)!r}, resume=True)", file=sys.stderr)
        raise
    finally:
        log.close()
    n_ok = sum(r.get("status") == "ok" for r in rows)
    print(f"cifar-bench: {len(rows)} configurations run ({n_ok} ok) in {time.perf_counter() - started:.0f} s; "
          f"results in {out}")
    failed = [r for r in rows if r.get("status") == "failed"]
    if failed:
        _warn(f"{len(failed)} configuration(s) failed (see {out / 'errors.log'}); the other results are saved, "
              "and resume=True runs the failed ones again")
    return Runs([out])


# ---- reading run folders ------------------------------------------------------------------

def load(*run_dirs: str | Path) -> Runs:
    """One or more run folders (a laptop's CPU run and a server's GPU run can be read
    together, as `cifar-bench report A B` does)."""
    return Runs(run_dirs)


class Runs:
    """Run folders read as DataFrames. Nothing here measures or re-runs anything."""

    def __init__(self, run_dirs: Sequence[str | Path]):
        from bench.frames import load_runs
        from bench.results import ResultsError

        if not run_dirs:
            raise BenchError("no run folder given; expected one or more folders written by `cifar-bench run`")
        self.run_dirs = [Path(d) for d in run_dirs]
        try:
            self.results, self.rows, self.systems = load_runs(self.run_dirs, _warn)
        except ResultsError as e:
            raise BenchError(str(e)) from None

    def __repr__(self) -> str:
        n = len(self.results)
        ok = int((self.results["status"] == "ok").sum()) if n else 0
        return f"Runs({', '.join(map(str, self.run_dirs))}: {n} configurations, {ok} ok)"

    def throughput(self) -> pd.DataFrame:
        """Training throughput per configuration (the report's figures and headlines): ok
        one-process rows on the device input path, median over seeds, flagged values left out."""
        from bench.frames import throughput

        return throughput(self.results) if not self.results.empty else pd.DataFrame()

    def accuracy(self) -> pd.DataFrame:
        """The accuracy runs (trained for a fixed number of epochs) the equivalence check compares."""
        from bench.equivalence import accuracy_rows

        cols = ["run_dir", "device", "device_name", "model", "batch_size", "precision", "channels_last", "seed",
                "epochs", "data", "world_size", "test_accuracy", "epoch_seconds", "train_images_per_s"]
        rows = self._call(accuracy_rows, self.run_dirs, _warn)
        return pd.DataFrame([{c: r.get(c) for c in cols} for r in rows], columns=cols)

    def equivalence(self, margin: float = 1.0, alpha: float = 0.05) -> pd.DataFrame:
        """Accuracy verdicts per pair, as `cifar-bench equivalence --margin --alpha` (without
        writing equivalence.csv)."""
        from bench.equivalence import equivalence_table

        args = parse("equivalence", dict(margin=margin, alpha=alpha), self.run_dirs)
        return self._call(equivalence_table, self.run_dirs, args.margin, args.alpha, warn=_warn)

    def time_to_accuracy(self) -> pd.DataFrame:
        """Time to the target accuracy per configuration, over seeds (the report's table)."""
        from bench.time_to_accuracy import tta_table

        return tta_table(self.results) if not self.results.empty else pd.DataFrame()

    def summary(self, margin: float = 1.0, alpha: float = 0.05, **options) -> Markdown:
        """The headline figures and verdicts, as `cifar-bench summary` prints them
        (options: price, price_file)."""
        from bench.cliargs import prices_from_args
        from bench.report import summary_text

        args = parse("summary", dict(margin=margin, alpha=alpha, **options), self.run_dirs)
        price = self._call(prices_from_args, args)
        return Markdown(self._call(summary_text, self.run_dirs, args.margin, alpha=args.alpha, warn=_warn,
                                   prices=price))

    def report(self, out: str | Path | None = None, margin: float = 1.0, alpha: float = 0.05,
               **options) -> Report:
        """Write report.md and its figures into `out` (default: the first run folder), as
        `cifar-bench report` does (options: price, price_file)."""
        from bench.cliargs import prices_from_args
        from bench.report import write_report

        if options.get("readme") is not None:
            raise BenchError("readme: the README headline is rewritten by `cifar-bench report ... --readme README.md`")
        args = parse("report", dict(out=out, margin=margin, alpha=alpha, **options), self.run_dirs)
        price = self._call(prices_from_args, args)
        path = self._call(write_report, self.run_dirs, args.out, margin_pp=args.margin, alpha=args.alpha,
                          warn=_warn, prices=price)
        return Report(path)

    @staticmethod
    def _call(function: Callable, *args, **kwargs):
        """`function`, with the command line's errors as BenchError (same message and status)."""
        from bench.cost import PriceError
        from bench.equivalence import EquivalenceError
        from bench.results import ResultsError

        try:
            return function(*args, **kwargs)
        except (UsageError, ResultsError, PriceError) as e:
            raise BenchError(str(e)) from None
        except EquivalenceError as e:
            raise BenchError(str(e), EXIT_ERROR) from None
