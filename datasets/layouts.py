"""Dataset layouts beside COCO's (``--dataset_file yolo|voc``, ``--data_path DIR``), read as COCO ground truth.

A layout reader (``datasets.yolo.read_yolo``, ``datasets.voc.read_voc``) turns one split of its folder into the dict
of a COCO instances file, in memory; :func:`build_layout_dataset` hands that dict to ``datasets.coco.CocoDetection``,
so the checks (``datasets.annotation_schema``, ``datasets.invalid_boxes``, image reading), ``--cache_mode``, both
data pipelines and the COCO evaluation are those of COCO data. ``python -m tools.convert_dataset`` writes the same
dicts as files.

The conversion's conventions:
- category ids are 0..K-1 in the order of the class names (a YOLO class index is its category id): DETR's softmax
  head gets ``num_classes`` K (largest id + 1, no unused logit), the sigmoid heads K classes, and
  ``--remap_mscoco_category`` keeps label = category id (0 is not a COCO id, so the remap numbers the ids in order).
- image ids are 1..N per split in reading order, annotation ids 1..M (pycocotools needs ids above 0).
- an image's width and height come from its file's header, upright after its EXIF orientation as
  ``datasets.image_file.read_image`` reads it for training.
- ``area`` is the box's area in pixels (the layouts have no masks); it decides COCO's small, medium and large.
"""
import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import PIL.Image

from datasets.coco import COCO_SPLITS, CocoDetection, dataset_from_annotations
from datasets.image_file import EXIF_ORIENTATION, BadImageError
from util.distributed import is_main_process

# The image files a layout folder may hold (Pillow reads them all), compared in lower case.
IMAGE_SUFFIXES = (".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")
SPLITS = tuple(COCO_SPLITS)  # ('train', 'val')
# EXIF orientations that turn the image by 90 degrees: its upright width is the stored height.
TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)


@dataclass
class LayoutSplit:
    """One split of a layout as COCO ground truth: ``annotations`` a COCO instances dict, ``image_folder`` the
    folder its ``file_name``s are relative to, ``source`` the file or folder that messages about the split name,
    and ``skipped`` one line per image left out (``--skip_bad_images``: its header could not be read)."""

    annotations: dict
    image_folder: Path
    source: Path
    skipped: list[str] = field(default_factory=list)


class GroundTruth:
    """A COCO instances dict built image by image: ``categories`` ids 0..K-1 in the order of ``names``, image ids
    1..N and annotation ids 1..M in the order added."""

    def __init__(self, names: list[str], description: str):
        self.data = {"info": {"description": description}, "images": [], "annotations": [],
                     "categories": [{"id": index, "name": name} for index, name in enumerate(names)]}

    def add_image(self, file_name: str, width: int, height: int) -> int:
        """Add an image (``file_name`` relative to the image folder, size in pixels); returns its id."""
        image_id = len(self.data["images"]) + 1
        self.data["images"].append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        return image_id

    def add_box(self, image_id: int, category_id: int, box: list[float], **extra) -> None:
        """Add an object of ``image_id``: ``box`` x, y, width, height in pixels; ``extra`` keys (``iscrowd``,
        ``difficult``) are stored with it (``iscrowd`` 0 unless given)."""
        annotation = {"id": len(self.data["annotations"]) + 1, "image_id": image_id, "category_id": category_id,
                      "bbox": box, "area": box[2] * box[3], "iscrowd": 0}
        self.data["annotations"].append({**annotation, **extra})


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES


def upright_size(path: Path) -> tuple[int, int]:
    """(width, height) in pixels of the image file ``path`` after its EXIF orientation, from the file's header (the
    pixels are not decoded); BadImageError naming the file when Pillow cannot read the header. A PNG's EXIF
    orientation is seen when its eXIf chunk precedes the pixels (the training read checks the size again)."""
    try:
        with PIL.Image.open(path) as img:
            width, height = img.size
            has_exif = img.format != "PNG" or "exif" in img.info  # a PNG's getexif() would decode the pixels
            orientation = img.getexif().get(EXIF_ORIENTATION, 1) if has_exif else 1
    except PIL.UnidentifiedImageError as exc:
        raise BadImageError(f"image file {path} is not in an image format Pillow can read") from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise BadImageError(f"cannot read the header of image file {path}: {exc}") from exc
    return (height, width) if orientation in TRANSPOSING_ORIENTATIONS else (width, height)


def read_text_lines(path: Path, what: str) -> list[str]:
    """The lines of the UTF-8 text file ``path`` (``what`` names it in errors: 'label file' ...)."""
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[:exc.start].count(b"\n") + 1
        raise ValueError(f"{what} {path}, line {line}: not UTF-8 text ({exc.reason})") from exc


def check_split(image_set: str) -> None:
    if image_set not in SPLITS:
        raise ValueError(f"unknown image_set {image_set!r}; expected one of {list(SPLITS)}")


def layout_folder(args: argparse.Namespace, expected: str) -> Path:
    """``--data_path`` of ``args`` as a folder; ``expected`` describes the layout in errors."""
    folder = getattr(args, "data_path", None)
    if not folder:
        raise ValueError(f"--dataset_file {args.dataset_file} needs --data_path: a folder with {expected}")
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"--data_path {root} is not a directory (expected {expected} under it)")
    return root


def build_layout_dataset(image_set: str, args: argparse.Namespace, read: Callable[..., LayoutSplit],
                         expected: str, cache_share: tuple[int, int] = (0, 1)) -> CocoDetection:
    """``image_set`` of the layout folder ``--data_path`` read by ``read(root, image_set, skip_bad_images)`` as a
    ``CocoDetection`` with the flags ``datasets.coco.dataset_from_annotations`` reads; ``expected`` describes the
    layout in errors. Images left out by ``--skip_bad_images`` get one warning each."""
    check_split(image_set)
    root = layout_folder(args, expected)
    split = read(root, image_set, skip_bad_images=getattr(args, "skip_bad_images", False))
    if is_main_process():
        for line in split.skipped:
            print(f"warning: {line}; left out (--skip_bad_images)", flush=True)
    return dataset_from_annotations(image_set, args, split.image_folder, split.source, cache_share,
                                    annotations=split.annotations)
