"""The `sizes` preset: the width family across batch sizes, throughput only."""

from bench.config import PRESET_TABLE, PRESETS, SweepRequest, build_sweep, default_augment, default_channels_last
from cnn.models import FAMILY


def test_sizes_sweeps_the_family_throughput_only_trimmed_on_the_cpu():
    assert "sizes" in PRESETS
    configs = build_sweep(SweepRequest(preset="sizes", devices=("cpu",)))
    assert {c.model for c in configs} == set(FAMILY)
    assert {c.precision for c in configs} == {"fp32", "bf16"}
    assert all(c.epochs == 0 and c.data_path == "device" for c in configs)
    sizes = {m: sorted({c.batch_size for c in configs if c.model == m}) for m in FAMILY}
    assert sizes["tutorial-w1"] == sizes["tutorial-w4"] == [4, 16, 64, 256, 1024]
    assert sizes["tutorial-w8"] == [4, 16, 64, 256]
    assert sizes["tutorial-w16"] == [4, 16, 64]
    assert sizes["tutorial-w32"] == [4, 16]
    assert len(configs) == 2 * (3 * 5 + 4 + 3 + 2) == 48
    # at least 10 timed steps per configuration (the lead's protocol adds >= 10 ceiling steps)
    assert all(c.min_steps >= 10 for c in configs)
    # the test set holds the largest batch, so evaluation steps on full batches
    assert PRESET_TABLE["sizes"].test_size >= max(PRESET_TABLE["sizes"].batch_sizes["cuda"])


def test_sizes_on_cuda_runs_every_width_batch_size_and_precision():
    configs = build_sweep(SweepRequest(preset="sizes", devices=("cuda",)))
    # both layouts until a GPU measures one faster; no CPU rows (cpu_reference off: the map's CPU
    # side is a CPU run of its own)
    assert len(configs) == len(FAMILY) * 6 * 4 * 2
    assert {c.device for c in configs} == {"cuda"}


def test_the_family_and_user_models_take_the_tutorials_layout_and_augmentation():
    for model in ("tutorial-w16", "examples/my_model.py:build"):
        assert default_channels_last("cpu", model, 4) == default_channels_last("cpu", "tutorial", 4)
        assert default_augment(model) == default_augment("tutorial") is False
    assert default_augment("resnet18") is True
