"""RAN (residual attention module): attention residual learning (1 + M) * T on hand-made masks, the bottom-up
top-down mask branch, placement by stage, padding-aware down/up-sampling."""
import pytest
import torch
import torch.nn.functional as F

from models.attention import build_attention, default_stages
from models.attention.masked_resample import masked_avg_pool, masked_max_pool, masked_upsample
from models.attention.ran import PreActUnit, ResidualAttention
from tests.attention_inputs import padded_batch, perturb


def _hand_made_mask(shape) -> torch.Tensor:
    """A mask in [0, 1] that varies over channels, rows and columns: ((c + 2 i + 3 j) mod 5) / 4."""
    b, c, h, w = shape
    cc, ii, jj = torch.meshgrid(torch.arange(c), torch.arange(h), torch.arange(w), indexing="ij")
    return (((cc + 2 * ii + 3 * jj) % 5) / 4).to(torch.float64).expand(b, c, h, w)


@pytest.mark.parametrize("trunk_units", [0, 2])
def test_attention_residual_learning_on_a_hand_made_mask(trunk_units, monkeypatch):
    """H = (1 + gamma M(x)) T(x): with the mask branch replaced by a fixed M, the output is exactly that."""
    torch.manual_seed(0)
    block = perturb(ResidualAttention(16, trunk_units=trunk_units)).double()
    x = torch.randn(2, 16, 5, 6, dtype=torch.float64)
    mask = _hand_made_mask(x.shape)
    monkeypatch.setattr(block.mask_branch, "forward", lambda inputs, m=None: mask)
    trunk = x if trunk_units == 0 else block.trunk(x)
    if trunk_units:
        assert not torch.allclose(trunk, x)  # perturbed trunk units do something
    for gamma in (1.0, 0.5):
        with torch.no_grad():
            block.gamma.fill_(gamma)
        torch.testing.assert_close(block(x), (1 + gamma * mask) * trunk, rtol=0, atol=1e-12)
    with torch.no_grad():
        block.gamma.zero_()
    assert torch.equal(block(x), trunk)


def test_trunk_units_start_as_identities():
    x = torch.randn(2, 16, 5, 6)
    block = ResidualAttention(16, trunk_units=2)
    assert len(block.trunk) == 2 and torch.equal(block.trunk(x), x)
    assert torch.equal(block(x), x)


@pytest.mark.parametrize("num_pools, units", [(1, 2), (2, 5), (3, 8)])
def test_mask_branch_is_bottom_up_top_down(num_pools, units):
    """3n - 1 residual units for n poolings (the paper's modules with r = 1); the mask is in (0, 1) at the input's
    size, also for odd sizes; max pooling really goes down n times."""
    torch.manual_seed(0)
    block = perturb(ResidualAttention(16, num_pools=num_pools))
    branch = block.mask_branch
    assert sum(isinstance(m, PreActUnit) for m in branch.modules()) == units
    sizes = []
    branch.bottom.register_forward_pre_hook(lambda m, args: sizes.append(tuple(args[0].shape[-2:])))
    x = torch.randn(2, 16, 9, 7)
    m = branch(x)
    assert m.shape == x.shape and torch.all((m > 0) & (m < 1))
    expected = (9, 7)
    for _ in range(num_pools):
        expected = ((expected[0] + 1) // 2, (expected[1] + 1) // 2)
    assert sizes == [expected]


def test_placement_defaults_follow_the_paper():
    assert default_stages("ran", "stage", 4) == (1, 2, 3) and default_stages("ran", "stage", 3) == (1, 2)
    assert [ResidualAttention.placement_kwargs(s)["num_pools"] for s in (1, 2, 3, 4)] == [3, 2, 1, 1]


def test_deep_mask_branch_padding_invariance():
    """Three poolings and up-samplings, trunk units, odd sizes: an image alone and padded into a batch agree on its
    valid pixels (float64, up to the interpolation's renormalisation rounding)."""
    torch.manual_seed(0)
    block = perturb(build_attention("ran", 16, num_pools=3, trunk_units=1)).double()
    images, x, mask = padded_batch(((7, 5), (10, 11)), channels=16, dtype=torch.float64)
    y = block(x, mask)
    assert torch.isfinite(y).all()
    for i, image in enumerate(images):
        h, w = image.shape[-2:]
        torch.testing.assert_close(y[i:i + 1, :, :h, :w], block(image), rtol=0, atol=1e-10)


def test_masked_resampling_matches_the_unpadded_image():
    """Each resampling step of the padded batch equals PyTorch's own operation on the image alone."""
    images, x, mask = padded_batch(((5, 7), (8, 6)), channels=3, dtype=torch.float64)
    pooled, low_mask = masked_max_pool(x, mask)
    averaged, avg_mask = masked_avg_pool(x, mask, (4, 4))
    for i, image in enumerate(images):
        h, w = image.shape[-2:]
        hh, ww = (h + 1) // 2, (w + 1) // 2
        assert torch.equal(pooled[i:i + 1, :, :hh, :ww], F.max_pool2d(image, 3, 2, 1))
        assert not low_mask[i, :hh, :ww].any() and low_mask[i].sum() == 16 - hh * ww
        torch.testing.assert_close(averaged[i:i + 1, :, :hh, :ww], F.avg_pool2d(image, 2, 2, ceil_mode=True))
        assert not avg_mask[i, :hh, :ww].any() and avg_mask[i].sum() == 16 - hh * ww
        low = torch.randn(1, 3, hh, ww, dtype=torch.float64)
        canvas = 100 * torch.randn(1, 3, 4, 4, dtype=torch.float64)
        canvas[..., :hh, :ww] = low
        up = masked_upsample(canvas, low_mask[i:i + 1], (8, 7))
        alone = F.interpolate(low, scale_factor=2, mode="bilinear", align_corners=False)[..., :h, :w]
        torch.testing.assert_close(up[..., :h, :w], alone, rtol=0, atol=1e-12)
