"""Inputs shared by the attention-block tests: padded batches with garbage on the padding, and blocks moved away
from their identity initialisation."""
import torch
from torch import nn

C = 32


def padded_batch(sizes, channels=C, dtype=torch.float32, seed=0):
    """Images ``[1, C, h, w]`` and their batch ``[N, C, H, W]`` (padding full of large garbage), mask ``[N, H, W]``."""
    g = torch.Generator().manual_seed(seed)
    images = [torch.randn(1, channels, h, w, generator=g, dtype=dtype) for h, w in sizes]
    height, width = max(h for h, _ in sizes), max(w for _, w in sizes)
    x = 50 * torch.randn(len(sizes), channels, height, width, generator=g, dtype=dtype)
    mask = torch.ones(len(sizes), height, width, dtype=torch.bool)
    for i, (h, w) in enumerate(sizes):
        x[i, :, :h, :w] = images[i][0]
        mask[i, :h, :w] = False
    return images, x, mask


@torch.no_grad()
def perturb(block: nn.Module, seed: int = 0) -> nn.Module:
    """Move a block away from identity: gammas (the 0-dim parameters) to 1, noise on everything else."""
    g = torch.Generator().manual_seed(seed)
    for p in block.parameters():
        if p.ndim == 0:
            p.fill_(1.0)
        else:
            p.add_(0.2 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return block
