"""Pooling and softmax over valid (non-padded) pixels only, shared by every block in models/attention.

Masks follow DETR: ``mask`` is ``[B, H, W]`` bool, True on padding; ``None`` means no padding. Each helper takes
``x`` ``[B, C, H, W]`` (or logits with a broadcastable key mask) and ignores padded entries entirely, so values
there, however large, never reach the result. Pools over a set with no valid pixel return 0, so they stay finite.
"""
import torch


def check_mask(x: torch.Tensor, mask: torch.Tensor | None) -> None:
    """Raise ValueError unless ``mask`` is None or a bool ``[B, H, W]`` matching ``x`` ``[B, C, H, W]``."""
    if mask is None:
        return
    if mask.dtype != torch.bool or mask.shape != (x.shape[0], *x.shape[2:]):
        raise ValueError(f"mask must be bool [B, H, W] = {[x.shape[0], *x.shape[2:]]} for x {list(x.shape)}, "
                         f"got {mask.dtype} {list(mask.shape)}")


def zero_padding(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``x`` ``[B, C, H, W]`` with padded pixels set to 0 (what a convolution sees beyond an unpadded border)."""
    if mask is None:
        return x
    return x.masked_fill(mask[:, None], 0.0)


def masked_mean(x: torch.Tensor, mask: torch.Tensor | None, dims: tuple[int, ...] = (2, 3)) -> torch.Tensor:
    """Mean of ``x`` ``[B, C, H, W]`` over the spatial ``dims`` (a subset of (2, 3)) using valid pixels only.

    Returns ``x`` reduced with keepdim, e.g. ``[B, C, 1, 1]`` for dims (2, 3), ``[B, C, H, 1]`` for dims (3,).
    A row/column/image with no valid pixel gets 0.
    """
    if mask is None:
        return x.mean(dims, keepdim=True)
    valid = ~mask[:, None]
    total = torch.where(valid, x, 0.0).sum(dims, keepdim=True)
    count = valid.sum(dims, keepdim=True).clamp_min(1)
    return total / count


def masked_max(x: torch.Tensor, mask: torch.Tensor | None, dims: tuple[int, ...] = (2, 3)) -> torch.Tensor:
    """Max of ``x`` ``[B, C, H, W]`` over the spatial ``dims`` using valid pixels only (padded ones read as -inf).

    Shapes as :func:`masked_mean`; a row/column/image with no valid pixel gets 0 instead of -inf.
    """
    if mask is None:
        return x.amax(dims, keepdim=True)
    valid = ~mask[:, None]
    out = torch.where(valid, x, float("-inf")).amax(dims, keepdim=True)
    return torch.where(valid.any(dims, keepdim=True), out, 0.0)


def masked_softmax(logits: torch.Tensor, key_mask: torch.Tensor | None, dim: int = -1) -> torch.Tensor:
    """Softmax of ``logits`` along ``dim`` over unmasked keys: masked logits get -inf, hence probability 0.

    ``key_mask`` is bool, True on keys to ignore, broadcastable to ``logits``. A query whose keys are all masked
    (only ever a padded pixel) gets all-zero probabilities rather than NaN.
    """
    if key_mask is None:
        return logits.softmax(dim)
    logits = logits.masked_fill(key_mask, float("-inf"))
    empty = key_mask.all(dim, keepdim=True)
    probs = logits.masked_fill(empty, 0.0).softmax(dim)
    return probs.masked_fill(empty, 0.0)
