"""Markdown tables without tabulate (the GPU machine has no tabulate)."""

import math

import pandas as pd
import pytest

from bench.markdown import to_markdown


def test_a_table_by_hand():
    frame = pd.DataFrame({"model": ["tutorial", "a|b"], "img/s": [1234.5678, math.nan], "bs": [4, 32]})
    assert to_markdown(frame, floatfmt=("", ",.0f", "g")).splitlines() == [
        "| model    | img/s |  bs |",
        "|:---------|------:|----:|",
        "| tutorial | 1,235 |   4 |",
        "| a\\|b     |       |  32 |",
    ]


def test_strings_are_never_reparsed_and_none_is_blank():
    frame = pd.DataFrame({"x": ["007", None, "1e3"]})
    assert [line.strip("| ").strip() for line in to_markdown(frame).splitlines()[2:]] == ["007", "", "1e3"]


def test_index_and_format_count():
    frame = pd.DataFrame({"v": [0.123456]}, index=pd.Index(["a"], name="fact"))
    assert to_markdown(frame, index=True, floatfmt=".3g").splitlines()[-1] == "| a    | 0.123 |"
    with pytest.raises(ValueError, match="2 formats for 1 columns"):
        to_markdown(pd.DataFrame({"v": [1]}), floatfmt=("g", "g"))
