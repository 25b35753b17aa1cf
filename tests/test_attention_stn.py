"""STN (spatial transformer): exactly the identity at the identity transform, known transforms act on each image's
valid region, localisation pooling over valid pixels, gradient to the transform at initialisation."""
import torch
import torch.nn.functional as F

from models.attention import build_attention
from models.attention.stn import IDENTITY, SpatialTransformer
from tests.attention_inputs import padded_batch, perturb


def _with_transform(block: SpatialTransformer, theta: list[float]) -> SpatialTransformer:
    """Fix the localisation network's output to ``theta`` (its last layer's bias, zero weights)."""
    with torch.no_grad():
        block.fc2.weight.zero_()
        block.fc2.bias.copy_(torch.tensor(theta, dtype=block.fc2.bias.dtype))
    return block


def test_identity_transform_is_no_stn():
    """At initialisation theta is the identity for every image and the output is the input, bit for bit; the
    identity sampler alone reproduces each image's valid pixels up to float rounding."""
    torch.manual_seed(0)
    block = build_attention("stn", 32)
    _, x, mask = padded_batch(((4, 5), (6, 7)))
    assert torch.equal(block.theta(x, mask), torch.tensor(IDENTITY).view(1, 2, 3).expand(2, 2, 3))
    assert torch.equal(block(x, mask), x)
    sampled = block.sample(x, block.theta(x, mask), mask)
    torch.testing.assert_close(sampled.masked_fill(mask[:, None], 0.0), x.masked_fill(mask[:, None], 0.0),
                               rtol=1e-5, atol=1e-5)


def test_flip_and_shift_act_on_each_images_valid_region():
    """theta = horizontal flip reverses each image's valid columns (not the canvas'); a vertical shift by 2 / h (one
    pixel of an image of height h) moves each image up by one of its rows, reading 0 below its last row."""
    torch.manual_seed(0)
    images, x, mask = padded_batch(((4, 5), (6, 7)), dtype=torch.float64)
    flipped = _with_transform(SpatialTransformer(32).double(), [-1.0, 0, 0, 0, 1.0, 0])(x, mask)
    for i, image in enumerate(images):
        h, w = image.shape[-2:]
        torch.testing.assert_close(flipped[i:i + 1, :, :h, :w], image.flip(-1), rtol=0, atol=1e-10)
        shifted = _with_transform(SpatialTransformer(32).double(), [1.0, 0, 0, 0, 1.0, 2.0 / h])(x, mask)
        torch.testing.assert_close(shifted[i:i + 1, :, :h - 1, :w], image[..., 1:, :], rtol=0, atol=1e-10)
        torch.testing.assert_close(shifted[i, :, h - 1, :w], torch.zeros(32, w, dtype=torch.float64),
                                   rtol=0, atol=1e-10)
    assert torch.equal(flipped.masked_select(mask[:, None]), x.masked_select(mask[:, None]))  # padding kept


def test_localisation_pooling_bins_the_valid_region():
    images, x, mask = padded_batch(((4, 5), (7, 6)), channels=3, dtype=torch.float64)
    block = SpatialTransformer(32, pool_size=3)
    pooled = block.pool(x, mask)
    for i, image in enumerate(images):
        torch.testing.assert_close(pooled[i:i + 1], F.adaptive_avg_pool2d(image, 3), rtol=0, atol=1e-12)


def test_transform_gets_a_gradient_at_initialisation():
    """The zero-initialised last layer (and only it, with the transform's bias) learns first, as a plain STN."""
    torch.manual_seed(0)
    block = build_attention("stn", 32)
    _, x, mask = padded_batch(((4, 5), (6, 7)))
    (block(x, mask) * torch.randn_like(x)).sum().backward()
    assert block.fc2.weight.grad.abs().max() > 0 and block.fc2.bias.grad.abs().max() > 0
    assert block.fc1.weight.grad.abs().max() == 0


def test_perturbed_transform_is_the_papers_sampler():
    """Away from the identity the block's output is grid_sample at theta, up to the identity sampler's rounding."""
    torch.manual_seed(0)
    block = perturb(build_attention("stn", 32))
    x = torch.randn(2, 32, 6, 7)
    theta = block.theta(x)
    expected = F.grid_sample(x, F.affine_grid(theta, list(x.shape), align_corners=False), align_corners=False)
    torch.testing.assert_close(block(x), expected, rtol=1e-5, atol=1e-5)
