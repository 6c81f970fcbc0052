"""Command-line values: exit statuses, the one-line usage error, and the small parse
functions argparse calls (`type=`), each naming the bad value and what was expected."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence
from pathlib import Path

EXIT_FAILED = 1  # run: a configuration failed (after saving everything)
EXIT_ERROR = 1  # equivalence, report, summary: results that cannot be compared
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class UsageError(Exception):
    """Bad input: printed as one line, exit status 2."""


# ---- value parsers (argparse `type=`) ---------------------------------------------------

def _bad(value: str, expected: str) -> argparse.ArgumentTypeError:
    return argparse.ArgumentTypeError(f"got {value!r}; expected {expected}")


def _number(value: str, cast: Callable[[str], float], ok: Callable[[float], bool], expected: str):
    """`value` as `cast` makes it, if `ok` accepts it; else one line naming what was expected."""
    try:
        x = cast(value)
    except ValueError:
        raise _bad(value, expected) from None
    if not ok(x):
        raise _bad(value, expected)
    return x


def positive_int(value: str) -> int:
    return _number(value, int, lambda n: n >= 1, "a positive integer")


def non_negative_int(value: str) -> int:
    return _number(value, int, lambda n: n >= 0, "an integer >= 0")


def positive_float(value: str) -> float:
    return _number(value, float, lambda x: 0 < x < math.inf, "a positive number")  # NaN fails both


def alpha_level(value: str) -> float:
    """A significance level strictly between 0 and 0.5 (the TOST interval is 1 - 2 alpha)."""
    return _number(value, float, lambda x: 0 < x < 0.5, "a significance level between 0 and 0.5, such as 0.05")


def percent(value: str) -> float:
    """A percentage, 0 < x < 100 (e.g. 5 for 5%)."""
    return _number(value, float, lambda x: 0 < x < 100, "a percentage between 0 and 100, such as 5")


def fraction(value: str) -> float:
    """A fraction 0..1, or a percentage 1..100."""
    x = _number(value, float, lambda x: 0 < x <= 100, "an accuracy such as 0.6 or 60")
    return x / 100 if x > 1 else x


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
            raise argparse.ArgumentTypeError(p)  # parse() below names every bad item
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


def add_price_flags(parser: argparse.ArgumentParser) -> None:
    """--price and --price-file, for the commands that can show costs (`prices_from_args` reads them)."""
    parser.add_argument("--price", type=prices, default=None, metavar="DEVICE=PRICE,...",
                        help="price per device-hour, e.g. cpu=0.10,cuda=3.00: adds cost per million images, per "
                             "training run and the speedup per unit of cost (default: no cost shown)")
    parser.add_argument("--price-file", type=Path, default=None,
                        help='JSON prices per device-hour, e.g. {"cpu": 0.10, "cuda": 3.00} (--price wins); '
                             '"kwh": the price per kWh')
    parser.add_argument("--price-kwh", type=positive_float, default=None, metavar="PRICE",
                        help="price of a kWh of energy: adds the cost of the measured energy per million images "
                             "(default: none)")


def prices_from_args(args: argparse.Namespace) -> dict | None:
    """Price per device-hour from --price-file, then --price over it; None when neither was given."""
    from bench.cost import PriceError, load_price_file

    merged = {}
    if args.price_file is not None:
        try:
            merged.update(load_price_file(args.price_file))
        except PriceError as e:
            raise UsageError(str(e)) from None
    merged.update(args.price or {})
    if getattr(args, "price_kwh", None) is not None:
        from bench.cost import ENERGY_PRICE

        merged[ENERGY_PRICE] = args.price_kwh
    return merged or None


def device_item(p: str) -> str:
    if p == "cpu" or p == "cuda" or (p.startswith("cuda:") and p[5:].isdigit()):
        return p
    raise argparse.ArgumentTypeError(f"unknown device {p!r}; expected cpu, cuda or cuda:N")


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




def add_gpu_flags(parser: argparse.ArgumentParser) -> None:
    from bench.gpus import DEFAULT_GPU

    parser.add_argument("--gpu", default=None, metavar="NAME",
                        help="GPU of the speedup bound (\"What a GPU could give\"), from bench/gpus.json or "
                             f"--gpu-file (default: the GPU of the CUDA results when the table knows it, else "
                             f"{DEFAULT_GPU})")
    parser.add_argument("--gpu-file", type=Path, default=None,
                        help='JSON of more GPUs, {"gpus": {"NAME": {"fp32_tflops": ..., "tf32_tflops": ..., '
                             '"bf16_tflops": ..., "fp16_tflops": ..., "memory_gbps": ...}}} (dense figures; see '
                             "docs/gpu-bound.md)")


def gpu_from_args(args: argparse.Namespace) -> tuple:
    """(the chosen GpuSpec or None for the default, the whole table), or UsageError naming
    the bad value."""
    from bench.gpus import GpuError, load_gpus, lookup

    try:
        table = load_gpus(args.gpu_file)
        return (None if args.gpu is None else lookup(args.gpu, table)), table
    except GpuError as e:
        raise UsageError(str(e)) from None
