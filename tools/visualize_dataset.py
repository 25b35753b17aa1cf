"""The ground truth of a COCO-format dataset drawn on its images, as read and as the training augmentation makes it:
the first thing to look at when a custom dataset does not train.

    python -m tools.visualize_dataset --coco_path DIR [--image_set train|val] [--num 8] --output_dir outputs/gt \\
        [--image_size 800] [--no_multiscale] [--seed 0]

For each of the first ``--num`` images of the split (by image id) writes to ``--output_dir``:
- ``<image>_annotations.png``: the image as the training reads it (upright, RGB) with every annotation that training
  uses (boxes, category names and, when the annotations have segmentations, masks);
- ``<image>_augmented.png``: one draw of the training augmentation (``datasets.coco.make_coco_transforms("train",
  --image_size, multiscale)``: flip, multi-scale resize, random crop) with the boxes and masks it leaves.
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
    IMAGENET_MEAN,
    IMAGENET_STD,
    CocoDetection,
    ConvertCocoPolysToMask,
    make_coco_transforms,
)
from tools.command_line import run_tool
from util.box_ops import box_cxcywh_to_xyxy
from util.drawing import blend_masks, colour, draw_boxes, image_from_normalized
from util.user_error import UserError


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("Draw a dataset's ground truth before and after augmentation")
    parser.add_argument("--coco_path", required=True, help="folder with train2017/, val2017/ and annotations/")
    parser.add_argument("--image_set", default="train", choices=tuple(COCO_SPLITS))
    parser.add_argument("--num", type=int, default=8, help="how many images (the first by image id)")
    parser.add_argument("--output_dir", required=True, help="folder for the pictures")
    parser.add_argument("--image_size", type=int, default=800, help="as for training (--image_size)")
    parser.add_argument("--no_multiscale", dest="multiscale", action="store_false", help="as for training")
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
    augment = make_coco_transforms("train", args.image_size, args.multiscale)
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
        picture = image_from_normalized(augmented_image, IMAGENET_MEAN, IMAGENET_STD)
        ground_truth(picture, _absolute(augmented), names).save(written[-1])
        print(f"image {int(target['image_id'])} ({stem}): {len(target['boxes'])} objects; after augmentation "
              f"{len(augmented['boxes'])} at {augmented_image.shape[2]}x{augmented_image.shape[1]}", flush=True)
    print(f"wrote {len(written)} pictures to {output_dir}", flush=True)
    return written


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
