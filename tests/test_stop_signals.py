"""Issue 14, faults: SIGTERM and SIGINT stop training cleanly, leaving the last complete epoch's checkpoint, no
temporary file, one line saying where to resume from, and a non-zero exit status."""
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import run as run_module
from tests.conftest import TINY_FLAGS
from tools.data.synthetic import generate
from util.stop_signals import Stopped, StopSignals

REPO = Path(__file__).resolve().parents[1]
FAST = ["--lr_backbone", "0", "--batch_size", "2", "--eval_every", "1000"]  # frozen backbone: quick steps


@pytest.fixture(autouse=True)
def python_sigint_handler():
    """Python's own SIGINT handler, as an interactive start installs it: a suite launched in the background by a
    non-interactive shell inherits SIGINT ignored, which StopSignals (rightly) leaves alone."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.fixture(autouse=True)
def sigchld_handler_put_back():
    """A stop signal turns the DataLoader's SIGCHLD alarm off for the rest of the process; put it back for the
    other tests of this process."""
    previous = signal.getsignal(signal.SIGCHLD)
    yield
    signal.signal(signal.SIGCHLD, previous)


@pytest.fixture(scope="module")
def four_images(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("four"), num_train=4, num_val=2, image_size=64, seed=1)


def test_sigterm_stops_main_py_between_steps(four_images, tmp_path):
    """SIGTERM to the whole process group, as SLURM sends it to a job step: main.py and its DataLoader worker."""
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "main.py", *TINY_FLAGS, *FAST, "--coco_path", str(four_images), "--epochs", "1000",
               "--output_dir", str(out), "--num_workers", "1"]
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        deadline = time.time() + 120
        while not ((out / "log.txt").is_file() and (out / "log.txt").read_text().count("\n") >= 1):
            assert process.poll() is None and time.time() < deadline, process.communicate()[1][-2000:]
            time.sleep(0.2)
        os.killpg(process.pid, signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    last = stderr.strip().splitlines()[-1]
    assert "Traceback" not in stderr
    assert last.startswith("stopped by SIGTERM ")
    checkpoint = out / "checkpoint.pth"
    assert f"resume with --resume {checkpoint} (or --auto_resume)" in last
    saved = torch.load(checkpoint, weights_only=True)  # intact: loads, and is the epoch the line names
    assert f"{checkpoint} holds epoch {saved['epoch']}, the last complete one" in last
    assert not list(out.rglob("*.tmp"))
    assert "SIGTERM received: stopping after the current step" in stdout


def test_sigint_abandons_the_epoch_under_way(four_images, tmp_path, tiny_args, monkeypatch):
    out = tmp_path / "run"
    real_train_one_epoch = run_module.train_one_epoch

    def interrupted(*args, **kwargs):
        if args[5] == 1:  # epoch 1: Ctrl-C just before its first step
            signal.raise_signal(signal.SIGINT)
        return real_train_one_epoch(*args, **kwargs)

    monkeypatch.setattr(run_module, "train_one_epoch", interrupted)
    with pytest.raises(Stopped) as stop:
        run_module.run(tiny_args(four_images, *FAST, "--epochs", "3", "--output_dir", str(out)))
    assert stop.value.exit_status == 130
    message = str(stop.value)
    assert message.startswith("stopped by SIGINT during epoch 1 (before its iteration 0; the epoch is abandoned)")
    assert f"{out / 'checkpoint.pth'} holds epoch 0" in message
    assert torch.load(out / "checkpoint.pth", weights_only=True)["epoch"] == 0
    logged = [int(m) for m in re.findall(r'"epoch": (\d+)', (out / "log.txt").read_text())]
    assert logged == [0]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back


def test_a_handler_someone_else_installed_is_left_alone():
    calls = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: calls.append(signum))  # e.g. submitit's
    try:
        with StopSignals() as signals:
            signal.raise_signal(signal.SIGTERM)
            assert calls == [signal.SIGTERM] and signals.received is None and not signals.requested()
            signal.raise_signal(signal.SIGINT)  # Python's default SIGINT handler was replaced: recorded
            assert signals.requested() and signals.received == signal.SIGINT
            with pytest.raises(Stopped, match="stopped by SIGINT here"):
                signals.check("here")
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_a_second_signal_acts_at_once():
    with StopSignals() as signals:
        signal.raise_signal(signal.SIGINT)
        assert signals.received == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.parametrize("error", [RuntimeError("DataLoader worker (pid 1) exited unexpectedly"),
                                   ConnectionResetError(104, "Connection reset by peer"), EOFError()])
def test_a_lost_worker_after_a_signal_is_a_stop(error):
    """SIGTERM to a process group ends the DataLoader workers too; which error the main process then reads depends
    on timing (the race that made main.py exit with status 1 and 'error: [Errno 104] Connection reset by peer')."""
    with StopSignals() as signals:
        signal.raise_signal(signal.SIGTERM)
        with pytest.raises(Stopped) as stop:
            with signals.failures_after_a_signal_stop("during epoch 3"):
                raise error
    assert stop.value.exit_status == 128 + signal.SIGTERM
    assert str(stop.value) == "stopped by SIGTERM during epoch 3 (its DataLoader workers were stopped too)"
    assert stop.value.__cause__ is error


def test_errors_without_a_signal_or_kept_by_type_are_raised_as_they_are():
    class Kept(RuntimeError):
        pass

    with StopSignals() as signals:
        with pytest.raises(ConnectionResetError):
            with signals.failures_after_a_signal_stop("here"):
                raise ConnectionResetError(104, "Connection reset by peer")
        signal.raise_signal(signal.SIGTERM)
        with pytest.raises(Kept):
            with signals.failures_after_a_signal_stop("here", keep=(Kept,)):
                raise Kept("a non-finite loss, say")
        with pytest.raises(ValueError):  # not what a lost worker raises
            with signals.failures_after_a_signal_stop("here"):
                raise ValueError("a bug")


def test_workers_ending_after_a_stop_signal_raise_nothing_later():
    """The race behind main.py exiting with status 1 while writing its resume advice: SIGTERM to the process group
    ends a persistent DataLoader worker, and torch's SIGCHLD alarm raised 'DataLoader worker ... is killed by
    signal' in the next line of code run, outside any epoch. After a stop signal a worker's end raises nothing."""
    # (plain lists as batches: tensors would travel through a Unix socket, which the no-network fixture refuses)
    loader = torch.utils.data.DataLoader(list(range(8)), batch_size=2, num_workers=1, persistent_workers=True,
                                         collate_fn=list)
    batches = iter(loader)
    next(batches)
    workers = multiprocessing.active_children()
    assert workers
    with StopSignals():
        signal.raise_signal(signal.SIGTERM)  # recorded, as the main process's share of killpg
        for worker in workers:  # from another process, as killpg does (the parent's SIGTERM is a clean exit)
            subprocess.run(["kill", "-TERM", str(worker.pid)], check=True)
        for worker in workers:  # wait for the end without reaping it (torch's alarm looks for unreaped workers)
            while os.waitid(os.P_PID, worker.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
                time.sleep(0.01)
        time.sleep(0.2)  # Python runs pending signal handlers here: torch's alarm would raise RuntimeError
    assert all(worker.exitcode == -signal.SIGTERM for worker in workers)
    del batches, loader
