import io
import os
import pickle
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.utils._pytree as pytree
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

import cnn.data as D
import cnn.data.batches as B
import cnn.data.cifar10 as C
from cnn.data import (
    CLASSES,
    DataError,
    DeviceBatches,
    classic_dataset,
    download_cifar10,
    get_dataset,
    load_cifar10,
    md5sum,
    read_batch_file,
    synthetic_cifar10,
)

# ---- a fake CIFAR-10 folder in the real on-disk format -----------------------------------

class Py2StylePickler(pickle.Pickler):
    """Writes arrays the way the published files (pickled by Python 2) hold them: the raw
    buffer as a text string, which Python 3 reads back as latin-1 `str`."""

    def reducer_override(self, obj):
        if isinstance(obj, np.ndarray):
            fn, (cls, shape, code), state = obj.__reduce__()
            return fn, (cls, shape, code.decode("latin1")), (*state[:4], state[4].decode("latin1"))
        return NotImplemented

REAL_REACHABLE = C._reachable  # before the autouse fixture replaces it


def py2_pickle(obj) -> bytes:
    buf = io.BytesIO()
    Py2StylePickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def write_batch(path, n, rng, data=None, labels=None):
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8) if data is None else data
    labels = rng.integers(0, 10, n).tolist() if labels is None else labels
    batch = {"batch_label": "training batch", "labels": labels, "data": data,
             "filenames": [f"img_{i}.png" for i in range(len(labels))]}
    path.write_bytes(py2_pickle(batch))


def fake_cifar(folder, n=20):
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for name in (*D.TRAIN_FILES, *D.TEST_FILES):
        write_batch(folder / name, n, rng)
    (folder / "batches.meta").write_bytes(py2_pickle({"label_names": list(CLASSES), "num_vis": 3072}))
    return {name: md5sum(folder / name) for name in D.CIFAR10_MD5}


def test_real_format_files_load_with_their_checksums(tmp_path):
    sums = fake_cifar(tmp_path / "cifar-10-batches-py")
    data = load_cifar10(tmp_path / "cifar-10-batches-py", checksums=sums)
    assert data.train_x.shape == (100, 3, 32, 32) and data.train_x.dtype == torch.uint8
    assert data.test_x.shape == (20, 3, 32, 32) and data.source == "cifar10"
    raw = read_batch_file(tmp_path / "cifar-10-batches-py" / "data_batch_1")
    # CHW layout: the first 1024 bytes of a row are the red plane
    assert torch.equal(data.train_x[0, 0].flatten(), torch.from_numpy(raw["data"][0, :1024]))


def test_checksum_mismatch_names_the_file_and_the_remedy(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    fake_cifar(folder)
    with pytest.raises(DataError, match=r"checksum mismatch for .*data_batch_1.*expected c99cafc1.*Remedy: delete"):
        load_cifar10(folder)  # the published checksums


def test_missing_file_is_named(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    sums = fake_cifar(folder)
    (folder / "data_batch_3").unlink()
    with pytest.raises(DataError, match=r"missing .*data_batch_3"):
        load_cifar10(folder, checksums=sums)


def test_truncated_file_is_refused_even_when_its_checksum_matches(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    fake_cifar(folder)
    path = folder / "data_batch_2"
    path.write_bytes(path.read_bytes()[:500])
    sums = {name: md5sum(folder / name) for name in D.CIFAR10_MD5}
    with pytest.raises(DataError, match=r"data_batch_2: truncated or corrupt"):
        load_cifar10(folder, checksums=sums)


class RunsCode:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_crafted_pickle_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    evil = RunsCode()
    evil.marker = marker
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({"data": evil, "labels": [1]}, protocol=2))
    with pytest.raises(DataError, match=r"data_batch_1: refused: global '(posix|os)\.system' is not allowed"):
        read_batch_file(path)
    time.sleep(0.05)
    assert not marker.exists()


def test_builtins_eval_is_refused(tmp_path):
    path = tmp_path / "test_batch"
    path.write_bytes(b"cbuiltins\neval\n(S'1+1'\ntR.")
    with pytest.raises(DataError, match="builtins.eval"):
        read_batch_file(path)


@pytest.mark.parametrize("data,labels,message", [
    (np.zeros((4, 100), np.uint8), [0, 1, 2, 3], r"shape \(4, 100\), expected \(N, 3072\)"),
    (np.zeros((2, 3072), np.uint8), [0, 12], r"labels outside 0-9"),
    (np.zeros((2, 3072), np.float32), [0, 1], r"dtype float32, expected uint8"),
])
def test_malformed_batches_are_refused(tmp_path, data, labels, message):
    path = tmp_path / "data_batch_1"
    write_batch(path, len(labels), np.random.default_rng(0), data=data, labels=labels)
    with pytest.raises(DataError, match=message):
        C._batch_arrays(read_batch_file(path), path)


@pytest.fixture
def downloads_allowed(monkeypatch):
    """Lift the suite's no-download variable in this process ("0" counts as unset), to reach
    the code behind it; the host stays unreachable (the autouse `no_network`)."""
    monkeypatch.setenv(C.NO_DOWNLOAD_ENV, "0")


def test_download_offline_is_refused_and_leaves_nothing(tmp_path, downloads_allowed):
    with pytest.raises(DataError, match="cannot reach www.cs.toronto.edu"):
        download_cifar10(tmp_path)  # the autouse fixture makes the host unreachable
    assert not (tmp_path / "cifar-10-batches-py").exists()


def test_the_no_download_variable_refuses_before_any_connection(tmp_path, monkeypatch):
    monkeypatch.setattr(C, "_reachable", REAL_REACHABLE)
    monkeypatch.setattr(C.socket, "create_connection", lambda *a, **kw: pytest.fail("a connection was attempted"))
    with pytest.raises(DataError, match=f"downloading is off \\({C.NO_DOWNLOAD_ENV} is set\\)"):
        download_cifar10(tmp_path)
    assert list(tmp_path.iterdir()) == []


NO_DOWNLOAD_IN_A_CHILD = """
import socket, sys
attempts = []
def record(*args, **kwargs):
    attempts.append(args)
    raise OSError("no network in this test")
socket.create_connection = record
from cnn.data import DataError, get_dataset
try:
    get_dataset("cifar10", sys.argv[1])
except DataError as e:
    print("refused:", e)
print("connections:", len(attempts))
"""


def test_a_process_started_by_a_test_cannot_download_either(tmp_path):
    # the child inherits the suite's environment, as every command a test starts does
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root)}
    proc = subprocess.run([sys.executable, "-c", NO_DOWNLOAD_IN_A_CHILD, str(tmp_path)], cwd=root, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "refused:" in proc.stdout and "downloading is off" in proc.stdout
    assert "connections: 0" in proc.stdout
    assert list(tmp_path.iterdir()) == []


def test_a_connection_that_hangs_gives_up_at_the_timeout(monkeypatch):
    # The real reachability check (not the autouse stub), against a connection attempt that
    # never returns, as name resolution can on a machine without network.
    monkeypatch.setattr(C, "_reachable", REAL_REACHABLE)
    release = threading.Event()

    def hang(*args, **kwargs):
        release.wait(60)
        raise OSError("a connection that never came")

    monkeypatch.setattr(C.socket, "create_connection", hang)
    start = time.perf_counter()
    try:
        assert REAL_REACHABLE("https://www.cs.toronto.edu/x", timeout=0.2) is False
        assert time.perf_counter() - start < 5  # 0.2 s and a thread join, not the 60 s hang
    finally:
        release.set()


def test_a_partial_download_never_passes_for_a_dataset(tmp_path, monkeypatch, downloads_allowed):
    monkeypatch.setattr(C, "_reachable", lambda url, timeout: True)

    def partial(url, root, filename=None, md5=None, **kw):
        (tmp_path / "x").write_text("")  # the download writes part of a file, then fails the md5 check
        with open(os.path.join(root, filename), "wb") as f:
            f.write(b"\x1f\x8b partial")
        raise RuntimeError("File not found or corrupted.")

    import torchvision.datasets.utils
    monkeypatch.setattr(torchvision.datasets.utils, "download_url", partial)
    with pytest.raises(DataError, match="download of .* failed"):
        download_cifar10(tmp_path)
    assert not (tmp_path / "cifar-10-batches-py").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["x"]  # the temporary folder is gone too


def test_auto_falls_back_to_synthetic_with_one_warning(tmp_path):
    messages = []
    data = get_dataset("auto", tmp_path, synthetic_sizes=(64, 32), warn=messages.append)
    assert data.source == "synthetic" and len(data.train_y) == 64
    assert len(messages) == 1 and "using synthetic data" in messages[0] and "\n" not in messages[0]


def test_cifar10_requested_but_absent_is_an_error(tmp_path, downloads_allowed):
    with pytest.raises(DataError, match="cannot reach"):
        get_dataset("cifar10", tmp_path)


def test_auto_uses_present_files_and_fails_loudly_when_they_are_damaged(tmp_path):
    fake_cifar(tmp_path / "cifar-10-batches-py")
    with pytest.raises(DataError, match="checksum mismatch"):
        get_dataset("auto", tmp_path)


# ---- synthetic data ------------------------------------------------------------------------

def test_synthetic_data_has_cifar_shapes_and_is_deterministic():
    a = synthetic_cifar10(500, 100, seed=0)
    b = synthetic_cifar10(500, 100, seed=0)
    assert a.train_x.shape == (500, 3, 32, 32) and a.train_x.dtype == torch.uint8
    assert a.test_x.shape == (100, 3, 32, 32) and a.train_y.dtype == torch.int64
    assert set(a.train_y.tolist()) == set(range(10)) and a.source == "synthetic"
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    assert not torch.equal(a.train_x, synthetic_cifar10(500, 100, seed=1).train_x)
    assert 60 < a.train_x.float().mean() < 200 and a.train_x.float().std() > 30


# ---- device-resident batches ------------------------------------------------------------------

def epoch_batches(batches, epoch):
    return [(x.clone(), y.clone()) for x, y in batches.epoch(epoch)]


@pytest.mark.parametrize("augment", [False, True])
def test_one_seed_gives_identical_batch_order_and_augmentation(small_data, augment):
    d = small_data
    a = DeviceBatches(d.train_x[:256], d.train_y[:256], 32, augment=augment, seed=5)
    b = DeviceBatches(d.train_x[:256], d.train_y[:256], 32, augment=augment, seed=5)
    c = DeviceBatches(d.train_x[:256], d.train_y[:256], 32, augment=augment, seed=6)
    for epoch in (0, 1):
        ea, eb, ec = epoch_batches(a, epoch), epoch_batches(b, epoch), epoch_batches(c, epoch)
        assert len(ea) == 8
        assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(ea, eb))
        assert not all(torch.equal(ya, yc) for (_, ya), (_, yc) in zip(ea, ec))
    assert not torch.equal(epoch_batches(a, 0)[0][1], epoch_batches(a, 1)[0][1])  # reshuffled per epoch


def test_batches_match_torchvision_totensor_normalize(small_data):
    d = small_data
    batches = DeviceBatches(d.test_x[:16], d.test_y[:16], 16, shuffle=False, drop_last=False)
    x, y = next(iter(batches))
    ds = classic_dataset(d.subset(None, 16), train=False)
    expected = torch.stack([ds[i][0] for i in range(16)])
    assert torch.allclose(x, expected, atol=1e-5)
    assert torch.equal(y, d.test_y[:16])


def test_augmentation_is_a_zero_padded_crop_and_flip(small_data):
    d = small_data
    batches = DeviceBatches(d.train_x[:64], d.train_y[:64], 64, augment=True, seed=2)
    order, dy, dx, flip = batches.plan(0)
    x, _ = next(batches.epoch(0))
    padded = torch.nn.functional.pad(d.train_x[:64].float(), (4, 4, 4, 4))
    std, mean = torch.tensor(D.STD)[:, None, None], torch.tensor(D.MEAN)[:, None, None]
    for k in range(64):
        i = order[k]
        crop = padded[i, :, dy[i]:dy[i] + 32, dx[i]:dx[i] + 32]
        if flip[i]:
            crop = crop.flip(-1)
        assert torch.allclose(x[k], (crop / 255 - mean) / std, atol=1e-5)
    assert 0 < flip.float().mean() < 1 and dy.min() >= 0 and dy.max() <= 8


def test_channels_last_batches_hold_the_same_values(small_data):
    d = small_data
    a = DeviceBatches(d.train_x[:64], d.train_y[:64], 32, augment=True, seed=1)
    b = DeviceBatches(d.train_x[:64], d.train_y[:64], 32, augment=True, seed=1, channels_last=True)
    with pytest.raises(TypeError, match="fixed at construction"):
        a.view(channels_last=True)
    for (xa, _), (xb, _) in zip(a.epoch(0), b.epoch(0)):
        assert xb.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(xa, xb)


def test_batch_size_larger_than_the_data_is_refused(small_data):
    with pytest.raises(ValueError, match="batch size 64 is larger than the 10 examples"):
        DeviceBatches(small_data.train_x[:10], small_data.train_y[:10], 64)


@pytest.mark.cuda
def test_cpu_and_cuda_see_identical_batches(small_data):
    d = small_data
    cpu = DeviceBatches(d.train_x[:256], d.train_y[:256], 32, "cpu", augment=True, seed=3)
    gpu = DeviceBatches(d.train_x[:256], d.train_y[:256], 32, "cuda", augment=True, seed=3)
    for (xc, yc), (xg, yg) in zip(cpu.epoch(0), gpu.epoch(0)):
        assert torch.equal(yc, yg.cpu())
        assert torch.allclose(xc, xg.cpu(), atol=1e-6)


# ---- the epoch plan is made on the device: no host-to-device copy in a timed loop --------------

class HostToDeviceCopies(TorchDispatchMode):
    """Records every operator that moves data from the CPU to another device. At the dispatch
    level a copy shows as `_to_copy`, `copy_` or `_copy_from` with a CPU source and a non-CPU
    result; any other operator that takes a CPU tensor with elements and returns a tensor
    elsewhere is recorded too (0-dim CPU tensors are scalars passed as kernel arguments)."""

    def __init__(self):
        super().__init__()
        self.copies: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func in (torch.ops.aten.copy_.default, torch.ops.aten._copy_from.default):
            sources = [args[1]]  # copy_(self=destination, src)
        else:
            sources = [a for a in pytree.tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor) and a.dim() > 0]
        results = pytree.tree_leaves(args[0] if func is torch.ops.aten.copy_.default else out)
        if any(s.device.type == "cpu" for s in sources) and any(
                isinstance(r, torch.Tensor) and r.device.type != "cpu" for r in results):
            self.copies.append(str(func))
        return out


class HostDataOnDevice(TorchFunctionMode):
    """`torch.tensor(..., device=d)` and friends copy host data without passing an operator
    the dispatch mode sees."""

    def __init__(self):
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (torch.tensor, torch.as_tensor) and torch.device(kwargs.get("device") or "cpu").type != "cpu":
            self.calls.append(func.__name__)
        return func(*args, **kwargs)


@pytest.mark.parametrize("kw", [dict(augment=True), dict(augment=False), dict(augment=True, channels_last=True),
                                dict(augment=True, rank=1, world_size=2), dict(shuffle=False, drop_last=False)])
def test_an_epoch_on_the_device_copies_nothing_from_the_host(small_data, kw):
    """Traced on the `meta` device (a device that is not the CPU, with no data): one whole
    epoch and the step into the next, as a timed loop walks them. A CPU-made plan sent with
    `.to(device)` was a blocking copy, a host-device sync, at every epoch boundary on CUDA."""
    d = small_data
    batches = DeviceBatches(d.train_x[:100], d.train_y[:100], 16, "meta", seed=3, **kw)
    with HostToDeviceCopies() as copies, HostDataOnDevice() as host_data:
        steps = sum(1 for _ in batches.epoch(0))
        assert steps == len(batches)
        x, y = next(batches.epoch(1))
    assert x.device.type == "meta" and x.shape == (8 if kw.get("world_size") else 16, 3, 32, 32)
    assert copies.copies == [] and host_data.calls == []


def test_the_copy_detectors_see_host_to_device_copies():
    on_meta = torch.arange(4, device="meta")
    with HostToDeviceCopies() as copies, HostDataOnDevice() as host_data:
        torch.zeros(3).to("meta")
        torch.empty(3, device="meta").copy_(torch.ones(3))
        torch.tensor([1.0], device="meta")
        (on_meta ^ 7) * 3  # Python scalars are kernel arguments, not copies
    assert copies.copies == ["aten._to_copy.default", "aten.copy_.default"] and host_data.calls == ["tensor"]


def reference_hash32(i: int, seed: int, epoch: int, stream: str) -> int:
    """The plan's hash in plain Python integers, written from the published lowbias32."""
    a, b = B._salts(seed, epoch, stream)

    def mix(x):
        x ^= x >> 16
        x = (x * 0x7FEB352D) & 0xFFFFFFFF
        x ^= x >> 15
        x = (x * 0x846CA68B) & 0xFFFFFFFF
        return x ^ (x >> 16)

    return mix(mix(i ^ a) ^ b)


def test_the_plan_is_the_reference_hash_on_any_device():
    """Any device computes exactly these integers (int64 arithmetic, no overflow, unique sort
    keys), which is why a CPU run and a CUDA run see identical batches."""
    n, seed, epoch = 1000, 7, 3
    batches = DeviceBatches(torch.zeros(n, 3, 32, 32, dtype=torch.uint8), torch.zeros(n, dtype=torch.int64), 10,
                            augment=True, seed=seed)
    order, dy, dx, flip = batches.plan(epoch)
    keys = [reference_hash32(i, seed, epoch, "order") for i in range(n)]
    assert order.tolist() == sorted(range(n), key=lambda i: (keys[i], i))
    assert dy.tolist() == [reference_hash32(i, seed, epoch, "dy") % 9 for i in range(n)]
    assert dx.tolist() == [reference_hash32(i, seed, epoch, "dx") % 9 for i in range(n)]
    assert flip.tolist() == [reference_hash32(i, seed, epoch, "flip") >= 2**31 for i in range(n)]
    assert max(keys) >= 2**31  # the test reaches the top bit, where a signed 32-bit version would go wrong


def test_the_plan_is_a_random_looking_permutation():
    n = 4096
    x, y = torch.zeros(n, 3, 32, 32, dtype=torch.uint8), torch.zeros(n, dtype=torch.int64)
    plans = {(seed, epoch): DeviceBatches(x, y, 32, augment=True, seed=seed).plan(epoch)
             for seed in (0, 1) for epoch in (0, 1, 2)}
    positions = torch.arange(n, dtype=torch.float64)
    orders = {key: plan[0] for key, plan in plans.items()}
    for key, order in orders.items():
        assert torch.equal(order.sort().values, torch.arange(n)), key  # a permutation
        # Uncorrelated with the index: |r| ~ N(0, 1/sqrt(n)) = 0.016 for a random permutation.
        assert abs(torch.corrcoef(torch.stack([positions, order.double()]))[0, 1]) < 0.07, key
        assert (order == torch.arange(n)).sum() < 10  # fixed points: about 1 expected
    keys = list(orders)
    for i, a in enumerate(keys):  # every seed and epoch its own order, unrelated to the others
        for b in keys[i + 1:]:
            assert abs(torch.corrcoef(torch.stack([orders[a].double(), orders[b].double()]))[0, 1]) < 0.07, (a, b)
    _, dy, dx, flip = plans[(0, 0)]
    for offsets in (dy, dx):  # uniform over 0..8: chi-square with 8 degrees of freedom, p = 0.001 at 26.1
        counts = torch.bincount(offsets, minlength=9).double()
        assert ((counts - n / 9) ** 2 / (n / 9)).sum() < 26.1 and len(counts) == 9
    assert abs(flip.double().mean() - 0.5) < 0.05
    assert not torch.equal(dy, plans[(0, 1)][1]) and not torch.equal(dy, dx)


def test_evaluation_order_is_the_dataset_order(small_data):
    batches = DeviceBatches(small_data.test_x[:50], small_data.test_y[:50], 16, shuffle=False, drop_last=False)
    assert torch.equal(batches.plan(4)[0], torch.arange(50))
    assert torch.equal(torch.cat([y for _, y in batches.epoch(4)]), small_data.test_y[:50])
