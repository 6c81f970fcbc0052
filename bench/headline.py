"""The README's headline: the reference report's headline figure and summary lines, copied
between two markers by the command that regenerates the report
(`cifar-bench report RUN... --out reports/X --readme README.md`), so the README never shows
figures from an older report.

Only the text between the markers is rewritten; everything else in the file stays byte for
byte. The block is taken from the written report.md itself (its summary bullets and its first
map or throughput figure), so it says exactly what the report says.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

START, END = "<!-- headline:start -->", "<!-- headline:end -->"
# The first of these the report holds is the headline figure.
FIGURE_PREFERENCE = ("breakeven.png", "size_map.png", "speedup.png", "throughput.png")


class HeadlineError(ValueError):
    """The README cannot take the block; the message names the file and what was expected."""


def _link(target: Path, base: Path) -> str:
    return Path(os.path.relpath(target.resolve(), base.resolve())).as_posix()


def headline_block(report_md: Path, readme: Path, command: str | None = None) -> str:
    """The markdown between the markers: figure, summary bullets, where they come from."""
    report_md = Path(report_md)
    text = report_md.read_text(encoding="utf-8")
    summary = re.search(r"^## Summary\n\n((?:- .*\n)+)", text, flags=re.MULTILINE)
    bullets = summary.group(1).rstrip("\n").splitlines() if summary else []
    figures = re.findall(r"!\[([^\]]*)\]\(([^)]+)\)", text)
    chosen = next(((t, f) for name in FIGURE_PREFERENCE for t, f in figures if f == name), None)
    base = Path(readme).parent
    lines = []
    if chosen is not None:
        title, fig = chosen
        lines += [f"![{title}]({_link(report_md.parent / fig, base)})", ""]
    lines += bullets or ["- (the report has no summary lines)"]
    source = f"From the reference report [{_link(report_md, base)}]({_link(report_md, base)})"
    lines += ["", source + (f", regenerated with `{command}`." if command else ".")]
    return "\n".join(lines)


def update_readme(readme: Path, block: str) -> None:
    """Replace what lies between the markers in `readme` with `block` (atomically)."""
    readme = Path(readme)
    try:
        text = readme.read_text(encoding="utf-8")
    except OSError as e:
        raise HeadlineError(f"cannot read {readme}: {e.strerror}") from None
    # Markers count only on lines of their own, so prose may quote them.
    starts = [m.start() for m in re.finditer(rf"^{re.escape(START)}[ \t]*$", text, flags=re.MULTILINE)]
    ends = [m.start() for m in re.finditer(rf"^{re.escape(END)}[ \t]*$", text, flags=re.MULTILINE)]
    if len(starts) != 1 or len(ends) != 1 or starts[0] > ends[0]:
        raise HeadlineError(f"{readme} needs exactly one {START} line followed by one {END} line; "
                            "the headline is written between them")
    head, tail = text[:starts[0]], text[ends[0]:]
    tmp = readme.with_name(readme.name + ".tmp")
    tmp.write_text(f"{head}{START}\n{block}\n{tail}", encoding="utf-8")
    os.replace(tmp, readme)
