"""torch.distributed set-up (torchrun or SLURM variables) and small collective helpers.

All helpers work unchanged in a single process without a process group.
"""
import os
import re
import socket
import subprocess
from dataclasses import dataclass

import torch
import torch.distributed as dist


def is_dist_avail_and_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_world_size() -> int:
    return dist.get_world_size() if is_dist_avail_and_initialized() else 1


def get_rank() -> int:
    return dist.get_rank() if is_dist_avail_and_initialized() else 0


def is_main_process() -> bool:
    return get_rank() == 0


def all_gather(data) -> list:
    """Gather any picklable object from every process; returns the list ordered by rank."""
    if get_world_size() == 1:
        return [data]
    output = [None] * get_world_size()
    dist.all_gather_object(output, data)
    return output


def broadcast_object(obj, src: int = 0):
    """``obj`` as held by process ``src``, on every process."""
    if get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def reduce_dict(input_dict: dict, average: bool = True) -> dict:
    """Sum (or mean) each scalar tensor of a dict over processes; keys must match across processes."""
    world_size = get_world_size()
    if world_size < 2:
        return input_dict
    with torch.no_grad():
        names = sorted(input_dict.keys())
        values = torch.stack([input_dict[k] for k in names])
        dist.all_reduce(values)
        if average:
            values /= world_size
        return dict(zip(names, values))


def any_process(flag: bool, device: torch.device | str = "cpu") -> bool:
    """Whether ``flag`` is true on any process (every process must call this at the same point); ``device`` is
    where this process's collectives run (CUDA for NCCL)."""
    if get_world_size() == 1:
        return bool(flag)
    value = torch.tensor([1 if flag else 0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def barrier() -> None:
    if is_dist_avail_and_initialized():
        dist.barrier()


@dataclass
class DistEnv:
    """Where this process sits: global rank, world size, rank on its node."""

    rank: int
    world_size: int
    local_rank: int


def first_host(nodelist: str) -> str:
    """First host of a SLURM node list such as ``gpu[07-09,12],cpu1`` (-> ``gpu07``), without scontrol."""
    match = re.match(r"([^\[,]+)(?:\[([^\]]+)\])?", nodelist)
    if match is None:
        raise ValueError(f"cannot read the SLURM node list {nodelist!r}")
    prefix, ranges = match.groups()
    return prefix if ranges is None else prefix + re.split(r"[-,]", ranges)[0]


def _first_slurm_host() -> str:
    nodelist = os.environ.get("SLURM_JOB_NODELIST") or os.environ.get("SLURM_NODELIST")
    if not nodelist:
        return "127.0.0.1"
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True)
        return out.stdout.split()[0]
    except (OSError, subprocess.CalledProcessError, IndexError):
        return first_host(nodelist)


def job_port(job_id: str) -> int:
    """The rendezvous port of a SLURM job, the same in all its tasks: 20000-29999 (below Linux's ephemeral ports).
    An array job's id ``123_4`` uses its base id."""
    return 20000 + int(job_id.split("_")[0]) % 10000


def detect_dist_env() -> DistEnv | None:
    """Read the launcher's variables: torchrun's (RANK/WORLD_SIZE/LOCAL_RANK) first, then SLURM's.

    For SLURM the master address defaults to the job's first host and the port to one derived from the job id,
    unless MASTER_ADDR/MASTER_PORT are already set. Returns None for a plain single process.
    """
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return DistEnv(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)))
    if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        env.setdefault("MASTER_ADDR", _first_slurm_host())
        env.setdefault("MASTER_PORT", str(job_port(env.get("SLURM_JOB_ID", "0"))))
        return DistEnv(int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0)))
    return None


def local_rank_and_size() -> tuple[int, int]:
    """This process's rank on its node and the number of processes on each node, from torchrun's variables
    (LOCAL_RANK, LOCAL_WORLD_SIZE) or SLURM's (SLURM_LOCALID, SLURM_NTASKS_PER_NODE or SLURM_TASKS_PER_NODE such as
    ``4(x2)``); (0, 1) for a plain single process."""
    env = os.environ
    if detect_dist_env() is None:
        return 0, 1
    local_rank = int(env.get("LOCAL_RANK", env.get("SLURM_LOCALID", 0)))
    size = env.get("LOCAL_WORLD_SIZE") or env.get("SLURM_NTASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE") or "1"
    match = re.match(r"\d+", size)
    return local_rank, int(match.group(0)) if match else 1


@dataclass(frozen=True)
class ProcessSetup:
    """This process in the run: ``distributed`` (a process group was started), ``rank``, ``world_size``, the CUDA
    device index ``gpu`` (None on CPU), the ``device`` to compute on and the collective ``backend``."""

    distributed: bool
    rank: int
    world_size: int
    gpu: int | None
    device: str
    backend: str | None


def init_distributed(device: str, dist_url: str = "env://") -> ProcessSetup:
    """Start the process group when launched by torchrun or SLURM (NCCL on CUDA, gloo otherwise); a plain single
    process gets ``distributed=False`` and keeps ``device``."""
    found = detect_dist_env()
    if found is None:
        return ProcessSetup(False, 0, 1, None, device, None)
    use_cuda = str(device).startswith("cuda") and torch.cuda.is_available()
    gpu = found.local_rank % torch.cuda.device_count() if use_cuda else None
    if gpu is not None:
        torch.cuda.set_device(gpu)
        device = f"cuda:{gpu}"
    backend = "nccl" if use_cuda else "gloo"
    print(f"| distributed init (rank {found.rank}/{found.world_size}, {backend}) on {socket.gethostname()}: "
          f"{dist_url}", flush=True)
    dist.init_process_group(backend=backend, init_method=dist_url, world_size=found.world_size, rank=found.rank)
    dist.barrier()
    return ProcessSetup(True, found.rank, found.world_size, gpu, device, backend)
