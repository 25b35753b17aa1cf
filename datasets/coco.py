"""COCO detection dataset in DETR's format, and DETR's augmentation recipe.

Layout under ``--coco_path``::

    train2017/*.jpg  val2017/*.jpg  annotations/instances_train2017.json  annotations/instances_val2017.json

Each item is ``(image, target)``: image ``[3, H, W]`` float, ImageNet-normalised (``--data_pipeline detr``, the
default) or in [0, 1] at ``--image_size`` x ``--image_size`` (``rtdetr``: ``datasets.rtdetr_transforms``); target as
described in ``datasets.transforms`` (boxes relative cxcywh in [0, 1]).
"""
import contextlib
import io
import json
import warnings
from pathlib import Path
from typing import Any, Callable, Optional

import PIL.Image
import torch
import torchvision
from pycocotools import mask as coco_mask
from pycocotools.coco import COCO

import datasets.transforms as T
from datasets.annotation_schema import check_instances
from datasets.bad_images import SkippedImage
from datasets.deim_transforms import DENSE_O2O_FLAGS, make_dense_o2o_pipeline
from datasets.image_cache import ImageBytesCache
from datasets.image_file import BadImageError, read_image
from datasets.invalid_boxes import drop_invalid_boxes
from datasets.rtdetr_transforms import OFFICIAL_MULTISCALE_SIZES, MultiScaleBatchResize, make_rtdetr_transforms
from datasets.shared_epoch import SharedEpoch
from util.coco_categories import COCO_80_CATEGORY_IDS
from util.distributed import is_main_process

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DATA_PIPELINES = ("detr", "rtdetr")
# Per pipeline, the (mean, std) its images were normalised with: x_model = (x - mean) / std for x in [0, 1].
IMAGE_NORMALIZATION = {"detr": (IMAGENET_MEAN, IMAGENET_STD), "rtdetr": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))}

COCO_SPLITS = {
    "train": ("train2017", "instances_train2017.json"),
    "val": ("val2017", "instances_val2017.json"),
}


def _read_annotation_json(ann_file: Path) -> dict:
    try:
        with open(ann_file) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"annotation file {ann_file} is not valid JSON: {e}") from e


def check_label_count(label_to_category_id: list[int], num_classes: int, source: str) -> None:
    """With the remap, labels 0..K-1 must index the classifier: K <= ``num_classes``; ``source`` names the file."""
    count = len(label_to_category_id)
    if count > num_classes:
        raise ValueError(f"{source} has {count} categories, so category id {label_to_category_id[-1]} is label "
                         f"{count - 1} with --remap_mscoco_category, but --num_classes is {num_classes}; labels must "
                         f"be < --num_classes (use --num_classes {count} or more)")


def check_category_ids(category_ids, num_classes: int, source: str) -> None:
    """Every category id must index the classifier: < ``num_classes``; ``source`` names the file in the error."""
    too_big = sorted(i for i in category_ids if i >= num_classes)
    if too_big:
        raise ValueError(f"{source} has category id {too_big[-1]} but --num_classes is {num_classes}; category ids "
                         f"must be < --num_classes (use --num_classes {too_big[-1] + 1} or more)")


def convert_coco_poly_to_mask(segmentations: list, height: int, width: int) -> torch.Tensor:
    """COCO segmentations (polygon lists, uncompressed or compressed RLE) -> uint8 masks ``[N, height, width]``."""
    masks = []
    for segm in segmentations:
        if isinstance(segm, dict) and isinstance(segm.get("counts"), (str, bytes)):
            rles = segm  # already compressed RLE
        else:
            rles = coco_mask.frPyObjects(segm, height, width)
        with warnings.catch_warnings():  # pycocotools' decode warns about numpy 2's copy keyword on every call
            warnings.filterwarnings("ignore", category=DeprecationWarning, module="pycocotools")
            mask = coco_mask.decode(rles)
        if mask.ndim < 3:
            mask = mask[..., None]
        masks.append(torch.as_tensor(mask, dtype=torch.uint8).any(dim=2))
    if masks:
        return torch.stack(masks, dim=0).to(torch.uint8)
    return torch.zeros((0, height, width), dtype=torch.uint8)


class ConvertCocoPolysToMask:
    """COCO annotation list -> DETR target dict (see ``datasets.transforms`` for the keys).

    Crowd objects are left out, boxes go from xywh to xyxy, are clipped to the image, and boxes with zero width or
    height after clipping are dropped (with their label, area, iscrowd and mask). An image without objects gives
    ``boxes`` ``[0, 4]``. ``labels`` are the category ids, or ``category_to_label[id]`` when that map is given.
    """

    def __init__(self, return_masks: bool = False, category_to_label: Optional[dict[int, int]] = None):
        self.return_masks = return_masks
        self.category_to_label = category_to_label

    def __call__(self, image: PIL.Image.Image, target: dict) -> tuple[PIL.Image.Image, dict]:
        w, h = image.size
        anno = [obj for obj in target["annotations"] if obj.get("iscrowd", 0) == 0]

        boxes = torch.as_tensor([obj["bbox"] for obj in anno], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        boxes[:, 0::2].clamp_(min=0, max=w)
        boxes[:, 1::2].clamp_(min=0, max=h)
        keep = (boxes[:, 3] > boxes[:, 1]) & (boxes[:, 2] > boxes[:, 0])

        out = {
            "boxes": boxes[keep],
            "labels": torch.tensor([self._label(obj["category_id"]) for obj in anno], dtype=torch.int64)[keep],
            "image_id": torch.tensor([target["image_id"]]),
            "area": torch.tensor([float(obj["area"]) for obj in anno], dtype=torch.float32)[keep],
            "iscrowd": torch.tensor([obj.get("iscrowd", 0) for obj in anno], dtype=torch.int64)[keep],
            "orig_size": torch.as_tensor([int(h), int(w)]),
            "size": torch.as_tensor([int(h), int(w)]),
        }
        if self.return_masks:
            out["masks"] = convert_coco_poly_to_mask([obj["segmentation"] for obj in anno], h, w)[keep]
        return image, out

    def _label(self, category_id: int) -> int:
        # every annotation's category is listed (datasets.annotation_schema), so the map has its id
        return category_id if self.category_to_label is None else self.category_to_label[category_id]


def contiguous_labels(category_ids) -> list[int]:
    """Label i stands for id ``[i]`` (``--remap_mscoco_category``): COCO's 80 ids in order when the file's ids are
    among them (the official ``mscoco_label2category``, whatever subset of COCO's categories a file lists), else the
    file's ids in sorted order."""
    ids = sorted(int(i) for i in category_ids)
    return list(COCO_80_CATEGORY_IDS) if set(ids) <= set(COCO_80_CATEGORY_IDS) else ids


class CocoDetection(torchvision.datasets.CocoDetection):
    """torchvision's COCO dataset returning DETR targets, checked when built, with errors that name the file.

    The annotation file must have the structure ``datasets.annotation_schema`` describes; annotations with an
    invalid box are left out (``datasets.invalid_boxes``; ``strict_annotations``: an error instead), so training
    and the evaluation ground truth (``.coco``) agree. ``num_classes`` (optional) is checked once here: every
    category id must be < num_classes. ``remove_difficult``: annotations with a true ``difficult`` field (VOC-style
    datasets) become crowd regions, so training leaves them out and COCO evaluation neither counts nor penalises
    detections on them. Each image is decoded fully and must be the size its annotation file says
    (``datasets.image_file``); ``skip_bad_images``: an image that fails gives a ``datasets.bad_images.SkippedImage``
    item instead of an error. ``cache``: keep the files' bytes in memory (``datasets.image_cache``; this process's
    share is ``cache_share`` = (local rank, processes per node)).

    ``remap_categories``: labels are 0..K-1 for the K categories in sorted id order instead of the category ids;
    ``label_to_category_id`` (a list, index = label; None without the remap) maps them back, and
    ``num_classes()`` is K. ``batch_transform``: applied by ``datasets.loaders`` to each collated training batch
    (RT-DETR's ``MultiScaleBatchResize``) or None. ``epoch``: the ``SharedEpoch`` that ``transforms`` and
    ``batch_transform`` read (RT-DETR's pipeline), or None; the run sets it each epoch (``RunData.set_epoch``).

    ``annotations``: the content of the annotation file, already read (another layout converted in memory,
    ``datasets.layouts``); ``ann_file`` then only names the split's source in messages and is not read.

    Transforms with an ``attach_dataset`` method (DEIM's Mosaic, ``datasets.deim_transforms``) are given the dataset
    to draw other items from: :meth:`load_item` among :meth:`mosaic_indices`.
    """

    def __init__(self, img_folder: str | Path, ann_file: str | Path, transforms: Optional[Callable],
                 return_masks: bool, num_classes: Optional[int] = None, remove_difficult: bool = False, *,
                 strict_annotations: bool = False, skip_bad_images: bool = False, cache: bool = False,
                 cache_share: tuple[int, int] = (0, 1), remap_categories: bool = False,
                 batch_transform: Optional[Callable] = None, epoch: Optional[SharedEpoch] = None,
                 annotations: Optional[dict] = None):
        img_folder, ann_file = Path(img_folder), Path(ann_file)
        if not img_folder.is_dir():
            raise FileNotFoundError(f"image folder {img_folder} not found (expected a directory of the images "
                                    f"listed in {ann_file.name})")
        if annotations is None and not ann_file.is_file():
            raise FileNotFoundError(f"annotation file {ann_file} not found (expected a COCO instances JSON file)")
        data = _read_annotation_json(ann_file) if annotations is None else annotations
        check_instances(data, ann_file, need_segmentation=return_masks)
        dropped = drop_invalid_boxes(data, ann_file, strict=strict_annotations)
        if dropped and is_main_process():
            print(f"warning: {dropped}", flush=True)
        torchvision.datasets.VisionDataset.__init__(self, str(img_folder))
        self.coco = COCO()
        self.coco.dataset = data
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools' "creating index..." chatter
            self.coco.createIndex()
        self.ids = sorted(self.coco.imgs)
        self.ann_file = ann_file
        if remove_difficult:
            for ann in self.coco.dataset["annotations"]:
                if ann.get("difficult", 0):
                    ann["iscrowd"] = 1
        self._transforms = transforms
        self.batch_transform = batch_transform
        self.epoch = epoch
        self.label_to_category_id = self._contiguous_labels() if remap_categories else None
        self.prepare = ConvertCocoPolysToMask(return_masks, self.category_to_label())
        self.skip_bad_images = skip_bad_images
        self.cache = ImageBytesCache([self._path(i) for i in self.ids], *cache_share) if cache else None
        self.cache_share = cache_share if cache else (0, 1)
        attach = getattr(transforms, "attach_dataset", None)
        if attach is not None:
            attach(self)
        if self.cache is not None and is_main_process():
            print(f"--cache_mode: {len(self.cache)} of the {len(self.ids)} images of {img_folder} "
                  f"({self.cache.nbytes() / 2**20:.1f} MiB) in memory on this process", flush=True)
        if num_classes is not None and self.label_to_category_id is not None:
            check_label_count(self.label_to_category_id, num_classes, f"annotation file {self.ann_file}")
        elif num_classes is not None:
            check_category_ids(self._category_ids(), num_classes, f"annotation file {self.ann_file}")

    def num_classes(self) -> int:
        """Largest category id + 1 (91 for COCO 2017), or with the remap the number of categories (80 for COCO);
        every annotation's category is among the categories."""
        if self.label_to_category_id is not None:
            return len(self.label_to_category_id)
        return max(self._category_ids(), default=0) + 1

    def category_to_label(self) -> Optional[dict[int, int]]:
        """Category id -> label with the remap (the inverse of ``label_to_category_id``); None without it."""
        if self.label_to_category_id is None:
            return None
        return {category_id: label for label, category_id in enumerate(self.label_to_category_id)}

    def _contiguous_labels(self) -> list[int]:
        if not self.coco.cats:
            raise ValueError(f"annotation file {self.ann_file} lists no categories: there is nothing to map to "
                             f"labels 0..K-1 (--remap_mscoco_category)")
        return contiguous_labels(self.coco.cats)

    def _category_ids(self) -> set[int]:
        return set(self.coco.cats)

    def _path(self, image_id: int) -> Path:
        return Path(self.root) / self.coco.imgs[image_id]["file_name"]

    def _load_image(self, id: int) -> PIL.Image.Image:
        info = self.coco.imgs[id]
        return read_image(self._path(id), id, self.ann_file, (info["width"], info["height"]), self.cache)

    def load_item(self, idx: int) -> tuple[PIL.Image.Image, dict]:
        """Item ``idx`` before the transforms: the RGB image and its target (boxes absolute xyxy); BadImageError or
        FileNotFoundError for an image that cannot be used."""
        image_id = self.ids[idx]
        img = self._load_image(image_id)
        return self.prepare(img, {"image_id": image_id, "annotations": self._load_target(image_id)})

    def mosaic_indices(self) -> range:
        """The indices a transform may draw other items from: all, or with ``cache`` this process's share (the
        images it holds in memory)."""
        local_rank, local_size = self.cache_share
        return range(local_rank, len(self.ids), local_size)

    def __getitem__(self, idx: int) -> tuple[Any, dict] | SkippedImage:
        try:
            img, target = self.load_item(idx)
        except (BadImageError, FileNotFoundError) as exc:
            if not self.skip_bad_images:
                raise
            return SkippedImage(self.ids[idx], str(exc))
        if self._transforms is not None:
            img, target = self._transforms(img, target)
        return img, target


def _scaled(pixels: int, image_size: int) -> int:
    return int(round(pixels * image_size / 800))


def make_coco_transforms(image_set: str, image_size: int = 800, multiscale: bool = True) -> T.Compose:
    """DETR's augmentation, with every pixel size scaled by ``image_size / 800`` (800 reproduces DETR exactly).

    train: horizontal flip; then either a multi-scale resize (shorter side 480..800 step 32, longer <= 1333) or
    resize to 400/500/600, random crop of 384..600, multi-scale resize. ``multiscale=False`` keeps only the flip
    and a resize to ``image_size``. val: resize to ``image_size`` (longer <= 1333 scaled).
    """
    normalize = T.Compose([T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    max_size = _scaled(1333, image_size)
    if image_set == "train":
        if not multiscale:
            return T.Compose([T.RandomHorizontalFlip(), T.RandomResize([image_size], max_size=max_size), normalize])
        scales = [_scaled(480 + 32 * i, image_size) for i in range(11)]
        return T.Compose([
            T.RandomHorizontalFlip(),
            T.RandomSelect(
                T.RandomResize(scales, max_size=max_size),
                T.Compose([
                    T.RandomResize([_scaled(s, image_size) for s in (400, 500, 600)]),
                    T.RandomSizeCrop(_scaled(384, image_size), _scaled(600, image_size)),
                    T.RandomResize(scales, max_size=max_size),
                ]),
            ),
            normalize,
        ])
    if image_set == "val":
        return T.Compose([T.RandomResize([image_size], max_size=max_size), normalize])
    raise ValueError(f"unknown image_set {image_set!r}; expected 'train' or 'val'")


def image_transform(pipeline: str, image_size: int) -> Callable[[PIL.Image.Image], torch.Tensor]:
    """The validation transform of ``pipeline`` for a lone image (no target): PIL RGB -> ``[3, H, W]`` float, as the
    model of that pipeline takes it (detr: shorter side ``image_size``, ImageNet-normalised; rtdetr: ``image_size``
    square, in [0, 1])."""
    if pipeline == "rtdetr":
        return RTDETRImageTransform(image_size)
    detr = make_coco_transforms("val", image_size)
    return lambda image: detr(image, None)[0]


class RTDETRImageTransform:
    """RT-DETR's validation ops on an image alone (``datasets.rtdetr_transforms.val_ops``)."""

    def __init__(self, image_size: int):
        from torchvision.transforms import v2

        from datasets.rtdetr_transforms import val_ops

        self.ops = v2.Compose([op for op in val_ops(image_size) if not isinstance(op, v2.ConvertBoundingBoxFormat)])

    def __call__(self, image: PIL.Image.Image) -> torch.Tensor:
        return self.ops(image).as_subclass(torch.Tensor)


def check_pipeline_flags(pipeline: str, args) -> None:
    """Raise ValueError naming a flag that ``pipeline`` ('detr' or 'rtdetr') would not read: ``--stop_epoch``,
    ``--multiscale_sizes`` and DEIM's (``datasets.deim_transforms.DENSE_O2O_FLAGS``) belong to rtdetr,
    ``--no_multiscale`` to detr."""
    if pipeline not in DATA_PIPELINES:
        raise ValueError(f"--data_pipeline must be one of {list(DATA_PIPELINES)}, got {pipeline!r}")
    if pipeline == "detr":
        for flag, dest in (("--stop_epoch", "stop_epoch"), ("--multiscale_sizes", "multiscale_sizes"),
                           *((f"--{dest}", dest) for dest in DENSE_O2O_FLAGS)):
            if getattr(args, dest, None) is not None:
                raise ValueError(f"{flag} is read by --data_pipeline rtdetr only; this run's pipeline is detr")
    elif not getattr(args, "multiscale", True):
        raise ValueError("--no_multiscale is read by --data_pipeline detr only; with rtdetr, '--multiscale_sizes' "
                         "without values turns the multi-scale batches off")


def make_pipeline(image_set: str, args) -> tuple[Callable, Optional[MultiScaleBatchResize], Optional[SharedEpoch]]:
    """The per-image transforms of ``image_set``, the per-batch transform (or None) and the epoch they read (or
    None) for ``args.data_pipeline`` (None or 'detr': DETR's recipe, ``make_coco_transforms``; 'rtdetr':
    ``datasets.rtdetr_transforms`` at ``args.image_size`` square, its augmentation and multi-scale batches (sizes
    ``args.multiscale_sizes``, None: the official ones, empty: none) until epoch ``args.stop_epoch``; with DEIM's
    ``args.policy_epoch``, ``args.mosaic_prob``, ``args.mixup_prob``, ``args.mixup_epochs``: its data schedule,
    ``datasets.deim_transforms``, the multi-scale batches then stopping at the policy's last epoch by default)."""
    pipeline = getattr(args, "data_pipeline", None) or "detr"
    check_pipeline_flags(pipeline, args)
    image_size = getattr(args, "image_size", 800)
    if pipeline == "detr":
        return make_coco_transforms(image_set, image_size, getattr(args, "multiscale", True)), None, None
    if image_set != "train":
        return make_rtdetr_transforms(image_set, image_size), None, None
    epoch = SharedEpoch()
    stop_epoch = getattr(args, "stop_epoch", None)
    policy_epoch = getattr(args, "policy_epoch", None)
    if stop_epoch is None and policy_epoch is not None:
        stop_epoch = policy_epoch[-1]
    sizes = getattr(args, "multiscale_sizes", None)
    sizes = OFFICIAL_MULTISCALE_SIZES if sizes is None else sizes
    batch_transform = MultiScaleBatchResize(sizes, stop_epoch, epoch) if sizes else None
    if any(getattr(args, dest, None) is not None for dest in DENSE_O2O_FLAGS):
        return make_dense_o2o_pipeline(image_size, epoch, stop_epoch, batch_transform, policy_epoch=policy_epoch,
                                       mosaic_prob=getattr(args, "mosaic_prob", None) or 0.0,
                                       mixup_prob=getattr(args, "mixup_prob", None) or 0.0,
                                       mixup_epochs=getattr(args, "mixup_epochs", None))
    return make_rtdetr_transforms(image_set, image_size, stop_epoch, epoch), batch_transform, epoch


def coco_folder(args) -> Path:
    """The COCO-layout folder of ``args``: ``--coco_path``, or ``--data_path`` in its place."""
    folder = getattr(args, "coco_path", None) or getattr(args, "data_path", None)
    if not folder:
        raise ValueError("--coco_path (or --data_path) is required: a folder with train2017/, val2017/ and "
                         "annotations/")
    root = Path(folder)
    if not root.is_dir():
        flag = "--coco_path" if getattr(args, "coco_path", None) else "--data_path"
        raise FileNotFoundError(f"{flag} {root} is not a directory (expected train2017/, val2017/ and "
                                f"annotations/instances_{{train,val}}2017.json under it)")
    return root


def build(image_set: str, args, cache_share: tuple[int, int] = (0, 1)) -> CocoDetection:
    """COCO ``image_set`` ('train' or 'val') from ``args.coco_path`` (or ``args.data_path``) with the flags that
    :func:`dataset_from_annotations` reads."""
    root = coco_folder(args)
    if image_set not in COCO_SPLITS:
        raise ValueError(f"unknown image_set {image_set!r}; expected one of {sorted(COCO_SPLITS)}")
    folder, ann_name = COCO_SPLITS[image_set]
    return dataset_from_annotations(image_set, args, root / folder, root / "annotations" / ann_name, cache_share)


def dataset_from_annotations(image_set: str, args, img_folder: Path, ann_file: Path,
                             cache_share: tuple[int, int] = (0, 1), annotations: Optional[dict] = None
                             ) -> CocoDetection:
    """The ``CocoDetection`` of ``image_set`` ('train' or 'val') whose images are under ``img_folder`` and whose
    annotations are ``ann_file`` (or ``annotations``, already read: see ``CocoDetection``), with ``args.masks``,
    ``args.num_classes`` (may be None: no id check), ``args.remap_mscoco_category`` (default False), the pipeline
    ``make_pipeline`` reads (``args.data_pipeline``, ``args.image_size``, ``args.multiscale`` ...),
    ``args.remove_difficult``, ``args.strict_annotations``, ``args.skip_bad_images`` and ``args.cache_mode``
    (default False; ``cache_share``: this process's (local rank, processes per node)). A training split without a
    usable annotation is an error."""
    transforms, batch_transform, epoch = make_pipeline(image_set, args)
    dataset = CocoDetection(img_folder, ann_file, transforms=transforms,
                            return_masks=args.masks, num_classes=getattr(args, "num_classes", None),
                            remove_difficult=getattr(args, "remove_difficult", False),
                            strict_annotations=getattr(args, "strict_annotations", False),
                            skip_bad_images=getattr(args, "skip_bad_images", False),
                            cache=getattr(args, "cache_mode", False), cache_share=cache_share,
                            remap_categories=getattr(args, "remap_mscoco_category", False),
                            batch_transform=batch_transform, epoch=epoch, annotations=annotations)
    if image_set == "train" and len(dataset) and not dataset.coco.anns:
        raise ValueError(f"annotation file {dataset.ann_file} has no usable annotation: nothing to train on")
    return dataset
