"""Text in the docs that the code defines, generated from the code: each block sits between
`<!-- generated:NAME -->` and `<!-- /generated:NAME -->` in README.md or docs/*.md, and
only the text between the markers is rewritten.

    python scripts/gen_docs.py           # rewrite the blocks from the code
    python scripts/gen_docs.py --check   # exit 1 and name the blocks that differ (tests/test_docs.py)

Numbers and rules that sit inside sentences are held to the code by tests/test_docs.py.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _join(values) -> str:
    return ", ".join(str(v) for v in values)


def _pairs(pairs) -> str:
    """(model, batch size) pairs grouped by model: "tutorial at 4, 32; tutorial-wide at 128"."""
    by_model: dict[str, list[int]] = {}
    for model, bs in pairs:
        by_model.setdefault(model, []).append(bs)
    return "; ".join(f"{m} at {_join(sizes)}" for m, sizes in by_model.items())


def _sizes(n: int | None, full: int) -> str:
    return f"{n or full:,}"


def presets_table() -> str:
    """One row per preset of bench.config.PRESET_TABLE: what its sweep holds."""
    from bench.config import PRESET_TABLE, SweepRequest, build_sweep

    head = ("| preset | models | batch sizes: CPU / CUDA | precisions: CPU / CUDA | accuracy runs "
            "(epochs x seeds) | time to accuracy | DataLoader runs (fp32) | train / test images "
            "| timed loop / configuration budget | passes | CPU reference runs in a CUDA sweep "
            "| configurations: CPU / CUDA |")
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for name, p in PRESET_TABLE.items():
        models = _join(p.models)
        for kind, label in (("cpu", "CPU"), ("cuda", "CUDA")):
            trims = [f"{m} up to {bs}" for (k, m), bs in p.model_batch_limit.items() if k == kind]
            trims += [f"{m} at {_join(bs)}" for (k, m), bs in p.model_batch_sizes.items() if k == kind]
            trims += [f"{m} in {_join(q)}" for (k, m), q in p.model_precisions.items() if k == kind]
            if trims:
                models += f" ({label}: {'; '.join(trims)})"
        accuracy = "none" if not p.accuracy_runs else \
            f"{_pairs(p.accuracy_runs)} ({p.accuracy_epochs} x {len(p.seeds)})"
        fastest = f"{p.tta_candidates} fastest batch sizes" if p.tta_candidates > 1 else "fastest batch size"
        tta = "none" if not p.time_to_accuracy else \
            f"{_join(p.time_to_accuracy)} at each device's {fastest} that can reach the target " \
            f"({len(p.tta_seeds)} seeds, at most {p.tta_epochs} epochs)"
        reference = "no" if not p.cpu_reference else \
            ("fp32 accuracy runs and the CPU grid" if p.accuracy_runs else "the CPU grid")
        loader = _pairs(p.dataloader_runs) or "none"
        lines.append(
            f"| `{name}` | {models} | {_join(p.batch_sizes['cpu'])} / {_join(p.batch_sizes['cuda'])} "
            f"| {_join(p.precisions['cpu'])} / {_join(p.precisions['cuda'])} | {accuracy} | {tta} | {loader} "
            f"| {_sizes(p.train_size, 50_000)} / {_sizes(p.test_size, 10_000)} "
            f"| {p.budget['max_seconds']:g} s / {p.budget['max_config_seconds']:g} s | {p.passes} "
            f"| {reference} "
            f"| {len(build_sweep(SweepRequest(name, ('cpu',))))} / {len(build_sweep(SweepRequest(name, ('cuda',))))} |")
    return "\n".join(lines)


GENERATED: dict[str, Callable[[], str]] = {"presets": presets_table}
BLOCK = re.compile(r"(<!-- generated:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /generated:(?P=name) -->)", re.DOTALL)


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def render(text: str) -> str:
    """`text` with every generated block rewritten from the code."""
    def block(m: re.Match) -> str:
        name = m.group("name")
        if name not in GENERATED:
            raise SystemExit(f"gen_docs: unknown block {name!r}; expected one of {_join(GENERATED)}")
        return m.group(1) + GENERATED[name]() + "\n" + m.group(4)

    return BLOCK.sub(block, text)


def stale() -> list[str]:
    """'file: block' for every generated block whose text differs from the code's."""
    out = []
    for path in doc_files():
        text = path.read_text(encoding="utf-8")
        fresh = render(text)
        if fresh != text:
            old = {m.group("name"): m.group(0) for m in BLOCK.finditer(text)}
            new = {m.group("name"): m.group(0) for m in BLOCK.finditer(fresh)}
            out += [f"{path.relative_to(ROOT)}: {name}" for name in old if old[name] != new[name]]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a block is stale")
    args = parser.parse_args(argv)
    if args.check:
        blocks = stale()
        for b in blocks:
            print(f"stale generated block: {b} (run python scripts/gen_docs.py)")
        return 1 if blocks else 0
    for path in doc_files():
        text = path.read_text(encoding="utf-8")
        fresh = render(text)
        if fresh != text:
            path.write_text(fresh, encoding="utf-8")
            print(f"rewrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
