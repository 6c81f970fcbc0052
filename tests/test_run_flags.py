"""How `cifar-bench run` flags become a sweep: the configurations the command hands to the
runner, caught before anything is measured (the runner is replaced by one that records them)."""

from __future__ import annotations

import pytest

import bench.cli_run
import bench.runner
from bench.cli import main
from bench.config import RunConfig, default_augment, default_channels_last

BASE = ["run", "--preset", "quick", "--models", "tutorial,resnet18", "--batch-sizes", "4,32", "--precisions", "fp32",
        "--data", "synthetic", "--no-progress"]


class Planned(Exception):
    """Raised by the recording runner: the sweep was planned, nothing ran."""


@pytest.fixture
def sweep(monkeypatch, tmp_path):
    """`sweep(*flags)`: the RunConfigs `cifar-bench run BASE + flags` would run."""
    planned: list[RunConfig] = []

    class RecordingRunner:
        def __init__(self, out, **kw):
            pass

        def run(self, configs, **kw):
            planned.extend(configs)
            raise Planned

    monkeypatch.setattr(bench.runner, "Runner", RecordingRunner)

    def plan(*flags: str) -> list[RunConfig]:
        planned.clear()
        with pytest.raises(Planned):
            main([*BASE, "--out", str(tmp_path / "run"), *flags])
        assert planned, "no configurations planned"
        return list(planned)

    return plan


def accuracy_seeds(configs: list[RunConfig]) -> set[int]:
    return {c.seed for c in configs if c.epochs > 0}


def test_seed_sets_the_seed_of_every_configuration(sweep):
    configs = sweep("--seed", "7", "--epochs", "1")
    assert {c.seed for c in configs} == {7}
    assert {c.epochs for c in configs} >= {1}


def test_seeds_as_a_count_start_at_seed(sweep):
    assert accuracy_seeds(sweep("--seeds", "3", "--epochs", "1")) == {0, 1, 2}
    assert accuracy_seeds(sweep("--seeds", "3", "--seed", "5", "--epochs", "1")) == {5, 6, 7}


def test_seeds_as_a_list(sweep):
    configs = sweep("--seeds", "0,4,9", "--epochs", "1")
    assert accuracy_seeds(configs) == {0, 4, 9}
    for seed in (0, 4, 9):  # every accuracy configuration at every seed
        assert {(c.model, c.batch_size) for c in configs if c.epochs and c.seed == seed} == \
            {(m, bs) for m in ("tutorial", "resnet18") for bs in (4, 32)}


@pytest.mark.parametrize("flag,expected", [("on", True), ("off", False)])
def test_channels_last_on_and_off_apply_to_every_configuration(sweep, flag, expected):
    assert {c.channels_last for c in sweep("--channels-last", flag)} == {expected}


def test_channels_last_auto_takes_the_measured_default_per_model_and_batch_size(sweep):
    configs = sweep("--channels-last", "auto")
    assert all(c.channels_last == default_channels_last(c.device, c.model, c.batch_size) for c in configs)
    assert {c.channels_last for c in configs} == {True, False}  # resnet18 at batch 4 keeps NCHW on the CPU


@pytest.mark.parametrize("flag,expected", [("on", True), ("off", False)])
def test_augment_on_and_off_apply_to_every_configuration(sweep, flag, expected):
    assert {c.augment for c in sweep("--augment", flag)} == {expected}


def test_augment_auto_follows_each_models_recipe(sweep):
    configs = sweep("--augment", "auto")
    assert all(c.augment == default_augment(c.model) for c in configs)
    assert {(c.model, c.augment) for c in configs} == {("tutorial", False), ("resnet18", True)}


@pytest.mark.parametrize("flags,mode", [
    (("--compile",), None),
    (("--compile-mode", "default"), None),  # torch.compile's default mode: stored as no mode
    (("--compile-mode", "reduce-overhead"), "reduce-overhead"),  # implies --compile
    (("--compile-mode", "max-autotune"), "max-autotune"),
])
def test_compile_mode_implies_compile(sweep, flags, mode):
    configs = sweep(*flags)
    assert {(c.compile, c.compile_mode) for c in configs} == {(True, mode)}


def test_no_compile_by_default(sweep):
    assert {(c.compile, c.compile_mode) for c in sweep()} == {(False, None)}


@pytest.fixture
def pretend_a_gpu(monkeypatch):
    monkeypatch.setattr(bench.cli_run, "check_devices", lambda devices: None)


def test_a_gpu_sweep_gets_cpu_reference_runs_and_a_cpu_grid_unless_told_not_to(sweep, pretend_a_gpu):
    with_reference = sweep("--devices", "cuda", "--epochs", "1")
    references = [c for c in with_reference if c.device == "cpu" and c.epochs > 0]
    assert references and all(c.precision == "fp32" and c.epochs == 1 for c in references)
    cpu_grid = {(c.model, c.batch_size, c.precision) for c in with_reference if c.device == "cpu" and c.epochs == 0}
    assert cpu_grid == {(m, bs, "fp32") for m in ("tutorial", "resnet18") for bs in (4, 32)}  # the CUDA grid's pairs
    without = sweep("--devices", "cuda", "--epochs", "1", "--no-cpu-reference")
    assert {c.device for c in without} == {"cuda"}
    assert {c.key() for c in without} == {c.key() for c in with_reference if c.device == "cuda"}


def test_data_paths_measure_each_configuration_through_each_path(sweep):
    assert {c.data_path for c in sweep()} == {"device"}
    assert {c.data_path for c in sweep("--data-paths", "dataloader")} == {"dataloader"}
    both = sweep("--data-paths", "device,dataloader")
    every = {(m, bs) for m in ("tutorial", "resnet18") for bs in (4, 32)}
    for path in ("device", "dataloader"):
        assert {(c.model, c.batch_size) for c in both if c.data_path == path} == every
    assert all(c.data_path == "device" for c in both if c.epochs > 0)  # accuracy runs train on the device path
