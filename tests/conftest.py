"""Shared fixtures. CUDA-marked tests skip cleanly without a GPU; nothing downloads."""

from __future__ import annotations

import pytest
import torch

import cnn.data
import cnn.data.cifar10

pytest_plugins = ("benchconfig",)  # pytest-benchmark settings: per-device storage, measure when asked


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def no_downloads_anywhere():
    """`pytest` must never download, in this process or in any process a test starts (they
    inherit the environment): cnn.data refuses every download while this variable is set."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(cnn.data.NO_DOWNLOAD_ENV, "1")
        yield


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """And in this process the download host is unreachable as well, for tests that lift the
    variable to reach the code behind it."""
    monkeypatch.setattr(cnn.data.cifar10, "_reachable", lambda url, timeout: False)


@pytest.fixture(scope="session")
def small_data():
    """A small synthetic dataset shared by tests (generated once)."""
    return cnn.data.synthetic_cifar10(train_size=4096, test_size=1000, seed=0)
