"""Residual attention module.

Wang, Jiang, Qian, Yang, Li, Zhang, Wang, Tang: "Residual Attention Network for Image Classification", CVPR 2017.
https://arxiv.org/abs/1704.06904

A trunk branch ``T`` and a soft mask branch ``M`` read the same input; attention residual learning combines them as
``H = (1 + M(x)) * T(x)``. The mask branch is the paper's bottom-up top-down structure: ``n`` max poolings (3x3,
stride 2), each followed by ``r`` residual units, ``r`` more units at the lowest resolution, then ``n`` bilinear
up-samplings, each added to a skip connection from the bottom-up path of the same resolution and followed by ``r``
units (none after the last), then two ``norm-ReLU-1x1 conv`` layers (C -> C) and a sigmoid. Units are pre-activation
bottlenecks (1x1 C -> C/4, 3x3, 1x1 C/4 -> C), as the paper's; ``r = 1`` gives the paper's 3n - 1 units: 2 for one
pooling (its stage-3 module), 5 for two, 8 for three.

Placement: once on the output of each stage before the last (layer1..layer3 of a ResNet-50, the places of the paper's
Attention-56 modules), with ``n = 4 - stage`` poolings (3, 2, 1), so that the mask branch reaches the resolution of
layer4 from every stage, as the paper's modules reach its last stage's 7 x 7 from 56, 28 and 14.

Trunk and identity at initialisation: the host stage's own residual units are the trunk's processing, and the module's
trunk is the identity path (``T(x) = x``), so ``H = x + gamma * M(x) * x`` with a scalar ``gamma`` starting at 0: the
block is exactly the identity at step 0 and the paper's ``(1 + M) * T`` at ``gamma = 1``. ``trunk_units = t > 0``
adds the paper's ``t`` trunk residual units on top, each with its last convolution zero-initialised, so the trunk is
still the identity at step 0.

Deviations: BatchNorm in the units and the mask head is replaced by a per-pixel LayerNorm (no statistics across
images or positions; same parameter count); convolutions before a norm have no bias, the last 1x1 of the head has one.

Padding: every 3x3 convolution reads padded pixels as zeros (what the unpadded image's border gives); max pooling reads
them as -inf and a low-resolution cell is valid when its centre pixel is (exactly the cells of the unpadded image,
:func:`~models.attention.masked_resample.masked_max_pool`); up-sampling interpolates over valid cells only, by a fixed
factor 2 (:func:`~models.attention.masked_resample.masked_upsample`). Together these make the mask on an image's
valid pixels the same alone and padded into a batch, up to floating-point rounding (the interpolation's
renormalisation at the valid border). This needs the valid region at the top left of the canvas, as DETR pads: the
pooling windows are anchored at the canvas origin, so padding before the image (top or left) by an odd number of
pixels would shift them against the image, and no masking could make the pooled cells the image's own. What stays
padding-dependent in DETR is outside the block: DETR resizes the image mask to each stage with nearest
interpolation, so at a stage the valid region of a padded image can differ by a row or column from the feature map
of the image alone (and the convolutions before the block see the padding); the block follows the mask it is given.
"""
from collections.abc import Callable

import torch
from torch import nn

from models.attention.base import AttentionBlock, zero_scalar
from models.attention.masked_ops import check_mask, zero_padding
from models.attention.masked_resample import masked_max_pool, masked_upsample
from models.attention.norm import LayerNorm2d


class PreActUnit(nn.Module):
    """Pre-activation bottleneck residual unit: ``x + conv3(act(norm3(conv2(act(norm2(conv1(act(norm1(x)))))))))``,
    1x1 C -> C/4, 3x3 (padded pixels read as 0), 1x1 C/4 -> C; ``[B, C, H, W] -> [B, C, H, W]``."""

    def __init__(self, channels: int, bottleneck_ratio: float = 1 / 4,
                 norm_layer: Callable[[int], nn.Module] = LayerNorm2d, zero_init_last: bool = False):
        super().__init__()
        inner = max(1, round(channels * bottleneck_ratio))
        self.norm1, self.conv1 = norm_layer(channels), nn.Conv2d(channels, inner, 1, bias=False)
        self.norm2, self.conv2 = norm_layer(inner), nn.Conv2d(inner, inner, 3, padding=1, bias=False)
        self.norm3, self.conv3 = norm_layer(inner), nn.Conv2d(inner, channels, 1, bias=False)
        self.act = nn.ReLU()
        self.zero_init_last = zero_init_last
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in (self.norm1, self.conv1, self.norm2, self.conv2, self.norm3, self.conv3):
            m.reset_parameters()
        if self.zero_init_last:
            nn.init.zeros_(self.conv3.weight)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        y = self.conv1(self.act(self.norm1(x)))
        y = self.conv2(zero_padding(self.act(self.norm2(y)), mask))
        return x + self.conv3(self.act(self.norm3(y)))


class Units(nn.ModuleList):
    """``count`` :class:`PreActUnit` in sequence, each given the mask."""

    def __init__(self, count: int, channels: int, bottleneck_ratio: float, zero_init_last: bool = False):
        super().__init__([PreActUnit(channels, bottleneck_ratio, zero_init_last=zero_init_last)
                          for _ in range(count)])

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        for unit in self:
            x = unit(x, mask)
        return x


class SoftMaskBranch(nn.Module):
    """RAN's bottom-up top-down mask: ``[B, C, H, W] -> M [B, C, H, W]`` in (0, 1) (see the module docstring)."""

    def __init__(self, channels: int, num_pools: int = 1, num_units: int = 1, bottleneck_ratio: float = 1 / 4):
        super().__init__()
        if num_pools < 1:
            raise ValueError(f"RAN num_pools must be at least 1, got {num_pools}")
        self.down = nn.ModuleList([Units(num_units, channels, bottleneck_ratio) for _ in range(num_pools)])
        self.skips = nn.ModuleList([Units(num_units, channels, bottleneck_ratio) for _ in range(num_pools - 1)])
        self.bottom = Units(num_units, channels, bottleneck_ratio)
        self.up = nn.ModuleList([Units(num_units, channels, bottleneck_ratio) for _ in range(num_pools - 1)])
        self.head = nn.Sequential(LayerNorm2d(channels), nn.ReLU(), nn.Conv2d(channels, channels, 1, bias=False),
                                  LayerNorm2d(channels), nn.ReLU(), nn.Conv2d(channels, channels, 1))

    def logits(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The mask before its sigmoid, ``[B, C, H, W]``."""
        sizes, masks, skips = [tuple(x.shape[-2:])], [mask], []
        m = x
        for level, units in enumerate(self.down):  # bottom-up: level + 1 after this pooling
            m, low_mask = masked_max_pool(m, masks[-1])
            sizes.append(tuple(m.shape[-2:]))
            masks.append(low_mask)
            m = units(m, low_mask)
            if level < len(self.skips):
                skips.append(self.skips[level](m, low_mask))
        m = self.bottom(m, masks[-1])
        for level in reversed(range(len(self.down))):  # top-down: from level + 1 to level
            m = masked_upsample(m, masks[level + 1], sizes[level])
            if level > 0:
                m = self.up[level - 1](m + skips[level - 1], masks[level])
        return self.head(m)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return torch.sigmoid(self.logits(x, mask))


class ResidualAttention(AttentionBlock):
    """RAN's attention module behind a zero-initialised scale: ``T(x) + gamma * M(x) * T(x)``; x ``[B, C, H, W]``,
    mask ``[B, H, W]`` or None -> ``[B, C, H, W]``."""

    positions = ("stage",)
    default_position = "stage"

    @classmethod
    def default_stages(cls, position: str, last_stage: int) -> tuple[int, ...]:
        """Every stage before the last (the paper puts its modules in every stage but the last)."""
        return tuple(range(1, last_stage))

    @classmethod
    def placement_kwargs(cls, stage: int) -> dict:
        """Poolings down to layer4's resolution: 3 from layer1, 2 from layer2, 1 from layer3 (and layer4)."""
        return {"num_pools": max(1, 4 - stage)}

    def __init__(self, channels: int, num_pools: int = 1, num_units: int = 1, trunk_units: int = 0,
                 bottleneck_ratio: float = 1 / 4):
        super().__init__()
        self.mask_branch = SoftMaskBranch(channels, num_pools, num_units, bottleneck_ratio)
        self.trunk = Units(trunk_units, channels, bottleneck_ratio, zero_init_last=True)
        self.gamma = zero_scalar()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.mask_branch.modules():
            if isinstance(m, (nn.Conv2d, nn.LayerNorm)):
                m.reset_parameters()
        for unit in self.trunk:
            unit.reset_parameters()
        nn.init.zeros_(self.gamma)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        check_mask(x, mask)
        trunk = self.trunk(x, mask)
        return trunk + self.gamma * (self.mask_branch(x, mask) * trunk)

    @torch.no_grad()
    def attention_maps(self, x, mask=None, query=(0, 0)) -> dict[str, torch.Tensor]:
        """The soft mask averaged over channels, named with the current scale (at gamma = 0 it has no effect)."""
        return {f"soft mask, channel mean (gamma {self.gamma.item():.2f})": self.mask_branch(x, mask).mean(1)}
