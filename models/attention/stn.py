"""Spatial transformer.

Jaderberg, Simonyan, Zisserman, Kavukcuoglu: "Spatial Transformer Networks", NeurIPS 2015.
https://arxiv.org/abs/1506.02025

A localisation network predicts, per image, an affine transform ``theta`` ``[2, 3]`` that maps each output pixel's
normalised coordinates ``(x_t, y_t, 1)`` to the source coordinates it samples (the paper's ``A_theta``); the feature map
is resampled there bilinearly (``grid_sample``, zeros outside the image). Localisation network: 1x1 conv C -> C/16,
ReLU, average pooling onto a 4 x 4 grid, FC -> 32, ReLU, FC -> 6. The last FC starts with zero weights and the bias
of the identity transform, as the paper's initialisation.

Padding: coordinates are normalised to each image's valid region (the extent of its unpadded pixels), not the padded
canvas, so the transform acts on the image; the localisation pooling bins that region (PyTorch's adaptive-pooling
bins) over valid pixels only; sampling reads padded pixels as 0, what sampling beyond the unpadded image's border
gives. An image's output on its valid pixels is therefore the same alone and in a padded batch (up to rounding);
padded output pixels keep the input.

Exactly the identity at initialisation: bilinear sampling at the identity transform reproduces a pixel only up to
rounding (the normalised pixel centres are not exact in floating point), so the block outputs
``x + S_theta(x) - S_I(x)``, with ``S_I`` the same sampler at the identity transform. At ``theta = I`` the two samples
are bit-identical and the output is ``x`` itself; otherwise it is the paper's ``S_theta(x)`` plus the sampler's
rounding at the identity (``x - S_I(x)``, ~1e-7 relative). The gradient reaching ``theta`` is the paper's.
Position: once on a stage's output (default the last stage).
"""
import torch
import torch.nn.functional as F
from torch import nn

from models.attention.base import AttentionBlock, reduced_channels
from models.attention.masked_ops import check_mask, zero_padding

IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def valid_extent(mask: torch.Tensor | None, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Height and width ``[B]`` (float) of each image's valid region of ``x`` ``[B, C, H, W]``."""
    b, _, h, w = x.shape
    if mask is None:
        return x.new_full((b,), float(h)), x.new_full((b,), float(w))
    valid = ~mask
    return valid.any(2).sum(1).to(x.dtype), valid.any(1).sum(1).to(x.dtype)


def bin_weights(extent: torch.Tensor, bins: int, length: int) -> torch.Tensor:
    """Averaging weights ``[B, bins, length]`` of adaptive pooling over the first ``extent[b]`` positions of a
    ``length`` axis: bin ``r`` covers ``floor(r e / bins) <= i < ceil((r + 1) e / bins)``."""
    r = torch.arange(bins, device=extent.device, dtype=extent.dtype)
    start = torch.floor(r[None] * extent[:, None] / bins)
    end = torch.ceil((r[None] + 1) * extent[:, None] / bins)
    i = torch.arange(length, device=extent.device, dtype=extent.dtype)
    inside = (i[None, None] >= start[..., None]) & (i[None, None] < end[..., None])
    return inside.to(extent.dtype) / (end - start).clamp_min(1)[..., None]


class SpatialTransformer(AttentionBlock):
    """STN on a feature map: x ``[B, C, H, W]``, mask ``[B, H, W]`` or None -> ``[B, C, H, W]``."""

    positions = ("stage",)
    default_position = "stage"

    def __init__(self, channels: int, rd_ratio: float = 1 / 16, rd_channels: int | None = None, pool_size: int = 4,
                 hidden: int = 32):
        super().__init__()
        rd = reduced_channels(channels, rd_ratio, rd_channels)
        self.pool_size = pool_size
        self.conv = nn.Conv2d(channels, rd, kernel_size=1)
        self.fc1 = nn.Linear(rd * pool_size * pool_size, hidden)
        self.fc2 = nn.Linear(hidden, 6)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.conv.reset_parameters()
        self.fc1.reset_parameters()
        nn.init.zeros_(self.fc2.weight)
        with torch.no_grad():
            self.fc2.bias.copy_(torch.tensor(IDENTITY))

    def pool(self, f: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Average pooling of ``f`` ``[B, C, H, W]`` onto ``pool_size`` x ``pool_size`` bins of each image's valid
        region: ``[B, C, p, p]``."""
        height, width = valid_extent(mask, f)
        rows = bin_weights(height, self.pool_size, f.shape[-2])
        cols = bin_weights(width, self.pool_size, f.shape[-1])
        return torch.einsum("bry,bcyx,bsx->bcrs", rows, zero_padding(f, mask), cols)

    def theta(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The localisation network's affine transforms ``[B, 2, 3]``."""
        pooled = self.pool(F.relu(self.conv(x)), mask)
        return self.fc2(F.relu(self.fc1(pooled.flatten(1)))).view(-1, 2, 3)

    @staticmethod
    def grid(theta: torch.Tensor, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``grid_sample``'s grid ``[B, H, W, 2]`` (canvas coordinates) for transforms ``theta`` ``[B, 2, 3]`` acting
        on coordinates normalised to each image's valid region (align_corners=False: pixel centres at
        ``(2 i + 1) / size - 1``)."""
        b, _, h, w = x.shape
        height, width = valid_extent(mask, x)
        ys = (2 * torch.arange(h, device=x.device, dtype=theta.dtype) + 1)[None] / height[:, None] - 1  # [B, H]
        xs = (2 * torch.arange(w, device=x.device, dtype=theta.dtype) + 1)[None] / width[:, None] - 1  # [B, W]
        target = torch.stack([xs[:, None, :].expand(b, h, w), ys[:, :, None].expand(b, h, w),
                              torch.ones(b, h, w, device=x.device, dtype=theta.dtype)], dim=-1)  # [B, H, W, 3]
        source = torch.einsum("bhwk,bjk->bhwj", target, theta)  # (x_s, y_s) in valid-region coordinates
        scale = torch.stack([width / w, height / h], dim=-1)[:, None, None]  # valid region -> canvas
        return (source + 1) * scale - 1

    def sample(self, x: torch.Tensor, theta: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``S_theta(x)``: bilinear samples of ``x`` (padding read as 0) at the transformed grid, ``[B, C, H, W]``."""
        return F.grid_sample(zero_padding(x, mask), self.grid(theta, x, mask), mode="bilinear",
                             padding_mode="zeros", align_corners=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        check_mask(x, mask)
        theta = self.theta(x, mask)
        identity = theta.new_tensor(IDENTITY).view(1, 2, 3).expand_as(theta)
        moved = self.sample(x, theta, mask) - self.sample(x, identity, mask)
        return x + zero_padding(moved, mask)

    @torch.no_grad()
    def attention_maps(self, x, mask=None, query=(0, 0)) -> dict[str, torch.Tensor]:
        """How much each input pixel is read by the valid output pixels: the sum of its bilinear weights."""
        grid = self.grid(self.theta(x, mask), x, mask)
        with torch.enable_grad():
            probe = x.new_zeros(x.shape[0], 1, *x.shape[-2:]).requires_grad_()
            sampled = F.grid_sample(probe, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
            (density,) = torch.autograd.grad(zero_padding(sampled, mask).sum(), probe)
        return {"sampling density": density[:, 0]}
