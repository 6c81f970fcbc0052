"""The README and docs/ against the code: generated tables up to date, numbers and rules in
sentences equal to the constants that define them, every relative link and every named file,
flag and make target real. When one of these fails, change the text (or run
`python scripts/gen_docs.py`), not the expectation here."""

from __future__ import annotations

import importlib.util
import inspect
import json
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
NOTEBOOK = ROOT / "examples" / "cpu_vs_gpu.ipynb"
REFERENCE_REPORT = ROOT / "reports" / "cpu-amd-epyc-2core-20261128" / "report.md"


def read(name: str) -> str:
    return (ROOT / name).read_text(encoding="utf-8")


def flat(text: str) -> str:
    """Prose with its line breaks and runs of spaces made single spaces."""
    return re.sub(r"\s+", " ", text)


def pct(x: float) -> str:
    return f"{100 * x:g}%"


def num(x: float) -> str:
    """A number as the docs write it: 0.02, 600, and 1e-3 or 5e-4 for small ones."""
    if x >= 0.01 or x == 0:
        return f"{x:g}"
    mantissa, exponent = f"{x:e}".split("e")
    return f"{float(mantissa):g}e{int(exponent)}"


def gen_docs():
    spec = importlib.util.spec_from_file_location("gen_docs", ROOT / "scripts" / "gen_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---- generated text ----------------------------------------------------------------------

def test_generated_tables_are_what_the_code_makes():
    assert gen_docs().stale() == [], "run: python scripts/gen_docs.py"


def test_the_presets_table_is_generated_and_names_every_preset():
    from bench.config import PRESET_TABLE

    text = read("docs/running.md")
    assert "<!-- generated:presets -->" in text
    for name in PRESET_TABLE:
        assert f"| `{name}` |" in text


# ---- numbers and rules in sentences --------------------------------------------------------

def facts() -> list[tuple[str, str, str]]:
    """(file, the phrase it must hold, the code the phrase comes from)."""
    from bench import breakeven, cliargs, equivalence, measure, passes, protocol, system, timing
    from bench.cli import build_parser
    from bench.config import CHANNELS_LAST_DEFAULT, PRESET_TABLE
    from bench.targets import default_target
    from cnn import data, train
    from cnn.models import LR_RULES

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices
    default = {(cmd, a.dest): a.default for cmd, p in sub.items() for a in p._actions}
    margin, alpha = default[("equivalence", "margin")], default[("equivalence", "alpha")]
    standard = PRESET_TABLE["standard"]
    target = default_target("tutorial", "synthetic")
    synth = inspect.signature(data.synthetic_cifar10).parameters
    tut_lr, tut_bs, tut_cap = LR_RULES["tutorial"]
    rn_lr, rn_bs, rn_cap = LR_RULES["resnet18"]
    bound = subprocess.run([str(ROOT / "scripts" / "gpu-check.sh"), "--print-bound"], capture_output=True,
                           text=True, check=True).stdout
    sweep_limit = next(int(line.split()[1]) for line in bound.splitlines() if line.split()[0] == "sweep")
    total = re.search(r"bound (\d+) s", bound).group(1)
    return [
        ("README.md", f"(IQR/median > {pct(timing.NOISY_IQR_RATIO)})", "bench.timing.NOISY_IQR_RATIO"),
        ("docs/method.md", f"IQR/median > {pct(timing.NOISY_IQR_RATIO)} is flagged noisy", "timing.NOISY_IQR_RATIO"),
        ("README.md", f"a fraction of ceiling above {measure.CEILING_FLAG:g}", "bench.measure.CEILING_FLAG"),
        ("docs/method.md", f"a fraction of ceiling above {measure.CEILING_FLAG:g}", "bench.measure.CEILING_FLAG"),
        ("docs/method.md", f"two consecutive steps agree within {pct(protocol.SETTLE)}", "bench.protocol.SETTLE"),
        ("docs/method.md", f"at least {standard.budget['min_steps']} timed steps each",
         "the standard preset's min_steps"),
        ("docs/method.md", f"known within {pct(standard.budget['target_ci'])}", "the standard preset's target_ci"),
        ("docs/method.md", f"warns above {pct(measure.DRIFT_WARN)}", "bench.measure.DRIFT_WARN"),
        ("docs/method.md", f"should fall {pct(passes.INTERVAL_LEVEL)} of the time", "bench.passes.INTERVAL_LEVEL"),
        ("docs/method.md", f"disagree by more than {pct(passes.EXTRA_PASS_SPREAD)} get up to {passes.EXTRA_PASSES} "
                           f"extra passes, within {pct(passes.EXTRA_TIME_SHARE)}", "bench.passes EXTRA_*"),
        ("docs/method.md", f"the standard and sizes presets {PRESET_TABLE['standard'].passes}, quick "
                           f"{PRESET_TABLE['quick'].passes}", "the presets' passes"),
        ("docs/method.md", f"takes {system.PROBE_MIN_SECONDS['cpu'] * 1000:g} ms on a CPU, "
                           f"{system.PROBE_MIN_SECONDS['cuda'] * 1000:g} ms on a GPU", "system.PROBE_MIN_SECONDS"),
        ("docs/method.md", "ResNet-18 from batch " + str(CHANNELS_LAST_DEFAULT[("cpu", "resnet18")]),
         "bench.config.CHANNELS_LAST_DEFAULT"),
        ("docs/method.md", f"({default[('perf', 'workers')]} workers", "cifar-bench perf --workers"),
        ("docs/equivalence.md", f"(default {margin:.1f} percentage point)", "cifar-bench equivalence --margin"),
        ("docs/equivalence.md", f"({100 * (1 - 2 * alpha):g}% at alpha {alpha:g})", "cifar-bench equivalence --alpha"),
        ("README.md", f"a margin of {margin:g} percentage point", "cifar-bench equivalence --margin"),
        ("README.md", f"the {100 * (1 - 2 * alpha):g}% confidence interval", "cifar-bench equivalence --alpha"),
        ("docs/equivalence.md", f"beyond {equivalence.SINGLE_SEED_FACTOR:g}x the margin",
         "bench.equivalence.SINGLE_SEED_FACTOR"),
        ("docs/equivalence.md", f"0 every pair equivalent or inconclusive, {equivalence.EXIT_NOT_EQUIVALENT} at "
                                "least one pair not equivalent", "bench.equivalence.EXIT_NOT_EQUIVALENT"),
        ("docs/equivalence.md", f"{cliargs.EXIT_ERROR} an error", "bench.cliargs.EXIT_ERROR"),
        ("docs/equivalence.md", f"the {len(standard.seeds)} seeds of `make bench-cpu`", "the standard preset's seeds"),
        ("docs/equivalence.md", f"tutorial Net on synthetic data: {pct(target.accuracy)}",
         "bench.targets.DEFAULT_TARGETS"),
        ("docs/running.md", f"{cliargs.EXIT_FAILED} when a configuration `failed`", "bench.cliargs.EXIT_FAILED"),
        ("docs/running.md", f"{cliargs.EXIT_USAGE} for bad input", "bench.cliargs.EXIT_USAGE"),
        ("docs/running.md", f"{cliargs.EXIT_INTERRUPTED} when interrupted", "bench.cliargs.EXIT_INTERRUPTED"),
        ("docs/running.md", f"at most {sweep_limit} s", "scripts/gpu-check.sh STAGES"),
        ("docs/running.md", f"`make gpu-check`'s {total} s bound", "scripts/gpu-check.sh --print-bound"),
        ("docs/gpu-check.md", f"the sweep ({sweep_limit} s)", "scripts/gpu-check.sh STAGES"),
        ("docs/gpu-check.md", f"add up to {total} s", "scripts/gpu-check.sh --print-bound"),
        ("docs/models-and-data.md", f"(exit status {cliargs.EXIT_USAGE}, no traceback)", "bench.cliargs.EXIT_USAGE"),
        ("docs/reports.md", f"exit status {cliargs.EXIT_USAGE}", "bench.cliargs.EXIT_USAGE"),
        ("docs/models-and-data.md", f"{synth['train_size'].default:,}/{synth['test_size'].default:,} images",
         "cnn.data.synthetic_cifar10"),
        ("docs/models-and-data.md", f"with {pct(data.SYNTH_LABEL_NOISE)} label noise", "cnn.data.SYNTH_LABEL_NOISE"),
        ("docs/models-and-data.md", f"SGD with momentum {train.MOMENTUM:g}", "cnn.train.MOMENTUM"),
        ("docs/models-and-data.md", f"the tutorial's {num(tut_lr)} at batch {tut_bs}", "cnn.models.LR_RULES"),
        ("docs/models-and-data.md", f"capped at {num(tut_cap)}", "cnn.models.LR_RULES"),
        ("docs/models-and-data.md", f"ResNet-18 uses {num(rn_lr)} at batch {rn_bs} (cap {num(rn_cap)}) with "
                                    f"weight decay {num(train.WEIGHT_DECAY['resnet18'])}", "cnn.models.LR_RULES"),
        ("docs/reports.md", f"reaches {pct(breakeven.SATURATION)} of its best FLOP/s", "bench.breakeven.SATURATION"),
        ("docs/scaling.md", f"after `--dist-timeout` seconds (default {default[('run', 'dist_timeout')]:g})",
         "cifar-bench run --dist-timeout"),
    ]


def test_numbers_and_rules_in_the_text_are_the_codes():
    wrong = [f"{file} should say {phrase!r} (from {source})" for file, phrase, source in facts()
             if phrase not in flat(read(file))]
    assert not wrong, "\n".join(wrong)


REFERENCE = "reports/cpu-amd-epyc-2core-20261130/report.md"
SIZES = "reports/sizes-cpu-amd-epyc-2core-20261130/report.md"
REPEATS = "reports/repeatability-cpu-amd-epyc-2core-20261130/sizes-after/compare.md"
EQUIVALENCE_10_SEEDS = "reports/equivalence-tutorial-cpu-bf16-20261127/report.md"
# (file, what it quotes, the committed report it names, what that report says)
QUOTED = [
    ("docs/running.md", "57 configurations (51 ok, 6 skipped", REFERENCE, "57 configurations, 51 ok"),
    ("docs/running.md", "48 configurations, all ok", SIZES, "48 configurations, 48 ok"),
    ("docs/reports.md", "reaches its best 241 GFLOP/s with `tutorial-w8` at batch 256 in bf16 (64% of", SIZES,
     "best 241 GFLOP/s, MFU 64% (tutorial-w8, batch 256, bf16)"),
    ("docs/reports.md", "from about 32 GFLOP per step", SIZES, "from about 32 GFLOP per step"),
    ("docs/reports.md", "agreed within 5% for 31% of configurations (median deviation 7.5%, worst 1.66x)", REPEATS,
     "31% within 5% of each other (median deviation 7.5%, worst 1.66x"),
    ("docs/reports.md", "held the second run's value for 92% of them, at a median width of 53%", REPEATS,
     "92% of 48 configurations; median interval width 52.7%"),
    ("docs/equivalence.md", "*equivalent* (diff -0.17 pp, 90% CI [-0.79, +0.44]", EQUIVALENCE_10_SEEDS,
     "[-0.79, +0.44] pp inside +-1 pp"),
    ("docs/equivalence.md", "*equivalent* (diff -0.17 pp", EQUIVALENCE_10_SEEDS, "equivalent (-0.17 pp)"),
]


def test_figures_quoted_from_committed_reports_are_theirs():
    wrong = [f"{file}: {quote!r} is not what {report} says ({says!r})" for file, quote, report, says in QUOTED
             if quote not in flat(read(file)) or says not in flat(read(report))]
    assert not wrong, "\n".join(wrong)


def test_the_synthetic_accuracy_quoted_is_the_reference_reports_and_the_tests():
    from bench import api

    acc = api.load(ROOT / "reports" / "cpu-amd-epyc-2core-20261130").accuracy()
    fp32 = acc[(acc["precision"] == "fp32") & (acc["batch_size"] == 32) & (acc["epochs"] == 2)]["test_accuracy"]
    low, high = re.search(r"assert (0\.\d+) <= accuracy <= (0\.\d+)", read("tests/test_train.py")).groups()
    text = flat(read("docs/models-and-data.md"))
    assert f"({100 * fp32.min():.1f}-{100 * fp32.max():.1f}% over the {len(fp32)} seeds at batch 32 in fp32" in text
    assert f"`tests/test_train.py` requires {100 * float(low):g}-{100 * float(high):g}% after 2 epochs" in text


def test_model_sizes_are_the_counted_ones():
    from bench import api
    from bench.system import training_flops_per_image
    from cnn.models import build_model, count_parameters

    rows = api.load(ROOT / "reports" / "cpu-amd-epyc-2core-20261130").results.groupby("model").first()
    text = flat(read("docs/models-and-data.md"))
    tutorial, wide, resnet = (rows.loc[m] for m in ("tutorial", "tutorial-wide", "resnet18"))
    assert f"\"Training a Classifier\" tutorial | {int(tutorial.parameters):,} |" in text
    assert f"~{wide.flops_per_image / tutorial.flops_per_image:.0f}x its training FLOPs | " \
           f"{wide.parameters / 1e6:.1f} M |" in text
    assert f"(3x3 stride-1 stem, no max-pool) | {resnet.parameters / 1e6:.1f} M |" in text
    assert f"(`tutorial-wide` is {wide.flops_per_image / 1e6:,.1f} MFLOP, `resnet18` " \
           f"{resnet.flops_per_image / 1e6:,.0f} MFLOP.)" in text
    mine = "examples/my_model.py:build"
    assert f"is one ({count_parameters(build_model(mine)):,} parameters, " \
           f"{training_flops_per_image(mine) / 1e6:.1f} MFLOP per training image)" in text


def test_the_notebook_extra_is_what_the_docs_name_and_make_test_installs():
    extra = re.search(r"^notebook = \[(.*)\]$", read("pyproject.toml"), flags=re.MULTILINE).group(1)
    packages = [re.match(r'"([\w-]+)', p.strip()).group(1) for p in extra.split(",")]
    assert f"`notebook` extra ({', '.join(packages)})" in flat(read("docs/python-api.md"))
    assert re.search(r"^\t\$\(BIN\)/python -m pip install .* -e '\.\[dev,notebook\]'$", read("Makefile"),
                     flags=re.MULTILINE)


def test_the_loop_cost_quoted_is_the_performance_tables():
    table = read("reports/performance/vm-cpu-20261128.md")
    head, *rows = [line for line in table.splitlines() if line.startswith("| tutorial") or "device / ceiling" in line]
    cols = [c.strip() for c in head.strip("|").split("|")]
    cells = [[c.strip() for c in r.strip("|").split("|")] for r in rows]
    ceiling = [float(r[cols.index("device / ceiling")]) for r in cells]
    loader = [float(r[cols.index("device / DataLoader")]) for r in cells]
    text = flat(read("docs/method.md"))
    assert f"runs at {min(ceiling):.2f}-{max(ceiling):.2f} of its ceiling" in text
    assert f"and {min(loader):.1f}-{max(loader):.1f}x faster than the DataLoader" in text


def test_the_make_targets_thresholds_are_the_makefiles():
    fail = re.search(r"^BENCH_FAIL \?= median:(\d+)%", read("Makefile"), flags=re.MULTILINE).group(1)
    assert f"is >{fail}% slower than the newest saved run" in flat(read("docs/pytest-benchmark.md"))


def test_the_width_family_table_is_the_hand_count():
    from test_models import family_flops, family_parameters

    text = read("docs/models-and-data.md")
    square = (family_flops(2) - 2 * family_flops(1)) // 2
    linear = family_flops(1) - square
    assert f"grow as {square:,} k^2 + {linear:,} k with the width k" in flat(text)
    square = (family_parameters(2) - 2 * family_parameters(1) + family_parameters(0)) // 2
    linear = family_parameters(1) - family_parameters(0) - square
    assert f"parameters as {square:,} k^2 + {linear:,} k + {family_parameters(0)}" in flat(text)
    rows = re.findall(r"^\| `tutorial-w(\d+)` \| ([\d,.]+) \| ([\d,]+) \|$", text, flags=re.MULTILINE)
    assert len(rows) == 6
    for width, mflop, params in rows:
        k = int(width)
        assert float(mflop.replace(",", "")) == round(family_flops(k) / 1e6, 1), width
        assert int(params.replace(",", "")) == family_parameters(k), width


def test_the_reading_guide_names_the_reports_sections():
    guide = read("README.md").split("## Reading the report")[1].split("\n## ")[0]
    leads = re.findall(r"^- ((?:\*\*[^*]+\*\*(?: and )?)+)", guide, flags=re.MULTILINE)
    names = [n for lead in leads for n in re.findall(r"\*\*([^*]+)\*\*", lead)]
    sections = re.findall(r"^## (.+)$", REFERENCE_REPORT.read_text(), flags=re.MULTILINE)
    assert len(names) >= 6
    assert [n for n in names if n not in sections] == []


def test_the_python_api_error_examples_are_the_messages():
    from bench import api

    text = read("docs/python-api.md")
    examples = re.findall(r"^>>> (.+)\nBenchError: (.+)$", text, flags=re.MULTILINE)
    assert len(examples) == 2
    for call, message in examples:
        with pytest.raises(api.BenchError) as e:
            eval(call, {"api": api})
        assert str(e.value) == message


# ---- links, files, flags, make targets ------------------------------------------------------

def prose(text: str) -> str:
    """Text outside code fences and inline code."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.MULTILINE | re.DOTALL)
    return re.sub(r"`[^`\n]*`", "", text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    return {slug(h) for h in re.findall(r"^#+ (.+)$", prose(path.read_text(encoding="utf-8")), flags=re.MULTILINE)}


def notebook_markdown() -> str:
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    return "\n\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")


def link_sources() -> list[tuple[Path, str]]:
    pages = [*DOCS, ROOT / "reports" / "README.md"]
    return [(p, p.read_text(encoding="utf-8")) for p in pages] + [(NOTEBOOK, notebook_markdown())]


def test_every_relative_link_resolves():
    broken = []
    for page, text in link_sources():
        for target in re.findall(r"\]\(([^)\s]+)\)", prose(text)):
            if re.match(r"^[a-z]+:", target):
                continue  # http(s), mailto
            path, _, anchor = target.partition("#")
            resolved = (page.parent / path).resolve() if path else page
            if not resolved.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def test_every_file_the_docs_name_exists():
    named = set()
    for _, text in link_sources():
        named |= set(re.findall(r"`((?:bench|cnn|scripts|tests|examples)/[\w./-]+\.(?:py|sh|ipynb))`", text))
    missing = sorted(n for n in named if not (ROOT / n).exists())
    assert len(named) > 20
    assert not missing, missing


def test_the_layout_names_every_module():
    layout = read("docs/development.md").split("## Layout")[1]
    modules = sorted(f"{p.parent.name}/{p.name}" for pkg in ("bench", "cnn") for p in (ROOT / pkg).glob("*.py")
                     if p.name != "__init__.py")
    assert [m for m in modules if f"`{m}`" not in layout] == [], "add them to docs/development.md's layout"


def test_every_flag_in_a_documented_command_exists():
    from bench.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices
    unknown = []
    for page, text in link_sources():
        for command, rest in re.findall(r"cifar-bench (run|report|summary|equivalence|perf)\b([^\n`]*)", text):
            flags = {s for a in sub[command]._actions for s in a.option_strings}
            rest = re.split(r"\s#", rest)[0]  # a shell comment is prose
            unknown += [f"{page.name}: cifar-bench {command} {f}" for f in re.findall(r"(?<![\w-])--[a-z][\w-]*", rest)
                        if f not in flags]
    assert not unknown, unknown


def test_every_make_target_in_the_docs_exists():
    makefile = read("Makefile")
    targets = set(re.findall(r"^([\w-]+):", makefile, flags=re.MULTILINE))
    named = set()
    for _, text in link_sources():
        named |= set(re.findall(r"`make ([\w-]+)", text)) | set(re.findall(r"^make ([\w-]+)", text, flags=re.MULTILINE))
    assert named and sorted(named - targets) == []
