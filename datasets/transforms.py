"""Joint image + target transforms for detection, with the semantics of the official DETR's ``datasets/transforms.py``.

Every transform is called as ``image, target = t(image, target)``. Until ``ToTensor`` the image is a PIL image;
``target`` is a dict (or None) with

- ``boxes``    float ``[N, 4]``, absolute (x0, y0, x1, y1) in pixels of the current image
               (after ``Normalize``: (cx, cy, w, h) divided by the image width/height, so in [0, 1])
- ``labels``   int64 ``[N]``, category ids
- ``area``     float ``[N]``, pixels², kept in step with resizing and cropping
- ``iscrowd``  int64 ``[N]``
- ``masks``    optional uint8/bool ``[N, H, W]``, aligned with the image
- ``image_id`` int64 ``[1]``; ``orig_size`` and ``size`` int64 ``[2]`` as (h, w); ``size`` follows the image.

Transforms never modify the input dict in place; they return a shallow copy. Randomness comes from Python's
``random`` module (as in DETR), so seeding ``random`` makes an augmentation pipeline reproducible.
"""
import random
from typing import Callable, Optional, Sequence, Union

import PIL.Image
import torch
import torch.nn.functional as nnf
import torchvision.transforms as T
import torchvision.transforms.functional as F

from util.box_ops import box_xyxy_to_cxcywh

Target = Optional[dict]

# Per-object fields: a crop that drops an object drops its entry in each of these.
INSTANCE_FIELDS = ("boxes", "labels", "area", "iscrowd", "masks")


def crop(image: PIL.Image.Image, target: Target, region: Sequence[int]) -> tuple[PIL.Image.Image, Target]:
    """Crop ``region = (top, left, height, width)`` (pixels) out of the image.

    Boxes are shifted and clipped to the crop, ``area`` becomes the clipped box area, masks are sliced, and
    objects whose clipped box (or, without boxes, whose mask) is empty are dropped from every per-object field.
    """
    cropped_image = F.crop(image, *region)
    if target is None:
        return cropped_image, None
    target = target.copy()
    top, left, height, width = region
    target["size"] = torch.tensor([height, width])

    if "boxes" in target:
        boxes = target["boxes"]
        limit = torch.as_tensor([width, height], dtype=torch.float32)
        corners = boxes.reshape(-1, 2, 2) - torch.as_tensor([left, top], dtype=torch.float32)
        corners = torch.min(corners, limit).clamp(min=0)
        target["boxes"] = corners.reshape(-1, 4)
        target["area"] = (corners[:, 1, :] - corners[:, 0, :]).prod(dim=1)
    if "masks" in target:
        target["masks"] = target["masks"][:, top:top + height, left:left + width]

    if "boxes" in target:
        corners = target["boxes"].reshape(-1, 2, 2)
        keep = torch.all(corners[:, 1, :] > corners[:, 0, :], dim=1)
    elif "masks" in target:
        keep = target["masks"].flatten(1).any(1).bool()
    else:
        return cropped_image, target
    for field in INSTANCE_FIELDS:
        if field in target:
            target[field] = target[field][keep]
    return cropped_image, target


def hflip(image: PIL.Image.Image, target: Target) -> tuple[PIL.Image.Image, Target]:
    """Mirror left-right: x -> width - x for boxes (x0 and x1 swap roles); masks are flipped along W."""
    flipped_image = F.hflip(image)
    if target is None:
        return flipped_image, None
    width, _ = image.size
    target = target.copy()
    if "boxes" in target:
        boxes = target["boxes"]
        target["boxes"] = boxes[:, [2, 1, 0, 3]] * torch.as_tensor([-1, 1, -1, 1]) + torch.as_tensor(
            [width, 0, width, 0])
    if "masks" in target:
        target["masks"] = target["masks"].flip(-1)
    return flipped_image, target


def get_size_with_aspect_ratio(image_size: tuple[int, int], size: int, max_size: Optional[int] = None
                               ) -> tuple[int, int]:
    """Output (h, w) with the shorter side ``size`` and the longer side at most ``max_size`` (pixels).

    ``image_size`` is PIL's (w, h). The longer side is truncated with ``int`` after scaling, as in DETR, so a
    1333-capped image can come out a pixel short of the cap.
    """
    w, h = image_size
    if max_size is not None:
        min_original = float(min(w, h))
        max_original = float(max(w, h))
        if max_original / min_original * size > max_size:
            size = int(round(max_size * min_original / max_original))
    if (w <= h and w == size) or (h <= w and h == size):
        return h, w
    if w < h:
        return int(size * h / w), size
    return size, int(size * w / h)


def resize(image: PIL.Image.Image, target: Target, size: Union[int, Sequence[int]],
           max_size: Optional[int] = None) -> tuple[PIL.Image.Image, Target]:
    """Resize so the shorter side is ``size`` pixels (longer side capped at ``max_size``).

    A sequence ``size`` is an explicit (w, h). Boxes scale with the image, ``area`` by the product of the two
    ratios, masks by nearest-neighbour interpolation (thresholded back to bool).
    """
    if isinstance(size, (list, tuple)):
        out_h, out_w = size[1], size[0]
    else:
        out_h, out_w = get_size_with_aspect_ratio(image.size, size, max_size)
    rescaled_image = F.resize(image, [out_h, out_w])
    if target is None:
        return rescaled_image, None

    ratio_w = rescaled_image.size[0] / image.size[0]
    ratio_h = rescaled_image.size[1] / image.size[1]
    target = target.copy()
    if "boxes" in target:
        target["boxes"] = target["boxes"] * torch.as_tensor([ratio_w, ratio_h, ratio_w, ratio_h])
    if "area" in target:
        target["area"] = target["area"] * (ratio_w * ratio_h)
    target["size"] = torch.tensor([out_h, out_w])
    if "masks" in target:
        masks = target["masks"]
        if masks.shape[0] == 0:
            target["masks"] = torch.zeros((0, out_h, out_w), dtype=torch.bool)
        else:
            target["masks"] = nnf.interpolate(masks[:, None].float(), (out_h, out_w), mode="nearest")[:, 0] > 0.5
    return rescaled_image, target


class RandomCrop:
    """Crop a uniformly placed window of fixed ``size`` = (h, w) pixels."""

    def __init__(self, size: Sequence[int]):
        self.size = size

    def __call__(self, img, target):
        return crop(img, target, T.RandomCrop.get_params(img, self.size))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size})"


class RandomSizeCrop:
    """Crop a window whose width and height are each uniform in [min_size, min(image side, max_size)] pixels.

    Unlike DETR, a side shorter than ``min_size`` is kept whole instead of raising, so tiny images do not crash.
    """

    def __init__(self, min_size: int, max_size: int):
        self.min_size = min_size
        self.max_size = max_size

    def __call__(self, img: PIL.Image.Image, target: Target):
        width, height = img.size
        w = random.randint(min(self.min_size, width), min(width, self.max_size))
        h = random.randint(min(self.min_size, height), min(height, self.max_size))
        return crop(img, target, T.RandomCrop.get_params(img, [h, w]))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(min_size={self.min_size}, max_size={self.max_size})"


class CenterCrop:
    """Crop the central ``size`` = (h, w) pixels (offsets rounded to the nearest pixel)."""

    def __init__(self, size: Sequence[int]):
        self.size = size

    def __call__(self, img: PIL.Image.Image, target: Target):
        width, height = img.size
        crop_h, crop_w = self.size
        top = int(round((height - crop_h) / 2.0))
        left = int(round((width - crop_w) / 2.0))
        return crop(img, target, (top, left, crop_h, crop_w))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size})"


class RandomHorizontalFlip:
    """``hflip`` with probability ``p``."""

    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, img, target):
        if random.random() < self.p:
            return hflip(img, target)
        return img, target

    def __repr__(self) -> str:
        return f"{type(self).__name__}(p={self.p})"


class RandomResize:
    """``resize`` to a shorter side drawn uniformly from ``sizes`` (pixels), longer side capped at ``max_size``."""

    def __init__(self, sizes: Sequence[int], max_size: Optional[int] = None):
        if not isinstance(sizes, (list, tuple)) or len(sizes) == 0:
            raise ValueError(f"RandomResize needs a non-empty list of sizes, got {sizes!r}")
        self.sizes = list(sizes)
        self.max_size = max_size

    def __call__(self, img, target=None):
        return resize(img, target, random.choice(self.sizes), self.max_size)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(sizes={self.sizes}, max_size={self.max_size})"


class RandomSelect:
    """Apply ``transforms1`` with probability ``p``, otherwise ``transforms2``."""

    def __init__(self, transforms1: Callable, transforms2: Callable, p: float = 0.5):
        self.transforms1 = transforms1
        self.transforms2 = transforms2
        self.p = p

    def __call__(self, img, target):
        if random.random() < self.p:
            return self.transforms1(img, target)
        return self.transforms2(img, target)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(p={self.p}, {self.transforms1!r}, {self.transforms2!r})"


class ToTensor:
    """PIL image -> float tensor ``[C, H, W]`` in [0, 1]; the target passes through."""

    def __call__(self, img, target):
        return F.to_tensor(img), target

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Normalize:
    """Standardise a ``[C, H, W]`` tensor per channel and make boxes (cx, cy, w, h) relative to the image size.

    Afterwards ``target["boxes"]`` is in [0, 1] for boxes inside the image; everything else is unchanged.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        self.mean = list(mean)
        self.std = list(std)

    def __call__(self, image: torch.Tensor, target: Target = None):
        image = F.normalize(image, mean=self.mean, std=self.std)
        if target is None:
            return image, None
        target = target.copy()
        height, width = image.shape[-2:]
        if "boxes" in target:
            boxes = box_xyxy_to_cxcywh(target["boxes"])
            target["boxes"] = boxes / torch.tensor([width, height, width, height], dtype=torch.float32)
        return image, target

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mean={self.mean}, std={self.std})"


class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms: Sequence[Callable]):
        self.transforms = list(transforms)

    def __call__(self, image, target):
        for t in self.transforms:
            image, target = t(image, target)
        return image, target

    def __repr__(self) -> str:
        lines = "".join("\n    " + repr(t).replace("\n", "\n    ") for t in self.transforms)
        return f"{type(self).__name__}({lines}\n)"
