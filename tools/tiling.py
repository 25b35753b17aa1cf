"""Sliced inference for small objects in large images (SAHI: Akyon et al., "Slicing Aided Hyper Inference and
Fine-tuning for Small Object Detection", ICIP 2022, arXiv:2202.06934).

The image is cut into square tiles of ``tile`` pixels (of the image) overlapping by a fraction of a tile, the last row
and column aligned to the image's border, as SAHI slices; each tile is an image of its own for the model, so a small
object keeps the pixels that resizing the whole image to the model's input size would take away. The tiles'
detections, moved to the image's coordinates, are merged with the whole image's own (SAHI's default full-image pass:
objects larger than a tile, which the tiles only see in parts) by per-class NMS, which removes the duplicates of
objects that several tiles (or the whole image) found.
"""
import torch
from torchvision.ops import batched_nms

MIN_TILE = 32
DEFAULT_OVERLAP = 0.2
DEFAULT_NMS_IOU = 0.5


def tile_starts(length: int, tile: int, overlap: float) -> list[int]:
    """First pixel of each tile along a side of ``length`` pixels: a step of ``tile - int(overlap * tile)`` from 0,
    then one tile ending at the border; ``[0]`` when the side fits in one tile (that tile is then the side)."""
    if length <= tile:
        return [0]
    step = tile - int(overlap * tile)
    return [*range(0, length - tile, step), length - tile]


def tile_grid(width: int, height: int, tile: int, overlap: float) -> list[tuple[int, int, int, int]]:
    """The tiles of an image of ``width`` x ``height`` pixels as (x0, y0, x1, y1) pixel boxes (x1, y1 exclusive),
    row by row; each is ``tile`` pixels wide and high, or the image's width or height where that is smaller. An
    image no larger than a tile either way is not tiled: no tiles."""
    if width <= tile and height <= tile:
        return []
    tile_w, tile_h = min(tile, width), min(tile, height)
    return [(x0, y0, x0 + tile_w, y0 + tile_h) for y0 in tile_starts(height, tile, overlap)
            for x0 in tile_starts(width, tile, overlap)]


def merge_detections(parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], offsets: list[tuple[int, int]],
                     iou_threshold: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Detections of several views of one image as one set: ``parts`` (scores ``[n]``, labels ``[n]``, boxes
    ``[n, 4]`` xyxy pixels of the view) with each view's ``offsets`` (x0, y0) in the image; a detection that
    overlaps a better one of its class by IoU > ``iou_threshold`` (in image coordinates) is dropped.

    Returns the kept scores ``[k]``, labels ``[k]``, boxes ``[k, 4]`` (xyxy pixels of the image), best first, and
    each one's index ``[k]`` among the parts' detections taken in order."""
    scores = torch.cat([s for s, _, _ in parts])
    labels = torch.cat([lab for _, lab, _ in parts])
    boxes = torch.cat([b + b.new_tensor([x0, y0, x0, y0]) for (_, _, b), (x0, y0) in zip(parts, offsets)])
    keep = batched_nms(boxes.float(), scores.float(), labels, iou_threshold)
    return scores[keep], labels[keep], boxes[keep], keep
