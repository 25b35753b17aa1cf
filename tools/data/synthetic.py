"""A small synthetic detection (or panoptic) dataset of coloured shapes, written in the full COCO 2017 layout.

    python -m tools.data.synthetic --out data/shapes --num_train 2000 --num_val 200 --image_size 128 --seed 0

writes ``DIR/train2017/*.jpg``, ``DIR/val2017/*.jpg``, ``DIR/annotations/instances_{train,val}2017.json`` and
``DIR/synthetic_params.json``, so ``--coco_path DIR`` works unchanged. Category ids are non-contiguous as in COCO
(``CATEGORIES``: 5 shapes with ids up to 11, so DETR's ``num_classes`` is 12). Each image has a plain colour
background with a mild gradient and noise, and 0..max_objects shapes (about 5% of images have none) of side 10%-50%
of the image, in colours that contrast with the background and with the shapes they touch. Shapes overlap each
other's boxes by at most 30% of the smaller box, so they stay mostly visible. Segmentations are the polygons the
shapes were rasterised from (the whole shape, including any small part a later shape covers); boxes are the tight
bounds of those pixels and areas their count.

Panoptic mode (``--panoptic``) adds the COCO panoptic layout beside the detection one, so ``--coco_path DIR
--coco_panoptic_path DIR`` both name the same folder::

    annotations/panoptic_{train,val}2017.json   images, annotations [{image_id, file_name, segments_info}], categories
    panoptic_{train,val}2017/<image id>.png     segment ids as colours (``util.panoptic_png``), 0 = void

The background becomes 1-3 horizontal bands of stuff (``STUFF_CATEGORIES``, isthing 0: sky 13, grass 17, water 20,
so ``num_classes`` is 21) separated by wavy boundaries: sky is a smooth light-blue gradient, grass green with
vertical streaks and grain, water dark blue with horizontal ripples. The shapes (things, isthing 1) are drawn on top
in colours that contrast with the stuff under them. A thing's segment is its visible pixels (later shapes cover
earlier ones), a stuff segment the visible pixels of its band; a shape left with no visible pixel is dropped from
both files. About half of the band boundaries carry a void strip (id 0) 1-2 pixels wide where no shape covers it;
every other pixel belongs to exactly one segment. ``segments_info`` lists the stuff, then the things in the order of
the image's instance annotations. Segment ids are distinct random non-zero 24-bit values per image, as in COCO.
Rarely (``CROWD_FRACTION`` of the shapes, 2%) a shape is marked ``iscrowd`` 1 in both files, as COCO's crowd regions
are. ``instances_*.json`` keeps the things only (whole shapes, as in detection mode), so box AP with pycocotools
works as before (the images and shapes differ from detection mode's with the same seed).

The same data in the YOLO and Pascal VOC layouts (``--layout yolo|voc``, read by ``--dataset_file yolo|voc
--data_path DIR``): ``write_yolo_copy`` and ``write_voc_copy`` copy the images of a COCO-layout folder and write its
boxes as YOLO label files (class index = position in ``categories``; ``data.yaml`` names as a list or a mapping) or
VOC XML files (1-based inclusive pixel corners; ``labels.txt`` optional; chosen objects marked difficult). Crowd
regions are left out of the YOLO copy and become difficult objects in the VOC copy.

Hard mode (``--difficulty hard``; the default ``easy`` is all of the above, unchanged) makes detection data closer
to COCO's difficulties, at the same counts when asked (``--num_train 2000 --num_val 200``)::

    python -m tools.data.synthetic --out data/shapes_hard --num_train 2000 --num_val 200 --difficulty hard --seed 0

- Image width and height drawn independently from [image_size, 1.5 x image_size] (``--image_size 128``: 128-192 px),
  so sizes and aspect ratios are mixed; the JSON lists each image's own width and height.
- Textured backgrounds: 1-3 of stripes (random angle and period, sharp or smooth), checkers (upright or turned),
  linear or radial gradients and soft random blobs, the later ones blended over the first everywhere or over a
  region with a soft straight edge; noise over the finished image.
- Seven shapes with COCO-like sparse ids (``HARD_CATEGORIES``: rectangle 3, ellipse 17, triangle 28, diamond 44,
  cross 62, star 77, ring 90, all COCO category ids, so ``num_classes`` is 91 as for COCO). Colours carry no class
  information (every shape's colour is drawn afresh); the star (five points) and the ring (an ellipse with a hole)
  differ from the others by outline and topology.
- Colours drawn at random (they contrast with the background or not), 30% of them deliberately close (RGB
  distance 30-60) to the mean colour under the shape; at least 30 from it, and 50 from the shapes it covers
  where 20 draws find one.
- Occlusion: 35% of shapes are placed over an earlier shape with a similar size, so some overlap heavily; every
  shape keeps at least ``MIN_VISIBLE`` (30%) of its pixels visible, or the later shape is placed elsewhere.
- 20% of shapes are placed across the image border (10-60% of their width or height outside).
- Sizes: 18% of shapes are drawn 4-9 px wide and high (tiny); the rest log-uniform from 10 px to 70% of the shorter
  image side. 1..max_objects (default ``HARD_MAX_OBJECTS``, 8) per image; 12% of images have none.
- 10% of images (with objects) hold a crowd region: 6-16 small shapes (3-7 px) of one category in similar colours,
  packed in a region of 20-45% of the image; one annotation with ``iscrowd`` 1 covers the group, its members have
  none of their own (as COCO's crowd regions).
- 10% of images are written as 8-bit greyscale JPEGs (one channel, as COCO's few greyscale images are; the datasets
  read them as RGB).

Annotations follow COCO's convention for what is seen (modal): ``segmentation`` is the compressed RLE (``counts`` a
string; cheap, and occluded or ring-shaped regions are not one polygon) of the object's visible pixels, clipped to
the image and less what later shapes cover; ``bbox`` is the tight bounds of those pixels (an occluded object's box
is that of its visible part, a shape cut by the border has its box clipped to the image) and ``area`` their count.
Crowd regions are RLE too. ``--panoptic`` is refused with ``--difficulty hard`` (no stuff categories). The YOLO and
VOC copies work unchanged (``--layout``): crowd regions are left out of YOLO and become difficult objects in VOC;
VOC's ``<truncated>`` stays 0 and ``<depth>`` 3 for all images.

``--hard_without PROPERTY ...`` (``hard_without`` of ``generate``; HARD_PROPERTIES) switches properties of the hard
mode off, one or several, to measure what each costs a detector (benchmarks/hard_data_ablation.py): ``textures``
(a plain background of one colour with a mild gradient), ``sizes`` (square ``image_size`` images), ``occlusion``
(no shape placed on an earlier one; random placement may still overlap), ``border`` (none placed across the
border), ``tiny`` (no 4-9 px shapes), ``crowd`` (no crowd regions), ``greyscale`` (all RGB), ``low_contrast`` (no
colours chosen close to what lies under them) and ``sparse_ids`` (category ids 1-7, ``num_classes`` 8); and where
the drawing itself differs from the easy mode's: ``extra_shapes`` (no star or ring: five shapes), ``many_objects``
(at most 4 objects per image, the easy default), ``small_sizes`` (non-tiny sizes uniform from 10% to 50% of the
shorter side, as the easy mode's, not log-uniform up to 70%) and ``free_colours`` (colours other than the
low-contrast ones chosen as the easy mode's: a luminance difference of 70 from what lies under them, 70 in RGB from
the shapes they cover). With none switched off the hard mode writes the same bytes as before the option existed.

The output is a deterministic function of the parameters; ``generate`` leaves an existing dataset made with the
same parameters alone. Detection mode writes byte for byte what it wrote before the panoptic and hard modes existed
(its parameters record no ``panoptic`` or ``difficulty`` key), so detection datasets made then are kept.
"""
import argparse
import json
import math
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Optional, Sequence
from xml.sax.saxutils import escape

import numpy as np
import yaml
from PIL import Image
from pycocotools import mask as coco_mask

from util.panoptic_png import encode_panoptic_png

GENERATOR_VERSION = 1
PARAMS_FILE = "synthetic_params.json"
CATEGORIES = [
    {"id": 1, "name": "rectangle", "supercategory": "shape"},
    {"id": 3, "name": "ellipse", "supercategory": "shape"},
    {"id": 5, "name": "triangle", "supercategory": "shape"},
    {"id": 8, "name": "diamond", "supercategory": "shape"},
    {"id": 11, "name": "cross", "supercategory": "shape"},
]
# Stuff for the panoptic mode: COCO-like non-contiguous ids above the shapes'.
STUFF_CATEGORIES = [
    {"id": 13, "name": "sky", "supercategory": "stuff"},
    {"id": 17, "name": "grass", "supercategory": "stuff"},
    {"id": 20, "name": "water", "supercategory": "stuff"},
]
PANOPTIC_CATEGORIES = [{**c, "isthing": 1} for c in CATEGORIES] + [{**c, "isthing": 0} for c in STUFF_CATEGORIES]
SPLITS = (("train", "train2017"), ("val", "val2017"))
EMPTY_IMAGE_FRACTION = 0.05
MIN_SIDE, MAX_SIDE = 0.10, 0.50  # object side as a fraction of the image side
MAX_OVERLAP = 0.30  # box intersection / smaller box area
MIN_CONTRAST = 70.0  # luminance difference between object and background, 0..255
JPEG_QUALITY = 92
MAX_BOUNDARY_AMPLITUDE = 0.05  # of the image side: how far a stuff boundary waves up and down
VOID_BORDER_FRACTION = 0.5  # stuff boundaries that carry a void strip
VOID_HALF_WIDTH = 0.75  # pixels either side of the boundary line
CROWD_FRACTION = 0.02  # shapes marked iscrowd in panoptic mode


def _luminance(rgb: Sequence[float]) -> float:
    return 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]


def _shape_polygon(name: str, x0: int, y0: int, w: int, h: int, rng: np.random.Generator) -> list[tuple]:
    """Vertices (x, y) in pixels of a shape filling the box with top-left (x0, y0) and size (w, h)."""
    x1, y1, cx, cy = x0 + w, y0 + h, x0 + w / 2, y0 + h / 2
    if name == "rectangle":
        return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
    if name == "ellipse":
        n = 32
        return [(cx + w / 2 * math.cos(2 * math.pi * k / n), cy + h / 2 * math.sin(2 * math.pi * k / n))
                for k in range(n)]
    if name == "triangle":
        apex = x0 + float(rng.uniform(0.0, 1.0)) * w
        return [(apex, y0), (x1, y1), (x0, y1)]
    if name == "diamond":
        return [(cx, y0), (x1, cy), (cx, y1), (x0, cy)]
    if name == "cross":
        tw, th = w * float(rng.uniform(0.3, 0.45)) / 2, h * float(rng.uniform(0.3, 0.45)) / 2
        return [(cx - tw, y0), (cx + tw, y0), (cx + tw, cy - th), (x1, cy - th), (x1, cy + th), (cx + tw, cy + th),
                (cx + tw, y1), (cx - tw, y1), (cx - tw, cy + th), (x0, cy + th), (x0, cy - th), (cx - tw, cy - th)]
    raise ValueError(f"unknown shape {name!r}")


def _background(size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A ``[size, size, 3]`` uint8 background (base colour + linear gradient + noise) and its base colour."""
    base = rng.uniform(0, 255, size=3)
    angle = rng.uniform(0, 2 * math.pi)
    amplitude = rng.uniform(0, 25)
    ramp = np.linspace(-1.0, 1.0, size, dtype=np.float32)
    gradient = amplitude * (math.cos(angle) * ramp[None, :] + math.sin(angle) * ramp[:, None])
    noise = rng.standard_normal((size, size, 3), dtype=np.float32) * rng.uniform(0, 6)
    pixels = base[None, None, :].astype(np.float32) + gradient[:, :, None] + noise
    return np.clip(pixels, 0, 255).astype(np.uint8), base


def _stuff_texture(name: str, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A ``[size, size, 3]`` float32 texture for a stuff category, and its base colour."""
    rows = np.arange(size, dtype=np.float32)[:, None, None]
    cols = np.arange(size, dtype=np.float32)[None, :, None]
    if name == "sky":  # light blue, brighter towards the bottom, almost no grain
        base = np.array([rng.uniform(90, 150), rng.uniform(160, 210), rng.uniform(220, 255)])
        texture = base + 30.0 * (rows / size - 0.5) + rng.standard_normal((size, size, 3), dtype=np.float32) * 2
    elif name == "grass":  # green, vertical streaks plus grain
        base = np.array([rng.uniform(40, 90), rng.uniform(120, 170), rng.uniform(30, 70)])
        streaks = rng.standard_normal((1, size, 1), dtype=np.float32) * 18
        texture = base + streaks + rng.standard_normal((size, size, 3), dtype=np.float32) * 10
    elif name == "water":  # dark blue-green, horizontal ripples
        base = np.array([rng.uniform(10, 50), rng.uniform(70, 120), rng.uniform(120, 170)])
        period, wobble, phase = rng.uniform(4, 8), rng.uniform(0.2, 0.5) * size, rng.uniform(0, 2 * math.pi)
        ripples = 15.0 * np.sin(2 * math.pi * rows / period + 1.5 * np.sin(2 * math.pi * cols / wobble + phase))
        texture = base + ripples + rng.standard_normal((size, size, 3), dtype=np.float32) * 3
    else:
        raise ValueError(f"unknown stuff {name!r}")
    return texture.astype(np.float32), base


def _stuff_background(size: int, rng: np.random.Generator
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict], list[np.ndarray]]:
    """1-3 horizontal bands of stuff with wavy boundaries.

    Returns the ``[size, size, 3]`` uint8 pixels, the ``[size, size]`` band index of each pixel (0 at the top),
    the ``[size, size]`` bool void strips along some boundaries, and per band its category and base colour.
    """
    num_bands = int(rng.integers(1, len(STUFF_CATEGORIES) + 1))
    stuff = [STUFF_CATEGORIES[int(i)] for i in rng.permutation(len(STUFF_CATEGORIES))[:num_bands]]
    rows = np.arange(size, dtype=np.float64)[:, None] + 0.5
    cols = np.arange(size, dtype=np.float64)[None, :] + 0.5
    band = np.zeros((size, size), dtype=np.int64)
    void = np.zeros((size, size), dtype=bool)
    for j in range(1, num_bands):
        # boundary j waves around j/num_bands of the height; neighbouring boundaries never cross
        level = size * (j + rng.uniform(-0.2, 0.2)) / num_bands
        amplitude = rng.uniform(0, MAX_BOUNDARY_AMPLITUDE) * size
        wavelength, phase = rng.uniform(0.3, 1.0) * size, rng.uniform(0, 2 * math.pi)
        boundary = level + amplitude * np.sin(2 * math.pi * cols / wavelength + phase)
        band += rows >= boundary
        if rng.random() < VOID_BORDER_FRACTION:
            void |= np.abs(rows - boundary) < VOID_HALF_WIDTH
    pixels = np.zeros((size, size, 3), dtype=np.float32)
    bases = []
    for index, category in enumerate(stuff):
        texture, base = _stuff_texture(category["name"], size, rng)
        pixels[band == index] = texture[band == index]
        bases.append(base)
    return np.clip(pixels, 0, 255).astype(np.uint8), band, void, stuff, bases


def _contrasting_colour(backgrounds: list[np.ndarray], neighbours: list[tuple], rng: np.random.Generator
                        ) -> tuple[int, int, int]:
    """A colour whose luminance differs from each background colour's by MIN_CONTRAST and that is at least
    MIN_CONTRAST away (RGB distance) from the colours of the shapes it touches."""
    bgs = [_luminance(b) for b in backgrounds]
    for _ in range(50):
        colour = rng.integers(0, 256, size=3)
        if all(abs(_luminance(colour) - bg) >= MIN_CONTRAST for bg in bgs) and all(
                np.linalg.norm(colour - np.asarray(n)) >= MIN_CONTRAST for n in neighbours):
            return tuple(int(c) for c in colour)
    return (0, 0, 0) if sum(bgs) / len(bgs) > 127 else (255, 255, 255)


def _touches(box: tuple, other: tuple) -> bool:
    return box[0] < other[2] and other[0] < box[2] and box[1] < other[3] and other[1] < box[3]


def _overlaps_too_much(box: tuple, others: list[tuple]) -> bool:
    x0, y0, x1, y1 = box
    for ox0, oy0, ox1, oy1 in others:
        inter = max(0, min(x1, ox1) - max(x0, ox0)) * max(0, min(y1, oy1) - max(y0, oy0))
        smaller = min((x1 - x0) * (y1 - y0), (ox1 - ox0) * (oy1 - oy0))
        if inter > MAX_OVERLAP * smaller:
            return True
    return False


def _tight_bbox(mask: np.ndarray) -> list[int]:
    """COCO ``[x, y, w, h]`` (pixels) of the tight bounds of a non-empty ``[H, W]`` bool mask."""
    cols, rows = np.flatnonzero(mask.any(0)), np.flatnonzero(mask.any(1))
    return [int(cols[0]), int(rows[0]), int(cols[-1] - cols[0]) + 1, int(rows[-1] - rows[0]) + 1]


def _random_segment_ids(count: int, rng: np.random.Generator) -> list[int]:
    """``count`` distinct random segment ids in [1, 256³), as COCO's random segment colours are."""
    ids: list[int] = []
    while len(ids) < count:
        candidate = int(rng.integers(1, 256 ** 3))
        if candidate not in ids:
            ids.append(candidate)
    return ids


def _make_image(size: int, max_objects: int, rng: np.random.Generator, panoptic: bool = False
                ) -> tuple[Image.Image, list[dict], Optional[tuple[np.ndarray, list[dict]]]]:
    """One image, its objects as ``{"category_id", "bbox" xywh px, "area" px², "segmentation"}`` dicts, and with
    ``panoptic`` its ``[size, size]`` int64 segment id map (0 = void) and COCO ``segments_info`` (else None).

    Each shape is rasterised from its COCO polygon by pycocotools itself, so the drawn pixels, the segmentation,
    the box (tight bounds of those pixels) and the area (their count) all agree exactly. Panoptic objects carry an
    ``iscrowd`` key; their segments' boxes and areas are those of the visible pixels.
    """
    if panoptic:
        pixels, band, void, stuff, bases = _stuff_background(size, rng)
        owner = np.full((size, size), -1, dtype=np.int64)  # index in `objects` of the shape on top, -1 for stuff
    else:
        pixels, base = _background(size, rng)
    if max_objects <= 0 or rng.random() < EMPTY_IMAGE_FRACTION:
        num_objects = 0
    else:
        num_objects = int(rng.integers(1, max_objects + 1))
    lo, hi = max(2, round(MIN_SIDE * size)), max(2, round(MAX_SIDE * size))
    placed: list[tuple] = []  # boxes (x0, y0, x1, y1) of the shapes drawn so far
    colours: list[tuple] = []
    objects = []
    for _ in range(num_objects):
        category = CATEGORIES[int(rng.integers(len(CATEGORIES)))]
        w = int(rng.integers(lo, hi + 1))
        h = int(np.clip(round(w * rng.uniform(0.6, 1.6)), lo, hi))
        for _attempt in range(20):
            x0, y0 = int(rng.integers(0, size - w + 1)), int(rng.integers(0, size - h + 1))
            if not _overlaps_too_much((x0, y0, x0 + w, y0 + h), placed):
                break
        else:
            continue  # no room: leave this object out
        polygon = [round(min(max(c, 0.0), size), 2) for xy in _shape_polygon(category["name"], x0, y0, w, h, rng)
                   for c in xy]
        with warnings.catch_warnings():  # pycocotools' decode warns about numpy 2's copy keyword on every call
            warnings.filterwarnings("ignore", category=DeprecationWarning, module="pycocotools")
            mask = coco_mask.decode(coco_mask.frPyObjects([polygon], size, size))[:, :, 0].astype(bool)
        cols, rows = np.flatnonzero(mask.any(0)), np.flatnonzero(mask.any(1))
        if cols.size == 0:
            continue
        box = (x0, y0, x0 + w, y0 + h)
        backgrounds = [bases[int(i)] for i in np.unique(band[y0:y0 + h, x0:x0 + w])] if panoptic else [base]
        colour = _contrasting_colour(backgrounds, [c for b, c in zip(placed, colours) if _touches(box, b)], rng)
        pixels[mask] = colour
        placed.append(box)
        colours.append(colour)
        left, top, right, bottom = int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1
        objects.append({
            "category_id": category["id"],
            "bbox": [left, top, right - left, bottom - top],
            "area": int(mask.sum()),
            "segmentation": [polygon],
        })
        if panoptic:
            objects[-1]["iscrowd"] = int(rng.random() < CROWD_FRACTION)
            owner[mask] = len(objects) - 1
    image = Image.fromarray(pixels, "RGB")
    if not panoptic:
        return image, objects, None

    segments = []  # (category id, iscrowd, visible pixels)
    for index, category in enumerate(stuff):
        segments.append((category["id"], 0, (band == index) & (owner < 0) & ~void))
    visible_objects = []
    for index, obj in enumerate(objects):
        visible = owner == index
        if visible.any():  # a shape hidden under later ones is left out of both files
            segments.append((obj["category_id"], obj["iscrowd"], visible))
            visible_objects.append(obj)
    segments = [s for s in segments if s[2].any()]
    id_map = np.zeros((size, size), dtype=np.int64)
    segments_info = []
    for segment_id, (category_id, iscrowd, visible) in zip(_random_segment_ids(len(segments), rng), segments):
        id_map[visible] = segment_id
        segments_info.append({"id": segment_id, "category_id": category_id, "iscrowd": iscrowd,
                              "bbox": _tight_bbox(visible), "area": int(visible.sum())})
    return image, visible_objects, (id_map, segments_info)


# --- the hard mode (``difficulty="hard"``) --------------------------------------------------------------------------
# Seven shapes with COCO-like sparse ids up to 90 (num_classes 91, as COCO's): today's five and two more.
HARD_CATEGORIES = [
    {"id": 3, "name": "rectangle", "supercategory": "shape"},
    {"id": 17, "name": "ellipse", "supercategory": "shape"},
    {"id": 28, "name": "triangle", "supercategory": "shape"},
    {"id": 44, "name": "diamond", "supercategory": "shape"},
    {"id": 62, "name": "cross", "supercategory": "shape"},
    {"id": 77, "name": "star", "supercategory": "shape"},
    {"id": 90, "name": "ring", "supercategory": "shape"},
]
DIFFICULTIES = ("easy", "hard")
HARD_SIZE_FACTOR = 1.5  # image width and height drawn independently from [image_size, 1.5 * image_size]
HARD_MAX_OBJECTS = 8  # default --max_objects of the hard mode (easy: 4)
HARD_EMPTY_IMAGE_FRACTION = 0.12
GRAYSCALE_FRACTION = 0.10  # images written as single-channel (8-bit greyscale) JPEGs
CROWD_IMAGE_FRACTION = 0.10  # images (with objects) holding one crowd region
TINY_FRACTION = 0.18  # shapes drawn 4-9 px wide and high
TINY_SIDES = (4, 9)
NORMAL_MIN_SIDE, NORMAL_MAX_SIDE = 10, 0.70  # other shapes: pixels .. fraction of the shorter image side
OCCLUDING_FRACTION = 0.35  # shapes placed on top of an earlier shape, of a size like its
BORDER_FRACTION = 0.20  # shapes placed across the image border
MIN_VISIBLE = 0.30  # a shape keeps this fraction of its pixels visible (in the image, not covered)
LOW_CONTRAST_FRACTION = 0.30  # shapes coloured close to what lies under them
LOW_CONTRAST_DISTANCE = (30.0, 60.0)  # their RGB distance from the mean colour under them
MIN_DISTANCE = 30.0  # RGB distance of any shape's colour from the mean colour under it
NEIGHBOUR_DISTANCE = 50.0  # ... and from the colours of the shapes it covers
TEXTURES = ("stripes", "checkers", "gradient", "blobs")
# Each hard-mode property that ``--hard_without`` can switch off, one at a time or together, to measure what it
# costs a detector: the default hard set has all of them. The last four are where the hard mode's drawing differs from
# the easy mode's even with the first nine off: the star and the ring, up to 8 objects instead of 4, log-uniform sizes
# up to 70% of the shorter side instead of uniform 10-50%, colours free in RGB instead of a luminance contrast of 70.
HARD_SCENE_PROPERTIES = ("textures", "sizes", "occlusion", "border", "tiny", "crowd", "greyscale", "low_contrast",
                         "sparse_ids")
HARD_DRAWING_PROPERTIES = ("extra_shapes", "many_objects", "small_sizes", "free_colours")
HARD_PROPERTIES = HARD_SCENE_PROPERTIES + HARD_DRAWING_PROPERTIES
EASY_SHAPES = ("rectangle", "ellipse", "triangle", "diamond", "cross")  # the hard shapes without ``extra_shapes``
EASY_MAX_OBJECTS = 4  # the easy mode's default --max_objects, the cap without ``many_objects``


def _hard_fractions(without: frozenset) -> dict[str, float]:
    """The hard mode's random fractions with the properties in ``without`` switched off (fraction 0)."""
    fractions = {"occlusion": OCCLUDING_FRACTION, "border": BORDER_FRACTION, "tiny": TINY_FRACTION,
                 "crowd": CROWD_IMAGE_FRACTION, "greyscale": GRAYSCALE_FRACTION, "low_contrast": LOW_CONTRAST_FRACTION}
    return {name: 0.0 if name in without else value for name, value in fractions.items()}


def hard_categories(without: frozenset = frozenset()) -> list[dict]:
    """The hard mode's categories: the seven shapes (the five of EASY_SHAPES with ``extra_shapes`` in ``without``),
    with COCO-like sparse ids, or ids 1, 2, ... with ``sparse_ids`` in ``without``."""
    categories = [c for c in HARD_CATEGORIES if "extra_shapes" not in without or c["name"] in EASY_SHAPES]
    if "sparse_ids" in without:
        return [{**category, "id": index + 1} for index, category in enumerate(categories)]
    return categories


def hard_size_range(image_size: int) -> tuple[int, int]:
    """The smallest and largest image side (pixels) of the hard mode with ``image_size``."""
    return image_size, round(HARD_SIZE_FACTOR * image_size)


def _texture(kind: str, xs: np.ndarray, ys: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A ``[H, W, 3]`` float32 texture on the pixel grid ``xs``, ``ys`` (each ``[H, W]``)."""
    first, second = rng.uniform(0, 255, size=3), rng.uniform(0, 255, size=3)
    angle = rng.uniform(0, math.pi)
    along = xs * math.cos(angle) + ys * math.sin(angle)
    if kind == "stripes":  # of random angle and period, sharp or smooth
        wave = np.sin(2 * math.pi * along / rng.uniform(3, 32) + rng.uniform(0, 2 * math.pi))
        level = (wave > 0).astype(np.float32) if rng.random() < 0.5 else 0.5 + 0.5 * wave
    elif kind == "checkers":  # square cells, upright or turned
        turn = angle / 2 if rng.random() < 0.5 else 0.0
        u, v = xs * math.cos(turn) + ys * math.sin(turn), ys * math.cos(turn) - xs * math.sin(turn)
        cell = rng.uniform(3, 24)
        level = ((np.floor(u / cell) + np.floor(v / cell)) % 2).astype(np.float32)
    elif kind == "gradient":  # linear or radial
        if rng.random() < 0.5:
            level = (along - along.min()) / max(float(np.ptp(along)), 1.0)
        else:
            distance = np.hypot(xs - rng.uniform(0, xs.shape[1]), ys - rng.uniform(0, xs.shape[0]))
            level = distance / max(float(distance.max()), 1.0)
    elif kind == "blobs":  # soft discs of random colours on a plain ground
        texture = np.broadcast_to(first.astype(np.float32), xs.shape + (3,)).copy()
        for _ in range(int(rng.integers(3, 11))):
            centre, radius = rng.uniform(0, 1, size=2) * xs.shape[::-1], rng.uniform(3, 0.3 * max(xs.shape))
            weight = np.exp(-((xs - centre[0]) ** 2 + (ys - centre[1]) ** 2) / (2 * radius ** 2))[:, :, None]
            texture += weight * (rng.uniform(0, 255, size=3).astype(np.float32) - texture)
        return texture
    else:
        raise ValueError(f"unknown texture {kind!r}")
    return (first + (second - first) * level[:, :, None]).astype(np.float32)


def _textured_background(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A ``[height, width, 3]`` float32 background: 1-3 textures of different kinds, the later ones blended over
    the first everywhere or over a region with a soft straight edge."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    kinds = [TEXTURES[int(i)] for i in rng.permutation(len(TEXTURES))[:int(rng.choice([1, 2, 3], p=[0.3, 0.45, 0.25]))]]
    pixels = _texture(kinds[0], xs, ys, rng)
    for kind in kinds[1:]:
        layer = _texture(kind, xs, ys, rng)
        if rng.random() < 0.5:
            weight = np.float32(rng.uniform(0.25, 0.6))
        else:
            angle = rng.uniform(0, 2 * math.pi)  # a soft straight edge through a point of the middle of the image
            px, py = rng.uniform(0.2, 0.8) * width, rng.uniform(0.2, 0.8) * height
            signed = (xs - px) * math.cos(angle) + (ys - py) * math.sin(angle)
            weight = (0.5 + 0.5 * np.tanh(signed / rng.uniform(1, 16)))[:, :, None]
        pixels += weight * (layer - pixels)
    return pixels


def _plain_background(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A ``[height, width, 3]`` float32 background of one random colour with a mild linear gradient (the easy
    mode's kind of background), for the hard mode without ``textures``."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, 2 * math.pi)
    along = (xs / max(width - 1, 1) - 0.5) * math.cos(angle) + (ys / max(height - 1, 1) - 0.5) * math.sin(angle)
    return (rng.uniform(0, 255, size=3) + 2 * rng.uniform(0, 25) * along[:, :, None]).astype(np.float32)


def _inside_polygon(vertices: list[tuple], xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Bool mask of the points (``xs``, ``ys``, broadcast) inside the polygon (even-odd rule)."""
    inside = np.zeros(np.broadcast(xs, ys).shape, dtype=bool)
    for (x1, y1), (x2, y2) in zip(vertices, vertices[-1:] + vertices[:-1]):
        if y1 == y2:
            continue
        crosses = (y1 > ys) != (y2 > ys)
        inside ^= crosses & (xs < x1 + (ys - y1) * (x2 - x1) / (y2 - y1))
    return inside


def _star_polygon(w: int, h: int, rng: np.random.Generator) -> list[tuple]:
    """A five-pointed star, point up, stretched to fill the box (0, 0)-(w, h)."""
    inner = rng.uniform(0.38, 0.55)
    points = [((1.0 if k % 2 == 0 else inner) * math.cos(-math.pi / 2 + k * math.pi / 5),
               (1.0 if k % 2 == 0 else inner) * math.sin(-math.pi / 2 + k * math.pi / 5)) for k in range(10)]
    x_lo, x_hi = min(p[0] for p in points), max(p[0] for p in points)
    y_lo, y_hi = min(p[1] for p in points), max(p[1] for p in points)
    return [((x - x_lo) / (x_hi - x_lo) * w, (y - y_lo) / (y_hi - y_lo) * h) for x, y in points]


def _hard_shape_mask(name: str, w: int, h: int, rng: np.random.Generator) -> np.ndarray:
    """``[h, w]`` bool: the pixels (by their centres) of shape ``name`` filling a w x h box."""
    xs, ys = np.arange(w, dtype=np.float64)[None, :] + 0.5, np.arange(h, dtype=np.float64)[:, None] + 0.5
    if name in ("ellipse", "ring"):
        radius = ((xs - w / 2) / (w / 2)) ** 2 + ((ys - h / 2) / (h / 2)) ** 2
        mask = radius <= 1.0
        if name == "ring":  # an ellipse with an elliptic hole of 45-65% of its radii
            mask &= radius > rng.uniform(0.45, 0.65) ** 2
        return mask
    polygon = _star_polygon(w, h, rng) if name == "star" else _shape_polygon(name, 0, 0, w, h, rng)
    return _inside_polygon(polygon, xs, ys)


def _hard_colour(under: np.ndarray, avoid: list[np.ndarray], rng: np.random.Generator,
                 low_contrast_fraction: float = LOW_CONTRAST_FRACTION, free: bool = True) -> np.ndarray:
    """An RGB colour (float, 0..255) for a shape drawn over pixels of mean colour ``under``: random, or with
    ``low_contrast_fraction`` close to ``under``; at least MIN_DISTANCE from ``under`` and NEIGHBOUR_DISTANCE from
    the colours ``avoid`` of the shapes it covers where 20 draws find one. ``free`` False: the random ones are the
    easy mode's instead (a luminance MIN_CONTRAST from ``under``, MIN_CONTRAST in RGB from ``avoid``)."""
    low_contrast = rng.random() < low_contrast_fraction
    if not low_contrast and not free:
        return np.asarray(_contrasting_colour([under], [tuple(c) for c in avoid], rng), dtype=np.float64)
    for _ in range(20):
        if low_contrast:
            direction = rng.standard_normal(3)
            colour = under + direction / max(np.linalg.norm(direction), 1e-6) * rng.uniform(*LOW_CONTRAST_DISTANCE)
        else:
            colour = rng.uniform(0, 255, size=3)
        colour = np.clip(np.round(colour), 0, 255)
        if np.linalg.norm(colour - under) >= MIN_DISTANCE and all(
                np.linalg.norm(colour - other) >= NEIGHBOUR_DISTANCE for other in avoid):
            break
    return colour


class _HardCanvas:
    """One hard image being drawn: ``pixels`` ``[H, W, 3]`` float32, ``owner`` ``[H, W]`` the index of the object
    on top of each pixel (-1: background), and per object its whole shape's pixel count (inside and outside the
    image), its visible pixel count, category, colour, crowd flag and drawn box (x0, y0, w, h; may cross the
    border)."""

    def __init__(self, pixels: np.ndarray):
        self.pixels = pixels
        self.height, self.width = pixels.shape[:2]
        self.owner = np.full((self.height, self.width), -1, dtype=np.int16)
        self.full: list[int] = []
        self.visible: list[int] = []
        self.objects: list[dict] = []

    def clip(self, x0: int, y0: int, mask: np.ndarray) -> tuple[tuple[slice, slice], np.ndarray]:
        """The image region that ``mask`` (``[h, w]``) covers when put at (x0, y0), and the part of it inside."""
        h, w = mask.shape
        top, left, bottom, right = max(y0, 0), max(x0, 0), min(y0 + h, self.height), min(x0 + w, self.width)
        if top >= bottom or left >= right:
            return (slice(0, 0), slice(0, 0)), mask[:0, :0]
        return (slice(top, bottom), slice(left, right)), mask[top - y0:bottom - y0, left - x0:right - x0]

    def try_place(self, x0: int, y0: int, mask: np.ndarray) -> Optional[tuple]:
        """The clipped region of ``mask`` put at (x0, y0) and the indices of the objects it covers, or None when it
        would leave less than MIN_VISIBLE of itself in the image or of an earlier object visible."""
        region, clipped = self.clip(x0, y0, mask)
        inside = int(clipped.sum())
        if inside == 0 or inside < MIN_VISIBLE * int(mask.sum()):
            return None
        under = self.owner[region][clipped]
        covered = np.bincount(under[under >= 0], minlength=len(self.objects))
        for index, count in enumerate(covered):
            if count and self.visible[index] - count < MIN_VISIBLE * self.full[index]:
                return None
        return region, clipped, [int(i) for i in np.flatnonzero(covered)]

    def mean_under(self, region: tuple, clipped: np.ndarray) -> np.ndarray:
        return self.pixels[region][clipped].mean(0)

    def draw(self, region: tuple, clipped: np.ndarray, colour: np.ndarray, index: int) -> None:
        """Paint ``clipped`` (at ``region``) in ``colour`` as part of object ``index`` (an existing one or the next)."""
        under = self.owner[region][clipped]
        for other, count in enumerate(np.bincount(under[under >= 0], minlength=len(self.objects))):
            self.visible[other] -= int(count)
        self.pixels[region][clipped] = colour
        self.owner[region][clipped] = index
        self.visible[index] += int(clipped.sum())

    def add(self, category: dict, colour: np.ndarray, full: int, box: tuple, iscrowd: int) -> int:
        self.objects.append({"category": category, "colour": colour, "iscrowd": iscrowd, "box": box})
        self.full.append(full)
        self.visible.append(0)
        return len(self.objects) - 1


def _shape_box(canvas: _HardCanvas, rng: np.random.Generator, fractions: dict[str, float], easy_sizes: bool = False
               ) -> tuple[int, int, int, int]:
    """(x0, y0, w, h) pixels of a new shape. On top of an earlier shape (OCCLUDING_FRACTION, when there is one):
    its size 0.5-1.3 times that shape's, its centre within 40% of that shape's size of the other's. Else tiny
    (TINY_FRACTION, sides TINY_SIDES) or log-uniform in [NORMAL_MIN_SIDE, NORMAL_MAX_SIDE of the shorter image side]
    with aspect ratio 0.6-1.6, across the border (BORDER_FRACTION: 10-60% of its width or height beyond one edge)
    or anywhere inside the image. ``fractions``: these fractions (``_hard_fractions``). ``easy_sizes``: the
    non-tiny sizes uniform over MIN_SIDE-MAX_SIDE of the shorter side, as the easy mode's."""
    singles = [obj["box"] for obj in canvas.objects if not obj["iscrowd"]]
    mode = rng.random()
    if singles and mode < fractions["occlusion"]:
        bx, by, bw, bh = singles[int(rng.integers(len(singles)))]
        w, h = (max(TINY_SIDES[0], round(side * rng.uniform(0.5, 1.3))) for side in (bw, bh))
        cx, cy = bx + bw / 2 + rng.uniform(-0.4, 0.4) * bw, by + bh / 2 + rng.uniform(-0.4, 0.4) * bh
        return int(round(cx - w / 2)), int(round(cy - h / 2)), w, h
    if rng.random() < fractions["tiny"]:
        lo, hi = TINY_SIDES
        w = int(rng.integers(lo, hi + 1))
    elif easy_sizes:
        shorter = min(canvas.height, canvas.width)
        lo, hi = max(NORMAL_MIN_SIDE, round(MIN_SIDE * shorter)), max(NORMAL_MIN_SIDE + 1, round(MAX_SIDE * shorter))
        w = int(rng.integers(lo, hi + 1))
    else:
        lo, hi = NORMAL_MIN_SIDE, max(NORMAL_MIN_SIDE + 1, round(NORMAL_MAX_SIDE * min(canvas.height, canvas.width)))
        w = int(round(math.exp(rng.uniform(math.log(lo), math.log(hi)))))
    h = int(np.clip(round(w * rng.uniform(0.6, 1.6)), lo, hi))
    x0, y0 = int(rng.integers(0, max(1, canvas.width - w + 1))), int(rng.integers(0, max(1, canvas.height - h + 1)))
    if fractions["border"] > 0 and mode > 1 - fractions["border"]:
        out, side = rng.uniform(0.1, 0.6), int(rng.integers(4))  # the share beyond the border, which border
        if side == 0:
            x0 = -round(out * w)
        elif side == 1:
            x0 = canvas.width - w + round(out * w)
        elif side == 2:
            y0 = -round(out * h)
        else:
            y0 = canvas.height - h + round(out * h)
    return x0, y0, w, h


def _draw_crowd(canvas: _HardCanvas, rng: np.random.Generator, categories: list[dict],
                low_contrast_fraction: float, free_colours: bool = True) -> None:
    """A crowd region: 6-16 small shapes (3-7 px) of one category in similar colours, packed into a region of
    20-45% of the image's width and height; one ``iscrowd`` object covering all of them."""
    category = categories[int(rng.integers(len(categories)))]
    rw, rh = round(rng.uniform(0.2, 0.45) * canvas.width), round(rng.uniform(0.2, 0.45) * canvas.height)
    rx, ry = int(rng.integers(0, canvas.width - rw + 1)), int(rng.integers(0, canvas.height - rh + 1))
    region = (slice(ry, ry + rh), slice(rx, rx + rw))
    base = _hard_colour(canvas.pixels[region].reshape(-1, 3).mean(0), [], rng, low_contrast_fraction, free_colours)
    index = canvas.add(category, base, 0, (rx, ry, rw, rh), iscrowd=1)
    for _ in range(int(rng.integers(6, 17))):
        w, h = int(rng.integers(3, 8)), int(rng.integers(3, 8))
        mask = _hard_shape_mask(category["name"], w, h, rng)
        for _attempt in range(3):  # three tries for a place that touches no other member
            x0, y0 = rx + int(rng.integers(0, max(1, rw - w + 1))), ry + int(rng.integers(0, max(1, rh - h + 1)))
            if not (canvas.owner[max(0, y0 - 1):y0 + h + 1, max(0, x0 - 1):x0 + w + 1] == index).any():
                break
        member_region, clipped = canvas.clip(x0, y0, mask)
        colour = np.clip(np.round(base + rng.normal(0, 12, size=3)), 0, 255)
        canvas.draw(member_region, clipped, colour, index)
    canvas.full[index] = canvas.visible[index]


def _rle(mask: np.ndarray) -> dict:
    """COCO compressed RLE (``counts`` as a string) of a ``[H, W]`` bool mask."""
    rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _make_hard_image(image_size: int, max_objects: int, rng: np.random.Generator, without: frozenset = frozenset()
                     ) -> tuple[Image.Image, list[dict], list[tuple[int, int, int]]]:
    """One image of the hard mode (see the module docstring), its objects as ``{"category_id", "bbox" xywh px,
    "area" px², "segmentation" (RLE), "iscrowd"}`` dicts, and each object's colour (RGB; of a crowd region the
    colour its members vary around), in drawing order. ``without``: properties of HARD_PROPERTIES switched off."""
    fractions, categories = _hard_fractions(without), hard_categories(without)
    lo, hi = hard_size_range(image_size)
    width, height = int(rng.integers(lo, hi + 1)), int(rng.integers(lo, hi + 1))
    if "sizes" in without:
        width = height = image_size
    background = _plain_background if "textures" in without else _textured_background
    canvas = _HardCanvas(background(height, width, rng))
    if "many_objects" in without:
        max_objects = min(max_objects, EASY_MAX_OBJECTS)
    free_colours = "free_colours" not in without
    if max_objects > 0 and rng.random() >= HARD_EMPTY_IMAGE_FRACTION:
        num_objects = int(rng.integers(1, max_objects + 1))
        if rng.random() < fractions["crowd"]:
            _draw_crowd(canvas, rng, categories, fractions["low_contrast"], free_colours)
            num_objects -= 1
        for _ in range(num_objects):
            category = categories[int(rng.integers(len(categories)))]
            for _attempt in range(20):
                x0, y0, w, h = _shape_box(canvas, rng, fractions, "small_sizes" in without)
                mask = _hard_shape_mask(category["name"], w, h, rng)
                placed = canvas.try_place(x0, y0, mask)
                if placed is not None:
                    break
            else:
                continue  # no room: leave this shape out
            region, clipped, covered = placed
            colour = _hard_colour(canvas.mean_under(region, clipped),
                                  [canvas.objects[i]["colour"] for i in covered], rng, fractions["low_contrast"],
                                  free_colours)
            index = canvas.add(category, colour, int(mask.sum()), (x0, y0, w, h), iscrowd=0)
            canvas.draw(region, clipped, colour, index)
    pixels = canvas.pixels + rng.standard_normal(canvas.pixels.shape, dtype=np.float32) * rng.uniform(0, 6)
    image = Image.fromarray(np.clip(np.round(pixels), 0, 255).astype(np.uint8), "RGB")
    if rng.random() < fractions["greyscale"]:
        image = image.convert("L")
    objects, colours = [], []
    for index, obj in enumerate(canvas.objects):
        visible = canvas.owner == index
        objects.append({"category_id": obj["category"]["id"], "bbox": _tight_bbox(visible),
                        "area": int(visible.sum()), "segmentation": _rle(visible), "iscrowd": obj["iscrowd"]})
        colours.append(tuple(int(c) for c in obj["colour"]))
    return image, objects, colours


def _write_split(out_dir: Path, folder: str, num_images: int, first_image_id: int, image_size: int,
                 max_objects: int, rng: np.random.Generator, panoptic: bool = False, difficulty: str = "easy",
                 without: frozenset = frozenset()) -> tuple[dict, Optional[dict]]:
    """Write one split's images (and with ``panoptic`` its PNGs); returns its instances and panoptic JSON dicts."""
    image_dir = out_dir / folder
    image_dir.mkdir(parents=True, exist_ok=True)
    png_dir = out_dir / f"panoptic_{folder}"
    if panoptic:
        png_dir.mkdir(exist_ok=True)
    images, annotations, panoptic_annotations = [], [], []
    for index in range(num_images):
        image_id = first_image_id + index
        file_name = f"{image_id:012d}.jpg"
        if difficulty == "hard":
            image, objects, _colours = _make_hard_image(image_size, max_objects, rng, without)
            segments = None
        else:
            image, objects, segments = _make_image(image_size, max_objects, rng, panoptic)
        image.save(image_dir / file_name, quality=JPEG_QUALITY)
        images.append({"id": image_id, "file_name": file_name, "height": image.height, "width": image.width})
        for obj in objects:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "iscrowd": 0, **obj})
        if panoptic:
            id_map, segments_info = segments
            png_name = f"{image_id:012d}.png"
            (png_dir / png_name).write_bytes(encode_panoptic_png(id_map))
            panoptic_annotations.append({"image_id": image_id, "file_name": png_name, "segments_info": segments_info})
    info = {"description": "synthetic shapes (tools/data/synthetic.py)", "version": str(GENERATOR_VERSION)}
    categories = hard_categories(without) if difficulty == "hard" else CATEGORIES
    coco = {"info": info, "licenses": [], "images": images, "annotations": annotations, "categories": categories}
    if not panoptic:
        return coco, None
    return coco, {"info": info, "licenses": [], "images": images, "annotations": panoptic_annotations,
                  "categories": PANOPTIC_CATEGORIES}


def generate(out_dir: str | Path, num_train: int = 1000, num_val: int = 200, image_size: int = 128, seed: int = 0,
             max_objects: Optional[int] = None, quiet: bool = False, panoptic: bool = False,
             difficulty: str = "easy", hard_without: Sequence[str] = ()) -> Path:
    """Write the dataset under ``out_dir`` (skipped if it is already there with the same parameters); returns it.

    Image ids are 1..num_train for train and continue from num_train + 1 for val; annotation ids start at 1 in
    each file. ``max_objects``: the most shapes per image (None: 4, or HARD_MAX_OBJECTS with ``difficulty``
    "hard"). ``panoptic`` adds stuff backgrounds and the COCO panoptic files; ``difficulty`` "hard" makes the harder
    images (image sides from ``image_size`` to 1.5 x ``image_size``; see the module docstring; not with
    ``panoptic``); ``hard_without`` switches off some of its properties (HARD_PROPERTIES), to measure what each
    costs. Refuses
    to overwrite ``train2017/``, ``val2017/``, ``annotations/`` or ``panoptic_{train,val}2017/`` that this
    generator did not write (no ``synthetic_params.json`` beside them).
    """
    if image_size < 16:
        raise ValueError(f"image_size must be >= 16 pixels, got {image_size}")
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"difficulty must be one of {list(DIFFICULTIES)}, got {difficulty!r}")
    if difficulty == "hard" and panoptic:
        raise ValueError("the hard mode writes detection data only (no panoptic files)")
    unknown = sorted(set(hard_without) - set(HARD_PROPERTIES))
    if unknown:
        raise ValueError(f"hard_without: unknown properties {unknown}; choose from {list(HARD_PROPERTIES)}")
    if hard_without and difficulty != "hard":
        raise ValueError("hard_without applies to difficulty 'hard' only")
    without = frozenset(hard_without)
    if max_objects is None:
        max_objects = HARD_MAX_OBJECTS if difficulty == "hard" else EASY_MAX_OBJECTS
    if min(num_train, num_val, max_objects) < 0:
        raise ValueError("num_train, num_val and max_objects must be >= 0")
    out_dir = Path(out_dir)
    params = {"generator_version": GENERATOR_VERSION, "num_train": num_train, "num_val": num_val,
              "image_size": image_size, "seed": seed, "max_objects": max_objects}
    if panoptic:  # recorded only when set, so detection datasets written before the panoptic mode are still kept
        params["panoptic"] = True
    if difficulty != "easy":  # likewise
        params["difficulty"] = difficulty
    if without:  # likewise
        params["hard_without"] = sorted(without)
    params_path = out_dir / PARAMS_FILE
    owned = ([out_dir / folder for _, folder in SPLITS] + [out_dir / "annotations"]
             + [out_dir / f"panoptic_{folder}" for _, folder in SPLITS])
    if params_path.is_file():
        try:
            recorded = json.loads(params_path.read_text())
        except json.JSONDecodeError:
            recorded = {}  # a damaged record: regenerate
        if recorded.get("complete") and recorded.get("params") == params:
            if not quiet:
                print(f"synthetic COCO: {out_dir} already holds this dataset ({params}), kept")
            return out_dir
        for path in owned:
            if path.exists():
                shutil.rmtree(path)
    elif any(p.exists() for p in owned):
        raise FileExistsError(f"{out_dir} already has train2017/, val2017/, annotations/ or panoptic_*2017/ not "
                              f"written by tools.data.synthetic (no {PARAMS_FILE}); refusing to overwrite, choose "
                              f"another --out")

    start = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    params_path.write_text(json.dumps({"params": params, "complete": False}))
    (out_dir / "annotations").mkdir(exist_ok=True)
    counts = {}
    first_image_id = 1
    for split_index, (split, folder) in enumerate(SPLITS):
        num_images = num_train if split == "train" else num_val
        rng = np.random.default_rng([seed, split_index])
        coco, panoptic_coco = _write_split(out_dir, folder, num_images, first_image_id, image_size, max_objects, rng,
                                           panoptic, difficulty, without)
        (out_dir / "annotations" / f"instances_{folder}.json").write_text(json.dumps(coco))
        if panoptic:
            (out_dir / "annotations" / f"panoptic_{folder}.json").write_text(json.dumps(panoptic_coco))
        first_image_id += num_images
        with_objects = {a["image_id"] for a in coco["annotations"]}
        counts[split] = (num_images, len(coco["annotations"]), num_images - len(with_objects))
    params_path.write_text(json.dumps({"params": params, "complete": True}, indent=1))
    if not quiet:
        categories = (PANOPTIC_CATEGORIES if panoptic else hard_categories(without) if difficulty == "hard"
                      else CATEGORIES)
        ids = [c["id"] for c in categories]
        parts = ", ".join(f"{s} {n} images / {a} objects / {e} empty" for s, (n, a, e) in counts.items())
        kind = f"panoptic, {len(CATEGORIES)} thing + {len(STUFF_CATEGORIES)} stuff" if panoptic else f"{len(ids)}"
        sizes = "{}-{}px (hard)".format(*hard_size_range(image_size)) if difficulty == "hard" else f"{image_size}px"
        if "sizes" in without:
            sizes = f"{image_size}px (hard)"
        if without:
            sizes += f" without {', '.join(sorted(without))}"
        print(f"synthetic COCO: {parts}; {sizes}, {kind} categories (ids {ids}, "
              f"num_classes {max(ids) + 1}) -> {out_dir} in {time.perf_counter() - start:.1f}s")
    return out_dir


def _coco_split(coco_dir: Path, folder: str) -> dict:
    return json.loads((coco_dir / "annotations" / f"instances_{folder}.json").read_text())


def _refuse_existing(out_dir: Path, names: Sequence[str]) -> None:
    existing = [name for name in names if (out_dir / name).exists()]
    if existing:
        raise FileExistsError(f"{out_dir} already has {', '.join(existing)}; refusing to overwrite, choose another "
                              f"output folder")


def write_yolo_copy(coco_dir: str | Path, out_dir: str | Path, names_as_mapping: bool = False) -> Path:
    """The COCO-layout dataset ``coco_dir`` (boxes only) in the Ultralytics YOLO layout under ``out_dir``:
    ``images/{train,val}/`` (copies), ``labels/{train,val}/<image stem>.txt`` (``class cx cy w h`` normalised, for
    images with objects; crowd regions left out) and ``data.yaml`` (``names`` in the order of ``categories``, as a
    list or with ``names_as_mapping`` as index -> name). Returns ``out_dir``."""
    coco_dir, out_dir = Path(coco_dir), Path(out_dir)
    _refuse_existing(out_dir, ("images", "labels", "data.yaml"))
    names = None
    for split, folder in SPLITS:
        data = _coco_split(coco_dir, folder)
        names = [c["name"] for c in data["categories"]]
        class_of = {c["id"]: index for index, c in enumerate(data["categories"])}
        (out_dir / "images" / split).mkdir(parents=True)
        (out_dir / "labels" / split).mkdir(parents=True)
        lines: dict[int, list[str]] = {}
        image_of = {img["id"]: img for img in data["images"]}
        for ann in data["annotations"]:
            if ann.get("iscrowd", 0):
                continue
            image = image_of[ann["image_id"]]
            x, y, w, h = ann["bbox"]
            box = ((x + w / 2) / image["width"], (y + h / 2) / image["height"], w / image["width"],
                   h / image["height"])
            lines.setdefault(ann["image_id"], []).append(f"{class_of[ann['category_id']]} "
                                                         + " ".join(f"{v:.8f}" for v in box))
        for image in data["images"]:
            shutil.copyfile(coco_dir / folder / image["file_name"], out_dir / "images" / split / image["file_name"])
            if image["id"] in lines:
                label = (out_dir / "labels" / split / image["file_name"]).with_suffix(".txt")
                label.write_text("\n".join(lines[image["id"]]) + "\n")
    yaml_names = dict(enumerate(names)) if names_as_mapping else names
    (out_dir / "data.yaml").write_text(yaml.safe_dump({"train": "images/train", "val": "images/val",
                                                       "nc": len(names), "names": yaml_names}, sort_keys=False))
    return out_dir


def _voc_number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _voc_xml(image: dict, objects: list[tuple[str, list[float], bool]]) -> str:
    """A Pascal VOC annotation file of ``image`` (a COCO image dict) with ``objects`` (name, COCO box, difficult)."""
    parts = ["<annotation>", "  <folder>JPEGImages</folder>", f"  <filename>{escape(image['file_name'])}</filename>",
             f"  <size><width>{image['width']}</width><height>{image['height']}</height><depth>3</depth></size>"]
    for name, (x, y, w, h), difficult in objects:
        corners = (x + 1, y + 1, x + w, y + h)  # VOC: 1-based pixel indices, the last pixel included
        box = "".join(f"<{key}>{_voc_number(v)}</{key}>" for key, v in zip(("xmin", "ymin", "xmax", "ymax"), corners))
        parts += ["  <object>", f"    <name>{escape(name)}</name>", "    <pose>Unspecified</pose>",
                  "    <truncated>0</truncated>", f"    <difficult>{int(difficult)}</difficult>",
                  f"    <bndbox>{box}</bndbox>", "  </object>"]
    return "\n".join(parts + ["</annotation>"]) + "\n"


def write_voc_copy(coco_dir: str | Path, out_dir: str | Path, labels_file: bool = False,
                   difficult: Optional[dict[str, set[int]]] = None) -> Path:
    """The COCO-layout dataset ``coco_dir`` (boxes only) in the Pascal VOC layout under ``out_dir``:
    ``JPEGImages/`` (copies), ``Annotations/<image stem>.xml`` for every image, ``ImageSets/Main/{train,val}.txt``
    and with ``labels_file`` ``labels.txt`` (the names in the order of ``categories``). ``difficult``: split ->
    the annotation ids marked ``<difficult>1</difficult>`` (crowd regions are marked too). Returns ``out_dir``."""
    coco_dir, out_dir = Path(coco_dir), Path(out_dir)
    _refuse_existing(out_dir, ("JPEGImages", "Annotations", "ImageSets", "labels.txt"))
    for name in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (out_dir / name).mkdir(parents=True)
    names = None
    for split, folder in SPLITS:
        data = _coco_split(coco_dir, folder)
        names = [c["name"] for c in data["categories"]]
        name_of = {c["id"]: c["name"] for c in data["categories"]}
        marked = (difficult or {}).get(split, set())
        objects: dict[int, list] = {img["id"]: [] for img in data["images"]}
        for ann in data["annotations"]:
            is_difficult = ann["id"] in marked or bool(ann.get("iscrowd", 0))
            objects[ann["image_id"]].append((name_of[ann["category_id"]], ann["bbox"], is_difficult))
        stems = []
        for image in data["images"]:
            stem = Path(image["file_name"]).stem
            stems.append(stem)
            shutil.copyfile(coco_dir / folder / image["file_name"], out_dir / "JPEGImages" / image["file_name"])
            (out_dir / "Annotations" / f"{stem}.xml").write_text(_voc_xml(image, objects[image["id"]]))
        (out_dir / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{stem}\n" for stem in stems))
    if labels_file:
        (out_dir / "labels.txt").write_text("".join(f"{name}\n" for name in names))
    return out_dir


def main(argv: Optional[Sequence[str]] = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True,
                        help="output directory (becomes --coco_path, or --data_path with --layout yolo or voc)")
    parser.add_argument("--num_train", type=int, default=1000)
    parser.add_argument("--num_val", type=int, default=200)
    parser.add_argument("--image_size", type=int, default=128,
                        help="image side in pixels (easy: square images; hard: the shortest side, sides up to 1.5x)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max_objects", type=int, default=None,
                        help=f"most shapes per image (default 4, or {HARD_MAX_OBJECTS} with --difficulty hard)")
    parser.add_argument("--difficulty", default="easy", choices=DIFFICULTIES,
                        help="easy: the CPU demo's data; hard: textured backgrounds, 7 shapes, occlusion, tiny "
                             "objects, crowd regions, mixed sizes, greyscale images (see the module docstring)")
    parser.add_argument("--hard_without", nargs="+", default=[], choices=HARD_PROPERTIES, metavar="PROPERTY",
                        help="with --difficulty hard: switch these properties off (to measure what each costs): "
                             + ", ".join(HARD_PROPERTIES))
    parser.add_argument("--panoptic", action="store_true",
                        help="stuff backgrounds and COCO panoptic annotations too (becomes --coco_panoptic_path)")
    parser.add_argument("--layout", default="coco", choices=("coco", "yolo", "voc"),
                        help="write the dataset in this layout (yolo, voc: detection only, no panoptic files)")
    args = parser.parse_args(argv)
    if args.layout != "coco" and args.panoptic:
        parser.error("--panoptic writes the COCO layout only")
    if args.difficulty == "hard" and args.panoptic:
        parser.error("--difficulty hard writes detection data only (no --panoptic)")
    if args.hard_without and args.difficulty != "hard":
        parser.error("--hard_without needs --difficulty hard")
    options = dict(num_train=args.num_train, num_val=args.num_val, image_size=args.image_size, seed=args.seed,
                   max_objects=args.max_objects, panoptic=args.panoptic, difficulty=args.difficulty,
                   hard_without=args.hard_without)
    if args.layout == "coco":
        return generate(args.out, **options)
    with tempfile.TemporaryDirectory() as coco_dir:
        generate(coco_dir, quiet=True, **options)
        write = write_yolo_copy if args.layout == "yolo" else write_voc_copy
        out = write(coco_dir, args.out)
    print(f"synthetic {args.layout}: {args.num_train} train and {args.num_val} val images -> {out}")
    return out


if __name__ == "__main__":
    main()
