"""Flags of the dataset, its augmentation and loading."""
import argparse

from datasets import DATASET_CHOICES
from datasets.coco import DATA_PIPELINES, check_pipeline_flags
from datasets.rtdetr_transforms import OFFICIAL_MULTISCALE_SIZES


def add_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data")
    group.add_argument("--dataset_file", default="coco",
                       help=f"dataset layout: {', '.join(DATASET_CHOICES)} (yolo: data.yaml, images/{{train,val}}/, "
                            "labels/{train,val}/; voc: JPEGImages/, Annotations/, ImageSets/Main/{train,val}.txt)")
    group.add_argument("--coco_path", type=str, help="folder with train2017/, val2017/ and annotations/")
    group.add_argument("--data_path", type=str,
                       help="the dataset folder of --dataset_file yolo or voc (or coco, in place of --coco_path)")
    group.add_argument("--coco_panoptic_path", type=str,
                       help="folder with annotations/panoptic_{train,val}2017.json and the panoptic PNG folders")
    group.add_argument("--remove_difficult", action="store_true",
                       help="leave annotations marked 'difficult' (VOC-style datasets) out of training and out of "
                            "evaluation (neither found nor missed, as VOC's evaluation); --dataset_file voc always "
                            "does")
    group.add_argument("--data_pipeline", default=None, choices=DATA_PIPELINES,
                       help="augmentation and batching: detr (DETR's recipe, ImageNet-normalised images) or rtdetr "
                            "(RT-DETR's: photometric distortion, zoom-out, IoU crop, flip, square --image_size, "
                            "images in [0, 1], multi-scale batches); default: the architecture's own")
    group.add_argument("--image_size", default=800, type=int,
                       help="validation shorter side in pixels; DETR's training scales and crops scale with it "
                            "(rtdetr: the side of the square images, 640 in RT-DETR's presets)")
    group.add_argument("--no_multiscale", dest="multiscale", action="store_false",
                       help="train at --image_size with flips only (no multi-scale resize, no random crop; detr "
                            "pipeline)")
    group.add_argument("--stop_epoch", default=None, type=int,
                       help="rtdetr pipeline: from this epoch on (counting from 0) train without photometric "
                            "distortion, zoom-out, IoU crop and multi-scale batches (RT-DETR's policy; default: never)")
    group.add_argument("--multiscale_sizes", default=None, type=int, nargs="*",
                       help="rtdetr pipeline: square sizes (pixels) that training batches are resized to, one drawn "
                            "per batch (default: RT-DETR's "
                            f"{' '.join(str(s) for s in OFFICIAL_MULTISCALE_SIZES)}; no values: no multi-scale)")
    group.add_argument("--policy_epoch", default=None, type=int, nargs=3, metavar=("START", "MOSAIC_STOP", "STOP"),
                       help="rtdetr pipeline, DEIM's data schedule (its policy.epoch; DEIM: 4 29 50 for 58 epochs): "
                            "photometric distortion, zoom-out and IoU crop only from epoch START to STOP, Mosaic "
                            "(--mosaic_prob) from START to MOSAIC_STOP; the multi-scale batches stop at STOP too "
                            "(--stop_epoch, if given, must be STOP)")
    group.add_argument("--mosaic_prob", default=None, type=float,
                       help="rtdetr pipeline with --policy_epoch: probability per image of DEIM's Mosaic (with three "
                            "other images of the dataset, shorter sides half --image_size, DEIM's 320 px at 640, then "
                            "a random affine transform) from START to MOSAIC_STOP, zoom-out and IoU crop then left "
                            "out (DEIM: 0.5; default: none)")
    group.add_argument("--mixup_prob", default=None, type=float,
                       help="rtdetr pipeline: probability per training batch of DEIM's MixUp (each image blended "
                            "with the previous one of the batch, weights drawn from 0.45-0.55, keeping both images' "
                            "objects) during --mixup_epochs (DEIM: 0.5; default: none)")
    group.add_argument("--mixup_epochs", default=None, type=int, nargs=2, metavar=("START", "STOP"),
                       help="the epochs [START, STOP) of --mixup_prob (DEIM: its --policy_epoch START and MOSAIC_STOP)")
    group.add_argument("--remap_mscoco_category", action="store_true",
                       help="train on labels 0..K-1 (the K categories in id order; COCO's 80 as RT-DETR) instead of "
                            "category ids; predictions are mapped back to category ids")
    group.add_argument("--num_workers", default=2, type=int)
    group.add_argument("--aspect_ratio_grouping", action="store_true",
                       help="batch training images of the same orientation (wider than tall, or not) together, as "
                            "detectron2 does: less padding per batch")
    group.add_argument("--cache_mode", action="store_true",
                       help="cache images in memory: each process keeps the encoded bytes of its share of a node's "
                            "images and samples only those (Deformable DETR's flag)")
    group.add_argument("--skip_bad_images", action="store_true",
                       help="leave out images that cannot be read or are not the size their annotation file says "
                            "(one warning each, a count at the end of each epoch) instead of stopping")
    group.add_argument("--strict_annotations", action="store_true",
                       help="make annotations with an invalid box (not finite, empty, outside the image) an error "
                            "instead of leaving them out of training and evaluation with a warning")


def check(args: argparse.Namespace) -> None:
    if args.dataset_file not in DATASET_CHOICES:
        raise ValueError(f"--dataset_file must be one of {list(DATASET_CHOICES)}, got {args.dataset_file!r}")
    if args.num_workers < 0:
        raise ValueError(f"--num_workers must be 0 or more, got {args.num_workers}")
    if args.image_size < 1:
        raise ValueError(f"--image_size must be at least 1, got {args.image_size}")
    if args.stop_epoch is not None and args.stop_epoch < 0:
        raise ValueError(f"--stop_epoch must be 0 or more, got {args.stop_epoch}")
    too_small = [size for size in args.multiscale_sizes or () if size < 1]
    if too_small:
        raise ValueError(f"--multiscale_sizes must be at least 1 pixel each, got {too_small[0]}")
    _check_dense_o2o(args)
    _check_folders(args)
    if args.dataset_file == "coco_panoptic":
        for flag, used in (("--data_pipeline rtdetr", args.data_pipeline == "rtdetr"),
                           ("--remap_mscoco_category", args.remap_mscoco_category)):
            if used:
                raise ValueError(f"{flag} is not supported with --dataset_file coco_panoptic (panoptic data keeps "
                                 f"DETR's pipeline and category ids)")


def _check_dense_o2o(args: argparse.Namespace) -> None:
    """DEIM's data-schedule flags: epochs in order, probabilities in [0, 1], each flag with those it needs."""
    policy = args.policy_epoch
    if policy is not None:
        if min(policy) < 0 or sorted(policy) != list(policy):
            raise ValueError(f"--policy_epoch must be epochs 0 <= START <= MOSAIC_STOP <= STOP, got "
                             f"{' '.join(str(e) for e in policy)}")
        if args.stop_epoch is not None and args.stop_epoch != policy[2]:
            raise ValueError(f"--stop_epoch {args.stop_epoch} differs from the STOP of --policy_epoch "
                             f"({policy[2]}): the strong augmentation and the multi-scale batches stop together "
                             f"(leave --stop_epoch out, or give STOP)")
    for flag in ("mosaic_prob", "mixup_prob"):
        value = getattr(args, flag)
        if value is not None and not 0.0 <= value <= 1.0:
            raise ValueError(f"--{flag} must be a probability in [0, 1], got {value}")
    if args.mosaic_prob and policy is None:
        raise ValueError("--mosaic_prob needs --policy_epoch START MOSAIC_STOP STOP: Mosaic runs from epoch START to "
                         "MOSAIC_STOP (DEIM: --policy_epoch 4 29 50)")
    if args.mixup_prob and args.mixup_epochs is None:
        raise ValueError("--mixup_prob needs --mixup_epochs START STOP, the epochs it blends batches in (DEIM: 4 29)")
    if args.mixup_epochs is not None:
        if not args.mixup_prob:
            raise ValueError("--mixup_epochs is read with --mixup_prob above 0 only")
        if not 0 <= args.mixup_epochs[0] <= args.mixup_epochs[1]:
            raise ValueError(f"--mixup_epochs must be epochs 0 <= START <= STOP, got "
                             f"{' '.join(str(e) for e in args.mixup_epochs)}")
        if getattr(args, "batch_size", 2) < 2:
            raise ValueError("--mixup_prob blends the images of a batch with each other: --batch_size 1 has none "
                             "to blend")


def check_pipeline(args: argparse.Namespace, pipeline: str) -> None:
    """The data flags that go with the run's pipeline (the flag's, or the architecture's own)."""
    check_pipeline_flags(pipeline, args)


def _check_folders(args: argparse.Namespace) -> None:
    """The folder flags that go with ``--dataset_file``: ``--data_path`` names the folder of every layout but the
    panoptic one, ``--coco_path`` the COCO ones only; yolo and voc have boxes only."""
    data_path, coco_path = getattr(args, "data_path", None), args.coco_path
    if args.dataset_file == "coco" and data_path and coco_path:
        raise ValueError(f"--coco_path {coco_path} and --data_path {data_path} both name the dataset folder; give "
                         f"one of them")
    if args.dataset_file == "coco_panoptic" and data_path:
        raise ValueError("--data_path is not read by --dataset_file coco_panoptic; give --coco_path (images) and "
                         "--coco_panoptic_path (panoptic annotations)")
    if args.dataset_file in ("yolo", "voc"):
        for flag, value in (("--coco_path", coco_path), ("--coco_panoptic_path", args.coco_panoptic_path)):
            if value:
                raise ValueError(f"{flag} is read by --dataset_file coco and coco_panoptic only; give the "
                                 f"{args.dataset_file} folder as --data_path")
        if getattr(args, "masks", False):
            raise ValueError(f"--masks needs instance masks; --dataset_file {args.dataset_file} has boxes only")
