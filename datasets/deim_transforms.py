"""DEIM's dense one-to-one data schedule (Huang et al., "DEIM: DETR with Improved Matching for Fast Convergence",
CVPR 2025, arXiv:2412.04234; Intellindust-AI-Lab/DEIM ``configs/base/deim.yml``) on top of RT-DETR's pipeline
(``datasets.rtdetr_transforms``): more objects per training image in the early epochs, so that one-to-one matching
finds more positive queries.

Per image (:class:`DenseO2OCompose`), a four-stage policy over the epochs START, MOSAIC_STOP, STOP (the official
``policy.epoch``, e.g. ``[4, 29, 50]``; ``--policy_epoch``):

- epoch < START and epoch >= STOP: no Mosaic, photometric distortion, zoom-out or IoU crop (flip and resize only);
- START <= epoch < MOSAIC_STOP: with probability ``mosaic_prob`` (0.5) a :class:`Mosaic` first and then no zoom-out
  or IoU crop, otherwise RT-DETR's ops; the photometric distortion either way;
- MOSAIC_STOP <= epoch < STOP: RT-DETR's ops.

Per batch (:class:`BatchMixUp`, in the collation of the DataLoader workers, before the multi-scale resize): while
START <= epoch < STOP of ``mixup_epochs`` (e.g. ``[4, 29]``), with probability ``mixup_prob`` (0.5) every image of
the batch is blended with the one before it (the first with the last) and keeps both images' objects.

Both read the run's ``datasets.shared_epoch.SharedEpoch``, so DataLoader workers see the epoch, persistent ones
included. Mosaic needs other images: the dataset attaches itself to its transforms when they have an
``attach_dataset`` method (``datasets.coco.CocoDetection`` does), and Mosaic draws through the dataset's
``load_item(index)`` (image and target before any transform, an error for an image that cannot be used) among
``mosaic_indices()`` (the indices this process may read: with ``--cache_mode``, the images it holds). With
``skip_bad_images`` a drawn image that fails is replaced by another draw; the failing image is reported when its own
turn in the epoch comes.

Copy-blend (``copyblend_prob``) is not here: no DEIM config uses it; it arrived with DEIMv2's configs.
"""
from collections.abc import Sequence
from typing import Callable

import PIL.Image
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2 as T

from datasets.image_file import BadImageError
from datasets.rtdetr_transforms import (
    PER_OBJECT_FIELDS,
    RTDETRTransforms,
    make_rtdetr_transforms,
    to_tv_target,
    train_ops,
)
from datasets.shared_epoch import SharedEpoch
from util.nested_tensor import NestedTensor

# The flags (args names) that turn DEIM's schedule on; None when unused (datasets.coco.make_pipeline, cli/data.py).
DENSE_O2O_FLAGS = ("policy_epoch", "mosaic_prob", "mixup_prob", "mixup_epochs")
# DEIM's Mosaic as configs/base/deim.yml sets it (the dataset-drawing variant, use_cache False).
MOSAIC_OUTPUT_SIZE = 320
MOSAIC_BASE_SIZE = 640  # the training size DEIM's 320 goes with: a pipeline of another size scales it
MOSAIC_ROTATION = 10.0
MOSAIC_TRANSLATION = (0.1, 0.1)
MOSAIC_SCALING = (0.5, 1.5)
MOSAIC_FILL = 0
# The mixing weight of MixUp is drawn uniformly from this range (the official, rounded to 6 decimals).
MIXUP_RATIO_RANGE = (0.45, 0.55)
# With skip_bad_images, draws of another image before a Mosaic is given up for that sample.
MAX_DRAWS = 10


class Mosaic:
    """DEIM's Mosaic on ``(image, target)``: a PIL image and its target as ``datasets.rtdetr_transforms.to_tv_target``
    makes it (``boxes`` ``BoundingBoxes`` XYXY in pixels, ``labels``, ``iscrowd``, ``area_per_box_area``, optional
    ``masks``).

    The image and three others drawn uniformly, with replacement, from the attached dataset are each resized so that
    their shorter side is ``output_size`` (aspect ratio kept; torchvision ``Resize``), and pasted, in that order, at
    the top-left corners of the four cells (left to right, top to bottom) of a ``2 max_h x 2 max_w`` canvas filled
    with ``fill_value`` (``max_h``, ``max_w``: the largest height and width of the four); boxes and masks move with
    their pixels and the per-object fields are concatenated. Then a random affine transform of the whole canvas
    (torchvision ``RandomAffine``: rotation within +-``rotation_range`` degrees, translation up to
    ``translation_range`` of the canvas, scale in ``scaling_range``, fill ``fill_value``; each box becomes the box
    enclosing its moved corners, clipped to the canvas). The output has the canvas's size. Defaults: DEIM's.
    """

    def __init__(self, output_size: int = MOSAIC_OUTPUT_SIZE, rotation_range: float = MOSAIC_ROTATION,
                 translation_range: Sequence[float] = MOSAIC_TRANSLATION,
                 scaling_range: Sequence[float] = MOSAIC_SCALING, fill_value: int = MOSAIC_FILL):
        if output_size < 1:
            raise ValueError(f"Mosaic: output_size must be at least 1, got {output_size}")
        self.output_size = output_size
        self.fill_value = fill_value
        self.resize = T.Resize(output_size)
        self.affine = T.RandomAffine(degrees=rotation_range, translate=list(translation_range),
                                     scale=list(scaling_range), fill=fill_value)
        self.source = None

    def attach_dataset(self, dataset) -> None:
        """Draw the other images from ``dataset`` (``load_item``, ``mosaic_indices``, ``skip_bad_images``)."""
        self.source = dataset

    def __call__(self, sample: tuple) -> tuple:
        image, target = sample
        pieces = [self.resize(image, target)]
        for _ in range(3):
            other = self.draw()
            if other is None:  # every draw failed (skip_bad_images): this sample keeps its image
                return image, target
            pieces.append(self.resize(*other))
        return self.affine(*paste_mosaic(pieces, self.fill_value))

    def draw(self) -> tuple[PIL.Image.Image, dict] | None:
        """Another item of the attached dataset, drawn uniformly among its ``mosaic_indices()``, as
        ``(image, to_tv_target(target))``; None when ``MAX_DRAWS`` draws failed (with ``skip_bad_images``)."""
        source = self.source
        if source is None:
            raise RuntimeError("Mosaic draws other images from a dataset: attach one with attach_dataset "
                               "(datasets.coco.CocoDetection attaches itself to its transforms)")
        pool = source.mosaic_indices()
        for _ in range(MAX_DRAWS):
            index = pool[int(torch.randint(len(pool), ()))]
            try:
                image, target = source.load_item(index)
            except (BadImageError, FileNotFoundError):
                if not getattr(source, "skip_bad_images", False):
                    raise
                continue
            return image, to_tv_target(target, image.height, image.width)
        return None

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(output_size={self.output_size}, affine={self.affine}, "
                f"fill_value={self.fill_value})")


def paste_mosaic(pieces: Sequence[tuple[PIL.Image.Image, dict]], fill_value: int = 0) -> tuple[PIL.Image.Image, dict]:
    """Four ``(image, target)`` (targets as :class:`Mosaic` takes them) pasted at the top-left corners of the cells
    of a ``2 max_h x 2 max_w`` canvas of ``fill_value``: cell ``k`` at ``(x, y) = ((k % 2) max_w, (k // 2) max_h)``.
    Boxes are shifted by their cell's corner, masks placed on canvas-sized zeros, per-object fields concatenated."""
    max_h = max(image.height for image, _ in pieces)
    max_w = max(image.width for image, _ in pieces)
    first = pieces[0][0]
    canvas = PIL.Image.new(first.mode, (2 * max_w, 2 * max_h), (fill_value,) * len(first.getbands()))
    corners = [((k % 2) * max_w, (k // 2) * max_h) for k in range(len(pieces))]
    boxes = []
    for (image, target), (x, y) in zip(pieces, corners):
        canvas.paste(image, (x, y))
        boxes.append(target["boxes"].as_subclass(torch.Tensor) + torch.tensor([x, y, x, y], dtype=torch.float32))
    merged = {"boxes": tv_tensors.BoundingBoxes(torch.cat(boxes), format="XYXY", canvas_size=(2 * max_h, 2 * max_w))}
    for key in PER_OBJECT_FIELDS:
        merged[key] = torch.cat([target[key] for _, target in pieces])
    if "masks" in pieces[0][1]:
        placed = []
        for (image, target), (x, y) in zip(pieces, corners):
            masks = target["masks"].as_subclass(torch.Tensor)
            full = masks.new_zeros((masks.shape[0], 2 * max_h, 2 * max_w))
            full[:, y:y + image.height, x:x + image.width] = masks
            placed.append(full)
        merged["masks"] = tv_tensors.Mask(torch.cat(placed))
    return canvas, merged


class DenseO2OCompose(T.Compose):
    """``transforms`` in order under DEIM's four-stage policy (see the module docstring), with
    ``policy_epoch`` = (START, MOSAIC_STOP, STOP) and the epoch read from ``epoch``. ``roles`` gives the positions
    of the transforms the policy decides on: ``photometric``, ``zoom_out``, ``iou_crop`` and, optionally,
    ``mosaic`` (drawn with probability ``mosaic_prob`` per sample in [START, MOSAIC_STOP))."""

    ROLES = ("photometric", "zoom_out", "iou_crop")

    def __init__(self, transforms: Sequence[Callable], roles: dict[str, int], policy_epoch: Sequence[int],
                 epoch: SharedEpoch, mosaic_prob: float = 0.0):
        super().__init__(list(transforms))
        missing = [role for role in self.ROLES if role not in roles]
        if missing or any(not 0 <= i < len(self.transforms) for i in roles.values()):
            raise ValueError(f"DenseO2OCompose: roles {roles} must give positions of {list(self.ROLES)} (and "
                             f"optionally mosaic) among the {len(self.transforms)} transforms")
        if len(policy_epoch) != 3 or not 0 <= policy_epoch[0] <= policy_epoch[1] <= policy_epoch[2]:
            raise ValueError(f"DenseO2OCompose: policy_epoch must be 3 epochs 0 <= START <= MOSAIC_STOP <= STOP, "
                             f"got {list(policy_epoch)}")
        if not 0.0 <= mosaic_prob <= 1.0:
            raise ValueError(f"DenseO2OCompose: mosaic_prob must be in [0, 1], got {mosaic_prob}")
        self.roles = dict(roles)
        self.policy_epoch = tuple(int(e) for e in policy_epoch)
        self.epoch = epoch
        self.mosaic_prob = mosaic_prob

    @property
    def mosaic(self) -> Mosaic | None:
        return self.transforms[self.roles["mosaic"]] if "mosaic" in self.roles else None

    def skipped(self) -> set[int]:
        """The positions to skip for one sample at the current epoch (draws the Mosaic decision in its stage)."""
        start, mosaic_stop, stop = self.policy_epoch
        current = self.epoch.get()
        if not start <= current < stop:
            return set(self.roles.values())
        mosaic = self.roles.get("mosaic")
        if mosaic is not None and current < mosaic_stop and float(torch.rand(())) < self.mosaic_prob:
            return {self.roles["zoom_out"], self.roles["iou_crop"]}
        return set() if mosaic is None else {mosaic}

    def forward(self, *inputs):
        sample = inputs if len(inputs) > 1 else inputs[0]
        skip = self.skipped()
        for position, transform in enumerate(self.transforms):
            if position not in skip:
                sample = transform(sample)
        return sample

    def extra_repr(self) -> str:
        return f"policy_epoch={list(self.policy_epoch)}, mosaic_prob={self.mosaic_prob}\n{super().extra_repr()}"


class DenseO2OTransforms(RTDETRTransforms):
    """RT-DETR's per-image transform (``datasets.rtdetr_transforms.RTDETRTransforms``) running a
    :class:`DenseO2OCompose`; attaching a dataset hands it to the Mosaic."""

    def attach_dataset(self, dataset) -> None:
        if self.ops.mosaic is not None:
            self.ops.mosaic.attach_dataset(dataset)


def make_dense_o2o_transforms(size: int, policy_epoch: Sequence[int], epoch: SharedEpoch, mosaic_prob: float = 0.0,
                              mosaic: Mosaic | None = None) -> DenseO2OTransforms:
    """RT-DETR's training ops for ``size x size`` images under DEIM's policy, preceded by ``mosaic`` (default:
    DEIM's :class:`Mosaic`, its shorter sides scaled with ``size``: 320 px at DEIM's 640) when ``mosaic_prob`` > 0."""
    ops, (photometric, zoom_out, iou_crop) = train_ops(size)
    roles = {"photometric": photometric, "zoom_out": zoom_out, "iou_crop": iou_crop}
    if mosaic_prob > 0:
        if mosaic is None:
            mosaic = Mosaic(output_size=max(1, round(size * MOSAIC_OUTPUT_SIZE / MOSAIC_BASE_SIZE)))
        ops = [mosaic, *ops]
        roles = {"mosaic": 0, **{role: position + 1 for role, position in roles.items()}}
    return DenseO2OTransforms(DenseO2OCompose(ops, roles, policy_epoch, epoch, mosaic_prob))


class BatchMixUp:
    """DEIM's MixUp of a collated batch: while ``start <= epoch.get() < stop`` (``epochs``), with probability
    ``prob`` per batch, image ``i`` becomes ``beta * image_i + (1 - beta) * image_{i-1}`` (image ``-1``: the last),
    ``beta`` drawn uniformly from ``ratio_range`` and rounded to 6 decimals, one per batch; its target keeps its own
    objects then those of image ``i - 1``: ``boxes`` (relative, so both images must be of one size), ``labels``,
    ``area``, ``iscrowd`` and ``masks`` concatenated, and ``mixup`` (float32, per object: ``beta`` for its own,
    ``1 - beta`` for the others; no loss reads it, as in the official). Batches of one image are left as they are
    (the official would blend the image with itself and repeat its objects). Random draws: torch's generator.

    Called as ``samples, targets = mixup(samples, targets)`` on a ``NestedTensor`` (``[B, C, H, W]``, mask
    ``[B, H, W]``) and its targets.
    """

    MIXED_FIELDS = ("boxes", "labels", "area", "iscrowd", "masks")

    def __init__(self, prob: float, epochs: Sequence[int], epoch: SharedEpoch,
                 ratio_range: Sequence[float] = MIXUP_RATIO_RANGE):
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"BatchMixUp: prob must be in [0, 1], got {prob}")
        if len(epochs) != 2 or not 0 <= epochs[0] <= epochs[1]:
            raise ValueError(f"BatchMixUp: epochs must be 0 <= START <= STOP, got {list(epochs)}")
        self.prob = prob
        self.epochs = tuple(int(e) for e in epochs)
        self.epoch = epoch
        self.ratio_range = tuple(float(r) for r in ratio_range)

    def active(self) -> bool:
        return self.epochs[0] <= self.epoch.get() < self.epochs[1]

    def __call__(self, samples: NestedTensor, targets: Sequence[dict]) -> tuple[NestedTensor, tuple[dict, ...]]:
        targets = tuple(targets)
        if len(targets) < 2 or not self.active() or float(torch.rand(())) >= self.prob:
            return samples, targets
        sizes = {tuple(int(v) for v in t["size"]) for t in targets}
        if len(sizes) > 1:
            raise ValueError(f"BatchMixUp needs the images of a batch at one size (their boxes are relative to it), "
                             f"got sizes {sorted(sizes)}")
        low, high = self.ratio_range
        beta = round(low + (high - low) * float(torch.rand(())), 6)
        return mix_batch(samples, targets, beta)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(prob={self.prob}, epochs={list(self.epochs)})"


def mix_batch(samples: NestedTensor, targets: Sequence[dict], beta: float) -> tuple[NestedTensor, tuple[dict, ...]]:
    """The MixUp of :class:`BatchMixUp` with weight ``beta``, applied."""
    targets = tuple(targets)
    images = samples.tensors
    mixed = images.roll(shifts=1, dims=0) * (1.0 - beta) + images * beta
    mask = samples.mask
    if mask is not None:  # padding only where both images are padding
        mask = mask & mask.roll(shifts=1, dims=0)
    out = []
    for own, other in zip(targets, targets[-1:] + tuple(targets[:-1])):
        target = dict(own)
        for key in BatchMixUp.MIXED_FIELDS:
            if key in own:
                target[key] = torch.cat([own[key], other[key]])
        target["mixup"] = torch.tensor([beta] * len(own["labels"]) + [1.0 - beta] * len(other["labels"]),
                                       dtype=torch.float32)
        out.append(target)
    return NestedTensor(mixed, mask), tuple(out)


class BatchTransforms:
    """Batch transforms (``samples, targets -> samples, targets``) applied in order."""

    def __init__(self, transforms: Sequence[Callable]):
        self.transforms = list(transforms)

    def __call__(self, samples: NestedTensor, targets: Sequence[dict]) -> tuple[NestedTensor, tuple[dict, ...]]:
        for transform in self.transforms:
            samples, targets = transform(samples, targets)
        return samples, tuple(targets)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.transforms})"


def make_dense_o2o_pipeline(size: int, epoch: SharedEpoch, stop_epoch: int | None, multiscale: Callable | None, *,
                            policy_epoch: Sequence[int] | None = None, mosaic_prob: float = 0.0,
                            mixup_prob: float = 0.0, mixup_epochs: Sequence[int] | None = None
                            ) -> tuple[RTDETRTransforms, Callable | None, SharedEpoch]:
    """The training pipeline of ``datasets.coco.make_pipeline`` with DEIM's options: per image, DEIM's policy
    (:func:`make_dense_o2o_transforms`) with ``policy_epoch``, else RT-DETR's transforms stopped at ``stop_epoch``;
    per batch, :class:`BatchMixUp` when ``mixup_prob`` > 0, then ``multiscale`` (RT-DETR's multi-scale resize, or
    None). Returns (per-image transform, per-batch transform or None, ``epoch``)."""
    if policy_epoch is not None:
        transforms = make_dense_o2o_transforms(size, policy_epoch, epoch, mosaic_prob)
    else:
        transforms = make_rtdetr_transforms("train", size, stop_epoch, epoch)
    batch = [BatchMixUp(mixup_prob, mixup_epochs, epoch)] if mixup_prob else []
    batch += [multiscale] if multiscale is not None else []
    batch_transform = None if not batch else batch[0] if len(batch) == 1 else BatchTransforms(batch)
    return transforms, batch_transform, epoch
