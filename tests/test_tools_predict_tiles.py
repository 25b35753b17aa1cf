"""tools/predict.py --tile: the tile grid against hand computations (covering, overlap, border alignment), merging by
per-class NMS on hand-made boxes, and end to end on a large synthetic image whose small squares a stand-in detector
finds in tiles but not in the resized whole image; one-line errors naming the flag."""
import contextlib
import io
import json
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from pycocotools import mask as coco_mask
from torch import nn
from torchvision.ops import box_iou

import cli
from datasets.coco import IMAGENET_MEAN, IMAGENET_STD
from models.postprocess import PostProcess
from tools import predict
from tools.command_line import run_tool
from tools.model_loading import LoadedModel
from tools.tiling import merge_detections, tile_grid, tile_starts
from util.nested_tensor import NestedTensor
from util.user_error import UserError

# --- the grid ------------------------------------------------------------------------------------------------------


def test_tile_starts_by_hand():
    # 256-px tiles overlapping by 0.25 (64 px): a step of 192, then one tile ending at the border
    assert tile_starts(1024, 256, 0.25) == [0, 192, 384, 576, 768]
    assert tile_starts(768, 256, 0.25) == [0, 192, 384, 512]
    # no overlap on a multiple of the tile: the tiles touch, the last already ends at the border
    assert tile_starts(1024, 256, 0.0) == [0, 256, 512, 768]
    # SAHI's slicing of 1000 px by 512 px at 0.2: int(102.4) = 102 px overlap, step 410, last tile from 488
    assert tile_starts(1000, 512, 0.2) == [0, 410, 488]
    assert tile_starts(513, 512, 0.5) == [0, 1]
    assert tile_starts(300, 512, 0.2) == [0]


def test_tile_grid_by_hand():
    grid = tile_grid(1024, 768, 256, 0.25)
    assert len(grid) == 5 * 4
    assert grid[:6] == [(0, 0, 256, 256), (192, 0, 448, 256), (384, 0, 640, 256), (576, 0, 832, 256),
                        (768, 0, 1024, 256), (0, 192, 256, 448)]
    assert grid[-1] == (768, 512, 1024, 768)
    # a strip higher than a tile but narrower: tiles as wide as the image, down its height
    assert tile_grid(200, 600, 256, 0.0) == [(0, 0, 200, 256), (0, 256, 200, 512), (0, 344, 200, 600)]
    # no larger than a tile either way: not tiled
    assert tile_grid(256, 256, 256, 0.2) == [] and tile_grid(100, 30, 256, 0.2) == []


@pytest.mark.parametrize("seed", range(5))
def test_tiles_cover_the_image_overlap_by_the_fraction_and_end_at_its_border(seed):
    rng = random.Random(seed)
    tile, overlap = rng.randrange(32, 300), rng.choice([0.0, 0.1, 0.25, 0.5, 0.9])
    width, height = rng.randrange(tile + 1, 4 * tile), rng.randrange(tile + 1, 3 * tile)
    grid = tile_grid(width, height, tile, overlap)
    covered = np.zeros((height, width), dtype=int)
    for x0, y0, x1, y1 in grid:
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height and (x1 - x0, y1 - y0) == (tile, tile)
        covered[y0:y1, x0:x1] += 1
    assert (covered >= 1).all()
    xs, ys = sorted({b[0] for b in grid}), sorted({b[1] for b in grid})
    assert len(grid) == len(xs) * len(ys)
    for starts, length in ((xs, width), (ys, height)):
        assert starts[0] == 0 and starts[-1] + tile == length
        shared = [a + tile - b for a, b in zip(starts, starts[1:])]
        assert all(s >= int(overlap * tile) for s in shared)  # at least the asked overlap, more only at the border
        assert all(s == int(overlap * tile) for s in shared[:-1])


# --- merging -------------------------------------------------------------------------------------------------------


def _part(scores, labels, boxes):
    return torch.tensor(scores), torch.tensor(labels), torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)


def test_merge_moves_tile_boxes_to_the_image_and_removes_duplicates_per_class():
    whole = _part([0.6], [3], [[500, 400, 700, 600]])  # a large object: whole image only
    left_tile = _part([0.9, 0.8, 0.4], [1, 1, 2], [[202, 10, 222, 30], [0, 0, 10, 10], [202, 10, 222, 30]])
    right_tile = _part([0.7, 0.95], [1, 1], [[10, 10, 30, 30], [100, 100, 110, 110]])
    scores, labels, boxes, index = merge_detections([whole, left_tile, right_tile], [(0, 0), (0, 0), (192, 0)], 0.5)
    # right_tile's first box is at (202, 10, 222, 30) in the image: left_tile's class-1 box there is better; the
    # class-2 box at the same place stays (per class)
    assert scores.tolist() == pytest.approx([0.95, 0.9, 0.8, 0.6, 0.4])
    assert labels.tolist() == [1, 1, 1, 3, 2]
    assert boxes.tolist() == [[292, 100, 302, 110], [202, 10, 222, 30], [0, 0, 10, 10], [500, 400, 700, 600],
                              [202, 10, 222, 30]]
    assert index.tolist() == [5, 1, 2, 0, 3]  # among whole (0), left_tile (1-3), right_tile (4-5)


def test_merge_drops_only_above_the_iou_threshold():
    # [0, 0, 10, 10] and [5, 0, 15, 10]: intersection 50, union 150, IoU 1/3
    parts = [_part([0.9], [0], [[0, 0, 10, 10]]), _part([0.8], [0], [[0, 0, 10, 10]])]
    offsets = [(0, 0), (5, 0)]
    assert len(merge_detections(parts, offsets, 0.5)[0]) == 2
    assert len(merge_detections(parts, offsets, 0.3)[0]) == 1
    empty = _part([], [], [])
    assert len(merge_detections([empty, empty], offsets, 0.5)[0]) == 0


# --- end to end ----------------------------------------------------------------------------------------------------

IMAGE_W, IMAGE_H, INPUT_SIZE, TILE, OVERLAP = 1024, 768, 256, 256, "0.25"
SQUARE = 12
MIN_FOUND = 8  # the stand-in detector's smallest square, in its input's pixels: 12 px squares keep 4 px untiled
# (x0, y0) of each square: inside one tile; inside two tiles (a duplicate); at the bottom-right corner (the tiles
# aligned to the border); cut by a seam (6 px in one tile, too few to find) and inside two other tiles
SQUARES = [(100, 100), (200, 300), (1000, 740), (250, 600)]
SQUARE_CLASS = 1


class BrightSquareFinder(nn.Module):
    """A stand-in detector: one query per connected bright region (mean channel > 0.5 before normalisation) of its
    input that is at least ``MIN_FOUND`` pixels wide and high, with class ``SQUARE_CLASS`` and its box (normalised
    cxcywh of the unpadded input), and, ``with_masks``, its pixels as mask logits."""

    def __init__(self, num_queries: int = 16, with_masks: bool = False):
        super().__init__()
        self.num_queries, self.with_masks = num_queries, with_masks

    def forward(self, samples: NestedTensor) -> dict:
        images, padding = samples.decompose()
        batch, _, height, width = images.shape
        logits = torch.zeros(batch, self.num_queries, 3)
        logits[..., -1] = 10.0  # "no object"
        boxes = torch.full((batch, self.num_queries, 4), 0.5)
        masks = torch.full((batch, self.num_queries, height, width), -10.0)
        std, mean = torch.tensor(IMAGENET_STD)[:, None, None], torch.tensor(IMAGENET_MEAN)[:, None, None]
        for i in range(batch):
            valid_h, valid_w = int((~padding[i]).any(1).sum()), int((~padding[i]).any(0).sum())
            bright = ((images[i] * std + mean).mean(0) > 0.5)[:valid_h, :valid_w]
            for q, (x0, y0, x1, y1) in enumerate(_regions(bright)[:self.num_queries]):
                logits[i, q] = torch.tensor([0.0, 10.0, 0.0])
                boxes[i, q] = torch.tensor([(x0 + x1) / 2 / valid_w, (y0 + y1) / 2 / valid_h, (x1 - x0) / valid_w,
                                            (y1 - y0) / valid_h])
                masks[i, q, y0:y1, x0:x1] = 10.0
        outputs = {"pred_logits": logits, "pred_boxes": boxes}
        if self.with_masks:
            outputs["pred_masks"] = masks
        return outputs


def _regions(bright: torch.Tensor) -> list[tuple[int, int, int, int]]:
    """(x0, y0, x1, y1) pixel boxes (x1, y1 exclusive) of the 8-connected regions of ``bright`` ``[h, w]`` at least
    MIN_FOUND pixels wide and high (labels spread by 3 x 3 max pooling until they settle)."""
    h, w = bright.shape
    labels = torch.arange(1, h * w + 1, dtype=torch.float64).view(h, w) * bright
    while True:
        grown = F.max_pool2d(labels[None, None], 3, stride=1, padding=1)[0, 0] * bright
        if torch.equal(grown, labels):
            break
        labels = grown
    regions = []
    for label in labels.unique()[1:] if bright.any() else []:
        ys, xs = (labels == label).nonzero(as_tuple=True)
        x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
        if x1 - x0 >= MIN_FOUND and y1 - y0 >= MIN_FOUND:
            regions.append((x0, y0, x1, y1))
    return regions


def test_the_stand_in_finds_squares_of_at_least_its_width():
    bright = torch.zeros(40, 60, dtype=torch.bool)
    bright[2:14, 3:15] = True  # 12 px: found
    bright[20:27, 30:37] = True  # 7 px: too small
    bright[20:36, 45:50] = True  # 5 px wide: too narrow
    assert _regions(bright) == [(3, 2, 15, 14)]


@pytest.fixture
def large_image(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 40, (IMAGE_H, IMAGE_W, 3), dtype=np.uint8)  # dark, noisy
    for x0, y0 in SQUARES:
        pixels[y0:y0 + SQUARE, x0:x0 + SQUARE] = 255
    path = tmp_path / "large.png"
    Image.fromarray(pixels).save(path)
    return path


def _use_stand_in(monkeypatch, tmp_path, with_masks: bool = False, panoptic: bool = False):
    """predict.load_model returns the stand-in with DETR's real post-processor; --resume names a file of no
    weights (the stand-in has none)."""
    def load_model(args, checkpoint):
        postprocessors = {"bbox": PostProcess()}
        if panoptic:
            postprocessors["panoptic"] = PostProcess()
        return LoadedModel(BrightSquareFinder(with_masks=with_masks).eval(), postprocessors,
                           cli.resolve_data_pipeline(args), {SQUARE_CLASS: "square"}, "the test", args.resume)

    monkeypatch.setattr(predict, "load_model", load_model)
    checkpoint = tmp_path / "stand_in.pth"
    torch.save({"model": {}}, checkpoint)
    return checkpoint


def _predict(checkpoint, image, out, *flags) -> list[dict]:
    with contextlib.redirect_stdout(io.StringIO()):
        path = predict.main(["--resume", str(checkpoint), "--input", str(image), "--output_dir", str(out),
                             "--device", "cpu", "--image_size", str(INPUT_SIZE), *flags])
    return json.loads(path.read_text())


def _truth() -> torch.Tensor:
    return torch.tensor([[x0, y0, x0 + SQUARE, y0 + SQUARE] for x0, y0 in SQUARES], dtype=torch.float32)


def _xyxy(results: list[dict]) -> torch.Tensor:
    return torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (r["bbox"] for r in results)]).reshape(-1, 4)


@pytest.mark.parametrize("with_masks", [False, True], ids=["boxes", "masks"])
def test_tiles_find_the_small_squares_that_the_whole_image_misses(large_image, tmp_path, monkeypatch, with_masks):
    checkpoint = _use_stand_in(monkeypatch, tmp_path, with_masks)
    assert _predict(checkpoint, large_image, tmp_path / "whole") == []

    results = _predict(checkpoint, large_image, tmp_path / "tiled", "--tile", str(TILE), "--overlap", OVERLAP)
    assert len(results) == len(SQUARES)  # once each: the duplicates of the overlaps and the seam are merged
    assert all(r["category_id"] == SQUARE_CLASS and r["score"] > 0.99 for r in results)
    iou = box_iou(_truth(), _xyxy(results))
    assert (iou.max(1).values > 0.9).all(), iou
    assert iou.argmax(1).unique().numel() == len(SQUARES)
    assert Image.open(tmp_path / "tiled" / "large.png").size == (IMAGE_W, IMAGE_H)
    if with_masks:  # each mask is its square's pixels, at the image's size
        for result in results:
            mask = coco_mask.decode({"size": result["segmentation"]["size"],
                                     "counts": result["segmentation"]["counts"].encode("ascii")})
            assert mask.shape == (IMAGE_H, IMAGE_W)
            ys, xs = mask.nonzero()
            x0, y0, w, h = result["bbox"]
            assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (round(x0), round(y0), round(x0 + w),
                                                                        round(y0 + h))
            assert mask.sum() == SQUARE * SQUARE


def test_tile_nms_iou_decides_which_duplicates_go(large_image, tmp_path, monkeypatch):
    checkpoint = _use_stand_in(monkeypatch, tmp_path)
    # IoU 1: identical boxes (IoU exactly 1) all stay: the second and fourth squares lie whole in two tiles each
    results = _predict(checkpoint, large_image, tmp_path, "--tile", str(TILE), "--overlap", OVERLAP,
                       "--tile_nms_iou", "1")
    assert len(results) == len(SQUARES) + 2
    found = box_iou(_truth(), _xyxy(results)) > 0.9
    assert found.sum(1).tolist() == [1, 2, 1, 2]


def test_an_image_no_larger_than_a_tile_is_predicted_whole(tmp_path, monkeypatch):
    checkpoint = _use_stand_in(monkeypatch, tmp_path)
    pixels = np.zeros((200, 240, 3), dtype=np.uint8)
    pixels[50:80, 60:90] = 255  # 30 px: 26 px at the input's 256 / 200 scale, found
    Image.fromarray(pixels).save(tmp_path / "small.png")
    untiled = _predict(checkpoint, tmp_path / "small.png", tmp_path / "a")
    tiled = _predict(checkpoint, tmp_path / "small.png", tmp_path / "b", "--tile", "256")
    assert len(untiled) == 1 and tiled == untiled


@pytest.mark.parametrize("flags, message", [
    (["--tile", "16"], "--tile must be at least 32"),
    (["--tile", "64", "--overlap", "1"], r"--overlap must be in \[0, 1\)"),
    (["--tile", "64", "--overlap", "-0.1"], r"--overlap must be in \[0, 1\)"),
    (["--tile", "64", "--tile_nms_iou", "1.5"], r"--tile_nms_iou must be in \[0, 1\]"),
    (["--overlap", "0.5"], "--overlap needs --tile"),
    (["--overlap", "0.5", "--tile_nms_iou", "0.3"], "--overlap and --tile_nms_iou need --tile"),
])
def test_bad_tiling_flags_are_one_line_errors_naming_the_flag(tmp_path, monkeypatch, capsys, flags, message):
    checkpoint = _use_stand_in(monkeypatch, tmp_path)
    Image.fromarray(np.zeros((64, 64, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    argv = ["--resume", str(checkpoint), "--input", str(tmp_path / "a.png"), "--output_dir", str(tmp_path / "out"),
            *flags]
    with pytest.raises(ValueError, match=message):
        predict.main(argv)
    assert run_tool(predict.main, argv) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("error: ")


def test_a_panoptic_model_is_refused(tmp_path, monkeypatch):
    checkpoint = _use_stand_in(monkeypatch, tmp_path, panoptic=True)
    Image.fromarray(np.zeros((64, 64, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    with pytest.raises(UserError, match="--tile: a panoptic model"), contextlib.redirect_stdout(io.StringIO()):
        predict.main(["--resume", str(checkpoint), "--input", str(tmp_path / "a.png"), "--output_dir",
                      str(tmp_path / "out"), "--tile", "64"])
