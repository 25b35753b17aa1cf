"""Two CPU processes (gloo) through torchrun: training runs, and evaluation gathers every process's detections."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from run import run
from tests.conftest import TINY_FLAGS

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(*flags: str) -> str:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "main.py", *TINY_FLAGS, *flags]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout + done.stderr


def test_two_process_training_and_gathered_evaluation(tiny_coco, tiny_args, tmp_path):
    out = tmp_path / "ddp"
    printed = _torchrun("--coco_path", str(tiny_coco), "--epochs", "1", "--output_dir", str(out))
    assert "distributed init (rank 0/2, gloo)" in printed and "distributed init (rank 1/2, gloo)" in printed
    log = [json.loads(line) for line in (out / "log.txt").read_text().splitlines()]
    assert [e["epoch"] for e in log] == [0]
    # 24 images, batch 4 per process, 2 processes: 3 iterations per epoch on each.
    assert "[2/3]" in printed

    # The same checkpoint evaluated by one process and by two gives the same COCO numbers: the val set (8 images)
    # is split, padded by the sampler, gathered and de-duplicated before COCOeval.
    single = run(tiny_args(tiny_coco, "--eval", "--resume", str(out / "checkpoint.pth")))
    printed = _torchrun("--coco_path", str(tiny_coco), "--eval", "--resume", str(out / "checkpoint.pth"),
                        "--batch_size", "3")
    assert "COCO evaluation of 8 images, 64 detections" in printed  # 8 queries per image
    ap_line = next(line for line in printed.splitlines() if line.startswith("bbox AP = "))
    assert ap_line.startswith(f"bbox AP = {single['coco_eval_bbox'][0]:.3f}, AP50 = {single['coco_eval_bbox'][1]:.3f}")
