"""Data-parallel runs: sharding, the torchrun launch (2 CPU processes, gloo) and a two-"node"
launch on loopback. CPU only; the subprocess tests start real torchrun jobs with timeouts."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.cli import main
from bench.config import RunConfig
from bench.distributed import strip_launch_flags, topology_from_env, torchrun_command, worker_env
from bench.equivalence import equivalence_table
from bench.results import ResultsStore, read_jsonl
from bench.runner import Runner
from cnn.data import DeviceBatches

ROOT = Path(__file__).resolve().parent.parent

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


# ---- the trainer under DDP (a one-process gloo group, in this process) ----------------------

@pytest.fixture
def gloo_group(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        yield dist.group.WORLD
    finally:
        dist.destroy_process_group()


def test_a_ddp_trainer_trains_resets_to_the_seed_and_evaluates_unwrapped(gloo_group, small_data):
    from cnn.models import build_model
    from cnn.train import evaluate, make_trainer, train_epoch

    trainer = make_trainer("tutorial", "cpu", batch_size=32, seed=5, process_group=gloo_group)
    assert trainer.distributed and trainer.module is trainer.model.module
    batches = DeviceBatches(small_data.train_x[:256], small_data.train_y[:256], 32, rank=0, world_size=1)
    loss = train_epoch(trainer, batches.epoch(0)).mean_loss
    assert 0 < loss < 10
    initial = build_model("tutorial", seed=5).state_dict()
    assert any(not torch.equal(v, initial[k]) for k, v in trainer.module.state_dict().items())
    trainer.reset(5)
    assert all(torch.equal(v, initial[k]) for k, v in trainer.module.state_dict().items())
    assert {id(p) for g in trainer.optimizer.param_groups for p in g["params"]} == \
        {id(p) for p in trainer.model.parameters()}  # the fresh optimizer steps DDP's parameters
    test = DeviceBatches(small_data.test_x[:64], small_data.test_y[:64], 32, shuffle=False)
    assert evaluate(trainer, test).predictions.shape == (64,)


# ---- launching: flags, command line, topology ------------------------------------------------

def test_the_launcher_drops_only_its_own_flags():
    argv = ["run", "--nproc", "2", "--nnodes=2", "--node-rank", "1", "--master-addr", "10.0.0.1",
            "--master-port=29500", "--batch-sizes", "32", "--out", "x"]
    assert strip_launch_flags(argv) == ["run", "--batch-sizes", "32", "--out", "x"]


def test_torchrun_command_lines():
    single = torchrun_command(["run", "--out", "x"], 2, python="py")
    assert single == ["py", "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone",
                      "-m", "bench", "run", "--out", "x"]
    multi = torchrun_command(["run"], 1, 2, 1, "10.0.0.1", 29500, python="py")
    assert multi[3:] == ["--nproc-per-node", "1", "--nnodes", "2", "--node-rank", "1", "--master-addr",
                         "10.0.0.1", "--master-port", "29500", "-m", "bench", "run"]


def test_topology_comes_from_torchrun_environment():
    assert topology_from_env({}) is None
    assert topology_from_env({"WORLD_SIZE": "1", "RANK": "0"}) is None  # one process: a plain run
    t = topology_from_env({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
                           "GROUP_WORLD_SIZE": "2"})
    assert (t.rank, t.local_rank, t.world_size, t.local_world_size, t.nodes, t.is_main) == (3, 1, 4, 2, 2, False)


def test_workers_import_the_launchers_code():
    env = worker_env({"PYTHONPATH": "/elsewhere"})
    assert env["PYTHONPATH"].split(os.pathsep) == [str(ROOT), "/elsewhere"]


@pytest.mark.parametrize("argv,message", [
    (["run", "--nproc", "0"], "got '0'; expected a positive integer"),
    (["run", "--nproc", "two"], "got 'two'"),
    (["run", "--master-port", "70000", "--nproc", "2"], "expected a TCP port 1-65535"),
    (["run", "--node-rank", "1"], "--node-rank only apply to a launch; add --nproc"),
    (["run", "--nnodes", "2", "--node-rank", "0"], "--nnodes 2 needs --node-rank, --master-addr and --master-port"),
    (["run", "--nnodes", "2", "--node-rank", "2", "--master-addr", "h", "--master-port", "1234"],
     "--node-rank 2 is out of range for --nnodes 2"),
    (["run", "--npr", "2"], "unrecognized arguments: --npr"),  # no abbreviations: the launcher strips by name
])
def test_bad_launch_flags_give_one_line_and_exit_status_2(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("cifar-bench: error:") and message in err, err


def test_launch_flags_inside_a_torchrun_job_are_refused(capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert main(["run", "--nproc", "2"]) == 2
    assert "already runs under torchrun" in capsys.readouterr().err


# ---- equivalence sides ----------------------------------------------------------------------

def _accuracy_folder(folder: Path, world_size: int | None, correct: int) -> Path:
    folder.mkdir()
    store = ResultsStore(folder)
    labels = np.arange(100) % 10
    preds = labels.copy()
    preds[correct:] = (preds[correct:] + 1) % 10
    row = {"status": "ok", "model": "tutorial", "batch_size": 32, "epochs": 1, "train_size": 512, "test_size": 100,
           "data": "synthetic", "augment": False, "data_path": "device", "host": "h", "device": "cpu",
           "precision": "fp32", "channels_last": False, "compile": False, "threads": 1, "lr": 0.008, "seed": 0,
           "test_accuracy": correct / 100, "predictions_file": store.save_predictions("p", preds, labels)}
    if world_size is not None:
        row["world_size"] = world_size
    store.append(row)
    return folder


def test_an_n_process_run_is_its_own_side_and_the_one_process_run_is_the_reference(tmp_path):
    two = _accuracy_folder(tmp_path / "two", 2, 60)
    one = _accuracy_folder(tmp_path / "one", None, 61)  # a row from before scale-out: one process
    table = equivalence_table([two, one])  # the 2-process folder first: still not the reference
    assert len(table) == 1
    r = table.iloc[0]
    assert r["reference"].startswith("cpu fp32 t1 @h#2") and "x2" not in r["reference"]
    assert r["candidate"].startswith("cpu fp32 t1 x2") and r["diff_pp"] == pytest.approx(-1.0)


# ---- scaling efficiency, by hand ------------------------------------------------------------

def test_scaling_efficiency_and_same_cores_ratio_by_hand():
    import pandas as pd

    from bench.scaling import scaling_table

    def row(kind, world, threads, ips, comm=None):
        return {"device_key": kind, "device_kind": kind, "model": "tutorial", "precision": "fp32", "batch_size": 128,
                "channels_last": False, "compile": False, "status": "ok", "data_path": "device",
                "world_size": world, "nodes": 1, "threads": threads, "train_images_per_s": ips,
                "step_ms_median": 128e3 / ips, "comm_share": comm}

    df = pd.DataFrame([row("cpu", 1, 1, 100.0), row("cpu", 1, 2, 180.0), row("cpu", 2, 1, 150.0, 0.2),
                       row("cuda", 1, 8, 1000.0), row("cuda", 4, 1, 3600.0, 0.1)])
    t = scaling_table(df).set_index(["device_kind", "world_size", "threads_per_process"], drop=False)
    cpu2 = t.loc[("cpu", 2, 1)]
    assert cpu2["efficiency"] == pytest.approx(150 / (2 * 100))  # against 1 process x 1 thread
    assert cpu2["vs_one_process_same_cores"] == pytest.approx(150 / 180)  # against 1 process x 2 threads
    assert cpu2["comm_share"] == pytest.approx(0.2)
    cuda4 = t[(t["device_kind"] == "cuda") & (t["world_size"] == 4)].iloc[0]
    assert cuda4["efficiency"] == pytest.approx(3600 / (4 * 1000))  # host threads do not matter on a GPU
    assert np.isnan(cuda4["vs_one_process_same_cores"])
    assert scaling_table(df[df["world_size"] == 1]).empty  # nothing scaled: no table


# ---- real torchrun jobs (2 CPU processes, gloo) ---------------------------------------------

TINY = ["--preset", "quick", "--models", "tutorial", "--precisions", "fp32", "--train-size", "512",
        "--test-size", "128", "--epochs", "1", "--data", "synthetic", "--no-progress", "--dist-timeout", "60"]
JOB_TIMEOUT = 240  # a hung job fails the test instead of hanging CI


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def _start(cmd: list[str], **kw) -> subprocess.Popen:
    # A session of its own, so a timeout can stop torchrun and its workers together.
    return subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, **kw)


def _finish(proc: subprocess.Popen) -> tuple[int, str]:
    try:
        out, _ = proc.communicate(timeout=JOB_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"job timed out after {JOB_TIMEOUT} s:\n{out[-3000:]}")
    return proc.returncode, out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_nproc_2_runs_ddp_on_gloo_writes_results_once_and_matches_one_process(tmp_path, capsys):
    out = tmp_path / "x2"
    rc, log = _finish(_start([sys.executable, "-m", "bench", "run", "--nproc", "2", "--batch-sizes", "32,33",
                              *TINY, "--out", str(out)]))
    assert rc == 0, log[-3000:]
    assert "--nproc-per-node 2 --standalone -m bench run" in log
    # accuracy runs first, then the throughput grid: 4 visits, each said once by rank 0 (rank 1 is quiet)
    assert all(log.count(f"[{i}/4]") == 1 for i in range(1, 5))
    rows = read_jsonl(out / "results.jsonl")
    grid = [r for r in rows if r["epochs"] == 0]
    accuracy = [r for r in rows if r["epochs"] == 1]
    for kind in (grid, accuracy):  # one row each
        assert [(r["batch_size"], r["status"]) for r in kind] == [(32, "ok"), (33, "skipped")]
        assert "33 does not divide among 2 processes" in kind[1]["reason"]
    r = grid[0]
    assert (r["world_size"], r["backend"], r["nodes"], r["threads"]) == (2, "gloo", 1, 1)
    # the job is as fast as its slowest rank: the headline is its images over its total timed time
    assert len(r["rank_step_ms_median"]) == 2
    assert any(r["step_ms_median"] == pytest.approx(m) for m in r["rank_step_ms_median"])
    assert r["train_images_per_s"] == pytest.approx(32 * r["timed_steps"] / sum(r["step_samples_s"]))
    assert 0 <= r["comm_share"] <= 1 and r["step_ms_no_sync"] > 0
    assert r["timed_steps"] == len(r["step_samples_s"]) >= 3 and r["warmup_steps"] >= 2
    acc = accuracy[0]
    assert 0 <= acc["test_accuracy"] <= 1 and acc["train_images_per_s"] is None
    # only rank 0 wrote, once: nothing else in the folder, one predictions file
    assert {p.name for p in out.iterdir()} == {".lock", "results.jsonl", "results.csv", "sweep.json", "system.json",
                                                "predictions"}
    assert [p.name for p in (out / "predictions").iterdir()] == [f"{acc['config_id']}.npz"]
    assert len((out / "results.csv").read_text().strip().splitlines()) == 5

    # the same configurations in one process: the equivalence check pairs the accuracy runs,
    # the scaling table the throughput rows
    one = tmp_path / "x1"
    Runner(one, data_kind="synthetic", log=lambda m: None, progress=False, probe_seconds=0.02).run(
        [RunConfig.from_dict(acc["config"]), RunConfig.from_dict(r["config"])])
    table = equivalence_table([one, out])
    assert list(table["candidate"].str.contains("x2")) == [True]
    # Same weights, same global batches, gradients averaged over equal shards: the tutorial Net
    # (no BatchNorm) ends where the one-process run does, up to summation order.
    assert table.iloc[0]["agreement"] >= 0.97 and abs(table.iloc[0]["diff_pp"]) <= 3

    assert main(["report", str(one), str(out), "--out", str(tmp_path / "report")]) == 0
    text = (tmp_path / "report" / "report.md").read_text()
    assert "## Scaling out (data parallel)" in text and (tmp_path / "report" / "scaling.png").exists()


def test_two_nodes_on_loopback_complete_and_only_node_0_writes(tmp_path):
    port = _free_port()
    node_out = [tmp_path / "node0", tmp_path / "node1"]
    procs = [_start([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(rank),
                     "--nproc-per-node", "1", "--master-addr", "127.0.0.1", "--master-port", str(port),
                     "-m", "bench", "run", "--batch-sizes", "32", "--threads", "1", *TINY,
                     "--out", str(node_out[rank])])
             for rank in (0, 1)]
    results = [_finish(p) for p in procs]
    for rc, log in results:
        assert rc == 0, log[-3000:]
    rows = read_jsonl(node_out[0] / "results.jsonl")
    assert len(rows) == 2 and {r["status"] for r in rows} == {"ok"}  # its accuracy run and throughput row
    assert (rows[0]["world_size"], rows[0]["nodes"], rows[0]["backend"]) == (2, 2, "gloo")
    assert not node_out[1].exists()  # node 1's rank wrote nothing, not even its --out folder


STUCK_RANK = """
import os, time
if os.environ.get("RANK") == "1":  # rank 1 stops answering in the middle of the timed loop
    import cnn.train
    real, calls = cnn.train.Trainer.step, [0]
    def step(self, x, y):
        calls[0] += 1
        if calls[0] == 4:
            time.sleep(600)
        return real(self, x, y)
    cnn.train.Trainer.step = step
"""


def test_a_stuck_rank_fails_the_job_after_the_timeout_instead_of_hanging(tmp_path):
    inject = tmp_path / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(STUCK_RANK)  # imported at start-up by every worker
    out = tmp_path / "stuck"
    env = {**_env(), "PYTHONPATH": os.pathsep.join([str(inject), str(ROOT)])}
    proc = subprocess.Popen([sys.executable, "-m", "bench", "run", "--nproc", "2", "--batch-sizes", "32", *TINY,
                             "--dist-timeout", "8", "--out", str(out)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    rc, log = _finish(proc)
    assert rc != 0 and "Timed out" in log, log[-3000:]
    # rank 0 recorded the configuration as failed before the job stopped; --resume will skip it
    rows = read_jsonl(out / "results.jsonl")
    assert [r["status"] for r in rows] == ["failed"] and "Timed out" in rows[0]["reason"]


@pytest.mark.cuda
def test_two_gpus_with_nccl(tmp_path):
    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 GPUs")
    out = tmp_path / "cuda-x2"
    rc, log = _finish(_start([sys.executable, "-m", "bench", "run", "--nproc", "2", "--devices", "cuda",
                              "--batch-sizes", "64", *TINY, "--out", str(out)]))
    assert rc == 0, log[-3000:]
    rows = read_jsonl(out / "results.jsonl")
    assert [(r["status"], r["world_size"], r["backend"]) for r in rows] == [("ok", 2, "nccl")]
