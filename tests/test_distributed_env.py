"""Reading torchrun's and SLURM's variables, and choosing the backend, without starting processes."""
import os
import subprocess

import pytest
import torch

import util.distributed as ud
from util.distributed import DistEnv, detect_dist_env, first_host

LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_PROCID", "SLURM_NTASKS",
               "SLURM_LOCALID", "SLURM_JOB_NODELIST", "SLURM_NODELIST", "SLURM_JOB_ID")


@pytest.fixture
def clean_env(monkeypatch):
    for name in LAUNCH_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.mark.parametrize("nodelist, host", [
    ("node1", "node1"), ("gpu[07-09]", "gpu07"), ("gpu[12,3-5]", "gpu12"), ("a1,b2", "a1"), ("cn[001-100],x", "cn001"),
])
def test_first_host_of_a_node_list(nodelist, host):
    assert first_host(nodelist) == host


def test_plain_process_is_not_distributed(clean_env):
    assert detect_dist_env() is None


def test_torchrun_variables(clean_env):
    clean_env.setenv("RANK", "3")
    clean_env.setenv("WORLD_SIZE", "4")
    clean_env.setenv("LOCAL_RANK", "1")
    clean_env.setenv("SLURM_PROCID", "0")  # torchrun inside a SLURM allocation: torchrun's variables win
    clean_env.setenv("SLURM_NTASKS", "2")
    assert detect_dist_env() == DistEnv(rank=3, world_size=4, local_rank=1)


def test_slurm_variables_set_master_from_first_host(clean_env):
    def no_scontrol(*args, **kwargs):
        raise FileNotFoundError("scontrol")

    clean_env.setattr(subprocess, "run", no_scontrol)
    for name, value in {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1",
                        "SLURM_JOB_NODELIST": "gpu[07-10]", "SLURM_JOB_ID": "123456"}.items():
        clean_env.setenv(name, value)
    assert detect_dist_env() == DistEnv(rank=5, world_size=8, local_rank=1)
    assert os.environ["MASTER_ADDR"] == "gpu07"
    assert os.environ["MASTER_PORT"] == str(20000 + 123456 % 10000)


def test_single_slurm_task_is_not_distributed(clean_env):
    clean_env.setenv("SLURM_PROCID", "0")
    clean_env.setenv("SLURM_NTASKS", "1")
    assert detect_dist_env() is None


def test_cpu_processes_use_gloo_without_touching_cuda(clean_env):
    clean_env.setenv("RANK", "1")
    clean_env.setenv("WORLD_SIZE", "2")
    calls = {}
    clean_env.setattr(ud.dist, "init_process_group", lambda **kw: calls.update(kw))
    clean_env.setattr(ud.dist, "barrier", lambda: None)
    clean_env.setattr(torch.cuda, "device_count", lambda: 0)  # DETR's own init divides by this
    setup = ud.init_distributed("cpu", "env://")
    assert calls == {"backend": "gloo", "init_method": "env://", "world_size": 2, "rank": 1}
    assert setup == ud.ProcessSetup(True, 1, 2, None, "cpu", "gloo")


def test_a_plain_process_is_not_distributed(clean_env):
    assert ud.init_distributed("cpu") == ud.ProcessSetup(False, 0, 1, None, "cpu", None)
