"""DEIM's training parts: the dense one-to-one data schedule (datasets/deim_transforms.py: Mosaic, MixUp, the epoch
policy, in DataLoader workers too), the matchability-aware loss and its criterion (models/losses.py,
models/criterion.py), the flat-cosine learning-rate schedule (util/optimizer.py) and their flags; checked against
direct computations and the official values that tools/reference/deim.py saved."""
import json
import math
from itertools import cycle

import numpy as np
import PIL.Image
import PIL.ImageDraw
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader
from torchvision import tv_tensors
from torchvision.transforms import v2 as T

import cli
from datasets import build_run_data
from datasets.coco import make_pipeline
from datasets.deim_transforms import (
    BatchMixUp,
    BatchTransforms,
    DenseO2OCompose,
    DenseO2OTransforms,
    Mosaic,
    make_dense_o2o_transforms,
    mix_batch,
    paste_mosaic,
)
from datasets.image_file import BadImageError
from datasets.loaders import PinnableCollate
from datasets.rtdetr_transforms import MultiScaleBatchResize, StopEpochCompose
from datasets.shared_epoch import SharedEpoch
from models.criterion import MatchabilityAwareSetCriterion, VarifocalSetCriterion
from models.losses import matchability_aware_loss
from tests.golden_values import assert_same_values
from tools.reference import deim as reference
from util.nested_tensor import NestedTensor, collate_fn
from util.optimizer import FlatCosineSchedule


@pytest.fixture(scope="module")
def saved():
    return reference.load_reference()


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def _bce(x: float, target: float, weight: float) -> float:
    p = _sigmoid(x)
    return -weight * (target * math.log(p) + (1 - target) * math.log(1 - p))


class FixedMatcher(nn.Module):
    """Query 0 of image 0 with target 0."""

    def forward(self, outputs, targets):
        return [(torch.tensor([0]), torch.tensor([0]))]


# ---------------------------------------------------------------------------------------------------------------
# The matchability-aware loss

@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_mal_by_hand_on_two_queries(alpha):
    """Two queries, two classes, gamma 1.5: query 0 matched at class 1 with IoU 0.6 (target 0.6^1.5, weight 1),
    every other term a negative weighted alpha sigmoid(x)^1.5; the criterion finds the IoU from the boxes."""
    gamma = 1.5
    x = [[0.3, -0.4], [1.2, -2.0]]
    logits = torch.tensor([x], dtype=torch.float64, requires_grad=True)
    positive = torch.tensor([[[0, 1], [0, 0]]])
    iou = torch.tensor([[[0.0, 0.6], [0.0, 0.0]]], dtype=torch.float64)
    loss = matchability_aware_loss(logits, iou, positive, 1.0, gamma=gamma, alpha=alpha)
    negatives = [x[0][0], x[1][0], x[1][1]]
    by_hand = _bce(x[0][1], 0.6 ** gamma, 1.0) + sum(_bce(v, 0.0, alpha * _sigmoid(v) ** gamma) for v in negatives)
    assert loss.item() == pytest.approx(by_hand, rel=1e-12)  # mean over 2 queries x Q = 2, over 1 box: the sum
    loss.backward()  # the weights carry no gradient: d/dx = weight (sigmoid(x) - target)
    grad = [[alpha * _sigmoid(v) ** gamma * _sigmoid(v) for v in row] for row in x]
    grad[0][1] = _sigmoid(x[0][1]) - 0.6 ** gamma
    torch.testing.assert_close(logits.grad[0], torch.tensor(grad, dtype=torch.float64), rtol=1e-12, atol=0)

    # the criterion: the predicted box shifted by 0.05 of a 0.2 x 0.2 target has IoU 0.03 / 0.05 = 0.6
    criterion = MatchabilityAwareSetCriterion(FixedMatcher(), {"loss_mal": 1.0}, losses=("mal",), gamma=gamma,
                                              num_classes=2, mal_alpha=None if alpha == 1.0 else alpha,
                                              aux_loss=False)
    boxes = torch.tensor([[[0.55, 0.5, 0.2, 0.2], [0.2, 0.2, 0.1, 0.1]]], dtype=torch.float64)
    targets = [{"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]], dtype=torch.float64)}]
    terms = criterion({"pred_logits": logits.detach(), "pred_boxes": boxes}, targets)
    assert set(terms) == {"loss_mal"} and terms["loss_mal"].item() == pytest.approx(by_hand, rel=1e-12)


@pytest.mark.parametrize("name", sorted(reference.CRITERION_CASES))
def test_criterion_equals_the_official_deim_criterion(name, saved):
    """Every term (last layer, earlier layers, denoising, encoder) and the gradients, against DEIMCriterion."""
    expected = saved["criterion"][name]
    actual = reference.run_criterion_case(reference.our_criterion(name), name)
    assert set(actual) == set(expected)
    for key, value in expected.items():
        torch.testing.assert_close(actual[key], value, rtol=0, atol=1e-12, msg=key)


def test_criterion_with_vfl_is_rtdetrv2s_and_refuses_both():
    outputs, targets = reference.criterion_inputs("mixed")
    matcher = reference.our_criterion("mal").matcher
    weights = {"loss_vfl": 1, "loss_bbox": 5, "loss_giou": 2}
    vfl = MatchabilityAwareSetCriterion(matcher, weights, ("vfl", "boxes"), alpha=0.75, gamma=2.0,
                                        num_classes=reference.NUM_CLASSES, num_decoder_layers=reference.NUM_LAYERS)
    plain = VarifocalSetCriterion(matcher, weights, ("vfl", "boxes"), alpha=0.75, gamma=2.0,
                                  num_classes=reference.NUM_CLASSES, num_decoder_layers=reference.NUM_LAYERS)
    ours, theirs = vfl(outputs, targets), plain(outputs, targets)
    assert set(ours) == set(theirs) and all(torch.equal(ours[k], theirs[k]) for k in theirs)
    with pytest.raises(ValueError, match="both 'mal' and 'vfl'"):
        MatchabilityAwareSetCriterion(matcher, {"loss_mal": 1}, ("mal", "vfl"))


# ---------------------------------------------------------------------------------------------------------------
# The learning-rate schedule

@pytest.mark.parametrize("name", sorted(reference.LR_CASES))
def test_flat_cosine_equals_the_official_schedule(name, saved):
    """The rates of every step of the official loop (FlatCosineLRScheduler stepped after each iteration)."""
    torch.testing.assert_close(reference.our_rates(name), saved["lr"][name]["rates"], rtol=0, atol=0)


def test_flat_cosine_by_hand():
    """3 steps per epoch, 10 epochs, warm-up 4 steps, flat to epoch 4, the last 2 at the floor 0.5 r: step s trains
    at the official rate after step i = s - 1."""
    r = 1e-3
    params = [nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))]
    optimizer = torch.optim.AdamW([{"params": [params[0]], "lr": r}, {"params": [params[1]], "lr": r / 10}])
    torch.optim.lr_scheduler.StepLR(optimizer, 100)  # as run.py builds it: the groups' initial_lr
    schedule = FlatCosineSchedule(optimizer, iters_per_epoch=3, epochs=10, warmup_iters=4, flat_epoch=4,
                                  no_aug_epoch=2, lr_gamma=0.5)

    def expected(step: int) -> float:
        if step == 0:
            return r / 4  # the official's first step: the rate its linear warm-up left
        i = step - 1
        if i <= 4:
            return r * (i / 4) ** 2
        if i <= 12:  # flat to 4 epochs x 3 steps
            return r
        if i >= 24:  # the last 2 epochs: 30 - 6
            return 0.5 * r
        return 0.5 * r + 0.5 * r * (1 + math.cos(math.pi * (i - 12) / 12)) / 2

    for step in [*range(30), 17, 3]:  # in any order: a resumed run continues where it was
        schedule(step)
        assert optimizer.param_groups[0]["lr"] == pytest.approx(expected(step), rel=1e-12, abs=1e-18)
        assert optimizer.param_groups[1]["lr"] == pytest.approx(expected(step) / 10, rel=1e-12, abs=1e-18)
    schedule(19)  # i = 18, halfway through the decay
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.75 * r)
    no_warmup = FlatCosineSchedule(optimizer, 3, 10, warmup_iters=0, flat_epoch=4, no_aug_epoch=2, lr_gamma=0.5)
    no_warmup(0)
    assert optimizer.param_groups[0]["lr"] == r
    with pytest.raises(ValueError, match="lr_gamma must not be negative"):
        FlatCosineSchedule(optimizer, 3, 10, 4, 4, 2, -0.1)


# ---------------------------------------------------------------------------------------------------------------
# Mosaic

COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]  # blends with black never equal another


def _item(height: int, width: int, box: list[int], colour: tuple, label: int) -> tuple[PIL.Image.Image, dict]:
    """An image with one filled rectangle ``box`` (xyxy), and its target as datasets.coco prepares it."""
    image = PIL.Image.new("RGB", (width, height))
    PIL.ImageDraw.Draw(image).rectangle([box[0], box[1], box[2] - 1, box[3] - 1], fill=colour)
    boxes = torch.tensor([box], dtype=torch.float32)
    return image, {"boxes": boxes, "labels": torch.tensor([label]), "iscrowd": torch.zeros(1, dtype=torch.int64),
                   "area": (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), "image_id": torch.tensor([9]),
                   "orig_size": torch.tensor([height, width]), "size": torch.tensor([height, width])}


class ColouredSource:
    """A dataset stand-in: each ``load_item`` gives a new image (sizes in turn) with one rectangle of the next colour
    and label; ``bad`` indices fail as unreadable images."""

    def __init__(self, bad=(), skip_bad_images=False, size=8):
        self.bad, self.skip_bad_images, self.size = set(bad), skip_bad_images, size
        self.next = cycle([(80, 80, [10, 20, 60, 70]), (80, 160, [40, 10, 150, 50]), (160, 80, [5, 100, 45, 150])])
        self.label = 1

    def mosaic_indices(self) -> range:
        return range(self.size)

    def load_item(self, index: int):
        if index in self.bad:
            raise BadImageError(f"image {index} is broken")
        height, width, box = next(self.next)
        item = _item(height, width, box, COLOURS[self.label % 4], self.label)
        self.label += 1
        return item


def _tv(item):
    from datasets.rtdetr_transforms import to_tv_target

    image, target = item
    return image, to_tv_target(target, image.height, image.width)


def test_paste_mosaic_is_the_direct_computation():
    """Four images at the cells' top-left corners of a 2 max_h x 2 max_w canvas; boxes shifted, masks placed."""
    sizes = [(30, 40), (50, 20), (10, 60), (40, 40)]
    pieces = []
    for k, (h, w) in enumerate(sizes):
        image = PIL.Image.new("RGB", (w, h), (10 * (k + 1),) * 3)
        target = {"boxes": tv_tensors.BoundingBoxes([[1, 2, 5, 7]], format="XYXY", canvas_size=(h, w)),
                  "labels": torch.tensor([k]), "iscrowd": torch.tensor([0]),
                  "area_per_box_area": torch.tensor([0.5]), "masks": tv_tensors.Mask(torch.ones(1, h, w))}
        pieces.append((image, target))
    canvas, merged = paste_mosaic(pieces)
    assert canvas.size == (120, 100)  # (2 x 60, 2 x 50)
    expected = np.zeros((100, 120, 3), dtype=np.uint8)
    masks = torch.zeros(4, 100, 120)
    for k, (h, w) in enumerate(sizes):
        x, y = (k % 2) * 60, (k // 2) * 50
        expected[y:y + h, x:x + w] = 10 * (k + 1)
        masks[k, y:y + h, x:x + w] = 1
    assert np.array_equal(np.asarray(canvas), expected)
    corners = torch.tensor([[0, 0], [60, 0], [0, 50], [60, 50]], dtype=torch.float32).repeat(1, 2)
    assert torch.equal(merged["boxes"].as_subclass(torch.Tensor), torch.tensor([[1.0, 2, 5, 7]]) + corners)
    assert merged["boxes"].canvas_size == (100, 120) and merged["boxes"].format == tv_tensors.BoundingBoxFormat.XYXY
    assert merged["labels"].tolist() == [0, 1, 2, 3] and merged["area_per_box_area"].tolist() == [0.5] * 4
    assert torch.equal(merged["masks"], masks)


def _colour_box(image: np.ndarray, colour: tuple) -> list[int] | None:
    """xyxy extent of the pixels of exactly ``colour`` (None: none)."""
    ys, xs = np.nonzero((image == np.array(colour)).all(-1))
    return None if len(xs) == 0 else [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def test_mosaic_without_affine_puts_each_image_in_its_cell():
    """Shorter sides resized to 320 (100x200 -> 320x640; 80x80, 80x160, 160x80 -> 320x320, 320x640, 640x320):
    a 1280 x 1280 canvas; inside each box its colour only."""
    mosaic = Mosaic(rotation_range=0, translation_range=(0, 0), scaling_range=(1, 1))
    mosaic.attach_dataset(ColouredSource())
    image, target = mosaic(_tv(_item(100, 200, [20, 30, 120, 90], COLOURS[0], 0)))
    assert image.size == (1280, 1280) and target["boxes"].canvas_size == (1280, 1280)
    pixels = np.asarray(image)
    scale_main = 3.2
    expected = [[20 * scale_main, 30 * scale_main, 120 * scale_main, 90 * scale_main],
                [640 + 40, 80, 640 + 240, 280], [4 * 40, 640 + 4 * 10, 4 * 150, 640 + 4 * 50],
                [640 + 4 * 5, 640 + 4 * 100, 640 + 4 * 45, 640 + 4 * 150]]
    torch.testing.assert_close(target["boxes"].as_subclass(torch.Tensor), torch.tensor(expected), atol=1e-3, rtol=0)
    for box, label in zip(target["boxes"].tolist(), target["labels"].tolist()):
        x0, y0, x1, y1 = (round(v) for v in box)
        assert (pixels[y0 + 3:y1 - 3, x0 + 3:x1 - 3] == COLOURS[label % 4]).all()
        assert _colour_box(pixels, COLOURS[label % 4]) == pytest.approx([x0, y0, x1, y1], abs=2)


def test_mosaic_boxes_follow_their_pixels_through_the_random_affine():
    """DEIM's Mosaic (rotation up to 10 degrees, translation 0.1, scale 0.5-1.5): each output box encloses the
    moved pixels of its rectangle (nearest-neighbour, so the colours stay exact) to a pixel, and exceeds them by at
    most 6 (the rectangles' blended edges, thin at the rotated corners, are not of the exact colour) unless the
    canvas clipped it (then the box is the clipped box of the whole rectangle); boxes pushed off the canvas are
    empty."""
    for seed in range(4):
        torch.manual_seed(seed)
        mosaic = Mosaic()
        mosaic.attach_dataset(ColouredSource())
        image, target = mosaic(_tv(_item(100, 200, [20, 30, 120, 90], COLOURS[0], 0)))
        assert image.size == (1280, 1280) and len(target["labels"]) == 4
        pixels = np.asarray(image)
        for box, label in zip(target["boxes"].tolist(), target["labels"].tolist()):
            extent = _colour_box(pixels, COLOURS[label % 4])
            if extent is None:
                assert box[2] - box[0] < 3 or box[3] - box[1] < 3
            else:
                inside = [extent[0] - box[0], extent[1] - box[1], box[2] - extent[2], box[3] - extent[3]]
                clipped = min(box) <= 0 or max(box) >= 1280
                assert all(-1 <= margin <= (1280 if clipped else 6) for margin in inside), (seed, label, box, extent)


def test_mosaic_draws_again_past_bad_images():
    mosaic = Mosaic(rotation_range=0, translation_range=(0, 0), scaling_range=(1, 1))
    item = _tv(_item(100, 200, [20, 30, 120, 90], COLOURS[0], 0))
    mosaic.attach_dataset(ColouredSource(bad=range(6), skip_bad_images=True))  # 2 of 8 indices readable
    torch.manual_seed(0)
    assert mosaic(item)[1]["labels"].tolist() == [0, 1, 2, 3]
    mosaic.attach_dataset(ColouredSource(bad=range(8), skip_bad_images=True))  # none: the sample stays as it was
    assert mosaic(item)[0] is item[0]
    mosaic.attach_dataset(ColouredSource(bad=range(8)))
    with pytest.raises(BadImageError, match="is broken"):
        mosaic(item)
    with pytest.raises(RuntimeError, match="attach one with attach_dataset"):
        Mosaic()(item)


# ---------------------------------------------------------------------------------------------------------------
# The epoch policy

class Recorder:
    def __init__(self, name: str, log: list):
        self.name, self.log = name, log

    def __call__(self, sample):
        self.log.append(self.name)
        return sample


def test_policy_stages():
    """Policy (2, 4, 6): nothing strong before 2 and from 6; Mosaic (probability 1) then no zoom-out or IoU crop in
    [2, 4); RT-DETR's ops in [4, 6)."""
    log: list = []
    names = ("mosaic", "photometric", "zoom_out", "iou_crop", "flip")
    epoch = SharedEpoch()
    compose = DenseO2OCompose([Recorder(n, log) for n in names], {n: i for i, n in enumerate(names[:4])}, (2, 4, 6),
                              epoch, mosaic_prob=1.0)
    stages = {0: ["flip"], 1: ["flip"], 2: ["mosaic", "photometric", "flip"], 3: ["mosaic", "photometric", "flip"],
              4: ["photometric", "zoom_out", "iou_crop", "flip"], 5: ["photometric", "zoom_out", "iou_crop", "flip"],
              6: ["flip"], 40: ["flip"]}
    for value, expected in stages.items():
        epoch.set(value)
        log.clear()
        compose(("image", {}))
        assert log == expected, value
    compose.mosaic_prob = 0.5
    epoch.set(2)
    torch.manual_seed(0)
    runs = []
    for _ in range(400):
        log.clear()
        compose(("image", {}))
        runs.append(tuple(log))
    mosaics = runs.count(("mosaic", "photometric", "flip"))
    assert 160 < mosaics < 240 and mosaics + runs.count(("photometric", "zoom_out", "iou_crop", "flip")) == 400


def test_dense_o2o_transforms_roles_are_the_right_ops():
    transforms = make_dense_o2o_transforms(64, (4, 29, 50), SharedEpoch(), mosaic_prob=0.5)
    ops, roles = transforms.ops.transforms, transforms.ops.roles
    assert isinstance(transforms, DenseO2OTransforms) and isinstance(ops[roles["mosaic"]], Mosaic)
    assert isinstance(ops[roles["photometric"]], T.RandomPhotometricDistort)
    assert isinstance(ops[roles["zoom_out"]], T.RandomZoomOut)
    assert isinstance(ops[roles["iou_crop"]], T.RandomApply)
    assert isinstance(ops[roles["iou_crop"]].transforms[0], T.RandomIoUCrop)
    assert "mosaic" not in make_dense_o2o_transforms(64, (4, 29, 50), SharedEpoch()).ops.roles


# ---------------------------------------------------------------------------------------------------------------
# MixUp

def _targets(counts: list[int], side: int = 4) -> list[dict]:
    out = []
    for i, count in enumerate(counts):
        out.append({"boxes": torch.rand(count, 4), "labels": torch.arange(count) + 10 * i, "area": torch.rand(count),
                    "iscrowd": torch.zeros(count, dtype=torch.int64), "image_id": torch.tensor([i]),
                    "size": torch.tensor([side, side])})
    return out


def test_mixup_is_the_weighted_sum_and_keeps_both_images_objects():
    torch.manual_seed(0)
    images = torch.rand(3, 3, 4, 4)
    targets = _targets([2, 0, 1])
    mixed, out = mix_batch(NestedTensor(images, torch.zeros(3, 4, 4, dtype=torch.bool)), targets, 0.47)
    for i in range(3):  # image i with the one before it (image 0 with the last)
        torch.testing.assert_close(mixed.tensors[i], 0.47 * images[i] + 0.53 * images[i - 1], rtol=0, atol=1e-7)
        own, other = targets[i], targets[i - 1]
        for key in ("boxes", "labels", "area", "iscrowd"):
            assert torch.equal(out[i][key], torch.cat([own[key], other[key]]))
        assert out[i]["mixup"].tolist() == pytest.approx([0.47] * len(own["labels"]) + [0.53] * len(other["labels"]))
        assert out[i]["image_id"] is own["image_id"] and out[i]["size"] is own["size"]
    assert not mixed.mask.any()


def test_batch_mixup_epochs_probability_and_edge_cases():
    epoch = SharedEpoch(0)
    mixup = BatchMixUp(1.0, (1, 3), epoch)
    images = NestedTensor(torch.rand(2, 3, 4, 4), None)
    targets = tuple(_targets([1, 2]))
    assert mixup(images, targets)[0] is images  # before START
    epoch.set(1)
    mixed, out = mixup(images, targets)
    beta = out[0]["mixup"][0].item()
    assert 0.45 <= beta <= 0.55 and out[1]["mixup"][0].item() == pytest.approx(beta)
    torch.testing.assert_close(mixed.tensors[1], beta * images.tensors[1] + (1 - beta) * images.tensors[0])
    epoch.set(3)
    assert mixup(images, targets)[0] is images  # from STOP on
    epoch.set(2)
    half = BatchMixUp(0.5, (0, 3), epoch)
    torch.manual_seed(0)
    count = sum("mixup" in half(images, targets)[1][0] for _ in range(200))
    assert 70 < count < 130
    single = NestedTensor(torch.rand(1, 3, 4, 4), None)
    assert mixup(single, targets[:1])[0] is single  # no other image to blend with
    with pytest.raises(ValueError, match="at one size"):
        mixup(images, (targets[0], {**targets[1], "size": torch.tensor([4, 6])}))


# ---------------------------------------------------------------------------------------------------------------
# The pipeline, the dataset and the DataLoader workers

def _args(argv: list[str]):
    return cli.get_args_parser().parse_args(argv)


def _one_box_dataset(root, count: int = 6, side: int = 48):
    """A COCO-layout folder whose images hold one white 20 x 20 square each."""
    for split, first in (("train2017", 1), ("val2017", 100)):
        (root / split).mkdir(parents=True)
        images, annotations = [], []
        for k in range(count if split == "train2017" else 2):
            image_id = first + k
            image = PIL.Image.new("RGB", (side, side))
            x, y = 4 + 3 * k % 20, 6 + 5 * k % 20
            PIL.ImageDraw.Draw(image).rectangle([x, y, x + 19, y + 19], fill=(255, 255, 255))
            image.save(root / split / f"{image_id}.png")
            images.append({"id": image_id, "file_name": f"{image_id}.png", "width": side, "height": side})
            annotations.append({"id": image_id, "image_id": image_id, "category_id": 1, "bbox": [x, y, 20, 20],
                                "area": 400, "iscrowd": 0})
        (root / "annotations").mkdir(exist_ok=True)
        name = "instances_train2017.json" if split == "train2017" else "instances_val2017.json"
        (root / "annotations" / name).write_text(json.dumps(
            {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "square"}]}))
    return root


DEIM_DATA = ["--policy_epoch", "1", "2", "3", "--mosaic_prob", "1", "--mixup_prob", "1", "--mixup_epochs", "2", "3"]


def test_make_pipeline_keeps_the_default_and_adds_deims(tmp_path):
    plain = _args(["--data_pipeline", "rtdetr"])
    transforms, batch, _ = make_pipeline("train", plain)
    assert type(transforms.ops) is StopEpochCompose and type(batch) is MultiScaleBatchResize
    transforms, batch, epoch = make_pipeline("train", _args(["--data_pipeline", "rtdetr", *DEIM_DATA]))
    assert isinstance(transforms, DenseO2OTransforms) and transforms.ops.policy_epoch == (1, 2, 3)
    assert isinstance(batch, BatchTransforms) and [type(t) for t in batch.transforms] == [BatchMixUp,
                                                                                          MultiScaleBatchResize]
    assert batch.transforms[1].stop_epoch == 3 and batch.transforms[0].epoch is epoch is transforms.ops.epoch
    only_mixup = _args(["--data_pipeline", "rtdetr", "--mixup_prob", "0.5", "--mixup_epochs", "0", "1",
                        "--multiscale_sizes"])
    transforms, batch, _ = make_pipeline("train", only_mixup)
    assert type(transforms.ops) is StopEpochCompose and type(batch) is BatchMixUp
    assert make_pipeline("val", _args(["--data_pipeline", "rtdetr", *DEIM_DATA]))[1:] == (None, None)


def test_dataset_gives_mosaic_its_items_and_cache_share(tmp_path):
    root = _one_box_dataset(tmp_path)
    argv = ["--coco_path", str(root), "--data_pipeline", "rtdetr", "--image_size", "64", *DEIM_DATA]
    train = build_run_data(_args(argv), with_train=True).train
    mosaic = train._transforms.ops.mosaic
    assert mosaic.source is train and list(train.mosaic_indices()) == list(range(6))
    image, target = train.load_item(2)
    assert image.size == (48, 48) and target["boxes"].shape == (1, 4) and int(target["image_id"]) == 3
    cached = build_run_data(_args([*argv, "--cache_mode"]), with_train=True).train
    assert list(cached.mosaic_indices()) == list(range(6))
    from datasets.coco import CocoDetection
    share = CocoDetection(root / "train2017", root / "annotations" / "instances_train2017.json", train._transforms,
                          return_masks=False, cache=True, cache_share=(1, 2))
    assert list(share.mosaic_indices()) == [1, 3, 5] and share._transforms.ops.mosaic.source is share


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_schedule_reaches_persistent_workers(start_method, tmp_path, local_sockets):
    """Two persistent workers over epochs 0-3 of policy (1, 2, 3), Mosaic and MixUp with probability 1 (Mosaic
    without its random affine, so no square leaves the canvas): one square per image at 0, four (Mosaic) at 1,
    two (MixUp) at 2, one at 3; multi-scale batches (32 px) until the policy's STOP, 3. Spawned workers receive
    the dataset pickled, its Mosaic pointing at it."""
    root = _one_box_dataset(tmp_path)
    args = _args(["--coco_path", str(root), "--image_size", "64", "--multiscale_sizes", "32", "--data_pipeline",
                  "rtdetr", *DEIM_DATA])
    data = build_run_data(args, with_train=True)
    data.train._transforms.ops.mosaic.affine = T.RandomAffine(degrees=0)
    loader = DataLoader(data.train, batch_size=2, num_workers=2 if start_method == "fork" else 1,
                        persistent_workers=True,
                        collate_fn=PinnableCollate(collate_fn, data.train.batch_transform),
                        multiprocessing_context=start_method)
    expected = {0: (1, False, 32), 1: (4, False, 32), 2: (2, True, 32), 3: (1, False, 64)}
    for value, (objects, mixed, side) in expected.items():
        data.set_epoch(value)
        for samples, targets in loader:
            assert samples.tensors.shape[-1] == side
            for target in targets:
                assert len(target["labels"]) == objects and ("mixup" in target) == mixed, value


# ---------------------------------------------------------------------------------------------------------------
# Flags

@pytest.mark.parametrize("argv, message", [
    (["--mosaic_prob", "0.5"], "--mosaic_prob needs --policy_epoch START MOSAIC_STOP STOP"),
    (["--policy_epoch", "4", "3", "50"], "--policy_epoch must be epochs 0 <= START <= MOSAIC_STOP <= STOP, got 4 3 50"),
    (["--policy_epoch", "4", "29", "50", "--stop_epoch", "40"], "--stop_epoch 40 differs from the STOP of "
                                                                "--policy_epoch (50)"),
    (["--mixup_prob", "1.5", "--mixup_epochs", "4", "29"], "--mixup_prob must be a probability in [0, 1], got 1.5"),
    (["--policy_epoch", "4", "29", "50", "--mosaic_prob", "-1"], "--mosaic_prob must be a probability in [0, 1]"),
    (["--mixup_prob", "0.5"], "--mixup_prob needs --mixup_epochs START STOP"),
    (["--mixup_epochs", "4", "29"], "--mixup_epochs is read with --mixup_prob above 0 only"),
    (["--mixup_prob", "0.5", "--mixup_epochs", "5", "4"], "--mixup_epochs must be epochs 0 <= START <= STOP"),
    (["--mixup_prob", "0.5", "--mixup_epochs", "4", "29", "--batch_size", "1"], "--batch_size 1 has none to blend"),
    (["--data_pipeline", "detr", "--policy_epoch", "4", "29", "50"], "--policy_epoch is read by --data_pipeline "
                                                                     "rtdetr only"),
    (["--data_pipeline", "detr", "--mixup_prob", "0.5", "--mixup_epochs", "4", "29"], "--mixup_prob is read by "
                                                                                      "--data_pipeline rtdetr only"),
    (["--flat_epoch", "29"], "--flat_epoch is read by --lr_scheduler flat_cosine only"),
    (["--lr_gamma", "0.3"], "--lr_gamma is read by --lr_scheduler flat_cosine only"),
    (["--lr_scheduler", "flat_cosine"], "--lr_scheduler flat_cosine needs --flat_epoch"),
    (["--lr_scheduler", "flat_cosine", "--flat_epoch", "4", "--lr_drop_epochs", "3"], "--lr_drop_epochs is read by "
                                                                                      "--lr_scheduler step only"),
    (["--lr_scheduler", "flat_cosine", "--flat_epoch", "4", "--no_aug_epoch", "400"], "--no_aug_epoch must be 0 to "
                                                                                      "--epochs (300), got 400"),
    (["--lr_scheduler", "flat_cosine", "--flat_epoch", "-1"], "--flat_epoch must be 0 or more"),
    (["--lr_scheduler", "cosine"], "--lr_scheduler"),
])
def test_bad_flags_name_the_flag(argv, message, capsys):
    pipeline = [] if "--data_pipeline" in argv else ["--data_pipeline", "rtdetr"]
    with pytest.raises(SystemExit):
        cli.parse_args(cli.get_args_parser(), [*pipeline, *argv])
    assert message in capsys.readouterr().err


def test_deim_flags_from_a_preset(tmp_path):
    """DEIM-D-FINE-L's values as a flat preset."""
    preset = tmp_path / "deim.yaml"
    preset.write_text("data_pipeline: rtdetr\nepochs: 58\npolicy_epoch: [4, 29, 50]\nmosaic_prob: 0.5\n"
                      "mixup_prob: 0.5\nmixup_epochs: [4, 29]\nlr_scheduler: flat_cosine\nflat_epoch: 29\n"
                      "no_aug_epoch: 8\nlr_gamma: 0.5\nwarmup_iters: 2000\n")
    args = cli.parse_args(cli.get_args_parser(), ["--config", str(preset)])
    assert (args.policy_epoch, args.mosaic_prob, args.mixup_prob, args.mixup_epochs) == ([4, 29, 50], 0.5, 0.5,
                                                                                         [4, 29])
    assert (args.lr_scheduler, args.flat_epoch, args.no_aug_epoch, args.lr_gamma) == ("flat_cosine", 29, 8, 0.5)
    defaults = cli.parse_args(cli.get_args_parser(), [])
    assert (defaults.policy_epoch, defaults.mosaic_prob, defaults.mixup_prob, defaults.mixup_epochs) == (None,) * 4
    assert (defaults.lr_scheduler, defaults.flat_epoch, defaults.no_aug_epoch, defaults.lr_gamma) == ("step", None,
                                                                                                      0, 0.5)


# ---------------------------------------------------------------------------------------------------------------
# DEIM's decoders against the official numbers

@pytest.fixture(scope="module")
def golden() -> dict:
    return reference.load_reference()


@pytest.mark.parametrize("name", sorted(reference.DECODER_CASES))
def test_deim_decoder_reproduces_the_official_numbers(name, golden):
    """DEIM's D-FINE decoder (SiLU activations) with DEIMCriterion's MAL / boxes / local terms on the union of
    matches, and DEIM's RT-DETRv2 decoder (SiLU, the ``as_reg`` query position head, D-FINE's denoising queries)
    with MAL and boxes: initial weights from the official seed, then perturbed, float64: every training output,
    the matches, every loss term, the gradients, and the evaluation outputs (D-FINE: also deployed)."""
    values = reference.run_decoder_case(reference.our_decoder(name), reference.our_decoder_criterion(name), name)
    assert_same_values(values, golden["decoder"][name], name)


# ---------------------------------------------------------------------------------------------------------------
# The presets configs/deim_*.yaml: the official DEIM configs' values, the models they build, a training step

DEIM_PRESETS = {  # our preset -> the official DEIM config
    **{f"deim_dfine_{size}": f"deim_dfine/deim_hgnetv2_{size}_coco.yml" for size in "nsmlx"},
    **{f"deim_rtdetrv2_{depth}": f"deim_rtdetrv2/deim_{depth}_{epochs}_coco.yml"
       for depth, epochs in (("r18vd", "120e"), ("r34vd", "120e"), ("r50vd_m", "60e"), ("r50vd", "60e"),
                             ("r101vd", "60e"))},
}


def without_counters(names: list[str]) -> list[str]:
    """State-dict lines less BatchNorm's step counters (present with trainable norms only)."""
    return [name for name in names if not name.endswith("num_batches_tracked:")]


def _deim_args(preset: str, *extra: str):
    from tests.test_dfine import preset_args

    return preset_args(preset, *extra)


def test_every_official_coco_config_has_a_preset():
    """The ten COCO configs (the Objects365 -> COCO fine-tuning config, deim_hgnetv2_x_obj2coco_24e, starts from
    Objects365 weights this project does not hold: its values are kept in OFFICIAL_CONFIGS, not as a preset)."""
    coco = [name for name in reference.OFFICIAL_CONFIGS if "obj2coco" not in name]
    assert sorted(DEIM_PRESETS.values()) == sorted(coco) and len(coco) == 10


@pytest.mark.parametrize("preset", sorted(DEIM_PRESETS))
def test_deim_preset_values_are_the_official_configs(preset):
    """Schedule, augmentation, loss and optimiser values equal the official config's (tools/reference/deim.py
    checks OFFICIAL_CONFIGS against the YAML files, includes resolved, when it runs)."""
    from tests.test_dfine import official_multiscale_sizes

    official = reference.OFFICIAL_CONFIGS[DEIM_PRESETS[preset]]
    args = _deim_args(preset)
    ours = {"epochs": args.epochs, "lr": args.lr, "lr_backbone": args.lr_backbone, "weight_decay": args.weight_decay,
            "lr_gamma": args.lr_gamma, "flat_epoch": args.flat_epoch, "no_aug_epoch": args.no_aug_epoch,
            "warmup_iters": args.warmup_iters, "policy_epoch": args.policy_epoch, "mixup_epochs": args.mixup_epochs,
            "stop_epoch": args.stop_epoch, "mosaic_prob": args.mosaic_prob, "mixup_prob": args.mixup_prob,
            "ema": args.ema, "ema_warmups": args.ema_warmups, "ema_restart_decay": args.ema_restart_decay,
            "batch_size": args.batch_size * 4, "mal_gamma": args.mal_gamma,
            "use_uni_set": args.meta_arch == "dfine"}  # D-FINE's criterion matches on the union, RT-DETRv2's not
    assert ours == {key: official[key] for key in ours}
    assert args.multiscale_sizes == official_multiscale_sizes(official["multiscale_repeat"])
    assert (args.lr_scheduler, args.use_mal, args.mal_alpha) == ("flat_cosine", True, None)
    assert (args.activation, args.mlp_act, args.freeze_at, args.freeze_norm) == ("silu", "silu", -1, False)
    if args.meta_arch == "rtdetrv2":
        assert (args.query_pos_method, args.denoising_method) == ("as_reg", "dfine")


@pytest.mark.parametrize("preset", sorted(DEIM_PRESETS))
def test_deim_preset_builds_the_official_model(preset):
    """DEIM-D-FINE: D-FINE's state dict (DEIM changes activations, not weights); DEIM-RT-DETRv2: RT-DETRv2's with the
    three-layer ``as_reg`` query position head; where D-FINE or RT-DETRv2 freeze the backbone's BatchNorm, DEIM
    trains it, which adds its step counters ``num_batches_tracked``. The criterion is DEIM's (MAL; D-FINE: no DDF
    term for the teacher layer)."""
    from models import build_model
    from models.criterion import DFINECriterion, MatchabilityAwareSetCriterion
    from tools.reference import dfine as dfine_reference
    from tools.reference import rtdetrv2 as rtdetrv2_reference
    from tools.reference.common import state_names, state_names_and_shapes

    args = _deim_args(preset)
    size = preset.rsplit("_", 1)[1] if args.meta_arch == "dfine" else preset.removeprefix("deim_rtdetrv2_")
    with torch.device("meta"):
        model, criterion, _ = build_model(args)
    if args.meta_arch == "dfine":
        official = dfine_reference.load_reference()["names"][f"model/{size}"]
        assert without_counters(state_names(model)) == without_counters(official)
        norms = [name for name, module in model.backbone.named_modules() if isinstance(module, nn.BatchNorm2d)]
        assert norms and all(f"backbone.{name}.num_batches_tracked:" in state_names(model) for name in norms)

        assert isinstance(criterion, DFINECriterion) and not criterion.teacher_self_term
        assert isinstance(model.decoder.decoder.lqe_layers[0].reg_conf.act, nn.SiLU)
    else:
        hidden = args.hidden_dim
        as_reg = [f"decoder.query_pos_head.layers.{i}.{part}:{shape}" for i, (rows, cols) in
                  enumerate([(hidden, 4), (hidden, hidden), (hidden, hidden)])
                  for part, shape in (("weight", f"{rows},{cols}"), ("bias", f"{rows}"))]
        official = rtdetrv2_reference.load_reference()["names"][f"model/{size}"]
        # DEIM's r50vd_m keeps 3 of RT-DETRv2's 6 decoder layers (and their heads)
        dropped = tuple(f"decoder.{part}.{i}." for part in ("decoder.layers", "dec_score_head", "dec_bbox_head")
                        for i in range(args.dec_layers, 6))
        official = [line for line in official if not line.startswith(dropped)]
        first = next(i for i, line in enumerate(official) if line.startswith("decoder.query_pos_head."))
        expected = [*official[:first], *as_reg,
                    *[line for line in official[first:] if not line.startswith("decoder.query_pos_head.")]]
        assert without_counters(state_names_and_shapes(model)) == without_counters(expected)
        assert type(criterion) is MatchabilityAwareSetCriterion
    assert criterion.loss_weights == {"loss_mal": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0,
                                      **({"loss_fgl": 0.15, "loss_ddf": 1.5} if args.meta_arch == "dfine" else {})}
    assert (criterion.gamma, criterion.mal_alpha) == (1.5, None)
    assert isinstance(model.decoder.query_pos_head.act, nn.SiLU)
    assert isinstance(model.decoder.decoder.layers[0].activation, nn.SiLU)


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("preset", ["deim_dfine_n", "deim_dfine_s", "deim_rtdetrv2_r18vd"])
def test_deim_preset_trains_a_step(preset):
    """The preset's full model, its optimiser groups and its criterion: one AdamW step on two 320 px images (one
    without objects; at least the 300 queries' worth of encoder tokens) changes the weights and gives finite
    losses. (The larger presets differ from these in widths and depths only; their builds are checked above.)"""
    from models import build_model
    from run import _param_groups
    from util.optimizer import build_optimizer

    args = _deim_args(preset, "--eval_spatial_size", "320", "320")
    torch.manual_seed(0)
    model, criterion, _ = build_model(args)
    optimizer = build_optimizer(_param_groups(model, args), args.lr, args.weight_decay)
    targets = [{"labels": torch.tensor([3, 17]), "boxes": torch.tensor([[0.4, 0.5, 0.3, 0.4], [0.7, 0.3, 0.2, 0.2]])},
               {"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}]
    model.train()
    before = {name: param.detach().clone() for name, param in model.named_parameters() if param.requires_grad}
    losses = criterion(model(torch.rand(2, 3, 320, 320), targets), targets)
    assert "loss_mal" in losses and all(torch.isfinite(value) for value in losses.values())
    sum(losses.values()).backward()
    optimizer.step()
    changed = [name for name, param in model.named_parameters() if name in before
               and not torch.equal(param.detach(), before[name])]
    assert any(name.startswith("backbone.") for name in changed)
    assert any(name.startswith("decoder.") for name in changed)
