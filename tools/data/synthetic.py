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

The output is a deterministic function of the parameters; ``generate`` leaves an existing dataset made with the
same parameters alone. Detection mode writes byte for byte what it wrote before the panoptic mode existed (its
parameters record no ``panoptic`` key), so detection datasets made then are kept.
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


def _write_split(out_dir: Path, folder: str, num_images: int, first_image_id: int, image_size: int,
                 max_objects: int, rng: np.random.Generator, panoptic: bool = False) -> tuple[dict, Optional[dict]]:
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
        image, objects, segments = _make_image(image_size, max_objects, rng, panoptic)
        image.save(image_dir / file_name, quality=JPEG_QUALITY)
        images.append({"id": image_id, "file_name": file_name, "height": image_size, "width": image_size})
        for obj in objects:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "iscrowd": 0, **obj})
        if panoptic:
            id_map, segments_info = segments
            png_name = f"{image_id:012d}.png"
            (png_dir / png_name).write_bytes(encode_panoptic_png(id_map))
            panoptic_annotations.append({"image_id": image_id, "file_name": png_name, "segments_info": segments_info})
    info = {"description": "synthetic shapes (tools/data/synthetic.py)", "version": str(GENERATOR_VERSION)}
    coco = {"info": info, "licenses": [], "images": images, "annotations": annotations, "categories": CATEGORIES}
    if not panoptic:
        return coco, None
    return coco, {"info": info, "licenses": [], "images": images, "annotations": panoptic_annotations,
                  "categories": PANOPTIC_CATEGORIES}


def generate(out_dir: str | Path, num_train: int = 1000, num_val: int = 200, image_size: int = 128, seed: int = 0,
             max_objects: int = 4, quiet: bool = False, panoptic: bool = False) -> Path:
    """Write the dataset under ``out_dir`` (skipped if it is already there with the same parameters); returns it.

    Image ids are 1..num_train for train and continue from num_train + 1 for val; annotation ids start at 1 in
    each file. ``panoptic`` adds stuff backgrounds and the COCO panoptic files (see the module docstring). Refuses
    to overwrite ``train2017/``, ``val2017/``, ``annotations/`` or ``panoptic_{train,val}2017/`` that this
    generator did not write (no ``synthetic_params.json`` beside them).
    """
    if image_size < 16:
        raise ValueError(f"image_size must be >= 16 pixels, got {image_size}")
    if min(num_train, num_val, max_objects) < 0:
        raise ValueError("num_train, num_val and max_objects must be >= 0")
    out_dir = Path(out_dir)
    params = {"generator_version": GENERATOR_VERSION, "num_train": num_train, "num_val": num_val,
              "image_size": image_size, "seed": seed, "max_objects": max_objects}
    if panoptic:  # recorded only when set, so detection datasets written before the panoptic mode are still kept
        params["panoptic"] = True
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
                                           panoptic)
        (out_dir / "annotations" / f"instances_{folder}.json").write_text(json.dumps(coco))
        if panoptic:
            (out_dir / "annotations" / f"panoptic_{folder}.json").write_text(json.dumps(panoptic_coco))
        first_image_id += num_images
        with_objects = {a["image_id"] for a in coco["annotations"]}
        counts[split] = (num_images, len(coco["annotations"]), num_images - len(with_objects))
    params_path.write_text(json.dumps({"params": params, "complete": True}, indent=1))
    if not quiet:
        categories = PANOPTIC_CATEGORIES if panoptic else CATEGORIES
        ids = [c["id"] for c in categories]
        parts = ", ".join(f"{s} {n} images / {a} objects / {e} empty" for s, (n, a, e) in counts.items())
        kind = f"panoptic, {len(CATEGORIES)} thing + {len(STUFF_CATEGORIES)} stuff" if panoptic else f"{len(ids)}"
        print(f"synthetic COCO: {parts}; {image_size}px, {kind} categories (ids {ids}, "
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
    parser.add_argument("--image_size", type=int, default=128, help="image side in pixels (square images)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max_objects", type=int, default=4, help="most shapes per image")
    parser.add_argument("--panoptic", action="store_true",
                        help="stuff backgrounds and COCO panoptic annotations too (becomes --coco_panoptic_path)")
    parser.add_argument("--layout", default="coco", choices=("coco", "yolo", "voc"),
                        help="write the dataset in this layout (yolo, voc: detection only, no panoptic files)")
    args = parser.parse_args(argv)
    if args.layout != "coco" and args.panoptic:
        parser.error("--panoptic writes the COCO layout only")
    options = dict(num_train=args.num_train, num_val=args.num_val, image_size=args.image_size, seed=args.seed,
                   max_objects=args.max_objects, panoptic=args.panoptic)
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
