"""Attention-augmented convolution.

Bello, Zoph, Vaswani, Shlens, Le: "Attention Augmented Convolutional Networks", ICCV 2019.
https://arxiv.org/abs/1904.09925

Multi-head self-attention over every position of the feature map, with 2-D relative position logits, added to the 3x3
convolution it augments (:mod:`~models.attention.conv_augment`: zero-initialised output projection, relation to the
paper's concatenation, strided convolutions). Per head, with ``d_k^h = d_k / N_h``:

    l_ij = q_i . (k_j + r^W_{jx - ix} + r^H_{jy - iy}) / sqrt(d_k^h),     O_h = sum_j softmax_j(l_ij) v_j

Queries, keys and values come from one 1x1 convolution ``C -> 2 d_k + d_v`` with bias (as the paper's code); the
paper's output projection ``W^O`` (``d_v x d_v``) is folded into the block's zero-initialised ``proj``. Widths follow
the paper: ``d_k = κ F_out``, ``d_v = υ F_out`` with ``F_out = C`` the augmented convolution's output channels and
κ = υ = 0.2, each rounded to a multiple of ``N_h = 8`` (at least ``N_h``) so that the heads divide them: C = 512 gives
d_k = d_v = 104, C = 256 gives 48, C = 128 gives 24.

Relative logits: learned embeddings ``r^W`` and ``r^H`` ``[2 L - 1, d_k^h]``, shared by the heads as in the paper,
for offsets up to ±(L - 1) with ``L = max_extent`` = 64 per axis (the paper sizes them to its fixed input; DETR's
maps vary, so larger offsets share the outermost embedding). They are computed the paper's memory-efficient way: one
product of the queries with the embedding table per axis (``[B, N_h, H, W, 2W - 1]``), converted from relative to
absolute key positions by skewing (:func:`rel_to_abs`: pad, reshape, slice) and broadcast over the other axis, so no
``HW x HW x d`` tensor is formed, only the ``[B, N_h, HW, HW]`` logits the content term needs anyway. The embeddings
start from normal(std ``d_k^h ** -0.5``), as the paper's code.

Padding: the softmax runs over valid keys only and values at padded pixels are zeroed; relative offsets between valid
positions do not depend on the canvas, so an image's output on its valid pixels is the same alone and in a padded
batch. On a strided convolution the source is average-pooled (valid pixels) onto the output grid before the
attention, which then costs ``(HW)^2`` at the output's resolution rather than 16 times that at the input's.
"""
import torch
from torch import nn

from models.attention.conv_augment import ConvAugmentation
from models.attention.masked_ops import masked_softmax, zero_padding
from models.attention.masked_resample import masked_avg_pool


def heads_multiple(channels: int, ratio: float, num_heads: int) -> int:
    """``ratio * channels`` rounded to a multiple of ``num_heads`` (at least ``num_heads``)."""
    return num_heads * max(1, round(channels * ratio / num_heads))


def rel_to_abs(x: torch.Tensor) -> torch.Tensor:
    """Relative to absolute indexing by the paper's skewing: ``x[n, i, m]`` holds offset ``m - (L - 1)``
    (``[N, L, 2L - 1]``); returns ``out[n, i, j] = x[n, i, j - i + L - 1]`` ``[N, L, L]``, with no gather."""
    n, length, _ = x.shape
    x = torch.cat([x, x.new_zeros(n, length, 1)], dim=2).reshape(n, 2 * length * length)
    x = torch.cat([x, x.new_zeros(n, length - 1)], dim=1).reshape(n, length + 1, 2 * length - 1)
    return x[:, :length, length - 1:]


def relative_index(length: int, max_extent: int, device: torch.device) -> torch.Tensor:
    """Rows of a ``[2 max_extent - 1, d]`` embedding table for the offsets ``-(length - 1) .. length - 1`` (clamped
    to ``±(max_extent - 1)``): ``[2 length - 1]`` int64."""
    offsets = torch.arange(-(length - 1), length, device=device)
    return offsets.clamp(-(max_extent - 1), max_extent - 1) + max_extent - 1


class AugmentedAttention(ConvAugmentation):
    """AA's relative multi-head self-attention on a 3x3 convolution (or a stage output); x ``[B, C, H, W]`` ->
    ``[B, C, H, W]``, see :class:`~models.attention.conv_augment.ConvAugmentation` for ``source``."""

    @classmethod
    def default_stages(cls, position: str, last_stage: int) -> tuple[int, ...]:
        """The last stage only: global attention is quadratic in the positions (layer4 of an 800 x 1333 COCO image
        has 25 x 42, layer3 four times as many)."""
        return (last_stage,)

    def __init__(self, channels: int, kappa: float = 0.2, upsilon: float = 0.2, num_heads: int = 8,
                 max_extent: int = 64):
        dv = heads_multiple(channels, upsilon, num_heads)
        super().__init__(channels, dv)
        self.num_heads, self.dk, self.dv = num_heads, heads_multiple(channels, kappa, num_heads), dv
        self.max_extent = max_extent
        self.qkv = nn.Conv2d(channels, 2 * self.dk + self.dv, kernel_size=1)
        self.rel_h = nn.Parameter(torch.empty(2 * max_extent - 1, self.dk // num_heads))
        self.rel_w = nn.Parameter(torch.empty(2 * max_extent - 1, self.dk // num_heads))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        self.qkv.reset_parameters()
        for table in (self.rel_h, self.rel_w):
            nn.init.normal_(table, std=(self.dk // self.num_heads) ** -0.5)

    def queries_keys_values(self, source: torch.Tensor, source_mask: torch.Tensor | None, size: tuple[int, int],
                            mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """On the output grid: q ``[B, N_h, d_k^h, H, W]`` (scaled by ``d_k^h ** -0.5``), k ``[B, N_h, d_k^h, HW]``,
        v ``[B, N_h, d_v^h, HW]`` (zero on padding)."""
        src, _ = masked_avg_pool(source, source_mask, size)
        b, n = src.shape[0], self.num_heads
        q, k, v = self.qkv(src).split([self.dk, self.dk, self.dv], dim=1)
        q = q.reshape(b, n, self.dk // n, *size) * (self.dk // n) ** -0.5
        return q, k.reshape(b, n, self.dk // n, -1), zero_padding(v, mask).reshape(b, n, self.dv // n, -1)

    def relative_logits(self, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``q . r^W`` and ``q . r^H`` at absolute key positions, shaped to broadcast over
        ``[B, N_h, H (query y), W (query x), H (key y), W (key x)]``: ``[B, N_h, H, W, 1, W]`` and
        ``[B, N_h, H, W, H, 1]``."""
        b, n, d, h, w = q.shape
        r_w = self.rel_w[relative_index(w, self.max_extent, q.device)]  # [2W - 1, d]
        r_h = self.rel_h[relative_index(h, self.max_extent, q.device)]  # [2H - 1, d]
        by_column = rel_to_abs(torch.einsum("bndyx,md->bnyxm", q, r_w).reshape(b * n * h, w, 2 * w - 1))
        by_row = rel_to_abs(torch.einsum("bndyx,md->bnxym", q, r_h).reshape(b * n * w, h, 2 * h - 1))
        return (by_column.reshape(b, n, h, w, 1, w),
                by_row.reshape(b, n, w, h, h).transpose(2, 3).unsqueeze(-1))

    def logits(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """``l_ij`` for q ``[B, N_h, d, H, W]`` (scaled) and k ``[B, N_h, d, HW]``: ``[B, N_h, HW, HW]``."""
        b, n, _, h, w = q.shape
        content = torch.einsum("bndi,bndj->bnij", q.flatten(3), k).view(b, n, h, w, h, w)
        by_column, by_row = self.relative_logits(q)
        return (content + by_column + by_row).view(b, n, h * w, h * w)

    def attention(self, source: torch.Tensor, source_mask: torch.Tensor | None, size: tuple[int, int],
                  mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Weights ``[B, N_h, HW (queries), HW (keys)]`` over valid keys, and the values ``[B, N_h, d_v^h, HW]``."""
        q, k, v = self.queries_keys_values(source, source_mask, size, mask)
        key_mask = None if mask is None else mask.flatten(1)[:, None, None, :]
        return masked_softmax(self.logits(q, k), key_mask), v

    def attend(self, source, source_mask, size, mask) -> torch.Tensor:
        weights, v = self.attention(source, source_mask, size, mask)
        return torch.einsum("bnij,bndj->bndi", weights, v).reshape(v.shape[0], self.dv, *size)

    @torch.no_grad()
    def attention_maps(self, x, mask=None, query=(0, 0), source=None, source_mask=None) -> dict[str, torch.Tensor]:
        source, source_mask = self._inputs(x, mask, source, source_mask)
        h, w = x.shape[-2:]
        weights, _ = self.attention(source, source_mask, (h, w), mask)
        row = weights[:, :, query[0] * w + query[1]].mean(1)
        return {f"attention of pixel {tuple(query)}, mean of {self.num_heads} heads": row.view(x.shape[0], h, w)}
