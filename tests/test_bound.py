"""The GPU speedup bound (issue 22): operators and bytes of one step, the GPU table, the
bound computed from stored rows, a fabricated CUDA row above its bound, and the self-check
of the bound on this CPU in a small real sweep (live numbers compared only with each other).
CUDA rows here are FABRICATED (tmp folders only); the real GPU side is the cuda-marked test."""

import json
import types

import pytest
import torch
from runfolders import write_folder
from torch import nn

from bench import bound, stepcost
from bench.bound import measured_vs_bound
from bench.bound_report import Section, plain, summary_lines
from bench.cli import main
from bench.frames import load_runs, throughput
from bench.gpus import DEFAULT_GPU, GpuError, for_device, load_file, load_gpus, lookup, parse_table
from bench.results import COLUMNS
from bench.runner import Runner
from cnn.models import FAMILY, model_names
from cnn.train import Trainer, make_trainer, sgd_with_zero_buffers
from helpers import tiny

USER_MODEL = "examples/my_model.py:build"


def batch(n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)


# --------------------------------------------------------------------------------------
# Operators of one step
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", [*model_names(), USER_MODEL])
def test_the_operator_count_covers_forward_backward_and_the_fused_optimizer(name):
    assert set(FAMILY) <= set(model_names())
    trainer = make_trainer(name, "cpu", "fp32", batch_size=2)
    x, y = batch()
    trainer.step(x, y)  # first-call work (allocations, prepacking) is not a step's
    ops = stepcost.step_operators(stepcost.eager_gpu_style(trainer), x, y)
    params = len(list(trainer.model.parameters()))
    assert len(ops["forward"]) >= params / 2  # at least one operator per weighted layer
    # the backward reaches every weight: one gradient accumulation (AccumulateGrad's detach) each
    assert ops["backward"].count("aten::detach") >= params
    assert len(ops["backward"]) > params
    # the optimizer as on CUDA: one fused operator updates every parameter
    assert ops["optimizer"].count("aten::_fused_sgd_") == 1 or "aten::_foreach_add_" in ops["optimizer"]
    assert not any(n.startswith("aten::_fused_sgd_") for n in ops["forward"] + ops["backward"])


def test_the_trainers_own_cpu_optimizer_is_counted_in_the_optimizer_phase():
    """The CPU trainer loops over parameters: those operators land in the optimizer phase,
    which is how the count would see the GPU's had it not been fused."""
    trainer = make_trainer("tutorial", "cpu", "fp32", batch_size=2)
    x, y = batch()
    trainer.step(x, y)
    own = stepcost.step_operators(trainer, x, y)
    fused = stepcost.step_operators(stepcost.eager_gpu_style(trainer), x, y)
    assert len(own["optimizer"]) >= len(list(trainer.model.parameters()))
    assert len(own["forward"]) == len(fused["forward"]) and len(own["backward"]) == len(fused["backward"])


def test_saved_tensor_hooks_add_no_operator():
    """measure_step counts operators and bytes in one step: the hooks must not change the count."""
    trainer = make_trainer("tutorial", "cpu", "bf16", batch_size=2)
    x, y = batch()
    trainer.step(x, y)
    step = stepcost.eager_gpu_style(trainer)
    plain_count = stepcost.step_operators(step, x, y)
    with stepcost.saved_storages(set()) as saved:
        hooked = stepcost.step_operators(step, x, y)
    assert saved and hooked == plain_count


@pytest.mark.parametrize("precision", ["fp32", "bf16", "tf32"])
def test_the_profiled_step_runs_under_the_rows_tf32_setting(monkeypatch, precision):
    """On CUDA the timed steps run with TF32 on for tf32 and off otherwise (matmul_precision);
    the profiled step must too, or cuDNN autotunes every convolution again (its algorithm cache
    is keyed on the setting) inside the row's memory window. The CUDA runtime is stubbed: the
    switches are plain flags on a CPU build."""
    seen = []

    def step(x, y):
        seen.append((torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32))
        return x.sum()

    monkeypatch.setattr(stepcost.timing, "synchronize", lambda device: None)
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    wrong = precision != "tf32"  # the defaults a step outside the switch would see
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = wrong
    try:
        trainer = types.SimpleNamespace(device=torch.device("cuda"), precision=precision, step=step)
        stepcost.step_operators(trainer, *batch())
        assert seen == [(not wrong, not wrong)]
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (wrong, wrong)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_measure_step_counts_the_eager_step_and_keeps_the_trainers_optimizer():
    trainer = make_trainer("tutorial", "cpu", "fp32", batch_size=4)
    x, y = batch(4)
    trainer.step(x, y)
    own_optimizer = trainer.optimizer
    row = stepcost.measure_step(trainer, x, y)
    assert trainer.optimizer is own_optimizer
    assert row["step_ops"] == row["step_ops_forward"] + row["step_ops_backward"] + row["step_ops_optimizer"]
    assert set(row) <= set(COLUMNS)


# --------------------------------------------------------------------------------------
# Bytes of one step, by hand
# --------------------------------------------------------------------------------------

def test_bytes_per_step_of_a_tiny_model_equal_the_hand_count():
    """Flatten + Linear(3072, 10), batch 4, fp32, SGD with momentum:
    weights 3072*10 + 10 = 30,730 floats = 122,920 bytes; gradients as many; momentum as many.
    Saved for backward: the input (the linear's weight gradient needs it; the flatten is a view,
    so its storage: 4*3*32*32 floats = 49,152 bytes), the log-softmax output (4*10 floats = 160
    bytes, saved by log_softmax and by nll_loss: one storage), the targets (4 int64 = 32 bytes)
    and nll_loss's total weight (one float = 4 bytes). The weight itself is a parameter (and the
    input needs no gradient, so the weight is not saved at all).
    Least bytes moved = 2 * 3 * 122,920 + 2 * (49,152 + 160 + 32 + 4) = 836,216."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(3072, 10))
    device = torch.device("cpu")
    trainer = Trainer(model, sgd_with_zero_buffers(model, device, 0.01, 0.9, 0.0), device, "fp32")
    x, y = batch(4)
    row = stepcost.measure_step(trainer, x, y)
    assert row["step_state_bytes"] == 3 * 122_920
    assert row["step_saved_bytes"] == 49_152 + 160 + 32 + 4
    assert row["step_min_bytes"] == 836_216


def test_saved_storages_count_each_storage_once_and_leave_out_the_excluded():
    a = torch.randn(8, requires_grad=True)
    w = torch.randn(8, requires_grad=True)
    with stepcost.saved_storages({w.untyped_storage().data_ptr()}) as saved:
        y = (a * w).relu()  # mul saves a and w; relu saves its output
        (y * y).sum()  # saves y twice: one storage
    assert sorted(saved.values()) == [32, 32]


# --------------------------------------------------------------------------------------
# The GPU table
# --------------------------------------------------------------------------------------

def test_the_table_has_the_issues_gpus_with_a_source_for_every_value():
    table = load_gpus()
    for name in ("T4", "L4", "A10", "A100 40GB", "A100 80GB", "H100 SXM", "H200 SXM", "RTX 4090"):
        gpu = lookup(name, table)
        assert gpu.memory_gbps > 0 and gpu.peak("fp32") > 0 and gpu.peak("fp16") > 0
        assert all(len(gpu.sources[f]) > 20 for f in gpu.sources)
    h100 = lookup(DEFAULT_GPU, table)
    assert (h100.peak("fp32"), h100.memory_gbps) == (67.0, 3350.0)
    assert h100.peak("bf16") == pytest.approx(989.4, rel=1e-3) and h100.peak("tf32") == pytest.approx(494.7, rel=1e-3)
    assert lookup("h200-sxm", table).memory_gbps == 4800.0
    assert lookup("H200 SXM", table).peak("bf16") == h100.peak("bf16")
    assert (lookup("A100 40GB", table).memory_gbps, lookup("A100 80GB", table).memory_gbps) == (1555.0, 2039.0)
    assert lookup("T4", table).peak("bf16") is None  # no bf16 tensor cores on Turing
    assert for_device("NVIDIA H100 80GB HBM3", table).name == "H100 SXM"
    assert for_device("NVIDIA H200", table).name == "H200 SXM"
    assert for_device("Some Other GPU", table) is None


def test_a_user_file_adds_gpus_and_bad_ones_say_what_was_expected(tmp_path):
    good = tmp_path / "mine.json"
    good.write_text(json.dumps({"gpus": {"My GPU": {"fp32_tflops": 10, "tf32_tflops": None, "bf16_tflops": 40,
                                                    "fp16_tflops": {"value": 40, "source": "my datasheet"},
                                                    "memory_gbps": 500}}}))
    table = load_gpus(good)
    mine = lookup("my gpu", table)
    assert (mine.peak("fp32"), mine.peak("tf32"), mine.memory_gbps) == (10.0, None, 500.0)
    assert mine.sources["fp16_tflops"] == "my datasheet" and str(good) in mine.sources["fp32_tflops"]
    assert "H100 SXM" in table
    cases = [
        ({"gpus": {"X": {"fp32_tflops": -1, "tf32_tflops": 1, "bf16_tflops": 1, "fp16_tflops": 1,
                         "memory_gbps": 1}}}, "'X' fp32_tflops is -1; expected a positive number"),
        ({"gpus": {"X": {"fp32_tflops": 1}}}, "'X' lacks tf32_tflops, bf16_tflops, fp16_tflops, memory_gbps"),
        ({"gpus": {"X": {"fp32_tflops": 1, "tf32_tflops": 1, "bf16_tflops": 1, "fp16_tflops": 1,
                         "memory_gbps": None}}}, "memory_gbps is null; expected a positive number"),
        ({"gpus": {"X": {"fp32_tflops": {"value": 1}, "tf32_tflops": 1, "bf16_tflops": 1, "fp16_tflops": 1,
                         "memory_gbps": 1}}}, "has no source"),
        ({"gpus": {"X": {"fp32_tflops": 1, "tf32_tflops": 1, "bf16_tflops": 1, "fp16_tflops": 1,
                         "memory_gbps": 1, "fp64": 3}}}, "unknown field(s) fp64"),
        ([1, 2], 'expected a JSON object with "gpus"'),
    ]
    for data, message in cases:
        with pytest.raises(GpuError) as e:
            parse_table(data, "f.json")
        assert message in str(e.value)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(GpuError, match="is not JSON"):
        load_file(tmp_path / "bad.json")
    with pytest.raises(GpuError, match="unknown GPU 'B9000'; expected one of T4, L4"):
        lookup("B9000", table)


# --------------------------------------------------------------------------------------
# The bound from stored rows (fabricated, numbers chosen by hand)
# --------------------------------------------------------------------------------------

CPU_NAME, H100_NAME = "Test CPU", "NVIDIA H100 80GB HBM3"
CPU_SYS = {"host": "laptop", "cpu_model": CPU_NAME, "cuda_available": False,
           "host_op": {"us_per_op": 5.0}, "memory_bandwidth": [{"device": "cpu", "gbps": 100.0}],
           "peaks": [{"device": "cpu", "precision": "fp32", "dtype": "float32", "n": 1024, "repeats": 5,
                      "tflops": 0.1}]}


def row(device, model, bs, ips, precision="fp32", **kw):
    r = dict.fromkeys(COLUMNS)
    cuda = device.startswith("cuda")
    r.update(device=device, device_name=H100_NAME if cuda else CPU_NAME, host="server" if cuda else "laptop",
             model=model, batch_size=bs, precision=precision, channels_last=False, compile=False, data_path="device",
             status="ok", seed=0, epochs=0, threads=2, data="synthetic", world_size=1, train_images_per_s=ips,
             step_ms_median=1e3 * bs / ips, step_ms_iqr=0.0, noisy=False, timed_steps=20, warmup_steps=2,
             timing_method="cuda_event" if cuda else "perf_counter", peak_memory_mb=10.0, flops_per_image=1e6)
    r.update(kw)
    return r


# host 100 ops x 5 us = 0.5 ms against a 2 ms CPU step: at most 4x (host binds at every precision).
SMALL = dict(step_ops=100, step_min_bytes=2e6, step_saved_bytes=1e6)
# 1024 images: the fp32 bytes (6.7e10 B) take 20 ms at 3.35 TB/s; bf16 halves the saved activations
# (6.03e10 B), leaving 6.7e9 B = 2 ms, which binds: at most 1.024 s / 2 ms = 512x.
LARGE = dict(step_ops=100, step_min_bytes=6.7e10, step_saved_bytes=6.03e10)


@pytest.fixture()
def cpu_folder(tmp_path):
    rows = [row("cpu", "tutorial", 4, 2000.0, **SMALL), row("cpu", "tutorial", 1024, 1000.0, **LARGE),
            row("cpu", "tutorial-wide", 4, 500.0)]  # written before the bound: no step columns
    return write_folder(tmp_path / "cpu", rows, CPU_SYS)


def frames(*folders):
    df, _, systems = load_runs(folders)
    return df, throughput(df), systems


def test_the_bound_is_computed_from_stored_rows_by_hand(cpu_folder):
    df, tp, systems = frames(cpu_folder)
    h100 = lookup(DEFAULT_GPU, load_gpus())
    bt = bound.bound_table(df, tp, systems, h100).set_index(["model", "batch_size"])
    small, large = bt.loc[("tutorial", 4)], bt.loc[("tutorial", 1024)]
    assert small["bound"] == pytest.approx(4.0) and small["binds"] == "host"
    assert small["host_ms"] == pytest.approx(0.5) and small["cpu_step_ms"] == pytest.approx(2.0)
    # with CUDA graphs only compute and memory remain: bf16's 1e6 bytes at 3.35 TB/s bind
    assert small["bound_graphs"] == pytest.approx(2e-3 / (1e6 / 3.35e12))
    assert large["bound"] == pytest.approx(512.0) and large["binds"] == "memory"
    assert large["gpu_precision"] == "bf16" and large["memory_ms"] == pytest.approx(2.0)
    old = bt.loc[("tutorial-wide", 4)]
    assert not old["available"] and "rerun the sweep" in old["reason"]


def test_the_report_section_states_the_bound_the_binding_term_and_what_is_not_available(cpu_folder, tmp_path):
    assert main(["report", str(cpu_folder), "--out", str(tmp_path / "r")]) == 0
    text = (tmp_path / "r" / "report.md").read_text()
    section = text[text.index("## What a GPU could give"):]
    assert "**H100 SXM**" in section
    assert ("each step launches 100 operators whose dispatch alone takes at least 0.5 ms here: at most 4x faster "
            "than this CPU's 2 ms step") in section
    assert "each step must move at least 6,700 MB" in section and "at most 512x faster than this CPU's 1,024 ms" \
        in section
    assert "### tutorial-wide" in section and "Not available: rows written before" in section
    assert "may pay off: measure" in section
    assert "cifar-bench run --devices cuda --models tutorial --batch-sizes 4,1024" in section
    # the CPU self-check: host 0.5 of 2 ms; compute 1.024e9 / 0.1e12 = 10.2 ms and memory 6.7e10 / 1e11 = 670 ms
    # of 1,024 ms
    assert "measured throughput / bound = 0.25 to 0.65 over 2 rows" in section
    assert "Every row is at most 1" in section


def test_a_bound_below_one_says_no_gpu_of_that_kind_can_pay_off(tmp_path):
    folder = write_folder(tmp_path / "cpu", [row("cpu", "tutorial", 4, 20000.0, **SMALL)], CPU_SYS)  # 0.2 ms
    df, tp, systems = frames(folder)
    lines = Section(df, tp, systems).lines()
    text = "\n".join(lines)
    assert "at most 0.4x, so no H100 SXM beats this CPU's 0.2 ms step in eager mode" in text
    assert "cannot pay off (eager)" in text and "At no batch size measured can a H100 SXM pay off" in text


def test_the_size_map_draws_the_bound_one_contour_where_it_crosses(tmp_path):
    """A made-up GPU slower than this CPU at the small model (1 GFLOP/s: tutorial-w1 is below 1)
    and not at the large one (the CPU rows of tutorial-w2 are slow): the line is drawn."""
    from bench import breakeven
    from bench.gpus import GpuSpec

    slow = GpuSpec("Slow GPU", {"fp32": 0.001, "tf32": None, "bf16": None, "fp16": None}, 1.0, {})
    rows = [row("cpu", "tutorial-w1", 4, 2000.0, flops_per_image=3.2e6, **SMALL),
            row("cpu", "tutorial-w1", 16, 1000.0, flops_per_image=3.2e6, **SMALL),
            row("cpu", "tutorial-w2", 4, 10.0, flops_per_image=1e7, **SMALL),
            row("cpu", "tutorial-w2", 16, 20.0, flops_per_image=1e7, **SMALL)]
    df, tp, systems = frames(write_folder(tmp_path / "cpu", rows, CPU_SYS))
    section = Section(df, tp, systems, gpu=slow)
    assert breakeven.report_section(df, tp, tmp_path, overlay=section.overlay)
    assert section.contour == "line" and (tmp_path / "size_map.png").exists()
    text = "\n".join(section.lines())
    assert "the dashed white line is where the Slow GPU bound equals 1" in text
    assert "cannot pay off (eager)" in text and "may pay off: measure" in text


def test_a_self_check_above_one_is_said_to_break_the_method(tmp_path):
    slow_memory = {**CPU_SYS, "memory_bandwidth": [{"device": "cpu", "gbps": 10.0}]}  # 6.7 s > 1.024 s measured
    folder = write_folder(tmp_path / "cpu", [row("cpu", "tutorial", 1024, 1000.0, **LARGE)], slow_memory)
    df, tp, systems = frames(folder)
    sc = bound.self_check(df, systems, "cpu")
    assert sc["ratio"].iloc[0] == pytest.approx(6.7 / 1.024)
    assert "1 row(s) above 1 where memory binds: the method does not hold there" in \
        "\n".join(summary_lines(df, tp, systems))
    # where compute binds, a ratio over 1 is an MFU over 100%: the peak probe, not the method
    low_peak = {**CPU_SYS, "peaks": [{**CPU_SYS["peaks"][0], "tflops": 0.0005}]}  # 1.024e9 / 5e8 = 2.05 s
    folder = write_folder(tmp_path / "cpu2", [row("cpu", "tutorial", 1024, 1000.0, **LARGE)], low_peak)
    text = "\n".join(summary_lines(*frames(folder)))
    assert "1 row(s) above 1 where compute binds, i.e. MFU above 100% of the measured matmul peak" in text
    assert "the method does not hold" not in text


def gpu_folder(tmp_path, host_us):
    system = {"host": "server", "cpu_model": "Server CPU", "cuda_available": True, "gpu_name": H100_NAME}
    if host_us is not None:
        system["host_op"] = {"us_per_op": host_us}
    rows = [row("cuda", "tutorial", 4, 10000.0, **SMALL), row("cuda", "tutorial", 1024, 100000.0, **LARGE)]
    return write_folder(tmp_path / f"gpu-{host_us}", rows, system)


def test_a_fake_cuda_row_above_its_bound_is_flagged_and_explained(cpu_folder, tmp_path):
    """FABRICATED CUDA rows: 5x measured at batch 4 against a 4x bound (flagged); 100x at 1024
    against 512x (not). The GPU machine dispatches an operator in 2 us: with its own cost the
    bound is 10x, so its faster host explains it; without that figure, a term is suspect."""
    for host_us, reason in ((2.0, "the GPU machine's host CPU is faster than this one: it dispatches an operator "
                                  "in 2 us against 5 us here (with its cost the bound is 10x)"),
                            (None, "a term was mis-measured or a datasheet figure is off")):
        df, tp, systems = frames(cpu_folder, gpu_folder(tmp_path, host_us))
        mv = measured_vs_bound(df, tp, systems, lookup(DEFAULT_GPU, load_gpus()), load_gpus()).set_index("batch_size")
        assert mv.loc[4, "above"] and not mv.loc[1024, "above"]
        assert mv.loc[4, "measured"] == pytest.approx(5.0) and mv.loc[4, "gpu"] == "H100 SXM"
        assert mv.loc[4, "why"].startswith(reason)
        text = "\n".join(Section(df, tp, systems).lines())
        assert "**flagged**: tutorial batch 4: measured 5x > bound 4x: " + reason in text
        assert "1 above the bound (flagged)" in "\n".join(summary_lines(df, tp, systems))


def test_without_gpu_the_bound_is_for_the_gpu_the_cuda_rows_ran_on(cpu_folder, tmp_path):
    gpu = write_folder(tmp_path / "h200", [row("cuda", "tutorial", 4, 3000.0, device_name="NVIDIA H200")],
                       {"host": "server", "cuda_available": True, "gpu_name": "NVIDIA H200"})
    df, tp, systems = frames(cpu_folder, gpu)
    assert "**H200 SXM**" in "\n".join(Section(df, tp, systems).lines())
    df, tp, systems = frames(cpu_folder)
    assert "**H100 SXM**" in "\n".join(Section(df, tp, systems).lines())


def test_report_and_summary_take_gpu_and_gpu_file_and_refuse_bad_ones_in_one_line(cpu_folder, tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["report", str(cpu_folder), "--out", str(out), "--gpu", "a100 40gb"]) == 0
    assert "**A100 40GB**" in (out / "report.md").read_text()
    mine = tmp_path / "mine.json"
    mine.write_text(json.dumps({"gpus": {"Tiny GPU": {"fp32_tflops": 1, "tf32_tflops": None, "bf16_tflops": None,
                                                      "fp16_tflops": None, "memory_gbps": 50}}}))
    assert main(["summary", str(cpu_folder), "--gpu", "Tiny GPU", "--gpu-file", str(mine)]) == 0
    assert "GPU speedup bound (Tiny GPU" in capsys.readouterr().out
    for argv, message in ((["--gpu", "B9000"], "unknown GPU 'B9000'; expected one of"),
                          (["--gpu-file", str(tmp_path / "none.json")], "cannot read GPU file"),
                          (["--gpu", "X", "--gpu-file", str(cpu_folder / "system.json")],
                           'expected a JSON object with "gpus"')):
        for command in ("report", "summary"):
            assert main([command, str(cpu_folder), *argv]) == 2
            err = capsys.readouterr().err
            assert message in err and "Traceback" not in err and err.count("\n") == 1


def test_plain_numbers_have_no_exponent():
    assert [plain(x) for x in (20213, 0.0000518, 22.8, 1, None)] == ["20,200", "0.0000518", "22.8", "1.00", ""]


# --------------------------------------------------------------------------------------
# A small real sweep: the columns, the probes, and the bound on this CPU itself
# --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    """tutorial-w1 fp32 and tutorial bf16 at batch 8, one thread, default peak probes (a
    peak probed too briefly is low, and a low peak would overstate the compute floor)."""
    folder = tmp_path_factory.mktemp("bound") / "run"
    configs = [tiny(model="tutorial-w1", batch_size=8, threads=1),
               tiny(model="tutorial", batch_size=8, precision="bf16", threads=1)]
    rows = Runner(folder, data_kind="synthetic", log=lambda m: None, progress=False, drift_seconds=0).run(configs)
    assert [r["status"] for r in rows] == ["ok", "ok"]
    return folder


def test_a_sweep_stores_operators_bytes_and_the_machine_probes(real_run):
    rows = [json.loads(line) for line in (real_run / "results.jsonl").read_text().splitlines()]
    for r in rows:
        assert r["step_ops"] == r["step_ops_forward"] + r["step_ops_backward"] + r["step_ops_optimizer"]
        assert r["step_ops_optimizer"] >= 1 and r["step_saved_bytes"] > 0
        assert r["step_min_bytes"] == 2 * r["step_state_bytes"] + 2 * r["step_saved_bytes"]
    fp32, bf16 = rows
    assert bf16["step_ops"] > fp32["step_ops"]  # autocast's casts
    system = json.loads((real_run / "system.json").read_text())
    assert 0 < system["host_op"]["us_per_op"] <= system["host_op"]["us_per_op_after"]  # the least of both
    assert system["memory_bandwidth"][0]["device"] == "cpu" and system["memory_bandwidth"][0]["gbps"] > 0


def test_the_bound_on_this_cpu_never_exceeds_what_it_measured(real_run):
    df, tp, systems = frames(real_run)
    sc = bound.self_check(df, systems, "cpu")
    assert len(sc) == 2
    assert (sc["ratio"] <= 1).all(), sc[["model", "precision", "ratio", "binds"]].to_string()
    assert (sc["ratio"] > 0).all()
    bt = bound.bound_table(df, tp, systems, lookup(DEFAULT_GPU, load_gpus()))
    assert bt["available"].all() and (bt["bound"] > 0).all()
    assert set(bt["binds"]) <= set(bound.TERMS)


# --------------------------------------------------------------------------------------
# The GPU side (make gpu-check runs the cuda-marked tests): the bound on the GPU itself
# --------------------------------------------------------------------------------------

@pytest.mark.cuda
@pytest.mark.parametrize("model, batch_size, precision", [("tutorial", 32, "fp32"), ("resnet18", 128, "fp16")])
def test_the_bound_on_this_gpu_never_exceeds_its_measured_step(model, batch_size, precision):
    """The bound's arithmetic on the GPU that is here, with its own measured figures (matmul
    peak, memory bandwidth, this host's cost per operator) in place of a datasheet: the
    lower step must not exceed the measured step (live numbers compared with each other).
    Also: on CUDA the count holds the trainer's own fused SGD, and a GradScaler's unscale
    and update land in the optimizer phase."""
    from bench import system, timing

    device = torch.device("cuda")
    trainer = make_trainer(model, device, precision, batch_size=batch_size)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, 3, 32, 32, generator=g).to(device)
    y = torch.randint(0, 10, (batch_size,), generator=g).to(device)
    for _ in range(3):
        trainer.step(x, y)
    ops = stepcost.step_operators(trainer, x, y)
    assert "aten::_fused_sgd_" in ops["optimizer"] and ops["forward"] and ops["backward"]
    if precision == "fp16":
        assert any("_amp_" in n for n in ops["optimizer"]), ops["optimizer"]
    cols = stepcost.measure_step(trainer, x, y)
    # steady steps, as a training loop runs them: ten queued per synchronisation
    step = min(timing.time_repeated(lambda: [trainer.step(x, y) for _ in range(10)], device, min_repeats=5,
                                    max_seconds=1.0, warmup=1)) / 10
    host_us = stepcost.host_op_cost()["us_per_op"]
    gbps = stepcost.memory_bandwidth("cuda", seconds=0.3)["gbps"]
    peak = system.measure_peak_tflops("cuda", precision, seconds=0.3)["tflops"]
    flops = system.training_flops_per_image(model) * batch_size
    lower = bound.lower_step(cols["step_ops"], host_us, flops, peak, cols["step_min_bytes"], gbps)
    assert lower["step"] <= step, (lower, step)
