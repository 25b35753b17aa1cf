"""Prediction heads in fp32 under autocast (``--amp``).

bf16 keeps 8 bits of mantissa: a box head computed in bf16 can move a coordinate near 0.5 of the image only in steps
of 1/256 of it, and its logit refinements (Deformable DETR, DINO) round the same way. The heads are about 1% of a
detector's compute, so every architecture runs them in fp32 when autocast is on; without autocast nothing changes.
"""
import torch
from torch import Tensor, nn


def head_in_fp32(head: nn.Module, x: Tensor) -> Tensor:
    """``head(x)``; under autocast on ``x``'s device, computed with autocast off on ``x`` cast to fp32 (any shape
    ``[..., D]``, output fp32)."""
    if torch.is_autocast_enabled(x.device.type):
        with torch.autocast(x.device.type, enabled=False):
            return head(x.float())
    return head(x)
