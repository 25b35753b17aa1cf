"""SASA (stand-alone local self-attention): the window attention against an unfold-based reference of the paper's
formula, the row/column relative embeddings, masked windows, pooling after the attention on strided convolutions."""
import pytest
import torch
import torch.nn.functional as F

from models.attention import build_attention
from models.attention.sasa import StandAloneAttention
from tests.attention_inputs import padded_batch, perturb


def _unfold_reference(block: StandAloneAttention, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``y_ij = sum_{ab in N_k(ij)} softmax_ab(q_ij . k_ab + q_ij . r_{a-i,b-j}) v_ab`` with every window unfolded:
    keys and values ``[B, N, d, k^2, HW]``, positions outside the image (canvas edge or padding) left out."""
    b, c, h, w = x.shape
    n, k = block.num_heads, block.kernel_size
    d = c // n
    pad = k // 2

    def conv(layer, t):
        return torch.einsum("oc,bchw->bohw", layer.weight[:, :, 0, 0], t)

    def windows(t):  # [B, C', H, W] -> [B, C', k^2, HW]
        return F.unfold(t, k, padding=pad).view(b, t.shape[1], k * k, h * w)

    valid = torch.ones(b, 1, h, w, dtype=x.dtype) if mask is None else (~mask[:, None]).to(x.dtype)
    inside = windows(valid)[:, 0] > 0  # [B, k^2, HW]
    q = conv(block.query, x).reshape(b, n, d, h * w)
    keys = windows(conv(block.key, x)).reshape(b, n, d, k * k, h * w)
    values = windows(conv(block.value, x)).reshape(b, n, d, k * k, h * w)
    rows = block.rel_rows.view(k, n, d // 2)  # offset a - i = index - pad, per head
    cols = block.rel_cols.view(k, n, d // 2)
    offset_row = torch.arange(k * k) // k
    offset_col = torch.arange(k * k) % k
    r = torch.cat([rows[offset_row], cols[offset_col]], dim=-1)  # [k^2, N, d]: row half then column half per head
    logits = torch.einsum("bndp,bndop->bnop", q, keys) + torch.einsum("bndp,ond->bnop", q, r)
    logits = logits.masked_fill(~inside[:, None], float("-inf"))
    weights = logits.softmax(2).nan_to_num(0.0)  # a padded pixel whose whole window is padding attends to nothing
    return torch.einsum("bnop,bndop->bndp", weights, values).reshape(b, c, h, w)


@pytest.mark.parametrize("kernel_size", [3, 7])
def test_window_attention_matches_unfold_reference(kernel_size):
    torch.manual_seed(0)
    block = perturb(StandAloneAttention(16, kernel_size=kernel_size, num_heads=2)).double()
    _, x, mask = padded_batch(((4, 5), (6, 7)), channels=16, dtype=torch.float64)
    for m in (mask, None):
        torch.testing.assert_close(block.window_attention(x, m), _unfold_reference(block, x, m), rtol=0, atol=1e-10)


def test_output_adds_the_projected_attention():
    torch.manual_seed(0)
    block = perturb(StandAloneAttention(16, num_heads=4)).double()
    _, x, mask = padded_batch(((5, 6), (7, 4)), channels=16, dtype=torch.float64)
    attended = _unfold_reference(block, x, mask)
    expected = x + torch.einsum("oc,bchw->bohw", block.proj.weight[:, :, 0, 0], attended)
    torch.testing.assert_close(block(x, mask), expected, rtol=0, atol=1e-10)


def test_window_weights_cover_only_pixels_inside_the_image():
    torch.manual_seed(0)
    block = perturb(StandAloneAttention(16, kernel_size=3, num_heads=2))
    mask = torch.zeros(1, 4, 5, dtype=torch.bool)
    mask[0, 3:] = True
    weights = block.window_weights(torch.randn(1, 16, 4, 5), mask)  # [1, N, 9, 4, 5]
    torch.testing.assert_close(weights.sum(2), torch.ones(1, 2, 4, 5))
    assert torch.all(weights[:, :, :3, 0] == 0)  # the top row's window reaches above the canvas
    assert torch.all(weights[:, :, 6:, 2] == 0)  # row 2's lower neighbours are padding
    assert torch.all(weights[:, :, [0, 3, 6], :, 0] == 0)  # the left column has no left neighbours


def test_strided_convolution_pools_after_the_attention():
    """As the paper: 2x2 average pooling with stride 2 after the attention (ceil mode: partial windows averaged
    over the pixels they hold)."""
    torch.manual_seed(0)
    block = perturb(build_attention("sasa", 16)).double()
    source = torch.randn(1, 16, 7, 9, dtype=torch.float64)
    x = torch.randn(1, 16, 4, 5, dtype=torch.float64)
    expected = x + block.proj(F.avg_pool2d(block.window_attention(source), 2, 2, ceil_mode=True))
    torch.testing.assert_close(block(x, source=source), expected, rtol=0, atol=1e-12)


def test_shapes_and_parameter_count():
    block = build_attention("sasa", 256)
    assert (block.kernel_size, block.num_heads) == (7, 8)
    assert block.rel_rows.shape == block.rel_cols.shape == (7, 128)
    # query, key, value 1x1 C -> C without bias, two [k, C/2] tables, zero-initialised projection C -> C
    assert sum(p.numel() for p in block.parameters()) == 4 * 256 * 256 + 2 * 7 * 128 == 263_936
    with pytest.raises(ValueError, match="divisible"):
        StandAloneAttention(24, num_heads=8)
    with pytest.raises(ValueError, match="odd"):
        StandAloneAttention(16, kernel_size=4, num_heads=2)
