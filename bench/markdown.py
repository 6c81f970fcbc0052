"""Markdown pipe tables from pandas frames, with no dependency beyond pandas.

pandas' own `DataFrame.to_markdown` needs the `tabulate` package, which air-gapped GPU
servers often lack (the project's GPU machine has none): a report must still be written
there. Cells are never re-parsed: a string stays as it is, a float takes the column's
format, a missing value (None, NaN) prints as `missingval`.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import pandas as pd


def _cell(value, fmt: str, missingval: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return missingval
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, numbers.Integral):
        return format(int(value), fmt) if fmt and not fmt.endswith(("g", "e", "%")) else str(int(value))
    if isinstance(value, numbers.Real):
        return format(float(value), fmt or "g")
    return str(value).replace("|", "\\|").replace("\n", " ")


def _numeric(values: Sequence) -> bool:
    present = [v for v in values if not (v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA)]
    return bool(present) and all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in present)


def to_markdown(frame: pd.DataFrame, index: bool = False, floatfmt: str | Sequence[str] = "g",
                missingval: str = "") -> str:
    """`frame` as a markdown pipe table. `floatfmt`: one format for every column, or one per
    column (index column first when `index`). Numeric columns are right-aligned."""
    frame = frame.reset_index() if index else frame
    columns = [str(c) for c in frame.columns]
    fmts = [floatfmt] * len(columns) if isinstance(floatfmt, str) else list(floatfmt)
    if len(fmts) != len(columns):
        raise ValueError(f"{len(fmts)} formats for {len(columns)} columns")
    data = [list(frame.iloc[:, i].astype(object)) for i in range(len(columns))]
    cells = [[_cell(v, fmt, missingval) for v in col] for col, fmt in zip(data, fmts)]
    right = [_numeric(col) for col in data]
    widths = [max([len(h), 3, *(len(c) for c in col)]) for h, col in zip(columns, cells)]

    def line(parts: Sequence[str]) -> str:
        return "| " + " | ".join(parts) + " |"

    out = [line([h.rjust(w) if r else h.ljust(w) for h, w, r in zip(columns, widths, right)]),
           "|" + "|".join(("-" * (w + 1) + ":") if r else (":" + "-" * (w + 1)) for w, r in zip(widths, right)) + "|"]
    for row in zip(*cells) if cells else ():
        out.append(line([c.rjust(w) if r else c.ljust(w) for c, w, r in zip(row, widths, right)]))
    return "\n".join(out)
