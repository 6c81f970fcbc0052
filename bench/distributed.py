"""torch.distributed for the harness: who this process is in a torchrun job, the process
groups, the few collectives the runner needs between its measured loops, and the command
line that re-executes `cifar-bench run` through torchrun.

Nothing here invents a launcher or a transport: `torch.distributed.run` (torchrun) starts
the processes and sets RANK / WORLD_SIZE / LOCAL_RANK / ...; the groups are gloo (CPU) and
NCCL (CUDA). A process is in a distributed run when torchrun started it with WORLD_SIZE > 1
(a one-process torchrun job runs as a plain single process).

Groups: the default group uses NCCL when the sweep has CUDA configurations, else gloo. A
second, gloo group carries the control traffic (agreeing on step counts, gathering per-rank
results: small Python objects on the CPU) and the gradients of CPU configurations when the
default group is NCCL. Every collective has the timeout given at init, so a rank that dies
or falls out of step ends the job with an error instead of hanging it.
"""

from __future__ import annotations

import datetime
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

DEFAULT_TIMEOUT_S = 600.0
# torchrun's options the run command passes through (cifar-bench flag -> torchrun flag).
LAUNCH_FLAGS = {"--nproc": "--nproc-per-node", "--nnodes": "--nnodes", "--node-rank": "--node-rank",
                "--master-addr": "--master-addr", "--master-port": "--master-port"}


@dataclass(frozen=True)
class Topology:
    """This process's place in a torchrun job, from the environment torchrun sets."""

    rank: int
    local_rank: int
    world_size: int
    local_world_size: int
    nodes: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def topology_from_env(env: Mapping[str, str] = os.environ) -> Topology | None:
    """The job topology when torchrun started this process with more than one worker, else None."""
    world = int(env.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    local_world = int(env.get("LOCAL_WORLD_SIZE", world))
    # GROUP_WORLD_SIZE is torchrun's count of node agents; hosts may repeat (loopback "nodes").
    nodes = int(env.get("GROUP_WORLD_SIZE", max(1, world // max(local_world, 1))))
    return Topology(int(env["RANK"]), int(env.get("LOCAL_RANK", "0")), world, local_world, nodes)


class Distributed:
    """An initialised process group and the collectives the runner uses outside timed loops."""

    def __init__(self, topo: Topology, cuda: bool, timeout_s: float = DEFAULT_TIMEOUT_S):
        self.topo = topo
        self.backend = "nccl" if cuda else "gloo"
        timeout = datetime.timedelta(seconds=timeout_s)
        if cuda:
            torch.cuda.set_device(topo.local_rank)
            dist.init_process_group("nccl", timeout=timeout, device_id=torch.device("cuda", topo.local_rank))
            self.control = dist.new_group(backend="gloo", timeout=timeout)
        else:
            dist.init_process_group("gloo", timeout=timeout)
            self.control = dist.group.WORLD

    # ---- who and where ----------------------------------------------------------------

    @property
    def rank(self) -> int:
        return self.topo.rank

    @property
    def world_size(self) -> int:
        return self.topo.world_size

    @property
    def is_main(self) -> bool:
        return self.topo.is_main

    def device(self, device: str) -> torch.device:
        """This rank's device for a configuration's device: `cuda` means this rank's GPU."""
        d = torch.device(device)
        return torch.device("cuda", self.topo.local_rank) if d.type == "cuda" else d

    def group_for(self, device: torch.device) -> dist.ProcessGroup:
        """The group that carries a configuration's gradients: NCCL for CUDA, gloo for the CPU."""
        return dist.group.WORLD if device.type == "cuda" else self.control

    def backend_for(self, device: torch.device | str) -> str:
        return "nccl" if torch.device(device).type == "cuda" else "gloo"

    # ---- collectives (control group, CPU objects) ----------------------------------------

    def all_gather(self, obj: object) -> list:
        """Every rank's `obj`, in rank order, on every rank."""
        out: list = [None] * self.world_size
        dist.all_gather_object(out, obj, group=self.control)
        return out

    def broadcast(self, obj: object) -> object:
        """Rank 0's `obj` on every rank."""
        box = [obj]
        dist.broadcast_object_list(box, src=0, group=self.control)
        return box[0]

    def max(self, x: float) -> float:
        """The largest `x` over the ranks: the slowest rank decides a shared step count."""
        return max(self.all_gather(float(x)))

    def barrier(self) -> None:
        dist.barrier(group=self.control)

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


class RankFailed(RuntimeError):
    """An error on one rank that the others cannot follow (their collectives would no longer
    pair up): the job stops. Rank 0 has recorded the configuration before raising."""


# ---- launching ----------------------------------------------------------------------------

def strip_launch_flags(argv: Sequence[str]) -> list[str]:
    """`argv` without the launcher's own flags (`--nproc 2` and `--nproc=2` forms): what each
    worker runs. The run parser disallows abbreviations, so exact names are enough."""
    out, skip = [], False
    for token in argv:
        if skip:
            skip = False
            continue
        name = token.split("=", 1)[0]
        if name in LAUNCH_FLAGS:
            skip = "=" not in token
            continue
        out.append(token)
    return out


def torchrun_command(worker_argv: Sequence[str], nproc: int, nnodes: int = 1, node_rank: int = 0,
                     master_addr: str | None = None, master_port: int | None = None,
                     python: str = sys.executable) -> list[str]:
    """The `python -m torch.distributed.run ... -m bench <worker_argv>` command line.

    One node without an address: `--standalone` (a local rendezvous on a free port, so two
    jobs on one machine cannot collide). Otherwise torchrun's static rendezvous at
    master_addr:master_port, which every node must be given alike."""
    cmd = [python, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc)]
    if nnodes == 1 and master_addr is None and master_port is None:
        cmd.append("--standalone")
    else:
        cmd += ["--nnodes", str(nnodes), "--node-rank", str(node_rank),
                "--master-addr", master_addr or "127.0.0.1"]
        if master_port is not None:
            cmd += ["--master-port", str(master_port)]
    return [*cmd, "-m", "bench", *worker_argv]


def worker_env(env: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The environment for the workers: this one, with the folder that holds this `bench`
    package first on PYTHONPATH, so the workers run the same code as the launcher."""
    root = str(Path(__file__).resolve().parent.parent)
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {**env, "PYTHONPATH": os.pathsep.join([root, *[p for p in paths if p != root]])}
