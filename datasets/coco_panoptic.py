"""COCO panoptic segmentation dataset in DETR's format (the official DETR's ``CocoPanoptic``, with clearer errors).

Official layout (images under ``--coco_path``, panoptic annotations under ``--coco_panoptic_path``)::

    --coco_path:           train2017/*.jpg  val2017/*.jpg
    --coco_panoptic_path:  annotations/panoptic_{train,val}2017.json  panoptic_{train,val}2017/*.png

``tools.data.synthetic --panoptic`` writes both into one folder. Each PNG stores a segment id per pixel as a colour
(``util.panoptic_png``; 0 is void) and the JSON's ``segments_info`` gives each segment's category (thing or stuff,
one label space), ``iscrowd`` and ``area``. Each item is ``(image, target)`` with the keys of ``datasets.transforms``,
one entry per segment:

- ``masks``    uint8 ``[N, H, W]`` (bool once resized), the pixels of each segment (disjoint); with ``return_masks``
- ``labels``   int64 ``[N]``, category ids (things and stuff)
- ``boxes``    float ``[N, 4]``, xyxy pixels, the tight bounds of each mask with exclusive right/bottom edges
               (``torchvision.ops.masks_to_boxes`` + 1 on x1, y1; the convention of every box here, which keeps
               flips and crops exact; the official DETR's inclusive edges are one pixel short)
- ``iscrowd``  int64 ``[N]``; ``area`` float ``[N]``, pixels, from ``segments_info``
- ``image_id`` ``[1]``; ``orig_size``, ``size`` ``[2]`` as (h, w)

then the transforms as for detection (a crop sets ``area`` to the clipped box's; after ``Normalize`` boxes are
relative cxcywh). Crowd segments are kept, as in the official DETR. A segment listed in ``segments_info`` but with
no pixel in the PNG is dropped (the official code keeps it with an all-zero mask; its box would be empty, and empty
boxes are dropped for detection too). With masks, a segment whose mask a crop or a downscale leaves empty is dropped
after the transforms, since an empty target mask teaches nothing; without masks the detection rule applies (crops
drop empty clipped boxes).
"""
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import PIL.Image
import torch
import torch.utils.data
from torchvision.ops import masks_to_boxes

from datasets.annotation_schema import check_top_level
from datasets.bad_images import SkippedImage
from datasets.coco import _read_annotation_json, check_category_ids, make_coco_transforms
from datasets.image_cache import ImageBytesCache
from datasets.image_file import BadImageError, read_image, size_mismatch
from datasets.transforms import INSTANCE_FIELDS
from util.panoptic_png import read_panoptic_png

PANOPTIC_SPLITS = {
    "train": ("train2017", "panoptic_train2017"),
    "val": ("val2017", "panoptic_val2017"),
}


def _drop_empty_masks(target: dict) -> dict:
    """Leave out the segments whose mask has no pixel (from every per-segment field)."""
    keep = target["masks"].flatten(1).any(1).bool()
    if bool(keep.all()):
        return target
    target = target.copy()
    for field in INSTANCE_FIELDS:
        if field in target:
            target[field] = target[field][keep]
    return target


class CocoPanoptic(torch.utils.data.Dataset):
    """A COCO panoptic split: images in ``img_folder``, PNGs in ``ann_folder``, their JSON ``ann_file``.

    Images and annotations are paired by image id and ordered by it (``ids``). ``num_classes`` (optional) is
    checked once here: every category id must be < num_classes. ``categories`` maps category id -> the JSON's
    category dict; ``ann_file`` and ``ann_folder`` are what a panoptic evaluator reads. Images are read as
    ``datasets.coco.CocoDetection`` reads them (``skip_bad_images``, ``cache`` and ``cache_share`` as there); each
    must be the size the JSON says, as its PNG must.
    """

    def __init__(self, img_folder: str | Path, ann_folder: str | Path, ann_file: str | Path,
                 transforms: Optional[Callable] = None, return_masks: bool = True, num_classes: Optional[int] = None,
                 *, skip_bad_images: bool = False, cache: bool = False, cache_share: tuple[int, int] = (0, 1)):
        self.img_folder, self.ann_folder, self.ann_file = Path(img_folder), Path(ann_folder), Path(ann_file)
        if not self.ann_file.is_file():
            raise FileNotFoundError(f"panoptic annotation file {self.ann_file} not found (expected a COCO panoptic "
                                    f"JSON file)")
        if not self.img_folder.is_dir():
            raise FileNotFoundError(f"image folder {self.img_folder} not found (expected a directory of the images "
                                    f"listed in {self.ann_file.name})")
        if not self.ann_folder.is_dir():
            raise FileNotFoundError(f"panoptic PNG folder {self.ann_folder} not found (expected a directory of the "
                                    f"PNGs listed in {self.ann_file.name})")
        data = _read_annotation_json(self.ann_file)
        check_top_level(data, self.ann_file, kind="COCO panoptic")
        try:
            self._index(data)
        except KeyError as e:
            raise ValueError(f"panoptic annotation file {self.ann_file} lacks the key {e} (at the top level or in "
                             f"an image, annotation, segment or category)") from e
        self._transforms = transforms
        self.return_masks = return_masks
        self.skip_bad_images = skip_bad_images
        self.cache = ImageBytesCache([self.img_folder / self._images[i]["file_name"] for i in self.ids],
                                     *cache_share) if cache else None
        if num_classes is not None:
            check_category_ids(self.categories, num_classes, f"panoptic annotation file {self.ann_file}")

    def _index(self, data: dict) -> None:
        """Pair images with annotations by image id; every image needs exactly one annotation and vice versa."""
        self._images: dict[int, dict] = {}
        for img in data["images"]:
            img["file_name"], img["width"], img["height"]  # noqa: B018 (every image needs them: KeyError otherwise)
            if img["id"] in self._images:
                raise ValueError(f"panoptic annotation file {self.ann_file} lists image id {img['id']} twice")
            self._images[img["id"]] = img
        self._annotations: dict[int, dict] = {}
        for ann in data["annotations"]:
            image_id = ann["image_id"]
            if image_id not in self._images:
                raise ValueError(f"panoptic annotation file {self.ann_file} has an annotation ({ann['file_name']}) "
                                 f"for image id {image_id}, which is not among its images")
            if image_id in self._annotations:
                raise ValueError(f"panoptic annotation file {self.ann_file} has two annotations for image id "
                                 f"{image_id}")
            self._annotations[image_id] = ann
        unannotated = sorted(set(self._images) - set(self._annotations))
        if unannotated:
            raise ValueError(f"panoptic annotation file {self.ann_file} has no annotation for image id "
                             f"{unannotated[0]} ({self._images[unannotated[0]]['file_name']})"
                             + (f" and {len(unannotated) - 1} more images" if len(unannotated) > 1 else ""))
        self.ids = sorted(self._images)
        self.categories: dict[int, dict] = {c["id"]: c for c in data["categories"]}
        for category in self.categories.values():
            if "isthing" not in category:
                raise ValueError(f"panoptic annotation file {self.ann_file}: category {category['id']} has no "
                                 f"'isthing'")
        for image_id, ann in self._annotations.items():
            for segment in ann["segments_info"]:
                if segment["category_id"] not in self.categories:
                    raise ValueError(f"panoptic annotation file {self.ann_file}: segment {segment['id']} of image id "
                                     f"{image_id} has category id {segment['category_id']}, which is not among its "
                                     f"categories")

    def __len__(self) -> int:
        return len(self.ids)

    def num_classes(self) -> int:
        """Largest category id + 1 (every segment's category is among the categories; 201 for COCO panoptic)."""
        return max(self.categories, default=0) + 1

    def is_thing_map(self) -> dict[int, bool]:
        """``{category_id: isthing}`` for every category."""
        return {i: bool(c["isthing"]) for i, c in self.categories.items()}

    def get_height_and_width(self, idx: int) -> tuple[int, int]:
        """(height, width) in pixels of item ``idx`` as its JSON records them."""
        img = self._images[self.ids[idx]]
        return img["height"], img["width"]

    def _load_segment_ids(self, path: Path, image_id: int) -> np.ndarray:
        if not path.is_file():
            raise FileNotFoundError(f"panoptic PNG {path} (image id {image_id} in {self.ann_file}) not found")
        try:
            return read_panoptic_png(path)
        except (OSError, ValueError, PIL.Image.DecompressionBombError) as e:
            raise OSError(f"cannot read panoptic PNG {path} (image id {image_id}): {e}") from e

    def __getitem__(self, idx: int) -> tuple[Any, dict] | SkippedImage:
        image_id = self.ids[idx]
        ann = self._annotations[image_id]
        img_path = self.img_folder / self._images[image_id]["file_name"]
        png_path = self.ann_folder / ann["file_name"]
        try:
            img = read_image(img_path, image_id, self.ann_file, cache=self.cache)
        except (BadImageError, FileNotFoundError) as exc:
            if not self.skip_bad_images:
                raise
            return SkippedImage(image_id, str(exc))
        segment_map = self._load_segment_ids(png_path, image_id)
        w, h = img.size
        if segment_map.shape != (h, w):
            raise ValueError(f"panoptic PNG {png_path} is {segment_map.shape[1]}x{segment_map.shape[0]} pixels but "
                             f"image {img_path} is {w}x{h} (image id {image_id})")
        expected = (self._images[image_id]["width"], self._images[image_id]["height"])
        if img.size != expected:
            message = size_mismatch(f"image file {img_path} (image id {image_id})", img.size, expected, self.ann_file)
            if not self.skip_bad_images:
                raise BadImageError(message)
            return SkippedImage(image_id, message)
        target = self._target(torch.from_numpy(segment_map), ann["segments_info"], image_id)
        if self._transforms is not None:
            img, target = self._transforms(img, target)
        if "masks" in target:
            target = _drop_empty_masks(target)
        return img, target

    def _target(self, segment_map: torch.Tensor, segments: list[dict], image_id: int) -> dict:
        """The target of one image from its ``[H, W]`` segment id map and ``segments_info``."""
        segment_ids = [s["id"] for s in segments]
        if 0 in segment_ids or len(set(segment_ids)) != len(segment_ids):
            raise ValueError(f"panoptic annotation file {self.ann_file}: image id {image_id} has segment id 0 (void) "
                             f"or a repeated segment id in its segments_info: {segment_ids}")
        h, w = segment_map.shape
        masks = segment_map[None] == torch.tensor(segment_ids, dtype=torch.int64).reshape(-1, 1, 1)
        keep = masks.flatten(1).any(1)  # a listed segment without pixels has no box: left out
        masks = masks[keep]
        target = {
            "boxes": masks_to_boxes(masks) + torch.tensor([0.0, 0.0, 1.0, 1.0]),
            "labels": torch.tensor([s["category_id"] for s in segments], dtype=torch.int64)[keep],
            "image_id": torch.tensor([image_id]),
            "area": torch.tensor([float(s["area"]) for s in segments], dtype=torch.float32)[keep],
            "iscrowd": torch.tensor([s.get("iscrowd", 0) for s in segments], dtype=torch.int64)[keep],
            "orig_size": torch.as_tensor([int(h), int(w)]),
            "size": torch.as_tensor([int(h), int(w)]),
        }
        if self.return_masks:
            target["masks"] = masks.to(torch.uint8)
        return target


def build(image_set: str, args, cache_share: tuple[int, int] = (0, 1)) -> CocoPanoptic:
    """COCO panoptic ``image_set`` ('train' or 'val'): images from ``args.coco_path``, annotations from
    ``args.coco_panoptic_path``; ``args.masks``, ``args.num_classes`` (may be None: no id check),
    ``args.image_size``, ``args.multiscale``, ``args.skip_bad_images`` and ``args.cache_mode`` (with ``cache_share``)
    as ``datasets.coco.build`` reads them."""
    if image_set not in PANOPTIC_SPLITS:
        raise ValueError(f"unknown image_set {image_set!r}; expected one of {sorted(PANOPTIC_SPLITS)}")
    layout = "annotations/panoptic_{train,val}2017.json and panoptic_{train,val}2017/"
    if getattr(args, "coco_panoptic_path", None) is None:
        raise ValueError(f"--dataset_file coco_panoptic needs --coco_panoptic_path (the folder with {layout})")
    if getattr(args, "coco_path", None) is None:
        raise ValueError("--dataset_file coco_panoptic needs --coco_path (the folder with train2017/ and val2017/)")
    img_root, panoptic_root = Path(args.coco_path), Path(args.coco_panoptic_path)
    if not img_root.is_dir():
        raise FileNotFoundError(f"--coco_path {img_root} is not a directory (expected train2017/ and val2017/ "
                                f"under it)")
    if not panoptic_root.is_dir():
        raise FileNotFoundError(f"--coco_panoptic_path {panoptic_root} is not a directory (expected {layout} "
                                f"under it)")
    img_folder_name, png_folder_name = PANOPTIC_SPLITS[image_set]
    img_folder = img_root / img_folder_name
    ann_file = panoptic_root / "annotations" / f"{png_folder_name}.json"
    ann_folder = panoptic_root / png_folder_name
    for path, flag, root, what in ((img_folder, "--coco_path", img_root, "image folder"),
                                   (ann_file, "--coco_panoptic_path", panoptic_root, "panoptic annotation file"),
                                   (ann_folder, "--coco_panoptic_path", panoptic_root, "panoptic PNG folder")):
        if not path.exists():
            raise FileNotFoundError(f"{what} {path} not found (from {flag} {root})")
    transforms = make_coco_transforms(image_set, getattr(args, "image_size", 800), getattr(args, "multiscale", True))
    return CocoPanoptic(img_folder, ann_folder, ann_file, transforms=transforms, return_masks=args.masks,
                        num_classes=getattr(args, "num_classes", None),
                        skip_bad_images=getattr(args, "skip_bad_images", False),
                        cache=getattr(args, "cache_mode", False), cache_share=cache_share)
