"""Blocks that augment a convolution with self-attention (aa, sasa): the shared contract and zero-initialised output.

At position ``block`` such a block sits on the 3x3 convolution of every residual block of its stages (``conv2`` of a
torchvision Bottleneck or BasicBlock: the Bottleneck's only 3x3 convolution, the BasicBlock's second), reads that
convolution's input ``source`` ``[B, C, H_in, W_in]`` and adds to its output ``x`` ``[B, C, H, W]``::

    y = conv(source) + W_out attention(source)

``W_out`` (``proj``, a 1x1 convolution without bias, attention channels -> C) starts at zero, so ``y`` is exactly the
convolution's output at initialisation, and the convolution keeps its weights and parameter names (an official
checkpoint loads with only the block's parameters missing). AA's paper concatenates instead,
``Concat[Conv'(X), MHA(X)]`` with ``Conv'`` producing ``C - d_v`` channels: the special case ``W_out = [0; I]`` with
the convolution's last ``d_v`` filters zero; SASA's paper replaces the convolution: the special case of a zero
convolution and ``W_out = I``. The sum contains both and keeps every pretrained filter. Whatever follows the
convolution (its BatchNorm, ReLU) follows the sum.

At position ``stage``, or when called without ``source``, the block reads the map it augments:
``y = x + W_out attention(x)``.

Strided convolutions (the first residual block of layer2-4 in a Bottleneck ResNet): the output grid is coarser than
the source. The source is brought onto the output grid by 2x2 average pooling over valid pixels
(:func:`~models.attention.masked_resample.masked_avg_pool`); each block says where: before its attention (aa, whose
attention is global and quadratic in the number of positions) or after it (sasa, as its paper does).
"""
import torch
from torch import nn

from models.attention.base import AttentionBlock
from models.attention.masked_ops import check_mask


class ConvAugmentation(AttentionBlock):
    """Base class: ``forward(x, mask=None, source=None, source_mask=None) = x + proj(attend(...))``.

    Subclasses build their attention on ``channels`` input channels producing ``attn_channels``, implement
    :meth:`attend` and call ``super().reset_parameters()`` (which zeroes ``proj``).
    """

    positions = ("block", "stage")
    default_position = "block"
    augments_conv = True

    def __init__(self, channels: int, attn_channels: int):
        super().__init__()
        self.proj = nn.Conv2d(attn_channels, channels, kernel_size=1, bias=False)

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.proj.weight)

    def attend(self, source: torch.Tensor, source_mask: torch.Tensor | None, size: tuple[int, int],
               mask: torch.Tensor | None) -> torch.Tensor:
        """The attention output on the output grid: source ``[B, C, H_in, W_in]`` (its mask ``[B, H_in, W_in]``),
        output ``size`` (H, W) with its mask ``[B, H, W]`` -> ``[B, attn_channels, H, W]``."""
        raise NotImplementedError

    @staticmethod
    def _inputs(x: torch.Tensor, mask: torch.Tensor | None, source: torch.Tensor | None,
                source_mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        check_mask(x, mask)
        if source is None:
            return x, mask
        check_mask(source, source_mask)
        if source.shape[:2] != x.shape[:2]:
            raise ValueError(f"source {list(source.shape)} and output {list(x.shape)} need the same batch and channels")
        return source, source_mask

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, source: torch.Tensor | None = None,
                source_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x ``[B, C, H, W]`` (the convolution's output), mask ``[B, H, W]``; source ``[B, C, H_in, W_in]`` (the
        convolution's input, default ``x``) with ``source_mask`` -> ``[B, C, H, W]``."""
        source, source_mask = self._inputs(x, mask, source, source_mask)
        return x + self.proj(self.attend(source, source_mask, tuple(x.shape[-2:]), mask))
