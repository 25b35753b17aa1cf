"""models.position_encoding: sine and learned encodings of a masked feature map."""
import math

import pytest
import torch

from models.position_encoding import PositionEmbeddingLearned, PositionEmbeddingSine
from util.nested_tensor import NestedTensor


def _features(b: int, h: int, w: int, mask: torch.Tensor | None = None) -> NestedTensor:
    if mask is None:
        mask = torch.zeros(b, h, w, dtype=torch.bool)
    return NestedTensor(torch.randn(b, 3, h, w), mask)


@pytest.mark.parametrize("normalize", [False, True])
def test_sine_shape_and_range(normalize):
    mask = torch.zeros(2, 6, 9, dtype=torch.bool)
    mask[1, 4:, :] = True
    mask[1, :, 5:] = True
    pos = PositionEmbeddingSine(num_pos_feats=16, normalize=normalize)(_features(2, 6, 9, mask))
    assert pos.shape == (2, 32, 6, 9)
    assert pos.min() >= -1 and pos.max() <= 1


def test_sine_hand_computed_values():
    # num_pos_feats 4, temperature 10000: divisors (1, 1, 100, 100); channels (sin, cos, sin, cos) of y, then x.
    pos = PositionEmbeddingSine(num_pos_feats=4)(_features(1, 3, 4))
    y, x = 2.0, 3.0  # 1-based position of row 1, column 2
    expected = [math.sin(y), math.cos(y), math.sin(y / 100), math.cos(y / 100),
                math.sin(x), math.cos(x), math.sin(x / 100), math.cos(x / 100)]
    assert torch.allclose(pos[0, :, 1, 2], torch.tensor(expected), atol=1e-6)


def test_sine_normalized_hand_computed_values():
    # With normalize, a row's position is (row + 1) / H * 2 pi.
    pos = PositionEmbeddingSine(num_pos_feats=4, normalize=True)(_features(1, 4, 5))
    y, x = 2 / 4 * 2 * math.pi, 5 / 5 * 2 * math.pi
    expected = [math.sin(y), math.cos(y), math.sin(y / 100), math.cos(y / 100),
                math.sin(x), math.cos(x), math.sin(x / 100), math.cos(x / 100)]
    assert torch.allclose(pos[0, :, 1, 4], torch.tensor(expected), atol=1e-5)


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("pad", [(0, 3), (2, 0), (4, 5)])
def test_sine_valid_region_independent_of_padding(normalize, pad):
    h, w = 5, 7
    encoding = PositionEmbeddingSine(num_pos_feats=8, normalize=normalize)
    alone = encoding(_features(1, h, w))
    mask = torch.ones(2, h + pad[0], w + pad[1], dtype=torch.bool)
    mask[0, :h, :w] = False  # the same image, padded at the bottom/right
    mask[1] = False  # a larger image fills the batch
    padded = encoding(_features(2, h + pad[0], w + pad[1], mask))
    assert torch.allclose(padded[0, :, :h, :w], alone[0], atol=1e-6)


def test_sine_first_half_varies_along_y_only_second_half_along_x_only():
    pos = PositionEmbeddingSine(num_pos_feats=8, normalize=True)(_features(1, 5, 6))[0]
    y_part, x_part = pos[:8], pos[8:]
    assert torch.equal(y_part, y_part[:, :, :1].expand_as(y_part))  # constant across columns
    assert torch.equal(x_part, x_part[:, :1, :].expand_as(x_part))  # constant across rows
    assert not torch.equal(y_part[:, 0], y_part[:, 1])  # but it does change with the row
    assert not torch.equal(x_part[:, :, 0], x_part[:, :, 1])


def test_sine_scale_needs_normalize():
    with pytest.raises(ValueError):
        PositionEmbeddingSine(scale=1.0)


def test_learned_shape_and_layout():
    encoding = PositionEmbeddingLearned(num_pos_feats=6)
    pos = encoding(_features(2, 4, 7))
    assert pos.shape == (2, 12, 4, 7)
    # first half: column embedding of x; second half: row embedding of y
    assert torch.equal(pos[1, :6, 3, 5], encoding.col_embed.weight[5])
    assert torch.equal(pos[1, 6:, 3, 5], encoding.row_embed.weight[3])


@pytest.mark.parametrize("h, w", [(51, 4), (4, 51)])
def test_learned_raises_beyond_50(h, w):
    encoding = PositionEmbeddingLearned(num_pos_feats=4)
    encoding(_features(1, 50, 50))  # the largest supported size works
    with pytest.raises(ValueError, match="50"):
        encoding(_features(1, h, w))
