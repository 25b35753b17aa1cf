"""A small synthetic detection dataset of coloured shapes, written in the full COCO 2017 layout.

    python -m datasets.synthetic --out data/shapes --num_train 2000 --num_val 200 --image_size 128 --seed 0

writes ``DIR/train2017/*.jpg``, ``DIR/val2017/*.jpg``, ``DIR/annotations/instances_{train,val}2017.json`` and
``DIR/synthetic_params.json``, so ``--coco_path DIR`` works unchanged. Category ids are non-contiguous as in COCO
(``CATEGORIES``: 5 shapes with ids up to 11, so DETR's ``num_classes`` is 12). Each image has a plain colour
background with a mild gradient and noise, and 0..max_objects shapes (about 5% of images have none) of side 10%-50%
of the image, in colours that contrast with the background and with the shapes they touch. Shapes overlap each
other's boxes by at most 30% of the smaller box, so they stay mostly visible. Segmentations are the polygons the
shapes were rasterised from (the whole shape, including any small part a later shape covers); boxes are the tight
bounds of those pixels and areas their count.

The output is a deterministic function of the parameters; ``generate`` leaves an existing dataset made with the
same parameters alone.
"""
import argparse
import json
import math
import shutil
import time
import warnings
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from PIL import Image
from pycocotools import mask as coco_mask

GENERATOR_VERSION = 1
PARAMS_FILE = "synthetic_params.json"
CATEGORIES = [
    {"id": 1, "name": "rectangle", "supercategory": "shape"},
    {"id": 3, "name": "ellipse", "supercategory": "shape"},
    {"id": 5, "name": "triangle", "supercategory": "shape"},
    {"id": 8, "name": "diamond", "supercategory": "shape"},
    {"id": 11, "name": "cross", "supercategory": "shape"},
]
SPLITS = (("train", "train2017"), ("val", "val2017"))
EMPTY_IMAGE_FRACTION = 0.05
MIN_SIDE, MAX_SIDE = 0.10, 0.50  # object side as a fraction of the image side
MAX_OVERLAP = 0.30  # box intersection / smaller box area
MIN_CONTRAST = 70.0  # luminance difference between object and background, 0..255
JPEG_QUALITY = 92


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


def _contrasting_colour(background: np.ndarray, neighbours: list[tuple], rng: np.random.Generator
                        ) -> tuple[int, int, int]:
    """A colour whose luminance differs from the background's by MIN_CONTRAST and that is at least MIN_CONTRAST
    away (RGB distance) from the colours of the shapes it touches."""
    bg = _luminance(background)
    for _ in range(50):
        colour = rng.integers(0, 256, size=3)
        if abs(_luminance(colour) - bg) >= MIN_CONTRAST and all(
                np.linalg.norm(colour - np.asarray(n)) >= MIN_CONTRAST for n in neighbours):
            return tuple(int(c) for c in colour)
    return (0, 0, 0) if bg > 127 else (255, 255, 255)


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


def _make_image(size: int, max_objects: int, rng: np.random.Generator) -> tuple[Image.Image, list[dict]]:
    """One image and its objects as ``{"category_id", "bbox" xywh px, "area" px², "segmentation"}`` dicts.

    Each shape is rasterised from its COCO polygon by pycocotools itself, so the drawn pixels, the segmentation,
    the box (tight bounds of those pixels) and the area (their count) all agree exactly.
    """
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
        colour = _contrasting_colour(base, [c for b, c in zip(placed, colours) if _touches(box, b)], rng)
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
    return Image.fromarray(pixels, "RGB"), objects


def _write_split(out_dir: Path, folder: str, num_images: int, first_image_id: int, image_size: int,
                 max_objects: int, rng: np.random.Generator) -> dict:
    image_dir = out_dir / folder
    image_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for index in range(num_images):
        image_id = first_image_id + index
        file_name = f"{image_id:012d}.jpg"
        image, objects = _make_image(image_size, max_objects, rng)
        image.save(image_dir / file_name, quality=JPEG_QUALITY)
        images.append({"id": image_id, "file_name": file_name, "height": image_size, "width": image_size})
        for obj in objects:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "iscrowd": 0, **obj})
    return {
        "info": {"description": "synthetic shapes (datasets/synthetic.py)", "version": str(GENERATOR_VERSION)},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": CATEGORIES,
    }


def generate(out_dir: str | Path, num_train: int = 1000, num_val: int = 200, image_size: int = 128, seed: int = 0,
             max_objects: int = 4, quiet: bool = False) -> Path:
    """Write the dataset under ``out_dir`` (skipped if it is already there with the same parameters); returns it.

    Image ids are 1..num_train for train and continue from num_train + 1 for val; annotation ids start at 1 in
    each file. Refuses to overwrite ``train2017/``, ``val2017/`` or ``annotations/`` that this generator did not
    write (no ``synthetic_params.json`` beside them).
    """
    if image_size < 16:
        raise ValueError(f"image_size must be >= 16 pixels, got {image_size}")
    if min(num_train, num_val, max_objects) < 0:
        raise ValueError("num_train, num_val and max_objects must be >= 0")
    out_dir = Path(out_dir)
    params = {"generator_version": GENERATOR_VERSION, "num_train": num_train, "num_val": num_val,
              "image_size": image_size, "seed": seed, "max_objects": max_objects}
    params_path = out_dir / PARAMS_FILE
    owned = [out_dir / folder for _, folder in SPLITS] + [out_dir / "annotations"]
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
        raise FileExistsError(f"{out_dir} already has train2017/, val2017/ or annotations/ not written by "
                              f"datasets.synthetic (no {PARAMS_FILE}); refusing to overwrite, choose another --out")

    start = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    params_path.write_text(json.dumps({"params": params, "complete": False}))
    (out_dir / "annotations").mkdir(exist_ok=True)
    counts = {}
    first_image_id = 1
    for split_index, (split, folder) in enumerate(SPLITS):
        num_images = num_train if split == "train" else num_val
        rng = np.random.default_rng([seed, split_index])
        coco = _write_split(out_dir, folder, num_images, first_image_id, image_size, max_objects, rng)
        (out_dir / "annotations" / f"instances_{folder}.json").write_text(json.dumps(coco))
        first_image_id += num_images
        with_objects = {a["image_id"] for a in coco["annotations"]}
        counts[split] = (num_images, len(coco["annotations"]), num_images - len(with_objects))
    params_path.write_text(json.dumps({"params": params, "complete": True}, indent=1))
    if not quiet:
        ids = [c["id"] for c in CATEGORIES]
        parts = ", ".join(f"{s} {n} images / {a} objects / {e} empty" for s, (n, a, e) in counts.items())
        print(f"synthetic COCO: {parts}; {image_size}px, {len(CATEGORIES)} categories (ids {ids}, "
              f"num_classes {max(ids) + 1}) -> {out_dir} in {time.perf_counter() - start:.1f}s")
    return out_dir


def main(argv: Optional[Sequence[str]] = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="output directory (becomes --coco_path)")
    parser.add_argument("--num_train", type=int, default=1000)
    parser.add_argument("--num_val", type=int, default=200)
    parser.add_argument("--image_size", type=int, default=128, help="image side in pixels (square images)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max_objects", type=int, default=4, help="most shapes per image")
    args = parser.parse_args(argv)
    return generate(args.out, num_train=args.num_train, num_val=args.num_val, image_size=args.image_size,
                    seed=args.seed, max_objects=args.max_objects)


if __name__ == "__main__":
    main()
