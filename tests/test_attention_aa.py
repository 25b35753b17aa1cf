"""AA (attention-augmented convolution): the relative logits against the paper's formula computed directly, the
skewing, the widths, the zero-initialised projection and strided convolutions."""
import math

import pytest
import torch
import torch.nn.functional as F

from models.attention import build_attention
from models.attention.aa import AugmentedAttention, rel_to_abs
from tests.attention_inputs import padded_batch, perturb


def test_skewing_is_relative_to_absolute_indexing():
    x = torch.randn(3, 5, 9)
    expected = torch.stack([torch.stack([x[:, i, j - i + 4] for j in range(5)], dim=1) for i in range(5)], dim=1)
    assert torch.equal(rel_to_abs(x), expected)


def _direct_logits(block: AugmentedAttention, x: torch.Tensor) -> torch.Tensor:
    """``l_ij = q_i . (k_j + r^W_{jx-ix} + r^H_{jy-iy}) / sqrt(d_k^h)`` for every pair, as the paper writes it:
    ``[B, N_h, HW, HW]``, forming the ``[HW, HW, d]`` relative embeddings explicitly (offsets clamped to the table)."""
    b, _, h, w = x.shape
    n, dk = block.num_heads, block.dk
    qkv = torch.einsum("oc,bchw->bohw", block.qkv.weight[:, :, 0, 0], x) + block.qkv.bias[:, None, None]
    q = qkv[:, :dk].reshape(b, n, dk // n, h * w)
    k = qkv[:, dk:2 * dk].reshape(b, n, dk // n, h * w)
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    reach = block.max_extent - 1
    r_w = block.rel_w[(xs[None, :] - xs[:, None]).clamp(-reach, reach) + reach]  # [HW (i), HW (j), d]
    r_h = block.rel_h[(ys[None, :] - ys[:, None]).clamp(-reach, reach) + reach]
    keys = k.permute(0, 1, 3, 2)[:, :, None] + (r_w + r_h)[None, None]  # [B, N_h, HW (i), HW (j), d]
    return torch.einsum("bndi,bnijd->bnij", q, keys) / math.sqrt(dk // n)


def test_relative_logits_match_the_paper_formula():
    """Skewed computation == direct O((HW)^2 d) one, including offsets beyond the table (max_extent 4 < W = 7)."""
    torch.manual_seed(0)
    block = perturb(AugmentedAttention(32, num_heads=2, max_extent=4)).double()
    x = torch.randn(2, 32, 5, 7, dtype=torch.float64)
    q, k, _ = block.queries_keys_values(x, None, (5, 7), None)
    torch.testing.assert_close(block.logits(q, k), _direct_logits(block, x), rtol=0, atol=1e-12)


def test_output_is_masked_softmax_attention_through_the_projection():
    """y = x + W_out concat_h(softmax over valid keys of l_ij) v, computed directly from the formula."""
    torch.manual_seed(0)
    block = perturb(AugmentedAttention(32, num_heads=4, max_extent=8)).double()
    _, x, mask = padded_batch(((4, 5), (6, 7)), dtype=torch.float64)
    b, _, h, w = x.shape
    logits = _direct_logits(block, x).masked_fill(mask.flatten(1)[:, None, None, :], float("-inf"))
    weights = logits.softmax(-1)
    v = block.qkv(x)[:, 2 * block.dk:].masked_fill(mask[:, None], 0.0).reshape(b, block.num_heads, -1, h * w)
    heads = torch.einsum("bnij,bndj->bndi", weights, v).reshape(b, block.dv, h, w)
    expected = x + torch.einsum("oc,bchw->bohw", block.proj.weight[:, :, 0, 0], heads)
    torch.testing.assert_close(block(x, mask), expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("channels, dk", [(64, 16), (128, 24), (256, 48), (512, 104), (2048, 408)])
def test_widths_are_kappa_and_upsilon_times_f_out_in_multiples_of_the_heads(channels, dk):
    block = build_attention("aa", channels)
    assert block.dk == block.dv == dk and dk % block.num_heads == 0
    assert abs(dk - 0.2 * channels) <= block.num_heads / 2
    assert block.qkv.out_channels == 2 * dk + dk and block.proj.weight.shape == (channels, dk, 1, 1)
    assert block.rel_w.shape == block.rel_h.shape == (2 * 64 - 1, dk // 8)
    other = AugmentedAttention(256, kappa=0.4, upsilon=0.1, num_heads=4)
    assert (other.dk, other.dv) == (104, 24)


def test_parameter_count_at_256_channels():
    # qkv 1x1 conv C -> 2 dk + dv with bias, two relative tables [2 * 64 - 1, dk / Nh], projection dv -> C (no bias)
    dk = dv = 48
    expected = 256 * (2 * dk + dv) + (2 * dk + dv) + 2 * 127 * (dk // 8) + dv * 256
    assert expected == 50_820
    assert sum(p.numel() for p in build_attention("aa", 256).parameters()) == expected


def test_projection_starts_at_zero_and_is_the_only_path_to_the_output():
    block = build_attention("aa", 32)
    assert torch.equal(block.proj.weight, torch.zeros_like(block.proj.weight))
    x = torch.randn(1, 32, 4, 4)
    source = torch.randn(1, 32, 8, 8)  # a strided convolution's input
    assert torch.equal(block(x, source=source), x)


@pytest.mark.parametrize("name", ["aa", "sasa"])
def test_strided_convolution_source_padding_invariance(name):
    """On a stride-2 convolution (input 2x the output): an image alone and padded into a batch agree on its valid
    output pixels; the output grid's mask is the input mask at the even pixels (what the stride keeps)."""
    torch.manual_seed(0)
    block = perturb(build_attention(name, 16)).double()
    sources, source, source_mask = padded_batch(((7, 9), (10, 6)), channels=16, dtype=torch.float64)
    mask = source_mask[:, ::2, ::2]
    x = torch.randn(2, 16, *mask.shape[-2:], dtype=torch.float64)
    y = block(x, mask, source=source, source_mask=source_mask)
    assert y.shape == x.shape and torch.isfinite(y).all()
    for i, image in enumerate(sources):
        h, w = (image.shape[-2] + 1) // 2, (image.shape[-1] + 1) // 2
        alone = block(x[i:i + 1, :, :h, :w], source=image)
        torch.testing.assert_close(y[i:i + 1, :, :h, :w], alone, rtol=0, atol=1e-10)


def test_strided_source_is_average_pooled_before_the_attention():
    """aa on a stride-2 convolution attends over the 2x2-average-pooled input (ceil mode, partial windows averaged
    over the pixels they hold): the same as the block run on that pooled map."""
    torch.manual_seed(0)
    block = perturb(build_attention("aa", 16)).double()
    source = torch.randn(1, 16, 7, 9, dtype=torch.float64)
    pooled = F.avg_pool2d(source, 2, 2, ceil_mode=True)
    x = torch.randn(1, 16, 4, 5, dtype=torch.float64)
    torch.testing.assert_close(block(x, source=source) - x, block(pooled) - pooled, rtol=0, atol=1e-12)
