"""Stopping a run cleanly on SIGTERM (what SLURM and container runtimes send on cancel and preemption) or SIGINT
(Ctrl-C).

While :class:`StopSignals` is active, the first such signal only records itself; the training loop checks
:meth:`StopSignals.check` between steps and ends with :class:`Stopped`, leaving the last complete epoch's checkpoint
as it is. A second signal of the same kind acts at once, as without the handler. A signal whose handler is not
Python's default is left alone: under submitit (``run_with_submitit.py``) SIGTERM stays submitit's, which lets
SLURM's requeue signal (SIGUSR2) do the stopping. Once a stop signal is received, lost DataLoader workers no longer
raise through torch's SIGCHLD handler (it is not put back); reads from them still fail, and inside
:meth:`StopSignals.failures_after_a_signal_stop` such failures become :class:`Stopped`.
"""
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from util.distributed import any_process

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


# What reading from a DataLoader raises when its workers were ended under it: torch's own RuntimeError, or the broken
# pipe's error (ConnectionResetError, EOFError, ...) when the read comes before torch has noticed the dead worker.
_WORKER_LOSS_ERRORS = (RuntimeError, OSError, EOFError)


class Stopped(Exception):
    """The run stopped on a signal; ``exit_status`` is 128 + the signal's number, as a shell reports a process the
    signal ended."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum, self.exit_status = signum, 128 + signum


def _is_default(handler) -> bool:
    return handler in (signal.SIG_DFL, signal.default_int_handler)


class StopSignals:
    """A context in which SIGTERM and SIGINT ask the run to stop at its next check instead of ending the process.

    ``device``: where this process's collectives run; in distributed training every process must call ``check`` at
    the same points, and all stop when any one received a signal.
    """

    def __init__(self, device="cpu", signals: tuple[int, ...] = STOP_SIGNALS):
        self.device, self.signals = device, signals
        self.received: int | None = None
        self._previous: dict[int, Callable | int | None] = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is not threading.main_thread():
            return self  # only the main thread may handle signals: leave them as they are
        for signum in self.signals:
            current = signal.getsignal(signum)
            if _is_default(current):
                self._previous[signum] = current
                signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    @property
    def active(self) -> bool:
        """Whether any stop signal is handled here (the checks then take part in collectives)."""
        return bool(self._previous)

    def _handle(self, signum: int, frame) -> None:
        if self.received == signum:  # the second time: as without the handler
            signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))
            signal.raise_signal(signum)
            return
        self.received = signum
        # torch's DataLoader watches for dead workers with a SIGCHLD handler that raises in whatever code runs next;
        # the signal may have ended the workers too (a process group, a SLURM job step), so that alarm would fire
        # anywhere on the way out, also after the epoch was abandoned. The run is stopping: turn it off, for good.
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        print(f"{signal.Signals(signum).name} received: stopping after the current step (send it again to stop at "
              "once)", flush=True)

    def requested(self) -> bool:
        """Whether this process (or, in distributed training, any process) received a stop signal."""
        if not self.active:
            return False
        return any_process(self.received is not None, self.device)

    def check(self, where: str) -> None:
        """Raise Stopped (its message saying ``where`` the run stopped) when a stop was requested."""
        if self.requested():
            signum = self.received or signal.SIGTERM  # another process received it
            raise Stopped(signum, f"stopped by {signal.Signals(signum).name} {where}")

    @contextmanager
    def failures_after_a_signal_stop(self, where: str, keep: tuple[type[BaseException], ...] = ()) -> Iterator[None]:
        """Inside: once a stop signal was received, an error of a lost DataLoader worker ends the run as
        :class:`Stopped` (its message saying ``where``) instead of as a failure. A signal sent to every process of the
        run (a process group, a SLURM job step) ends the workers too, often before the main process reaches its
        next check. Errors of the types in ``keep`` are raised as they are."""
        try:
            yield
        except _WORKER_LOSS_ERRORS as exc:
            if self.received is None or isinstance(exc, keep):
                raise
            name = signal.Signals(self.received).name
            raise Stopped(self.received, f"stopped by {name} {where} (its DataLoader workers were stopped too)") \
                from exc
