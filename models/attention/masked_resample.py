"""Down- and up-sampling over valid (non-padded) pixels only, for the blocks that change resolution (aa, sasa, ran).

Masks follow DETR: ``mask`` is ``[B, H, W]`` bool, True on padding, None for no padding; the valid region of each image
is at the top left of the padded canvas. Each helper returns the resampled map together with its mask, and is built
so that an image's values on its valid cells are those it gets alone (unpadded): windows are anchored at the top left,
padded pixels never enter a result, and a window or interpolation that reaches beyond the image behaves as it does at
the border of the unpadded image.
"""
import torch
import torch.nn.functional as F


def masked_avg_pool(x: torch.Tensor, mask: torch.Tensor | None, size: tuple[int, int]
                    ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Average ``x`` ``[B, C, H, W]`` over non-overlapping windows of valid pixels onto the grid ``size`` (h, w).

    The window is ``ceil(H / h) x ceil(W / w)`` (2 x 2 onto the output of a stride-2 convolution, 1 x 1 when the sizes
    agree), with ceil mode; a window with no valid pixel gives 0 and is padding in the returned mask ``[B, h, w]``.
    """
    stride = (-(-x.shape[-2] // size[0]), -(-x.shape[-1] // size[1]))
    if stride == (1, 1) and tuple(x.shape[-2:]) == tuple(size):
        return x, mask
    valid = torch.ones_like(x[:, :1]) if mask is None else (~mask[:, None]).to(x.dtype)
    x = x if mask is None else x.masked_fill(mask[:, None], 0.0)
    sums = F.avg_pool2d(x, stride, stride, ceil_mode=True, divisor_override=1)
    counts = F.avg_pool2d(valid, stride, stride, ceil_mode=True, divisor_override=1)
    if tuple(sums.shape[-2:]) != tuple(size):
        raise ValueError(f"cannot pool a {list(x.shape[-2:])} map onto {list(size)} with windows {list(stride)}")
    pooled = sums / counts.clamp_min(1)
    return pooled, None if mask is None else counts[:, 0] == 0


def masked_max_pool(x: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """3x3 max pooling with stride 2 and padding 1 (ResNet's, RAN's) over valid pixels: ``[B, C, H, W] ->
    [B, C, ceil(H/2), ceil(W/2)]``.

    Padded pixels read as -inf, like the pooling's own border. A cell is valid when its centre pixel ``(2i, 2j)`` is:
    exactly the cells the unpadded image has. Cells without any valid pixel get 0 (finite).
    """
    if mask is None:
        return F.max_pool2d(x, 3, 2, 1), None
    pooled = F.max_pool2d(x.masked_fill(mask[:, None], float("-inf")), 3, 2, 1)
    pooled = pooled.masked_fill(pooled == float("-inf"), 0.0)
    return pooled, mask[:, ::2, ::2]


def masked_upsample(x: torch.Tensor, mask: torch.Tensor | None, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear up-sampling by 2 (align_corners=False) of ``x`` ``[B, C, h, w]`` cropped to ``size`` (H, W), using
    valid cells only: ``interp(x * v) / interp(v)`` with ``v`` the cells' validity.

    The factor is always 2 (never ``H / h``), so sampling positions do not depend on the canvas size. Where the
    interpolation reaches a padded cell its weight goes to the valid neighbour, which is what the unpadded image's
    border clamping does; pixels whose neighbours are all padding get 0.
    """
    def up(t: torch.Tensor) -> torch.Tensor:
        return F.interpolate(t, scale_factor=2, mode="bilinear", align_corners=False)[..., :size[0], :size[1]]

    if mask is None:
        return up(x)
    weight = up((~mask[:, None]).to(x.dtype))
    total = up(x.masked_fill(mask[:, None], 0.0))
    return torch.where(weight > 0, total / weight.clamp_min(torch.finfo(x.dtype).tiny), 0.0)
