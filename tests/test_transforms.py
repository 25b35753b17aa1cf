"""datasets.transforms on hand-made images and targets whose results are worked out by hand."""
import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import datasets.transforms as T


def _masks_from_boxes(boxes: list, height: int, width: int) -> torch.Tensor:
    masks = torch.zeros((len(boxes), height, width), dtype=torch.uint8)
    for m, (x0, y0, x1, y1) in zip(masks, boxes):
        m[y0:y1, x0:x1] = 1
    return masks


def _boxes_from_masks(masks: torch.Tensor) -> torch.Tensor:
    """Pixel extents of each mask as xyxy with exclusive right/bottom edges (the convention of the boxes here)."""
    out = []
    for m in masks.bool():
        ys, xs = torch.nonzero(m, as_tuple=True)
        out.append([xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1])
    return torch.tensor(out, dtype=torch.float32).reshape(-1, 4)


@pytest.fixture
def sample():
    """A 100 x 50 (w x h) image with two objects; the pixel at (x=12, y=7) is red so moves can be traced."""
    width, height = 100, 50
    image = Image.new("RGB", (width, height), (0, 0, 0))
    image.putpixel((12, 7), (255, 0, 0))
    boxes = [[10, 5, 30, 25], [60, 10, 100, 50]]
    target = {
        "boxes": torch.tensor(boxes, dtype=torch.float32),
        "labels": torch.tensor([1, 2]),
        "area": torch.tensor([400.0, 1600.0]),
        "iscrowd": torch.tensor([0, 0]),
        "masks": _masks_from_boxes(boxes, height, width),
        "image_id": torch.tensor([7]),
        "orig_size": torch.tensor([height, width]),
        "size": torch.tensor([height, width]),
    }
    return image, target


def test_hflip_mirrors_boxes_masks_and_pixels(sample):
    image, target = sample
    out_image, out = T.hflip(image, target)
    # x -> 100 - x, with x0 and x1 swapping roles
    assert out["boxes"].tolist() == [[70, 5, 90, 25], [0, 10, 40, 50]]
    assert torch.equal(_boxes_from_masks(out["masks"]), out["boxes"])
    assert out_image.getpixel((100 - 1 - 12, 7)) == (255, 0, 0)
    assert out["labels"].tolist() == [1, 2] and out["area"].tolist() == [400, 1600]
    assert target["boxes"].tolist() == [[10, 5, 30, 25], [60, 10, 100, 50]], "input target was modified"


def test_resize_scales_boxes_area_masks_and_size(sample):
    image, target = sample
    out_image, out = T.resize(image, target, 25)  # shorter side 50 -> 25: everything halves
    assert out_image.size == (50, 25)
    assert out["size"].tolist() == [25, 50]
    assert out["orig_size"].tolist() == [50, 100]
    assert out["boxes"].tolist() == [[5, 2.5, 15, 12.5], [30, 5, 50, 25]]
    assert out["area"].tolist() == [100, 400]
    assert out["masks"].shape == (2, 25, 50)
    # nearest-neighbour masks cover the halved boxes, rounded to whole pixels
    assert (_boxes_from_masks(out["masks"]) - out["boxes"]).abs().max() <= 1


def test_resize_respects_max_size(sample):
    image, target = sample
    # 2:1 image, shorter side 40 would make the longer 80 > 60, so the shorter becomes round(60 * 50 / 100) = 30
    out_image, out = T.resize(image, target, 40, max_size=60)
    assert out_image.size == (60, 30)
    assert out["size"].tolist() == [30, 60]


@pytest.mark.parametrize("wh, size, max_size, expected_hw", [
    ((333, 500), 800, 1333, (1201, 800)),  # longer side int(800 * 500 / 333) = int(1201.2)
    ((1000, 300), 800, 1333, (400, 1333)),  # capped: round(1333 * 300 / 1000) = 400, then int(400 * 1000 / 300)
    ((640, 800), 800, 1333, (1000, 800)),
    ((800, 600), 600, None, (600, 800)),  # already the right size: unchanged
])
def test_get_size_with_aspect_ratio_matches_detr_rounding(wh, size, max_size, expected_hw):
    assert T.get_size_with_aspect_ratio(wh, size, max_size) == expected_hw


def test_crop_clips_boxes_and_keeps_fields_consistent(sample):
    image, target = sample
    out_image, out = T.crop(image, target, (10, 20, 30, 60))  # top 10, left 20, height 30, width 60
    assert out_image.size == (60, 30)
    assert out["size"].tolist() == [30, 60]
    # box 1 [10,5,30,25] - (20,10) = [-10,-5,10,15] -> [0,0,10,15]; box 2 [40,0,80,40] -> [40,0,60,30]
    assert out["boxes"].tolist() == [[0, 0, 10, 15], [40, 0, 60, 30]]
    assert out["area"].tolist() == [150, 600]
    assert out["masks"].shape == (2, 30, 60)
    assert torch.equal(_boxes_from_masks(out["masks"]), out["boxes"])


def test_crop_drops_objects_outside_the_crop(sample):
    image, target = sample
    target = dict(target, iscrowd=torch.tensor([0, 1]))  # distinguishable per-object values
    _, out = T.crop(image, target, (0, 0, 40, 50))  # the second box starts at x = 60, outside
    assert out["boxes"].tolist() == [[10, 5, 30, 25]]
    assert out["labels"].tolist() == [1]
    assert out["area"].tolist() == [400]
    assert out["iscrowd"].tolist() == [0]
    assert out["masks"].shape == (1, 40, 50)
    assert out["image_id"].tolist() == [7]


def test_crop_with_masks_only_drops_empty_masks(sample):
    image, target = sample
    target = {k: v for k, v in target.items() if k not in ("boxes", "area")}
    _, out = T.crop(image, target, (0, 0, 40, 50))
    assert out["labels"].tolist() == [1]
    assert out["masks"].shape == (1, 40, 50)


def test_center_crop_takes_the_middle(sample):
    image, target = sample
    out_image, out = T.CenterCrop((30, 40))(image, target)  # top round(10) = 10, left round(30) = 30
    assert out_image.size == (40, 30)
    # box 1 [10,5,30,25] -> [-20,-5,0,15] is empty and dropped; box 2 [60,10,100,50] -> [30,0,40,30]
    assert out["boxes"].tolist() == [[30, 0, 40, 30]]
    assert out["labels"].tolist() == [2]


def test_normalize_gives_relative_cxcywh(sample):
    image, target = sample
    tensor, out = T.Compose([T.ToTensor(), T.Normalize([0.5, 0.5, 0.5], [0.25, 0.25, 0.25])])(image, target)
    assert tensor.shape == (3, 50, 100)
    # red pixel: (1 - 0.5) / 0.25 = 2 in channel 0, black elsewhere: (0 - 0.5) / 0.25 = -2
    assert tensor[:, 7, 12].tolist() == [2, -2, -2]
    # box 1 [10,5,30,25] on 100 x 50: centre (20, 15), size (20, 20)
    expected = torch.tensor([[0.2, 0.3, 0.2, 0.4], [0.8, 0.6, 0.4, 0.8]])
    assert torch.allclose(out["boxes"], expected)
    assert ((out["boxes"] >= 0) & (out["boxes"] <= 1)).all()


def test_random_choices_follow_probabilities(sample):
    image, target = sample
    _, kept = T.RandomHorizontalFlip(p=0.0)(image, target)
    _, flipped = T.RandomHorizontalFlip(p=1.0)(image, target)
    assert kept["boxes"].tolist() == target["boxes"].tolist()
    assert flipped["boxes"].tolist()[0] == [70, 5, 90, 25]
    first = T.RandomSelect(T.RandomResize([25]), T.RandomResize([10]), p=1.0)
    second = T.RandomSelect(T.RandomResize([25]), T.RandomResize([10]), p=0.0)
    assert first(image, target)[0].size == (50, 25)
    assert second(image, target)[0].size == (20, 10)


@pytest.mark.parametrize("seed", range(5))
def test_random_crops_stay_consistent(sample, seed):
    image, target = sample
    random.seed(seed)
    for transform in (T.RandomSizeCrop(20, 45), T.RandomCrop((20, 30))):
        out_image, out = transform(image, target)
        w, h = out_image.size
        assert out["size"].tolist() == [h, w]
        if isinstance(transform, T.RandomSizeCrop):
            assert 20 <= h <= 45 and 20 <= w <= 45
        else:
            assert (h, w) == (20, 30)
        boxes = out["boxes"]
        assert (boxes[:, 2:] > boxes[:, :2]).all()
        assert (boxes[:, 0::2] <= w).all() and (boxes[:, 1::2] <= h).all() and (boxes >= 0).all()
        n = len(boxes)
        assert len(out["labels"]) == len(out["area"]) == len(out["iscrowd"]) == len(out["masks"]) == n
        assert torch.allclose(out["area"], (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))


def test_random_size_crop_on_an_image_smaller_than_min_size():
    image = Image.new("RGB", (10, 8))
    target = {"boxes": torch.tensor([[1.0, 1.0, 5.0, 5.0]]), "labels": torch.tensor([1]), "area": torch.tensor([16.0]),
              "iscrowd": torch.tensor([0]), "size": torch.tensor([8, 10])}
    out_image, out = T.RandomSizeCrop(20, 30)(image, target)
    assert out_image.size == (10, 8)
    assert out["boxes"].tolist() == [[1, 1, 5, 5]]


def test_empty_target_passes_every_transform():
    image = Image.new("RGB", (64, 48))
    target = {"boxes": torch.zeros((0, 4)), "labels": torch.zeros((0,), dtype=torch.int64), "area": torch.zeros(0),
              "iscrowd": torch.zeros((0,), dtype=torch.int64), "masks": torch.zeros((0, 48, 64), dtype=torch.uint8),
              "size": torch.tensor([48, 64])}
    random.seed(0)
    pipeline = T.Compose([T.RandomHorizontalFlip(1.0), T.RandomResize([32]), T.RandomSizeCrop(16, 24),
                          T.ToTensor(), T.Normalize([0, 0, 0], [1, 1, 1])])
    tensor, out = pipeline(image, target)
    assert out["boxes"].shape == (0, 4)
    assert out["masks"].shape == (0, *tensor.shape[-2:])


@st.composite
def image_and_boxes(draw):
    width = draw(st.integers(1, 64))
    height = draw(st.integers(1, 64))
    n = draw(st.integers(0, 5))
    boxes = []
    for _ in range(n):
        x0, x1 = sorted(draw(st.floats(0, width, allow_nan=False)) for _ in range(2))
        y0, y1 = sorted(draw(st.floats(0, height, allow_nan=False)) for _ in range(2))
        boxes.append([x0, y0, x1, y1])
    return width, height, torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)


@settings(max_examples=50, deadline=None)
@given(image_and_boxes())
def test_hflip_twice_is_identity_on_boxes(case):
    width, height, boxes = case
    image = Image.new("RGB", (width, height))
    once_image, once = T.hflip(image, {"boxes": boxes})
    _, twice = T.hflip(once_image, once)
    assert torch.allclose(twice["boxes"], boxes, atol=1e-4)
    # one flip keeps boxes ordered and inside the image
    assert (once["boxes"][:, 2:] >= once["boxes"][:, :2]).all()
    assert (once["boxes"] >= -1e-4).all() and (once["boxes"][:, 0::2] <= width + 1e-4).all()
