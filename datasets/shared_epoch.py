"""The training epoch shared with DataLoader workers, for data pipelines that change with the epoch.

A small module on purpose: DataLoader workers started by spawning import it when they receive the object.
"""
import ctypes
import multiprocessing


class SharedEpoch:
    """The training epoch as one integer in shared memory (``multiprocessing.RawValue``).

    Made in the main process before the DataLoader starts its workers; a forked worker inherits the memory and a
    spawned one receives it when started, so every worker reads what :meth:`set` last wrote, persistent workers
    included. Set it before iterating over the epoch's loader: workers read it when they load each item.
    """

    def __init__(self, epoch: int = 0):
        self._value = multiprocessing.RawValue(ctypes.c_int64, epoch)

    def set(self, epoch: int) -> None:
        self._value.value = int(epoch)

    def get(self) -> int:
        return int(self._value.value)

    def __repr__(self) -> str:
        return f"SharedEpoch({self.get()})"
