"""RT-DETR's data pipeline (lyuwenyu/RT-DETR, rtdetrv2_pytorch ``configs/rtdetrv2/include/dataloader.yml``), built
from torchvision's ``transforms.v2`` and ``tv_tensors``, with targets in this codebase's format.

Per image (``make_rtdetr_transforms``), from a PIL image and a target of ``datasets.coco.ConvertCocoPolysToMask``
(boxes absolute xyxy in pixels):

- train: photometric distortion (p 0.5), zoom-out on a black canvas (up to 4x, p 0.5), IoU crop (p 0.8), boxes
  smaller than 1 px dropped, horizontal flip, resize to ``size x size`` (aspect ratio not kept), small boxes dropped
  again, image to float in [0, 1] (no mean/std normalisation); from epoch ``stop_epoch`` on the first three are
  skipped (the official ``stop_epoch`` policy);
- val: resize to ``size x size``, image to float in [0, 1].

Both give ``(image [3, size, size] float32 in [0, 1], target)`` with target as ``datasets.transforms`` describes:
``boxes`` (cx, cy, w, h) / (W, H) float32, ``labels`` int64, ``area`` float32 (pixels² of the output image),
``iscrowd``, ``image_id``, ``orig_size`` and ``size`` (h, w), and ``masks`` when the input has them.

Per batch (``MultiScaleBatchResize``): while the epoch is below ``stop_epoch``, the padded batch is resized (nearest)
to a square size drawn from a list (the official ``BatchImageCollateFunction``).

The epoch that both read is a ``datasets.shared_epoch.SharedEpoch``: set once per epoch in the main process, seen
by DataLoader workers whether forked or spawned, persistent or started each epoch.
"""
from collections.abc import Sequence

import PIL.Image
import torch
import torch.nn.functional as nnf
from torchvision import tv_tensors
from torchvision.transforms import v2 as T

from datasets.shared_epoch import SharedEpoch
from util.nested_tensor import NestedTensor

# The official training sizes of the multi-scale batch resize (640 three times: drawn more often).
OFFICIAL_MULTISCALE_SIZES = (480, 512, 544, 576, 608, 640, 640, 640, 672, 704, 736, 768, 800)
# Per-object fields that are neither boxes nor masks: dropped together with their boxes.
PER_OBJECT_FIELDS = ("labels", "iscrowd", "area_per_box_area")


def _stopped(epoch: SharedEpoch, stop_epoch: int | None) -> bool:
    return stop_epoch is not None and epoch.get() >= stop_epoch


class StopEpochCompose(T.Compose):
    """``transforms`` in order, except that from epoch ``stop_epoch`` on (``epoch.get() >= stop_epoch``; None:
    never) the transforms at positions ``stoppable`` are skipped."""

    def __init__(self, transforms: Sequence, stoppable: Sequence[int], stop_epoch: int | None, epoch: SharedEpoch):
        super().__init__(list(transforms))
        if any(not 0 <= i < len(self.transforms) for i in stoppable):
            raise ValueError(f"stoppable positions {list(stoppable)} outside 0..{len(self.transforms) - 1}")
        self.stoppable = frozenset(stoppable)
        self.stop_epoch = stop_epoch
        self.epoch = epoch

    def forward(self, *inputs):
        sample = inputs if len(inputs) > 1 else inputs[0]
        skip = self.stoppable if _stopped(self.epoch, self.stop_epoch) else frozenset()
        for position, transform in enumerate(self.transforms):
            if position not in skip:
                sample = transform(sample)
        return sample


def per_object_fields(sample: tuple) -> tuple[torch.Tensor, ...]:
    """``SanitizeBoundingBoxes``' labels getter: the target's per-object tensors other than boxes and masks, so
    that a dropped box drops its label, crowd flag and area with it."""
    _, target = sample
    return tuple(target[key] for key in PER_OBJECT_FIELDS if key in target)


def train_ops(size: int) -> tuple[list, list[int]]:
    """The official training ops for ``size x size`` outputs, and the positions of those the ``stop_epoch`` policy
    skips (photometric distortion, zoom-out, IoU crop)."""
    ops = [
        T.RandomPhotometricDistort(p=0.5),
        T.RandomZoomOut(fill=0),
        T.RandomApply([T.RandomIoUCrop()], p=0.8),
        T.SanitizeBoundingBoxes(min_size=1, labels_getter=per_object_fields),
        T.RandomHorizontalFlip(),
        T.Resize((size, size)),
        T.SanitizeBoundingBoxes(min_size=1, labels_getter=per_object_fields),
        *output_ops(),
    ]
    return ops, [0, 1, 2]


def val_ops(size: int) -> list:
    """The official validation ops: resize to ``size x size``, image to float."""
    return [T.Resize((size, size)), *output_ops()]


def output_ops() -> list:
    """PIL image -> float32 tensor in [0, 1]; boxes to (cx, cy, w, h) in pixels (normalised by ``to_detr_target``)."""
    return [T.ToImage(), T.ToDtype(torch.float32, scale=True), T.ConvertBoundingBoxFormat("CXCYWH")]


class RTDETRTransforms:
    """A ``datasets.coco.CocoDetection`` transform running ``ops`` (torchvision v2 transforms, ending with the image
    as a float tensor and the boxes in CXCYWH) on ``(PIL image, target)``; see the module docstring for the
    target it returns."""

    def __init__(self, ops: T.Transform):
        self.ops = ops

    def __call__(self, image: PIL.Image.Image, target: dict) -> tuple[torch.Tensor, dict]:
        image, transformed = self.ops(image, to_tv_target(target, image.height, image.width))
        return image.as_subclass(torch.Tensor), to_detr_target(transformed, target)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.ops})"


def to_tv_target(target: dict, height: int, width: int) -> dict:
    """The per-object part of a target (boxes absolute xyxy) as v2 transforms read it: boxes as ``BoundingBoxes`` on
    a ``height x width`` canvas, masks as ``Mask``, and the area as a multiple of the box area (so that it follows
    every resize and crop of the box)."""
    boxes = target["boxes"]
    box_area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    out = {
        "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(height, width)),
        "labels": target["labels"],
        "iscrowd": target["iscrowd"],
        "area_per_box_area": target["area"] / box_area.clamp(min=torch.finfo(torch.float32).tiny),
    }
    if "masks" in target:
        out["masks"] = tv_tensors.Mask(target["masks"])
    return out


def to_detr_target(transformed: dict, target: dict) -> dict:
    """This codebase's target from the output of the ops (boxes CXCYWH in pixels) and the input ``target`` (for
    ``image_id`` and ``orig_size``)."""
    boxes = transformed["boxes"]
    height, width = boxes.canvas_size
    pixels = boxes.as_subclass(torch.Tensor).float()
    out = {
        "boxes": pixels / torch.tensor([width, height, width, height], dtype=torch.float32),
        "labels": transformed["labels"],
        "image_id": target["image_id"],
        "area": (transformed["area_per_box_area"] * pixels[:, 2] * pixels[:, 3]).float(),
        "iscrowd": transformed["iscrowd"],
        "orig_size": target["orig_size"],
        "size": torch.as_tensor([int(height), int(width)]),
    }
    if "masks" in transformed:
        out["masks"] = transformed["masks"].as_subclass(torch.Tensor)
    return out


def make_rtdetr_transforms(image_set: str, size: int = 640, stop_epoch: int | None = None,
                           epoch: SharedEpoch | None = None) -> RTDETRTransforms:
    """RT-DETR's ``image_set`` ('train' or 'val') pipeline for ``size x size`` images. train: from ``epoch``
    ``stop_epoch`` on (None: never) the photometric distortion, zoom-out and IoU crop are skipped; ``epoch`` is the
    ``SharedEpoch`` the run sets (a fresh one at 0 when None)."""
    if size < 1:
        raise ValueError(f"size must be at least 1, got {size}")
    if image_set == "train":
        ops, stoppable = train_ops(size)
        epoch = epoch if epoch is not None else SharedEpoch()
        return RTDETRTransforms(StopEpochCompose(ops, stoppable, stop_epoch, epoch))
    if image_set == "val":
        return RTDETRTransforms(T.Compose(val_ops(size)))
    raise ValueError(f"unknown image_set {image_set!r}; expected 'train' or 'val'")


class MultiScaleBatchResize:
    """RT-DETR's multi-scale training: while ``epoch.get() < stop_epoch`` (None: always), a collated batch is
    resized with nearest interpolation to ``s x s``, ``s`` drawn uniformly from ``sizes`` (repeats weigh more);
    from ``stop_epoch`` on, or with no sizes, batches pass unchanged.

    Called as ``samples, targets = resize(samples, targets)`` on a ``NestedTensor`` (``[B, C, H, W]``, mask
    ``[B, H, W]``) and its targets; boxes are relative and stay as they are, ``size`` becomes ``(s, s)`` (an image
    padded in its batch: its size scaled as the batch), ``area`` is scaled with the image and ``masks`` are resized
    (nearest) too. The draw uses torch's random generator (seeded per DataLoader worker).
    """

    def __init__(self, sizes: Sequence[int], stop_epoch: int | None, epoch: SharedEpoch):
        if any(s < 1 for s in sizes):
            raise ValueError(f"sizes must be at least 1, got {list(sizes)}")
        self.sizes = tuple(int(s) for s in sizes)
        self.stop_epoch = stop_epoch
        self.epoch = epoch

    def __call__(self, samples: NestedTensor, targets: Sequence[dict]) -> tuple[NestedTensor, tuple[dict, ...]]:
        if not self.sizes or _stopped(self.epoch, self.stop_epoch):
            return samples, tuple(targets)
        side = self.sizes[int(torch.randint(len(self.sizes), ()))]
        canvas = samples.tensors.shape[-2:]
        images = nnf.interpolate(samples.tensors, size=(side, side), mode="nearest")
        mask = samples.mask
        if mask is not None:
            mask = _nearest(mask, (side, side))
        return NestedTensor(images, mask), tuple(_resized_target(t, canvas, side) for t in targets)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(sizes={list(self.sizes)}, stop_epoch={self.stop_epoch})"


def _nearest(stack: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``[N, H, W]`` masks of any dtype resized to ``size`` (h, w) with nearest interpolation (N may be 0)."""
    if stack.shape[0] == 0:
        return stack.new_zeros((0, *size))
    return nnf.interpolate(stack[:, None].float(), size=size, mode="nearest")[:, 0].to(stack.dtype)


def _resized_target(target: dict, canvas: Sequence[int], side: int) -> dict:
    """``target`` of an image of ``size`` (h, w) padded to ``canvas`` (H, W), after the canvas became side x side."""
    height, width = (int(v) for v in target["size"])
    new_size = (round(height * side / canvas[0]), round(width * side / canvas[1]))
    out = {**target, "size": torch.as_tensor(new_size),
           "area": target["area"] * (new_size[0] * new_size[1] / (height * width))}
    if "masks" in target:
        out["masks"] = _nearest(target["masks"], new_size)
    return out
