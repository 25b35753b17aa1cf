"""Mixed precision (``--amp``): autocast for the model's forward, fp32 for everything that reads its outputs.

The backbone and transformer run under ``torch.autocast`` in bf16 or fp16; every architecture turns it off around
its class and box heads (``models/fp32_head.py``; DETR's in ``DETR.predict``); the outputs are cast back to fp32
before the matcher, the losses and the box conversions see them. fp16 adds a gradient scaler (its overflow steps
are skipped and the scale lowered, as ``torch.amp.GradScaler`` does); bf16 has fp32's range and needs none.
"""
import contextlib

import torch
from torch import Tensor

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class Precision:
    """``--amp`` (``off``, ``bf16`` or ``fp16``) on ``device``: :meth:`autocast` around the forward, :meth:`to_fp32`
    on its outputs, ``scaler`` (fp16 only, else None) around backward and step."""

    def __init__(self, amp: str, device: torch.device):
        if amp not in ("off", *DTYPES):
            raise ValueError(f"--amp must be off, bf16 or fp16, got {amp!r}")
        self.amp, self.device = amp, torch.device(device)
        if amp == "bf16" and self.device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ValueError(f"--amp bf16: {torch.cuda.get_device_name(self.device)} has no bf16 support; use --amp "
                             "fp16")
        self.dtype = DTYPES.get(amp)
        self.scaler = torch.amp.GradScaler(self.device.type) if amp == "fp16" else None

    @property
    def enabled(self) -> bool:
        return self.dtype is not None

    def autocast(self):
        """Context for the model's forward: autocast to the chosen dtype, or nothing with ``--amp off``."""
        if not self.enabled:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def to_fp32(self, value):
        """``value`` (a tensor, or dicts / lists / tuples of them, as models return) with every lower-precision
        floating-point tensor cast to fp32; unchanged with ``--amp off``."""
        if not self.enabled:
            return value
        return _to_fp32(value)


def _to_fp32(value):
    if isinstance(value, Tensor):
        return value.float() if value.is_floating_point() and value.dtype != torch.float32 else value
    if isinstance(value, dict):
        return {k: _to_fp32(v) for k, v in value.items()}
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # a NamedTuple
        return type(value)(*(_to_fp32(v) for v in value))
    if isinstance(value, (list, tuple)):
        return type(value)(_to_fp32(v) for v in value)
    return value
