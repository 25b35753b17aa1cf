"""Batching images of different sizes: pad to a common size and keep a mask of the padding.

Both ``NestedTensor`` and ``nested_tensor_from_tensor_list`` compile with TorchScript, as the official ones.
"""
from typing import Optional

import torch
from torch import Tensor


class NestedTensor:
    """A padded batch ``tensors`` ``[B, C, H, W]`` with ``mask`` ``[B, H, W]``, True on padding."""

    def __init__(self, tensors: Tensor, mask: Optional[Tensor]):
        self.tensors = tensors
        self.mask = mask

    def to(self, device: torch.device, non_blocking: bool = False) -> "NestedTensor":
        mask = self.mask
        if mask is not None:
            mask = mask.to(device, non_blocking=non_blocking)
        return NestedTensor(self.tensors.to(device, non_blocking=non_blocking), mask)

    def decompose(self) -> tuple[Tensor, Optional[Tensor]]:
        return self.tensors, self.mask

    def __repr__(self) -> str:
        mask = self.mask
        mask_shape = "None" if mask is None else str(mask.shape)
        return "NestedTensor(tensors=" + str(self.tensors.shape) + ", mask=" + mask_shape + ")"


def nested_tensor_from_tensor_list(tensor_list: list[Tensor], size_divisibility: int = 0) -> NestedTensor:
    """Pad ``[C, H_i, W_i]`` images at the bottom/right to the largest H and W of the list.

    ``size_divisibility`` > 0 rounds the padded size up to a multiple of it.
    """
    if len(tensor_list) == 0:
        raise ValueError("nested_tensor_from_tensor_list needs at least one image")
    height, width = 0, 0
    for t in tensor_list:
        if t.dim() != 3:
            raise ValueError("nested_tensor_from_tensor_list expects [C, H, W] tensors, got one with shape "
                             + str(t.shape))
        height, width = max(height, t.shape[1]), max(width, t.shape[2])
    if size_divisibility > 0:
        height = (height + size_divisibility - 1) // size_divisibility * size_divisibility
        width = (width + size_divisibility - 1) // size_divisibility * size_divisibility
    first = tensor_list[0]
    tensor = torch.zeros((len(tensor_list), first.shape[0], height, width), dtype=first.dtype, device=first.device)
    mask = torch.ones((len(tensor_list), height, width), dtype=torch.bool, device=first.device)
    for i, img in enumerate(tensor_list):
        tensor[i, : img.shape[0], : img.shape[1], : img.shape[2]].copy_(img)
        mask[i, : img.shape[1], : img.shape[2]] = False
    return NestedTensor(tensor, mask)


def collate_fn(batch: list[tuple]) -> tuple:
    """DataLoader collate: ``[(image, target), ...]`` -> ``(NestedTensor, (target, ...))``."""
    images, targets = tuple(zip(*batch))
    return nested_tensor_from_tensor_list(list(images)), targets
