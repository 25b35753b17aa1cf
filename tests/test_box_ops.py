"""util.box_ops: format conversions, IoU/GIoU against hand-computed values and an independent formula."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from util.box_ops import (
    box_cxcywh_to_xyxy,
    box_iou,
    box_xyxy_to_cxcywh,
    generalized_box_iou,
    masks_to_boxes,
    paired_generalized_box_iou,
)

finite = st.floats(min_value=-1e3, max_value=1e3, allow_nan=False, allow_infinity=False)
positive = st.floats(min_value=0.0, max_value=1e3, allow_nan=False, allow_infinity=False)


@settings(max_examples=50, deadline=None)
@given(cx=finite, cy=finite, w=positive, h=positive)
def test_cxcywh_xyxy_round_trip(cx, cy, w, h):
    box = torch.tensor([[cx, cy, w, h]], dtype=torch.float64)
    xyxy = box_cxcywh_to_xyxy(box)
    # The corners are at centre -/+ half size (the definition, written out independently).
    assert torch.allclose(xyxy, torch.tensor([[cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]], dtype=torch.float64))
    assert torch.allclose(box_xyxy_to_cxcywh(xyxy), box, rtol=1e-9, atol=1e-9)


@settings(max_examples=50, deadline=None)
@given(x0=finite, y0=finite, w=positive, h=positive)
def test_xyxy_cxcywh_round_trip(x0, y0, w, h):
    box = torch.tensor([[x0, y0, x0 + w, y0 + h]], dtype=torch.float64)
    assert torch.allclose(box_cxcywh_to_xyxy(box_xyxy_to_cxcywh(box)), box, rtol=1e-9, atol=1e-9)


def test_conversions_keep_leading_dims():
    boxes = torch.rand(2, 3, 4)
    assert box_cxcywh_to_xyxy(boxes).shape == (2, 3, 4)
    assert torch.allclose(box_xyxy_to_cxcywh(box_cxcywh_to_xyxy(boxes)), boxes, atol=1e-6)


def test_giou_disjoint_boxes_hand_computed():
    # [0,0,1,1] and [2,2,3,3]: intersection 0, union 2, enclosing box [0,0,3,3] of area 9.
    # GIoU = IoU - (C - U) / C = 0 - (9 - 2) / 9 = -7/9.
    a = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    b = torch.tensor([[2.0, 2.0, 3.0, 3.0]])
    assert generalized_box_iou(a, b).item() == pytest.approx(-7 / 9, abs=1e-6)


def test_giou_overlapping_boxes_hand_computed():
    # [0,0,2,2] and [1,1,3,3]: intersection 1, union 4 + 4 - 1 = 7, enclosing [0,0,3,3] area 9.
    # GIoU = 1/7 - (9 - 7) / 9.
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0]])
    assert generalized_box_iou(a, b).item() == pytest.approx(1 / 7 - 2 / 9, abs=1e-6)


def test_giou_identical_boxes_is_one():
    a = torch.tensor([[0.1, 0.2, 0.7, 0.9], [3.0, 4.0, 10.0, 5.0]])
    assert torch.allclose(generalized_box_iou(a, a).diagonal(), torch.ones(2))


def test_giou_nested_box_is_area_ratio():
    # The enclosing box is the outer box, which equals the union: GIoU = IoU = inner area / outer area.
    outer = torch.tensor([[0.0, 0.0, 4.0, 4.0]])
    inner = torch.tensor([[1.0, 1.0, 3.0, 2.0]])
    assert generalized_box_iou(inner, outer).item() == pytest.approx(2 / 16, abs=1e-6)
    assert generalized_box_iou(outer, inner).item() == pytest.approx(2 / 16, abs=1e-6)


def _giou_one_pair(a: list[float], b: list[float]) -> float:
    """Straightforward GIoU of two xyxy boxes in plain Python."""
    area_a = (a[2] - a[0]) * (a[3] - a[1])
    area_b = (b[2] - b[0]) * (b[3] - b[1])
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = area_a + area_b - inter
    cw = max(a[2], b[2]) - min(a[0], b[0])
    ch = max(a[3], b[3]) - min(a[1], b[1])
    enclosing = cw * ch
    return inter / union - (enclosing - union) / enclosing


def _random_xyxy(n: int, gen: torch.Generator) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=gen, dtype=torch.float64)
    wh = torch.rand(n, 2, generator=gen, dtype=torch.float64) * 0.5 + 0.01
    return torch.cat([xy, xy + wh], dim=1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pairwise_giou_matches_plain_formula(seed):
    gen = torch.Generator().manual_seed(seed)
    a, b = _random_xyxy(5, gen), _random_xyxy(4, gen)
    giou = generalized_box_iou(a, b)
    assert giou.shape == (5, 4)
    for i in range(5):
        for j in range(4):
            assert giou[i, j].item() == pytest.approx(_giou_one_pair(a[i].tolist(), b[j].tolist()), abs=1e-9)
    assert (giou >= -1).all() and (giou <= 1).all()


def test_degenerate_boxes_raise():
    good = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    bad_x = torch.tensor([[1.0, 0.0, 0.5, 1.0]])
    bad_y = torch.tensor([[0.0, 1.0, 1.0, 0.5]])
    with pytest.raises(ValueError, match="boxes1"):
        generalized_box_iou(bad_x, good)
    with pytest.raises(ValueError, match="boxes2"):
        generalized_box_iou(good, bad_y)


def test_box_iou_and_union_hand_computed():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [5.0, 5.0, 6.0, 7.0], [0.0, 0.0, 2.0, 2.0]])
    iou, union = box_iou(a, b)
    # unions: 4 + 4 - 1 = 7; disjoint 4 + 2 = 6; identical 4.
    assert torch.allclose(union, torch.tensor([[7.0, 6.0, 4.0]]), atol=1e-6)
    assert torch.allclose(iou, torch.tensor([[1 / 7, 0.0, 1.0]]), atol=1e-6)


def test_masks_to_boxes_hand_made_mask():
    masks = torch.zeros(2, 6, 8, dtype=torch.bool)
    masks[0, 1:4, 2:6] = True  # rows 1..3, columns 2..5
    masks[1, 5, 7] = True  # a single pixel
    boxes = masks_to_boxes(masks)
    # torchvision's convention: inclusive pixel indices (x_min, y_min, x_max, y_max).
    assert torch.equal(boxes, torch.tensor([[2.0, 1.0, 5.0, 3.0], [7.0, 5.0, 7.0, 5.0]]))


def test_masks_to_boxes_empty_input():
    boxes = masks_to_boxes(torch.zeros(0, 5, 5, dtype=torch.bool))
    assert boxes.shape == (0, 4)


@given(st.lists(st.tuples(*[st.floats(0, 1)] * 4), min_size=1, max_size=6),
       st.lists(st.tuples(*[st.floats(0, 1)] * 4), min_size=1, max_size=6))
def test_paired_giou_is_the_diagonal_of_the_pairwise_giou(a, b):
    def to_boxes(values):
        t = torch.tensor(values[: min(len(a), len(b))], dtype=torch.float64)
        lo, hi = torch.minimum(t[:, :2], t[:, 2:]), torch.maximum(t[:, :2], t[:, 2:]) + 0.01
        return torch.cat([lo, hi], dim=1)

    b1, b2 = to_boxes(a), to_boxes(b)
    expected = torch.diagonal(generalized_box_iou(b1, b2))
    assert torch.allclose(paired_generalized_box_iou(b1, b2), expected, atol=1e-12)


def test_giou_names_non_finite_boxes():
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    with pytest.raises(ValueError, match="non-finite"):
        generalized_box_iou(boxes * float("nan"), boxes)
