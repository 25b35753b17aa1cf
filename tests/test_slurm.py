"""run_with_submitit.py: sbatch parameters from flags (no cluster), and real jobs on a local SLURM cluster.

The cluster tests start tools/slurm/slurm_local.sh (installing SLURM where root and apt-get are available) and are
skipped, with its message, where that is impossible.
"""
import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

import run_with_submitit as launcher
from tests.conftest import TINY_FLAGS

REPO = Path(__file__).resolve().parents[1]
SLURM_LOCAL = REPO / "tools" / "slurm" / "slurm_local.sh"
CPU_JOB = ["--ngpus", "0", "--ntasks_per_node", "2", "--cpus_per_task", "1", "--mem_gb", "2", "--timeout", "5",
           "--signal_delay_s", "30"]


def test_dry_run_maps_flags_to_sbatch_parameters(tmp_path, capsys):
    launcher.main(["--coco_path", "/data/coco", "--output_dir", str(tmp_path / "out"), "--nodes", "2",
                   "--ngpus", "4", "--cpus_per_task", "6", "--timeout", "600", "--partition", "gpu",
                   "--account", "proj", "--qos", "high", "--constraint", "a100", "--comment", "deadline",
                   "--max_requeues", "5", "--batch_size", "4", "--dry_run"])
    printed = capsys.readouterr().out
    for line in ["#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=4", "#SBATCH --gpus-per-node=4",
                 "#SBATCH --cpus-per-task=6", "#SBATCH --mem=160GB", "#SBATCH --time=600",
                 "#SBATCH --partition=gpu", "#SBATCH --account=proj", "#SBATCH --qos=high",
                 "#SBATCH --constraint=a100", "#SBATCH --comment=deadline", "#SBATCH --signal=USR2@120",
                 f"#SBATCH --output={tmp_path / 'out' / 'slurm'}/%j_0_log.out", "#SBATCH --requeue",
                 "export OMP_NUM_THREADS=6",
                 f"export PYTHONPATH={REPO}:"]:
        assert line in printed, line
    assert "#   batch_size: 4" in printed and "#   device: 'cuda'" in printed and "#   dist_url: 'env://'" in printed
    assert "nodes" not in re.findall(r"^#   (\w+):", printed, re.M)  # launcher flags do not reach main.py
    assert not (tmp_path / "out").exists()  # a dry run writes nothing


def test_dry_run_cpu_tasks_and_job_dir(tmp_path, capsys):
    launcher.main(["--coco_path", "/data", "--output_dir", str(tmp_path / "o"), "--job_dir", str(tmp_path / "j"),
                   "--ngpus", "0", "--ntasks_per_node", "3", "--mem_gb", "7", "--dry_run"])
    printed = capsys.readouterr().out
    assert "#SBATCH --ntasks-per-node=3" in printed and "#SBATCH --mem=7GB" in printed
    assert "gpus" not in printed.split("# arguments for main.py:")[0]
    # without --mem_gb a CPU job asks for no memory, so SLURM's per-node default applies (no 80 GB request)
    launcher.main(["--coco_path", "/data", "--output_dir", str(tmp_path / "o"), "--ngpus", "0",
                   "--ntasks_per_node", "2", "--dry_run"])
    assert "--mem" not in capsys.readouterr().out
    assert f"--output={tmp_path / 'j'}/%j_0_log.out" in printed and "#   device: 'cpu'" in printed


def test_launcher_requires_an_output_dir(capsys):
    with pytest.raises(SystemExit):
        launcher.main(["--coco_path", "/data", "--dry_run"])
    assert "--output_dir is required" in capsys.readouterr().err


def test_gpu_jobs_run_one_task_per_gpu(tmp_path, capsys):
    with pytest.raises(SystemExit):
        launcher.main(["--coco_path", "/data", "--output_dir", str(tmp_path), "--ngpus", "8",
                       "--ntasks_per_node", "4", "--dry_run"])
    assert "one task per GPU" in capsys.readouterr().err


def test_trainer_sets_up_the_job_and_requeues_itself(monkeypatch, tmp_path):
    """Without a cluster: the task's distributed variables, auto-resume, and the requeue hook."""
    import submitit

    class FakeJob:
        job_id, global_rank, num_tasks, local_rank, hostnames = "4242", 3, 4, 1, ["node07", "node08"]

    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR"):
        monkeypatch.setenv(name, "unset")  # recorded, so the values the trainer sets are undone after the test
    monkeypatch.setenv("MASTER_PORT", "1")  # a stale value from the submitting shell is not used
    monkeypatch.setattr(submitit, "JobEnvironment", FakeJob)
    seen = {}
    monkeypatch.setattr(launcher, "run", lambda args: seen.update(vars(args)) or {"ok": 1})
    args = launcher.main_args(launcher.resolve(launcher.get_launcher_parser().parse_args(
        ["--coco_path", "/data", "--output_dir", str(tmp_path), "--ngpus", "0"])))
    trainer = launcher.Trainer(args)
    assert trainer() == {"ok": 1}
    assert {k: os.environ[k] for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")} == {
        "RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "node07", "MASTER_PORT": "24242"}
    assert seen["auto_resume"] is True and seen["output_dir"] == str(tmp_path.resolve())
    assert not hasattr(args, "auto_resume") or args.auto_resume is False  # the submitted arguments stay as given
    resubmission = trainer.checkpoint()
    assert isinstance(resubmission, submitit.helpers.DelayedSubmission)
    assert vars(resubmission.function.args) == vars(args)


@pytest.fixture(scope="module")
def slurm_cluster():
    """A running local cluster; SLURM_CONF and the sacct stand-in are put into this process's environment."""
    started = subprocess.run(["bash", str(SLURM_LOCAL), "start"], capture_output=True, text=True, timeout=300)
    if started.returncode != 0:
        pytest.skip(f"no SLURM cluster could be started here: {started.stderr.strip()[-500:]}")
    saved = dict(os.environ)
    for line in started.stdout.splitlines():
        if line.startswith("export "):
            key, value = line[len("export "):].split("=", 1)
            os.environ[key] = value.replace("$PATH", saved.get("PATH", ""))
    yield
    if "already running" not in started.stdout:  # leave a cluster we did not start alone
        subprocess.run(["bash", str(SLURM_LOCAL), "stop"], capture_output=True, timeout=60)
    os.environ.clear()
    os.environ.update(saved)


def _wait(job, until: set[str], timeout_s: float) -> str:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        state = job.watcher.get_state(job.job_id, mode="force")
        if state.split()[0] in until:
            return state.split()[0]
        time.sleep(2)
    subprocess.run(["scancel", job.job_id])
    pytest.fail(f"job {job.job_id} not in {until} after {timeout_s} s (state {state}); logs in {job.paths.folder}")


def _task_logs(job_dir: Path, job_id: str) -> str:
    return "\n".join(p.read_text() for p in sorted(job_dir.glob(f"{job_id}_*_log.*")))


def _scontrol_field(job_id: str, field: str) -> str:
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True).stdout
    return re.search(rf"\b{field}=(\S+)", out).group(1)


def test_two_task_cpu_job_trains_and_evaluates(slurm_cluster, tiny_coco, tmp_path):
    out = tmp_path / "out"
    job = launcher.main([*TINY_FLAGS, "--coco_path", str(tiny_coco), "--epochs", "2", "--output_dir", str(out),
                         *CPU_JOB])
    assert _wait(job, {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"}, 150) == "COMPLETED", \
        _task_logs(out / "slurm", job.job_id)[-3000:]
    logs = _task_logs(out / "slurm", job.job_id)
    assert "distributed init (rank 0/2, gloo)" in logs and "distributed init (rank 1/2, gloo)" in logs
    shards = {int(m.group(1)): m.group(2)
              for m in re.finditer(r"data: rank (\d) of 2 trains on 12 of 24 images per epoch; "
                                   r"epoch 0 starts with images (\[[^\]]*\])", logs)}
    assert set(shards) == {0, 1}
    assert not set(json.loads(shards[0])) & set(json.loads(shards[1]))  # each rank a different shard
    log = [json.loads(line) for line in (out / "log.txt").read_text().splitlines()]
    assert [e["epoch"] for e in log] == [0, 1] and "test_coco_eval_bbox" in log[-1]
    assert (out / "checkpoint.pth").is_file()


def test_signalled_job_requeues_and_resumes(slurm_cluster, tiny_coco, tmp_path):
    out = tmp_path / "out"
    epochs = 8
    # one DataLoader worker per task: workers must leave the requeue signal to their task
    job = launcher.main([*TINY_FLAGS, "--coco_path", str(tiny_coco), "--epochs", str(epochs), "--output_dir",
                         str(out), *CPU_JOB, "--num_workers", "1"])
    log_file = out / "log.txt"
    deadline = time.time() + 120
    while not (log_file.is_file() and log_file.read_text().count("\n") >= 2):
        assert time.time() < deadline, _task_logs(out / "slurm", job.job_id)[-3000:]
        time.sleep(0.5)
    job._interrupt(timeout=True)  # SIGUSR2, as SLURM sends before the time limit
    assert _wait(job, {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"}, 240) == "COMPLETED", \
        _task_logs(out / "slurm", job.job_id)[-3000:]
    assert _scontrol_field(job.job_id, "Restarts") == "1"
    logs = _task_logs(out / "slurm", job.job_id)
    resumed_at = int(re.search(r"resumed from \S+checkpoint.pth at epoch (\d+)", logs).group(1))
    assert resumed_at >= 2
    logged = [json.loads(line)["epoch"] for line in log_file.read_text().splitlines()]
    assert logged[0] == 0 and logged[-1] == epochs - 1
    assert logged == sorted(set(logged))  # continued, never started over


def test_submission_without_network_for_imagenet_weights_stops_before_submitting(tmp_path, monkeypatch, capsys):
    from urllib.error import URLError

    import torch

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))

    def no_network(*args, **kwargs):
        raise URLError("Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    monkeypatch.setattr(launcher.submitit, "SlurmExecutor", lambda **kw: pytest.fail("submitted"))
    with pytest.raises(SystemExit) as excinfo:
        launcher.main(["--coco_path", "/data", "--output_dir", str(tmp_path / "o"), "--ngpus", "0",
                       "--backbone", "resnet18"])
    message = str(excinfo.value)
    assert message.startswith("error: --backbone resnet18 starts from ImageNet weights")
    assert "resnet18-f37072fd.pth" in message and "--no_pretrained_backbone" in message
