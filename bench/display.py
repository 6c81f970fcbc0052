"""A written report as an object that shows itself: rendered markdown with its figures
embedded in Jupyter (IPython's rich display, `_repr_markdown_`, `_repr_png_`), the markdown
text in a terminal (`__str__`). One object serves both; nothing here measures or rebuilds.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path

IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)\s]+\.png)\)")


class Markdown:
    """Markdown text that prints as itself and shows rendered in Jupyter, its figures
    (PNGs linked relative to `folder`) embedded so the notebook needs no files beside it."""

    def __init__(self, text: str, folder: Path | None = None):
        self.text, self.folder = text, folder

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return self.text

    def _repr_markdown_(self) -> str:
        if self.folder is None:
            return self.text

        def embed(m: re.Match) -> str:
            path = self.folder / m.group(2)
            if not path.is_file():
                return m.group(0)
            data = base64.b64encode(path.read_bytes()).decode("ascii")
            return f"![{m.group(1)}](data:image/png;base64,{data})"

        return IMAGE.sub(embed, self.text)


class Figure:
    """One PNG of a report: an image in Jupyter, its path in a terminal."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def __str__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"Figure({str(self.path)!r})"

    def _repr_png_(self) -> bytes:
        return self.path.read_bytes()


class Report(Markdown):
    """A written report.md: the whole text, its sections by title and its figures."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        super().__init__(self.path.read_text(encoding="utf-8"), self.path.parent)

    def __repr__(self) -> str:
        return f"Report({str(self.path)!r})"

    @property
    def sections(self) -> list[str]:
        return re.findall(r"^## (.+)$", self.text, flags=re.MULTILINE)

    def section(self, title: str) -> Markdown:
        """The text of one `## title` section, up to the next."""
        m = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", self.text, flags=re.MULTILINE | re.DOTALL)
        if m is None:
            from bench.api import BenchError

            raise BenchError(f"no section {title!r} in {self.path}; expected one of {', '.join(self.sections)}")
        return Markdown(f"## {title}\n{m.group(1)}".rstrip() + "\n", self.folder)

    @property
    def summary(self) -> Markdown:
        """The summary in plain words and the headline table."""
        return self.section("Summary")

    @property
    def figures(self) -> dict[str, Path]:
        """File stem (throughput, size_map, ...) -> PNG path, in the report's order."""
        return {Path(f).stem: self.folder / f for _, f in IMAGE.findall(self.text)}

    def figure(self, name: str) -> Figure:
        """A figure by file stem ("throughput"), file name or title ("Training throughput")."""
        titles = {title: self.folder / f for title, f in IMAGE.findall(self.text)}
        path = self.figures.get(Path(name).stem) or titles.get(name)
        if path is None:
            from bench.api import BenchError

            raise BenchError(f"no figure {name!r} in {self.path}; expected one of {', '.join(self.figures)}")
        return Figure(path)
