"""Data-parallel runs: sharding, the torchrun launch (2 CPU processes, gloo) and a two-"node"
launch on loopback. CPU only; the subprocess tests start real torchrun jobs with timeouts."""

from __future__ import annotations

import pytest
import torch

from cnn.data import DeviceBatches

# ---- sharding ----------------------------------------------------------------------------


def _ids(n: int = 96) -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose labels are their own indices, so a batch says which examples it holds."""
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g), torch.arange(n)


@pytest.mark.parametrize("world_size", [2, 4])
@pytest.mark.parametrize("augment", [False, True])
def test_shards_are_disjoint_and_together_are_the_one_process_batch(world_size, augment):
    x, y = _ids()
    whole = DeviceBatches(x, y, 16, augment=augment, seed=3)
    shards = [DeviceBatches(x, y, 16, augment=augment, seed=3, rank=r, world_size=world_size)
              for r in range(world_size)]
    assert all(len(s) == len(whole) == 6 for s in shards)  # every rank takes the same number of steps
    for epoch in (0, 1):
        seen = []
        for (xb, yb), *parts in zip(whole.epoch(epoch), *(s.epoch(epoch) for s in shards)):
            ids = [set(p[1].tolist()) for p in parts]
            assert all(len(i) == 16 // world_size for i in ids)
            assert set().union(*ids) == set(yb.tolist())
            assert sum(map(len, ids)) == len(yb)  # disjoint
            # rank order concatenated is the one-process batch: same examples, crops and flips
            assert torch.equal(torch.cat([p[0] for p in parts]), xb)
            assert torch.equal(torch.cat([p[1] for p in parts]), yb)
            seen += yb.tolist()
        assert sorted(seen) == sorted(set(seen)) and len(seen) == 96  # the epoch covers the data once


def test_a_view_shards_the_same_resident_data():
    x, y = _ids()
    base = DeviceBatches(x, y, 1)
    a, b = (base.view(batch_size=8, seed=1, rank=r, world_size=2) for r in (0, 1))
    assert a.x is base.x  # no copy of the data per shard
    ya = torch.cat([yb for _, yb in a.epoch(0)])
    yb_ = torch.cat([yb for _, yb in b.epoch(0)])
    assert not set(ya.tolist()) & set(yb_.tolist()) and len(ya) + len(yb_) == 96


def test_a_global_batch_that_does_not_divide_is_refused():
    x, y = _ids()
    with pytest.raises(ValueError, match="global batch size 10 does not divide among 4 processes"):
        DeviceBatches(x, y, 10, rank=0, world_size=4)
    with pytest.raises(ValueError, match="rank 2 is outside a world of 2"):
        DeviceBatches(x, y, 1).view(batch_size=8, rank=2, world_size=2)
