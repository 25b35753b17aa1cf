"""The ground truth of a COCO-format dataset drawn on its images, as read and as the training augmentation makes it:
the first thing to look at when a custom dataset does not train.

    python -m tools.visualize_dataset --coco_path DIR [--image_set train|val] [--num 8] --output_dir outputs/gt \\
        [--image_size 800] [--no_multiscale] [--data_pipeline detr|rtdetr] [--multiscale_sizes S ...] [--seed 0]

For each of the first ``--num`` images of the split (by image id) writes to ``--output_dir``:
- ``<image>_annotations.png``: the image as the training reads it (upright, RGB) with every annotation that training
  uses (boxes, category names and, when the annotations have segmentations, masks);
- ``<image>_augmented.png``: one draw of the training augmentation with the boxes and masks it leaves, as the model
  receives it: ``--data_pipeline detr`` (``datasets.coco.make_coco_transforms("train", --image_size, multiscale)``:
  flip, multi-scale resize, random crop; ImageNet-normalised images, drawn un-normalised) or ``rtdetr``
  (``datasets.rtdetr_transforms``: photometric distortion, zoom-out, IoU crop, flip, square resize, images in
  [0, 1], then the multi-scale batch resize to one of ``--multiscale_sizes``, RT-DETR's by default).
The dataset is read as training reads it (``datasets.coco.CocoDetection``): crowd annotations are left out and
annotations with invalid boxes dropped with a warning, so what is drawn is what the model is trained on.
"""
import argparse
import random
from pathlib import Path

import torch
from PIL import Image

from datasets.coco import (
    COCO_SPLITS,
    DATA_PIPELINES,
    IMAGE_NORMALIZATION,
    CocoDetection,
    ConvertCocoPolysToMask,
    make_coco_transforms,
)
from datasets.rtdetr_transforms import OFFICIAL_MULTISCALE_SIZES, MultiScaleBatchResize, make_rtdetr_transforms
from tools.command_line import run_tool
from util.box_ops import box_cxcywh_to_xyxy
from util.drawing import blend_masks, colour, draw_boxes, image_from_normalized
from util.nested_tensor import nested_tensor_from_tensor_list
from util.user_error import UserError


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("Draw a dataset's ground truth before and after augmentation")
    parser.add_argument("--coco_path", required=True, help="folder with train2017/, val2017/ and annotations/")
    parser.add_argument("--image_set", default="train", choices=tuple(COCO_SPLITS))
    parser.add_argument("--num", type=int, default=8, help="how many images (the first by image id)")
    parser.add_argument("--output_dir", required=True, help="folder for the pictures")
    parser.add_argument("--image_size", type=int, default=800, help="as for training (--image_size)")
    parser.add_argument("--no_multiscale", dest="multiscale", action="store_false", help="as for training (detr)")
    parser.add_argument("--data_pipeline", default="detr", choices=DATA_PIPELINES, help="as for training")
    parser.add_argument("--multiscale_sizes", type=int, nargs="*", default=None,
                        help="as for training (rtdetr; default RT-DETR's sizes, no values: none)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the augmentation's random draws")
    return parser


def main(argv: list[str] | None = None) -> list[Path]:
    """Run the command line ``argv``; returns the pictures written."""
    args = get_parser().parse_args(argv)
    if args.num < 1:
        raise ValueError(f"--num must be at least 1, got {args.num}")
    folder, ann_name = COCO_SPLITS[args.image_set]
    root = Path(args.coco_path)
    if not root.is_dir():
        raise UserError(f"--coco_path {root} is not a folder")
    dataset = CocoDetection(root / folder, root / "annotations" / ann_name, transforms=None, return_masks=False)
    anns = dataset.coco.dataset.get("annotations", [])
    with_masks = bool(anns) and all(a.get("segmentation") for a in anns)
    dataset.prepare = ConvertCocoPolysToMask(return_masks=with_masks)
    names = {int(k): str(c.get("name", k)) for k, c in dataset.coco.cats.items()}
    augment = _augmentation(args)
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for index in range(min(args.num, len(dataset))):
        image, target = dataset[index]
        stem = Path(dataset.coco.imgs[dataset.ids[index]]["file_name"]).stem
        written.append(output_dir / f"{stem}_annotations.png")
        ground_truth(image, target, names).save(written[-1])
        augmented_image, augmented = augment(image, {k: v.clone() for k, v in target.items()})
        written.append(output_dir / f"{stem}_augmented.png")
        picture = image_from_normalized(augmented_image, *IMAGE_NORMALIZATION[args.data_pipeline])
        ground_truth(picture, _absolute(augmented), names).save(written[-1])
        print(f"image {int(target['image_id'])} ({stem}): {len(target['boxes'])} objects; after augmentation "
              f"{len(augmented['boxes'])} at {augmented_image.shape[2]}x{augmented_image.shape[1]}", flush=True)
    print(f"wrote {len(written)} pictures to {output_dir}", flush=True)
    return written


def _augmentation(args: argparse.Namespace):
    """``(PIL image, target) -> (image [3, H, W], target)``: the training pipeline the flags describe; for rtdetr
    the per-image pipeline followed by one draw of the multi-scale batch resize (a batch of one image)."""
    if args.data_pipeline == "detr":
        if args.multiscale_sizes is not None:
            raise ValueError("--multiscale_sizes is read by --data_pipeline rtdetr only")
        return make_coco_transforms("train", args.image_size, args.multiscale)
    if not args.multiscale:
        raise ValueError("--no_multiscale is read by --data_pipeline detr only; with rtdetr, '--multiscale_sizes' "
                         "without values turns the multi-scale batches off")
    per_image = make_rtdetr_transforms("train", args.image_size)
    sizes = OFFICIAL_MULTISCALE_SIZES if args.multiscale_sizes is None else args.multiscale_sizes
    if any(size < 1 for size in sizes):
        raise ValueError(f"--multiscale_sizes must be at least 1 pixel each, got {list(sizes)}")
    batch_resize = MultiScaleBatchResize(sizes, None, per_image.ops.epoch)

    def augment(image: Image.Image, target: dict) -> tuple[torch.Tensor, dict]:
        image, target = per_image(image, target)
        samples, (target,) = batch_resize(nested_tensor_from_tensor_list([image]), (target,))
        return samples.tensors[0], target

    return augment


def ground_truth(image: Image.Image, target: dict, names: dict[int, str]) -> Image.Image:
    """``image`` with the target's masks (if any) and boxes (xyxy pixels), captioned with category names."""
    labels = target["labels"].tolist()
    colours = [colour(label) for label in labels]
    if "masks" in target and len(target["masks"]):
        image = blend_masks(image, [m.numpy().astype(bool) for m in target["masks"]], colours)
    return draw_boxes(image, target["boxes"].tolist(), [names.get(label, str(label)) for label in labels], colours)


def _absolute(target: dict) -> dict:
    """A transformed target (boxes relative cxcywh) with boxes in pixels (xyxy) of its ``size``."""
    h, w = (int(v) for v in target["size"])
    boxes = box_cxcywh_to_xyxy(target["boxes"]) * torch.tensor([w, h, w, h], dtype=torch.float32)
    return {**target, "boxes": boxes}


if __name__ == "__main__":
    raise SystemExit(run_tool(main))
