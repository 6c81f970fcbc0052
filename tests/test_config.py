import pytest

from bench.config import PRESET_TABLE, RunConfig, SweepRequest, build_sweep


def test_run_config_is_frozen_and_keyed_by_every_field():
    a = RunConfig("cpu", "tutorial", 32, "fp32")
    with pytest.raises(AttributeError):
        a.batch_size = 64
    assert a.key() == RunConfig("cpu", "tutorial", 32, "fp32").key()
    assert a.key() != RunConfig("cpu", "tutorial", 32, "fp32", seed=1).key()
    assert RunConfig.from_dict({**__import__("dataclasses").asdict(a), "unknown": 1}) == a


def test_quick_preset_is_small():
    configs = build_sweep(SweepRequest(preset="quick", devices=("cpu",)))
    assert 5 <= len(configs) <= 12
    assert all(c.train_size <= 8192 and c.max_config_seconds <= 10 for c in configs)


def test_standard_cpu_preset_covers_what_bench_cpu_promises():
    configs = build_sweep(SweepRequest(preset="standard", devices=("cpu",)))
    assert {c.model for c in configs} == {"tutorial", "tutorial-wide", "resnet18"}
    assert {c.precision for c in configs} == {"fp32", "bf16"}
    sizes = {c.batch_size for c in configs}
    assert min(sizes) == 4 and max(sizes) == 512
    accuracy = [c for c in configs if c.epochs > 0]
    assert {c.precision for c in accuracy} == {"fp32", "bf16"} and len({c.seed for c in accuracy}) >= 2
    assert all(c.epochs >= 2 for c in accuracy)
    # every configuration's throughput loop is bounded
    assert all(c.warmup_seconds + c.max_seconds <= c.max_config_seconds for c in configs)


def test_standard_gpu_preset_adds_the_cpu_reference_runs_and_the_cpu_grid():
    configs = build_sweep(SweepRequest(preset="standard", devices=("cuda",)))
    cuda = [c for c in configs if c.device == "cuda"]
    references = [c for c in configs if c.device == "cpu" and c.epochs > 0]
    assert {c.precision for c in cuda} == {"fp32", "tf32", "fp16", "bf16"}
    assert max(c.batch_size for c in cuda) >= 1024
    assert references and all(c.precision == "fp32" for c in references)
    assert {(c.model, c.batch_size, c.seed) for c in references} <= {(c.model, c.batch_size, c.seed) for c in cuda
                                                                     if c.epochs > 0}
    # the CPU side of every GPU/CPU speedup: the preset's CPU grid, as `--devices cpu` measures it
    cpu_grid = {(c.model, c.batch_size, c.precision, c.channels_last) for c in configs
                if c.device == "cpu" and c.epochs == 0}
    alone = {(c.model, c.batch_size, c.precision, c.channels_last)
             for c in build_sweep(SweepRequest(preset="standard", devices=("cpu",)))
             if c.epochs == 0 and c.data_path == "device"}
    assert cpu_grid == alone
    assert {c.batch_size for c in cuda} >= {b for _, b, _, _ in cpu_grid}  # pairs at every CPU batch size


def test_no_cpu_reference_leaves_out_the_references_and_the_cpu_grid():
    configs = build_sweep(SweepRequest(preset="standard", devices=("cuda",), cpu_reference=False))
    assert {c.device for c in configs} == {"cuda"}


def test_cuda_grids_run_both_layouts_until_one_is_measured_faster():
    from bench.config import CHANNELS_LAST_DEFAULT, layout_choices

    assert not any(kind == "cuda" for kind, _ in CHANNELS_LAST_DEFAULT)  # no GPU has measured one yet
    assert layout_choices("cuda", "resnet18", 512) == (False, True)
    assert layout_choices("cpu", "resnet18", 4) == (False,) and layout_choices("cpu", "resnet18", 16) == (True,)
    configs = build_sweep(SweepRequest(preset="standard", devices=("cuda",)))
    grid = [c for c in configs if c.device == "cuda" and c.epochs == 0]
    layouts = {}
    for c in grid:
        layouts.setdefault((c.model, c.batch_size, c.precision, c.data_path), set()).add(c.channels_last)
    assert all(v == {False, True} for v in layouts.values())
    assert all(not c.channels_last for c in configs if c.device == "cuda" and c.epochs > 0)  # accuracy: NCHW
    assert {c.channels_last for c in build_sweep(SweepRequest(preset="standard", devices=("cuda",),
                                                               channels_last=False))} == {False}
    # gpu-check's time-limited grid: NCHW only (its perf stage compares the layouts)
    assert {c.channels_last for c in build_sweep(SweepRequest(preset="gpu-check", devices=("cuda",)))
            if c.device == "cuda"} == {False}


def test_compile_is_not_applied_to_the_cpu_fp32_references_of_a_cuda_sweep():
    configs = build_sweep(SweepRequest(preset="standard", devices=("cuda",), compile=True,
                                       compile_mode="reduce-overhead"))
    references = [c for c in configs if c.device == "cpu" and c.epochs > 0]
    assert references and not any(c.compile or c.compile_mode for c in references)
    assert all(c.compile and c.compile_mode == "reduce-overhead" for c in configs if c.device == "cuda")


def test_a_preset_measures_energy_and_profiles_on_its_subset():
    configs = build_sweep(SweepRequest(preset="gpu-check", devices=("cuda",)))
    grid = [c for c in configs if c.epochs == 0]
    energy = {(c.device, c.model, c.batch_size) for c in grid if c.energy_window}
    assert energy == {("cuda", "tutorial", 2048), ("cuda", "resnet18", 512), ("cpu", "tutorial", 128)}
    profiled = {(c.device, c.model, c.batch_size) for c in grid if c.profile_step}
    assert {(m, b) for d, m, b in profiled if d == "cuda"} == {("tutorial", 32), ("resnet18", 16), ("resnet18", 512)}
    assert all(c.profile_step for c in grid if c.device == "cpu")  # the bound needs every CPU row's operators
    # elsewhere every grid configuration measures both (the default)
    assert all(c.energy_window and c.profile_step for c in build_sweep(SweepRequest(preset="standard")))
    assert RunConfig("cpu", "tutorial", 4, "fp32").key() == RunConfig("cpu", "tutorial", 4, "fp32",
                                                                      energy_window=False).key()  # a budget field


def test_per_model_batch_sizes_and_precisions_trim_the_grid_not_the_accuracy_runs():
    configs = build_sweep(SweepRequest(preset="gpu-check", devices=("cuda",)))
    grid = {(c.device, c.model): set() for c in configs}
    for c in configs:
        if c.epochs == 0:
            grid[(c.device, c.model)].add((c.batch_size, c.precision))
    assert {b for b, _ in grid[("cuda", "resnet18")]} == {4, 16, 512}
    assert {q for _, q in grid[("cuda", "tutorial")]} == {"fp32", "bf16"}
    assert {q for _, q in grid[("cuda", "resnet18")]} == {"fp32", "tf32", "bf16"}
    assert {b for b, _ in grid[("cpu", "resnet18")]} == {4, 16}
    accuracy = {c.precision for c in configs if c.device == "cuda" and c.epochs > 0}
    assert accuracy == {"fp32", "tf32", "fp16", "bf16"}  # the equivalence check keeps every precision


def test_flags_override_the_preset():
    configs = build_sweep(SweepRequest(preset="standard", devices=("cpu",), models=("tutorial",),
                                       batch_sizes=(64, 8), precisions=("fp32",), epochs=1, seeds=(3,)))
    # accuracy runs first (CPU fp32 references), then the throughput grid
    assert [(c.batch_size, c.epochs, c.seed) for c in configs] == [(8, 1, 3), (64, 1, 3), (8, 0, 3), (64, 0, 3)]
    assert [c.passes for c in configs] == [1, 1, 3, 3]


def test_epochs_zero_means_throughput_only_with_one_seed():
    configs = build_sweep(SweepRequest(preset="standard", devices=("cpu",), models=("tutorial",),
                                       batch_sizes=(32,), precisions=("fp32",), epochs=0))
    assert [(c.epochs, c.seed) for c in configs] == [(0, 0)]


def test_batch_sizes_ascend_within_each_group_for_the_budget_prediction():
    configs = build_sweep(SweepRequest(preset="full", devices=("cpu",)))
    groups = {}
    for c in configs:
        groups.setdefault((c.model, c.precision, c.epochs, c.seed, c.data_path), []).append(c.batch_size)
    assert all(v == sorted(v) for v in groups.values())


def test_every_preset_has_both_device_kinds():
    for p in PRESET_TABLE.values():
        assert set(p.batch_sizes) == {"cpu", "cuda"} and set(p.precisions) == {"cpu", "cuda"}
