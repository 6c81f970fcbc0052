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


def test_standard_gpu_preset_adds_the_cpu_reference_runs():
    configs = build_sweep(SweepRequest(preset="standard", devices=("cuda",)))
    cuda = [c for c in configs if c.device == "cuda"]
    cpu = [c for c in configs if c.device == "cpu"]
    assert {c.precision for c in cuda} == {"fp32", "tf32", "fp16", "bf16"}
    assert max(c.batch_size for c in cuda) >= 1024
    assert cpu and all(c.precision == "fp32" and c.epochs > 0 for c in cpu)
    assert {(c.model, c.batch_size, c.seed) for c in cpu} <= {(c.model, c.batch_size, c.seed) for c in cuda
                                                              if c.epochs > 0}


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
