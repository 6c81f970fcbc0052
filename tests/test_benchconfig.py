"""The project's pytest-benchmark settings (tests/benchconfig.py), on fake configs: no pytest run."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import benchconfig
from benchconfig import DEFAULT_STORAGE, device_slug, device_storage, natural_key


def fake_config(**options) -> SimpleNamespace:
    defaults = dict(benchmark_storage=DEFAULT_STORAGE, benchmark_compare=[], benchmark_compare_fail=None,
                    benchmark_save=None, benchmark_autosave=None, benchmark_json=None, benchmark_only=False,
                    benchmark_histogram=[], benchmark_enable=False, benchmark_disable=True)
    return SimpleNamespace(option=SimpleNamespace(**{**defaults, **options}), rootpath=Path("/repo"))


def test_each_device_gets_its_own_storage_folder():
    assert device_slug("Intel(R) Xeon(R) Platinum 8480+", "NVIDIA H100 80GB HBM3") == \
        "intel-r-xeon-r-platinum-8480__nvidia-h100-80gb-hbm3"
    assert device_slug("AMD EPYC", None) == "amd-epyc__cpu-only"
    assert device_slug("AMD EPYC", "NVIDIA L4") != device_slug("AMD EPYC", None)


def test_storage_paths():
    assert device_storage(DEFAULT_STORAGE, Path("/repo"), "d") == "file:///repo/.benchmarks/d"  # at the root, not cwd
    assert device_storage("/tmp/runs/", Path("/repo"), "d") == "file:///tmp/runs/d"
    assert device_storage("file://rel", Path("/repo"), "d") == "file://rel/d"
    es = "elasticsearch+https://host/index/doc"
    assert device_storage(es, Path("/repo"), "d") == es


def test_groups_sort_by_batch_size_as_numbers():
    groups = ["cpu tutorial train batch 32", "cpu tutorial train batch 256", "cpu tutorial train batch 4"]
    assert sorted(groups, key=natural_key) == [groups[2], groups[0], groups[1]]


def test_a_plain_run_is_a_smoke_run():
    config = fake_config()
    benchconfig.pytest_configure(config)
    assert not config.option.benchmark_enable and config.option.benchmark_autosave is None
    assert config.option.benchmark_storage.endswith(f"/.benchmarks/{benchconfig.this_device_slug()}")


def test_compare_measures_and_saves_the_run():
    config = fake_config(benchmark_compare=True)
    benchconfig.pytest_configure(config)
    assert config.option.benchmark_enable and config.option.benchmark_autosave


def test_a_gated_compare_saves_nothing_unless_asked():
    config = fake_config(benchmark_compare=True, benchmark_compare_fail=["median:15%"])
    benchconfig.pytest_configure(config)
    assert config.option.benchmark_enable and config.option.benchmark_autosave is None
    config = fake_config(benchmark_compare=True, benchmark_compare_fail=["median:15%"], benchmark_autosave="tag")
    benchconfig.pytest_configure(config)
    assert config.option.benchmark_autosave == "tag"


def test_machine_info_is_static_and_names_the_software():
    info = {"cpu": {"brand_raw": "AMD EPYC", "hz_actual": [2596150000, 0], "hz_actual_friendly": "2.6 GHz"}}
    benchconfig.pytest_benchmark_update_machine_info(None, info)
    assert info["cpu"] == {"brand_raw": "AMD EPYC"}  # the current clock varies from run to run
    assert info["torch"] == torch.__version__ and info["torch_threads"] == torch.get_num_threads()
    assert {"torch_cuda_build", "cudnn", "gpu_name", "gpu_count", "cpu_model"} <= set(info)


def fake_session(**fields) -> SimpleNamespace:
    bs = SimpleNamespace(**{**dict(compare_fail=["median:15%"], compare=True, compared_mapping={}, skip=False,
                                   disabled=False, storage="/runs/d"), **fields})
    return SimpleNamespace(config=SimpleNamespace(_benchmarksession=bs))


def test_a_gate_stops_before_measuring_when_it_has_nothing_to_compare_with():
    with pytest.raises(pytest.exit.Exception, match="no saved benchmark run in /runs/d.*make bench-baseline"):
        benchconfig.pytest_sessionstart(fake_session())
    with pytest.raises(pytest.exit.Exception, match="needs --benchmark-compare"):
        benchconfig.pytest_sessionstart(fake_session(compare=[]))
    benchconfig.pytest_sessionstart(fake_session(compared_mapping={"0001_x.json": {}}))  # a baseline: go on
    benchconfig.pytest_sessionstart(fake_session(compare_fail=None))  # no gate: go on
