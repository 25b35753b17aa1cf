"""How small the training boxes are at the network's input: the shorter side (pixels) of the ground-truth boxes of the
first ``--images`` training images after a preset's training transforms, with its augmentation on and off.

Usage: python -m benchmarks.box_sizes [--preset configs/demo_cpu_rtdetrv2.yaml] [--data data/synthetic_hard]
           [--images 400] [--seed 0]

For a preset of RT-DETR's pipeline (``--data_pipeline rtdetr``) "on" is its augmentation (photometric distortion,
zoom-out, IoU crop) and "off" the transforms of its epochs from ``--stop_epoch`` on; for DETR's pipeline "on" is
DETR's random resize and crop (``--multiscale``), "off" what ``--no_multiscale`` keeps. Both keep the flip.
Multi-scale batch resizing is not included (it rescales whole batches by 0.75-1.25).
Prints, for each, the number of boxes kept, the median shorter side and the share under 4 and under 8 pixels, keeps
them in benchmarks/box_sizes.json (one entry per preset, data folder and setting; a rerun replaces its own) and writes
the table of all of them between the box-sizes markers of benchmarks/RESULTS.md.
"""
import argparse
import random
import statistics
from pathlib import Path

import torch

from benchmarks.convergence import preset_args
from benchmarks.results_section import update_record
from datasets import build_dataset

RECORD = Path(__file__).with_name("box_sizes.json")
BEGIN, END = "<!-- box-sizes:begin -->", "<!-- box-sizes:end -->"


def shorter_sides(preset: str, data: str, images: int, augmented: bool, seed: int) -> list[float]:
    """Shorter side in pixels of each box of the first ``images`` training images after the preset's transforms."""
    args = preset_args(preset, ["--coco_path", data])
    if args.data_pipeline == "rtdetr":
        args.stop_epoch = 10 ** 6 if augmented else 0
    else:
        args.multiscale = augmented
    torch.manual_seed(seed)
    random.seed(seed)  # DETR's transforms draw from Python's generator
    dataset = build_dataset("train", args)
    sides = []
    for index in range(min(images, len(dataset))):
        image, target = dataset[index]
        height, width = image.shape[-2:]
        boxes = target["boxes"]  # normalised (cx, cy, w, h)
        sides += torch.minimum(boxes[:, 2] * width, boxes[:, 3] * height).tolist()
    return sides


def summary(preset: str, data: str, images: int, augmented: bool, seed: int) -> dict:
    """Boxes kept, median shorter side (px) and the % of boxes under 4 and under 8 px."""
    sides = shorter_sides(preset, data, images, augmented, seed)
    share = {limit: 100 * sum(s < limit for s in sides) / max(len(sides), 1) for limit in (4, 8)}
    return {"preset": preset, "data": data, "images": images, "augmentation": "on" if augmented else "off",
            "boxes": len(sides), "median": statistics.median(sides) if sides else float("nan"),
            "under_4": share[4], "under_8": share[8]}


def table(rows: list[dict]) -> str:
    lines = [BEGIN, "", "Shorter side of the ground-truth boxes at the network's input after each preset's training "
             "transforms (`python -m benchmarks.box_sizes --preset PRESET --data DATA`), first training images, "
             "with the pipeline's augmentation on and off (RT-DETR's: photometric distortion, zoom-out, IoU crop; "
             "DETR's: random resize and crop; both keep the flip); multi-scale batch resizing not included.", "",
             "| preset | data | images | augmentation | boxes | median shorter side (px) | under 4 px | under 8 px |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    lines += [f"| `{Path(r['preset']).stem}` | `{r['data']}` | {r['images']} | {r['augmentation']} | {r['boxes']} | "
              f"{r['median']:.1f} | {r['under_4']:.1f}% | {r['under_8']:.1f}% |" for r in rows]
    return "\n".join(lines + ["", END])


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser("Box sizes at the network's input, with and without augmentation")
    parser.add_argument("--preset", default="configs/demo_cpu_rtdetrv2.yaml")
    parser.add_argument("--data", default="data/synthetic_hard")
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no_write", action="store_true", help="print the table; leave the record and RESULTS.md")
    options = parser.parse_args(argv)
    fresh = [summary(options.preset, options.data, options.images, augmented, options.seed)
             for augmented in (True, False)]
    return update_record(RECORD, fresh, lambda row: (row["preset"], row["data"]), table, BEGIN, END,
                         "Box sizes at the network's input", write=not options.no_write)


if __name__ == "__main__":
    main()
