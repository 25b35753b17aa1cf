"""Batching images of different sizes: pad to a common size and keep a mask of the padding."""
from typing import Optional

import torch
from torch import Tensor


class NestedTensor:
    """A padded batch ``tensors`` ``[B, C, H, W]`` with ``mask`` ``[B, H, W]``, True on padding."""

    def __init__(self, tensors: Tensor, mask: Optional[Tensor]):
        self.tensors = tensors
        self.mask = mask

    def to(self, device, non_blocking: bool = False) -> "NestedTensor":
        mask = self.mask.to(device, non_blocking=non_blocking) if self.mask is not None else None
        return NestedTensor(self.tensors.to(device, non_blocking=non_blocking), mask)

    def decompose(self) -> tuple[Tensor, Optional[Tensor]]:
        return self.tensors, self.mask

    def __repr__(self) -> str:
        mask = None if self.mask is None else tuple(self.mask.shape)
        return f"NestedTensor(tensors={tuple(self.tensors.shape)}, mask={mask})"


def nested_tensor_from_tensor_list(tensor_list: list[Tensor], size_divisibility: int = 0) -> NestedTensor:
    """Pad ``[C, H_i, W_i]`` images at the bottom/right to the largest H and W of the list.

    ``size_divisibility`` > 0 rounds the padded size up to a multiple of it.
    """
    if len(tensor_list) == 0:
        raise ValueError("nested_tensor_from_tensor_list needs at least one image")
    if any(t.ndim != 3 for t in tensor_list):
        raise ValueError("nested_tensor_from_tensor_list expects [C, H, W] tensors, got shapes "
                         f"{[tuple(t.shape) for t in tensor_list]}")
    channels = tensor_list[0].shape[0]
    height = max(t.shape[1] for t in tensor_list)
    width = max(t.shape[2] for t in tensor_list)
    if size_divisibility > 0:
        height = -(-height // size_divisibility) * size_divisibility
        width = -(-width // size_divisibility) * size_divisibility
    first = tensor_list[0]
    tensor = torch.zeros((len(tensor_list), channels, height, width), dtype=first.dtype, device=first.device)
    mask = torch.ones((len(tensor_list), height, width), dtype=torch.bool, device=first.device)
    for img, pad_img, m in zip(tensor_list, tensor, mask):
        pad_img[:, : img.shape[1], : img.shape[2]].copy_(img)
        m[: img.shape[1], : img.shape[2]] = False
    return NestedTensor(tensor, mask)


def collate_fn(batch: list[tuple]) -> tuple:
    """DataLoader collate: ``[(image, target), ...]`` -> ``(NestedTensor, (target, ...))``."""
    images, targets = tuple(zip(*batch))
    return nested_tensor_from_tensor_list(list(images)), targets
