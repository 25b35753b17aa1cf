"""Smoothed training metrics and a progress line at a steady interval (loss, lr, it/s, ETA)."""
import datetime
import time
from collections import defaultdict, deque

import torch
import torch.distributed as dist

from util.distributed import is_dist_avail_and_initialized


class SmoothedValue:
    """A series of scalars: windowed median/average and the global average."""

    def __init__(self, window_size: int = 20, fmt: str = "{median:.4f} ({global_avg:.4f})"):
        self.deque = deque(maxlen=window_size)
        self.total = 0.0
        self.count = 0
        self.fmt = fmt

    def update(self, value: float, n: int = 1) -> None:
        self.deque.append(value)
        self.count += n
        self.total += value * n

    def synchronize_between_processes(self) -> None:
        """Sum count and total over processes (the window stays local)."""
        if not is_dist_avail_and_initialized():
            return
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
        t = torch.tensor([self.count, self.total], dtype=torch.float64, device=device)
        dist.all_reduce(t)
        self.count, self.total = int(t[0].item()), t[1].item()

    @property
    def median(self) -> float:
        return torch.tensor(list(self.deque)).median().item()

    @property
    def avg(self) -> float:
        return torch.tensor(list(self.deque), dtype=torch.float32).mean().item()

    @property
    def global_avg(self) -> float:
        return self.total / max(self.count, 1)

    @property
    def max(self) -> float:
        return max(self.deque)

    @property
    def value(self) -> float:
        return self.deque[-1]

    def __str__(self) -> str:
        if not self.deque:  # nothing recorded yet (e.g. the first steps' batches were all skipped)
            return "-"
        return self.fmt.format(median=self.median, avg=self.avg, global_avg=self.global_avg, max=self.max,
                               value=self.value)


class MetricLogger:
    """Collects SmoothedValues by name and prints a progress line every ``print_freq`` iterations.

    ``shown`` limits the progress line to those meters (all are still recorded); None shows all.
    """

    def __init__(self, delimiter: str = "  ", shown: tuple[str, ...] | None = None):
        self.meters = defaultdict(SmoothedValue)
        self.delimiter = delimiter
        self.shown = shown

    def update(self, **kwargs) -> None:
        for k, v in kwargs.items():
            if isinstance(v, torch.Tensor):
                v = v.item()
            self.meters[k].update(float(v))

    def add_meter(self, name: str, meter: SmoothedValue) -> None:
        self.meters[name] = meter

    def __getattr__(self, attr):
        if attr in self.__dict__.get("meters", {}):
            return self.meters[attr]
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{attr}'")

    def __str__(self) -> str:
        return self.delimiter.join(f"{name}: {meter}" for name, meter in self.meters.items()
                                   if self.shown is None or name in self.shown)

    def synchronize_between_processes(self) -> None:
        for meter in self.meters.values():
            meter.synchronize_between_processes()

    def log_every(self, iterable, print_freq: int, header: str = "", printer=print):
        """Yield from ``iterable``, printing progress (meters, it/s, ETA) every ``print_freq`` steps and at the end."""
        total = len(iterable)
        width = len(str(total))
        start = end = time.time()
        iter_time = SmoothedValue(fmt="{avg:.4f}")
        data_time = SmoothedValue(fmt="{avg:.4f}")
        for i, obj in enumerate(iterable):
            data_time.update(time.time() - end)
            yield obj
            iter_time.update(time.time() - end)
            if i % print_freq == 0 or i == total - 1:
                eta = datetime.timedelta(seconds=int(iter_time.global_avg * (total - i - 1)))
                rate = 1.0 / max(iter_time.avg, 1e-9)
                printer(f"{header} [{i:{width}d}/{total}]  eta: {eta}  {self}  "
                        f"it/s: {rate:.2f}  data: {data_time.avg:.4f}s", flush=True)
            end = time.time()
        total_time = datetime.timedelta(seconds=int(time.time() - start))
        printer(f"{header} Total time: {total_time} ({(time.time() - start) / max(total, 1):.4f} s / it)", flush=True)
