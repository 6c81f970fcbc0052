"""The break-even map, cost and README headline, on real tiny CPU runs (tutorial-w1/w2 at two
batch sizes) merged with CUDA rows FABRICATED by the tests from the CPU rows (a known speedup
per point), in tmp folders. Nothing here depends on the machine's speed: every expected
speedup is a factor the test chose."""

import json
import re

import pytest
from PIL import Image

from bench import breakeven
from bench.cli import main
from bench.cost import PriceError, load_price_file, parse_prices
from bench.frames import load_runs, throughput
from bench.report import write_report
from bench.results import ResultsStore, read_jsonl
from bench.runner import Runner
from helpers import tiny

W1, W2 = 3_204_720, 9_986_400  # training FLOPs per image (tests/test_models.py)
# GPU/CPU speedup the fabricated CUDA rows get, per (model, batch size): at batch 4 the CPU wins
# on w1 and loses on w2; at batch 16 the GPU wins on both.
FACTORS = {("tutorial-w1", 4): 0.5, ("tutorial-w2", 4): 2.0, ("tutorial-w1", 16): 1.5, ("tutorial-w2", 16): 4.0}
FAKE_GPU = "FAKE GPU (rows fabricated by tests/test_breakeven.py)"


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory):
    """A real, tiny CPU sweep: two widths of the family at two batch sizes, fp32."""
    folder = tmp_path_factory.mktemp("cpu") / "run"
    configs = [tiny(model=m, batch_size=bs, threads=1, max_config_seconds=600.0)
               for m in ("tutorial-w1", "tutorial-w2") for bs in (4, 16)]
    rows = Runner(folder, data_kind="synthetic", log=lambda m: None, progress=False, probe_seconds=0.02).run(configs)
    assert [r["status"] for r in rows] == ["ok"] * 4
    # The map is under test, not the machine: a real row that a loaded machine got flagged
    # (of ceiling > 1.05, MFU > 100%) would leave the map whole, so the flags' inputs go.
    cleaned = [{**r, "fraction_of_ceiling": None, "mfu": None, "flags": None}
               for r in read_jsonl(folder / "results.jsonl")]
    (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in cleaned))
    return folder


def fabricate_cuda(cpu_folder, folder, factors=FACTORS, extra=()):
    """CUDA rows made up from the CPU rows: throughput x factor. Never real measurements."""
    folder.mkdir(parents=True)
    store = ResultsStore(folder)
    for r in read_jsonl(cpu_folder / "results.jsonl"):
        key = (r["model"], r["batch_size"])
        if key not in factors:
            continue
        ips = r["train_images_per_s"] * factors[key]
        store.append({**r, "config": {**r["config"], "device": "cuda", "precision": "fp16"},
                      "device": "cuda", "device_name": FAKE_GPU, "host": "fabricated", "precision": "fp16",
                      "train_images_per_s": ips, "step_ms_median": 1e3 * r["batch_size"] / ips,
                      "timing_method": "cuda_event", "mfu": None})
    for r in extra:
        store.append(r)
    (folder / "system.json").write_text(json.dumps({"host": "fabricated", "cuda_available": True,
                                                    "gpu_name": FAKE_GPU}))
    return folder


@pytest.fixture(scope="module")
def cuda_run(cpu_run, tmp_path_factory):
    # a w4 row on the GPU alone: no CPU measured it, so it must not get a speedup
    w1 = read_jsonl(cpu_run / "results.jsonl")[0]
    lonely = {**w1, "config": {**w1["config"], "device": "cuda", "model": "tutorial-w4"},
              "device": "cuda", "device_name": FAKE_GPU, "host": "fabricated", "model": "tutorial-w4",
              "flops_per_image": 34_280_640, "train_images_per_s": 1e6, "mfu": None}
    return fabricate_cuda(cpu_run, tmp_path_factory.mktemp("cuda") / "run", extra=[lonely])


def frames(*folders):
    df, _, _ = load_runs(folders)
    return df, throughput(df)


def test_speedups_come_only_from_points_both_devices_measured(cpu_run, cuda_run):
    df, tp = frames(cpu_run, cuda_run)
    mf = breakeven.map_frame(df, tp)
    (cpu, gpu), = breakeven.device_pairs(mf)
    assert cpu.startswith("cpu") and FAKE_GPU in gpu
    pts = breakeven.speedup_points(mf, cpu, gpu)
    assert set(zip(pts["model"], pts["batch_size"])) == set(FACTORS)  # no tutorial-w4 point
    for r in pts.itertuples():
        assert r.speedup == pytest.approx(FACTORS[(r.model, r.batch_size)])
    assert sorted(set(pts["flops_per_image"])) == [W1, W2]


def test_the_crossover_is_interpolated_between_the_measured_sizes(cpu_run, cuda_run):
    df, tp = frames(cpu_run, cuda_run)
    mf = breakeven.map_frame(df, tp)
    pts = breakeven.speedup_points(mf, *breakeven.device_pairs(mf)[0])
    by_bs = {c["batch_size"]: c for c in breakeven.crossovers(pts)}
    # batch 4: 0.5x at w1, 2x at w2: log speedup -ln2 .. +ln2 crosses 0 half way in log FLOPs,
    # at sqrt(3,204,720 x 9,986,400) = 5,657,174 FLOPs
    assert by_bs[4]["kind"] == "from" and by_bs[4]["flops"] == pytest.approx(5_657_174, rel=1e-6)
    assert by_bs[16]["kind"] == "always"
    sentence = breakeven.crossover_sentence(pts, *breakeven.device_pairs(mf)[0])
    assert "the GPU pays off from about **5.7 MFLOP per image at batch 4**" in sentence
    assert "batch 16: always (>= 3.2)" in sentence


def test_crossover_kinds_by_hand():
    import pandas as pd

    pts = pd.DataFrame({"batch_size": [8, 8, 8, 64, 64, 64], "flops_per_image": [1e6, 1e7, 1e8] * 2,
                        "speedup": [0.1, 0.5, 0.9, 2.0, 0.5, 4.0]})
    by_bs = {c["batch_size"]: c for c in breakeven.crossovers(pts)}
    assert by_bs[8]["kind"] == "never"
    # batch 64 dips below 1 at 1e7, so the GPU stays ahead only from between 1e7 (0.5x) and 1e8 (4x):
    # log-linear: 10^(7 + ln 2 / ln 8) = 10^(7 + 1/3)
    assert by_bs[64]["kind"] == "from" and by_bs[64]["flops"] == pytest.approx(10 ** (7 + 1 / 3))


def test_report_draws_the_map_with_the_contour_and_names_the_crossover(cpu_run, cuda_run, tmp_path, monkeypatch):
    import matplotlib.axes

    contours = []
    real = matplotlib.axes.Axes.contour

    def spy(self, *args, **kw):
        contours.append(kw.get("levels"))
        return real(self, *args, **kw)

    monkeypatch.setattr(matplotlib.axes.Axes, "contour", spy)
    out = tmp_path / "report"
    text = write_report([cpu_run, cuda_run], out).read_text()
    assert contours == [[0.0]]  # log2(speedup) = 0: the speedup = 1 line
    assert "![Break-even map](breakeven.png)" in text
    with Image.open(out / "breakeven.png") as im:
        im.verify()
    summary = text.split("## Summary")[1].split("\n## ")[0]
    assert "the GPU pays off from about **5.7 MFLOP per image at batch 4**" in summary
    section = text.split("## Break-even map")[1].split("\n## ")[0]
    assert "tutorial-w4" not in section  # measured on the GPU only
    assert "## Cost" not in text  # no prices, no cost


def test_cpu_only_results_draw_throughput_and_mfu_and_where_the_cpu_saturates(cpu_run, tmp_path):
    out = tmp_path / "report"
    text = write_report([cpu_run], out).read_text()
    assert "## Break-even map" not in text and "![Model size map](size_map.png)" in text
    with Image.open(out / "size_map.png") as im:
        im.verify()
    summary = text.split("## Summary")[1].split("\n## ")[0]
    assert "**Saturation** (cpu" in summary and "GFLOP/s" in summary and "GFLOP per step" in summary
    assert "speedup" not in text.split("## Model size map")[1].split("\n## ")[0].replace("no speedup is shown", "")


def test_saturation_point_by_hand():
    import pandas as pd

    mf = pd.DataFrame({"device_key": "cpu · X", "model": ["a", "a", "b", "b"], "batch_size": [4, 64, 4, 64],
                       "precision": "fp32", "flops_per_image": [1e6, 1e6, 1e8, 1e8], "mfu": [0.1, 0.5, 0.6, 0.62],
                       "images_per_s": [0, 0, 0, 0]})
    mf["flops_per_step"] = mf["flops_per_image"] * mf["batch_size"]
    mf["achieved_tflops"] = [0.02, 0.1, 0.12, 0.124]
    text = breakeven.saturation_sentence(mf, "cpu · X")
    # best 124 GFLOP/s; 90% of it = 111.6: first reached at b, batch 4 (0.4 GFLOP per step)
    assert "best 124 GFLOP/s, MFU 62% (b, batch 64, fp32)" in text
    assert "from about 0.4 GFLOP per step (b at batch 4" in text


# ---- cost ---------------------------------------------------------------------------------

def test_prices_parse_and_bad_ones_say_what_was_expected(tmp_path):
    assert parse_prices("cpu=0.10,cuda=3") == {"cpu": 0.1, "cuda": 3.0}
    for bad, message in [("cpu", "'cpu'"), ("tpu=1", "unknown device 'tpu'"), ("cpu=abc", "'abc' is not a number"),
                         ("cpu=-1", "positive price"), ("cpu=nan", "positive price"), ("cpu=1,cpu=2", "twice"),
                         ("cpu=1,", "'cpu=1,'")]:
        with pytest.raises(PriceError, match=re.escape(message)):
            parse_prices(bad)
    f = tmp_path / "prices.json"
    f.write_text('{"cpu": 0.2, "cuda": 2.5}')
    assert load_price_file(f) == {"cpu": 0.2, "cuda": 2.5}
    f.write_text('[1, 2]')
    with pytest.raises(PriceError, match="expected an object"):
        load_price_file(f)


@pytest.mark.parametrize("argv,message", [
    (["--price", "cpu=free"], "could not parse price 'cpu=free'"),
    (["--price", "cpu=0"], "expected a positive price per device-hour"),
    (["--price-file", "/no/such/prices.json"], "cannot read price file '/no/such/prices.json'"),
])
@pytest.mark.parametrize("command", ["report", "summary"])
def test_bad_prices_give_one_line_and_exit_2(cpu_run, capsys, argv, message, command):
    assert main([command, str(cpu_run), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err and "Traceback" not in err


def test_cost_per_million_images_and_speedup_per_unit_of_cost(cpu_run, cuda_run, tmp_path, capsys):
    df, tp = frames(cpu_run, cuda_run)
    from bench.cost import cost_table

    table = cost_table(df, tp, {"cpu": 0.10, "cuda": 3.00})
    w2 = table[table["model"] == "tutorial-w2"].set_index(table[table["model"] == "tutorial-w2"]["device"].str[:3])
    for kind, price in (("cpu", 0.10), ("cud", 3.00)):
        ips = w2.loc[kind, "images_per_s"]
        assert w2.loc[kind, "per_million_images"] == pytest.approx(price / 3600 * 1e6 / ips)
        assert w2.loc[kind, "per_run"] == pytest.approx(price / 3600 * 2 * 50_000 / ips)  # 2 epochs: the tutorial's
    text = write_report([cpu_run, cuda_run], tmp_path / "r", prices={"cpu": 0.10, "cuda": 3.00}).read_text()
    cost_section = text.split("## Cost")[1].split("\n## ")[0]
    speedup = w2.loc["cud", "images_per_s"] / w2.loc["cpu", "images_per_s"]
    assert f"**{speedup * 0.10 / 3.00:.2g}x speedup per unit of cost**" in cost_section
    assert "estimate (no GPU run)" not in cost_section
    assert main(["summary", str(cpu_run), str(cuda_run), "--price", "cpu=0.10,cuda=3.00"]) == 0
    assert "speedup per unit of cost" in capsys.readouterr().out


def test_cost_without_a_gpu_run_is_labelled_an_estimate(cpu_run, tmp_path):
    text = write_report([cpu_run], tmp_path / "r", prices={"cpu": 0.10, "cuda": 3.00}).read_text()
    cost_section = text.split("## Cost")[1].split("\n## ")[0]
    assert "estimate (no GPU run)" in cost_section and "Cost figures are **estimates**" in cost_section
    assert "x speedup per unit of cost**" not in cost_section


# ---- README headline --------------------------------------------------------------------

README = ("# project\n\nintro\n\n<!-- headline:start -->\nold figure\n<!-- headline:end -->\n\n## rest\n"
          "kept: prose may quote `<!-- headline:start -->` and `<!-- headline:end -->`\n")


def test_report_rewrites_the_readme_headline_between_the_markers(cpu_run, cuda_run, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(README)
    out = tmp_path / "reports" / "ref"
    assert main(["report", str(cpu_run), str(cuda_run), "--out", str(out), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith("# project\n\nintro\n\n<!-- headline:start -->\n")
    assert text.endswith(README.split("old figure\n")[1]) and "old figure" not in text
    block = text.split("<!-- headline:start -->")[1].split("<!-- headline:end -->")[0]
    assert "![Break-even map](reports/ref/breakeven.png)" in block
    assert "GPU pays off from about **5.7 MFLOP per image at batch 4**" in block
    assert "[reports/ref/report.md](reports/ref/report.md)" in block and "cifar-bench report" in block
    # regenerating replaces the block, it does not stack a second one
    assert main(["report", str(cpu_run), str(cuda_run), "--out", str(out), "--readme", str(readme)]) == 0
    assert readme.read_text().count("Break-even map](") == 1


def test_a_readme_without_markers_is_refused_in_one_line(cpu_run, tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text("# no markers\n")
    assert main(["report", str(cpu_run), "--out", str(tmp_path / "r"), "--readme", str(readme)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "needs exactly one <!-- headline:start -->" in err
    assert readme.read_text() == "# no markers\n"


def test_cost_to_the_target_accuracy_uses_the_fastest_measured_time(cpu_run, tmp_path):
    from bench.cost import cost_table

    base = read_jsonl(cpu_run / "results.jsonl")[0]
    folder = tmp_path / "acc"
    folder.mkdir()
    store = ResultsStore(folder)
    for seed, seconds in ((0, 36.0), (1, 72.0)):  # made-up times to target, for the arithmetic
        store.append({**base, "config": {**base["config"], "seed": seed, "epochs": 3}, "seed": seed, "epochs": 3,
                      "test_accuracy": 0.7, "target_accuracy": 0.6, "time_to_target_s": seconds})
    df, tp = frames(cpu_run, folder)
    table = cost_table(df, tp, {"cpu": 0.10})
    w1 = table[table["model"] == "tutorial-w1"].iloc[0]
    assert w1["to_target"] == pytest.approx(0.10 * 36.0 / 3600)  # 0.001
    assert w1["per_run"] == pytest.approx(0.10 / 3600 * 3 * 50_000 / w1["images_per_s"])  # 3 epochs, as trained
