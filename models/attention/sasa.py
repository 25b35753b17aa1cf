"""Stand-alone self-attention (local window attention).

Ramachandran, Parmar, Vaswani, Bello, Levskaya, Shlens: "Stand-Alone Self-Attention in Vision Models", NeurIPS 2019.
https://arxiv.org/abs/1906.05909

Each pixel ``ij`` attends to the ``k x k`` window around it (``k = 7``, the paper's spatial extent):

    y_ij = sum_{ab in N_k(ij)} softmax_ab(q_ij . k_ab + q_ij . r_{a-i, b-j}) v_ab

with ``q = W_Q x``, ``k = W_K x``, ``v = W_V x`` (1x1 projections C -> C without bias), ``N = 8`` heads (groups of
``C / N`` channels, each with its own softmax) and no logit scaling (the paper's equation has none). The relative
embedding is split into rows and columns, as the paper: ``r_{a-i, b-j}`` concatenates a row-offset embedding
``r_{a-i}`` and a column-offset embedding ``r_{b-j}``, each half of the channels; with heads the split is made per
head (the first half of a head's channels meets the row embedding, the second half the column one). Tables
``rel_rows``, ``rel_cols`` ``[k, C / 2]`` start from normal(std ``(C / N) ** -0.5``).

Placement: it augments the 3x3 convolutions of the residual blocks of the last two stages by default (the paper finds
local attention most useful in later stages, with convolutions in the stem and early stages), as
``conv(x) + W_out SASA(x)`` with ``W_out`` zero-initialised (:mod:`~models.attention.conv_augment`): the paper
replaces the convolution; adding to it keeps the pretrained filters and makes the block the identity at step 0.
On a strided convolution the spatial down-sampling follows the attention, as in the paper: 2 x 2 average pooling with
stride 2 (over valid pixels).

Padding: window positions outside the image, beyond the canvas edge or on padding, are excluded from the softmax (their
keys are masked rather than zero-padded), so a pixel's window holds the same keys alone and padded into a batch, and
the output on valid pixels does not depend on the padding.

Implementation: the logits of the ``k^2`` window offsets are computed by shifting the zero-padded key map, one product
per offset, and the values are summed the same way; no ``k^2``-fold copy of keys or values (unfold) is made, the
weights take ``B N k^2 H W``.
"""
import torch
import torch.nn.functional as F
from torch import nn

from models.attention.conv_augment import ConvAugmentation
from models.attention.masked_ops import masked_softmax, zero_padding
from models.attention.masked_resample import masked_avg_pool


class StandAloneAttention(ConvAugmentation):
    """SASA's local multi-head self-attention on a 3x3 convolution (or a stage output); x ``[B, C, H, W]`` ->
    ``[B, C, H, W]``, see :class:`~models.attention.conv_augment.ConvAugmentation` for ``source``."""

    @classmethod
    def default_stages(cls, position: str, last_stage: int) -> tuple[int, ...]:
        """Inside residual blocks: the last two stages (the paper's "later groups"); on stage outputs: the last."""
        return (last_stage - 1, last_stage) if position == "block" else (last_stage,)

    def __init__(self, channels: int, kernel_size: int = 7, num_heads: int = 8):
        if kernel_size % 2 == 0:
            raise ValueError(f"SASA kernel_size must be odd, got {kernel_size}")
        if channels % (2 * num_heads):
            raise ValueError(f"SASA needs channels ({channels}) divisible by 2 * num_heads ({2 * num_heads})")
        super().__init__(channels, channels)
        self.kernel_size, self.num_heads = kernel_size, num_heads
        self.query = nn.Conv2d(channels, channels, kernel_size=1, bias=False)
        self.key = nn.Conv2d(channels, channels, kernel_size=1, bias=False)
        self.value = nn.Conv2d(channels, channels, kernel_size=1, bias=False)
        self.rel_rows = nn.Parameter(torch.empty(kernel_size, channels // 2))
        self.rel_cols = nn.Parameter(torch.empty(kernel_size, channels // 2))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        for conv in (self.query, self.key, self.value):
            conv.reset_parameters()
        for table in (self.rel_rows, self.rel_cols):
            nn.init.normal_(table, std=(table.shape[1] * 2 // self.num_heads) ** -0.5)

    def _offsets(self) -> list[tuple[int, int]]:
        return [(a, b) for a in range(self.kernel_size) for b in range(self.kernel_size)]

    def window_weights(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Softmax weights of each pixel over its window: ``[B, N, k^2, H, W]``, offset ``(a, b)`` (row, column, in
        0..k-1, the pixel itself at (k//2, k//2)) at index ``a * k + b``; keys outside the image get 0."""
        b, c, h, w = x.shape
        n, dh, r = self.num_heads, c // self.num_heads, self.kernel_size // 2
        q = self.query(x).view(b, n, dh, h, w)
        keys = F.pad(zero_padding(self.key(x), mask), (r, r, r, r)).view(b, n, dh, h + 2 * r, w + 2 * r)
        by_row = torch.einsum("bndyx,knd->bnkyx", q[:, :, :dh // 2], self.rel_rows.view(-1, n, dh // 2))
        by_col = torch.einsum("bndyx,knd->bnkyx", q[:, :, dh // 2:], self.rel_cols.view(-1, n, dh // 2))
        logits = torch.stack([(q * keys[..., i:i + h, j:j + w]).sum(2) + by_row[:, :, i] + by_col[:, :, j]
                              for i, j in self._offsets()], dim=2)
        valid = torch.ones(b, h, w, dtype=torch.bool, device=x.device) if mask is None else ~mask
        valid = F.pad(valid, (r, r, r, r))  # False beyond the canvas
        outside = torch.stack([~valid[:, i:i + h, j:j + w] for i, j in self._offsets()], dim=1)
        return masked_softmax(logits, outside[:, None], dim=2)

    def window_attention(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """SASA's output at the input's resolution: ``[B, C, H, W] -> [B, C, H, W]``."""
        b, c, h, w = x.shape
        n, r = self.num_heads, self.kernel_size // 2
        weights = self.window_weights(x, mask)
        values = F.pad(zero_padding(self.value(x), mask), (r, r, r, r)).view(b, n, c // n, h + 2 * r, w + 2 * r)
        out = x.new_zeros(b, n, c // n, h, w)
        for index, (i, j) in enumerate(self._offsets()):
            out = out + weights[:, :, index, None] * values[..., i:i + h, j:j + w]
        return out.view(b, c, h, w)

    def attend(self, source, source_mask, size, mask) -> torch.Tensor:
        out = self.window_attention(source, source_mask)
        return masked_avg_pool(out, source_mask, size)[0]

    @torch.no_grad()
    def attention_maps(self, x, mask=None, query=(0, 0), source=None, source_mask=None) -> dict[str, torch.Tensor]:
        """The query pixel's window weights (mean over heads) drawn on the attention's grid (the source's)."""
        source, source_mask = self._inputs(x, mask, source, source_mask)
        h, w = source.shape[-2:]
        i0 = min(query[0] * h // x.shape[-2], h - 1)
        j0 = min(query[1] * w // x.shape[-1], w - 1)
        weights = self.window_weights(source, source_mask)[:, :, :, i0, j0].mean(1)  # [B, k^2]
        r = self.kernel_size // 2
        picture = source.new_zeros(source.shape[0], h + 2 * r, w + 2 * r)
        picture[:, i0:i0 + self.kernel_size, j0:j0 + self.kernel_size] = weights.view(-1, self.kernel_size,
                                                                                     self.kernel_size)
        return {f"window attention of pixel {(i0, j0)}, mean of {self.num_heads} heads": picture[:, r:r + h, r:r + w]}
