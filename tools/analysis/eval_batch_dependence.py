"""How much the 12 COCO numbers depend on the evaluation batch size, with and without ``--eval_batch_invariant``.

    python -m tools.analysis.eval_batch_dependence --out /tmp/batch_dependence [--images 16] [--train_steps 60]

writes a synthetic COCO dataset whose val images have mixed sizes (``mixed_size_dataset``), trains a tiny DETR for
a few steps on it (seeded), and evaluates it at batch sizes 1, 2 and 4 in both modes. Images of different sizes are
padded to a common size per batch; the mask keeps the padding out of the transformer's attention, but the
backbone's convolutions see it at the image borders, so the default numbers move with the batch size. Per-image
evaluation gives the batch-size-1 numbers at every batch size.
"""
import argparse
import contextlib
import io
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
# (width, height) of the val images, cycled: landscape, portrait and square, so a batch pads most of them.
MIXED_SIZES = ((96, 96), (96, 64), (64, 96), (80, 56), (56, 80), (96, 72), (72, 96), (88, 64))


def mixed_size_dataset(out: Path, num_val: int = 16, num_train: int = 8, seed: int = 0) -> Path:
    """A synthetic COCO folder (``tools.data.synthetic``, 96-pixel images) whose val images are cropped to the
    sizes of MIXED_SIZES in turn, their boxes clipped to the crop (boxes left with less than 4 pixels a side are
    dropped), their JSON ``width``/``height`` set to match."""
    from tools.data.synthetic import generate

    root = generate(out, num_train=num_train, num_val=num_val, image_size=96, seed=seed)
    marker = root / "mixed_sizes.json"
    if marker.is_file():
        return root  # cropped already
    ann_file = root / "annotations" / "instances_val2017.json"
    data = json.loads(ann_file.read_text())
    sizes = {}
    for i, img in enumerate(sorted(data["images"], key=lambda im: im["id"])):
        w, h = MIXED_SIZES[i % len(MIXED_SIZES)]
        path = root / "val2017" / img["file_name"]
        with Image.open(path) as im:
            im.convert("RGB").crop((0, 0, w, h)).save(path, quality=95)
        img["width"], img["height"] = sizes[img["id"]] = (w, h)
    kept = []
    for ann in data["annotations"]:
        w, h = sizes[ann["image_id"]]
        x, y, bw, bh = ann["bbox"]
        x1, y1 = min(x + bw, w), min(y + bh, h)
        if x1 - x >= 4 and y1 - y >= 4:
            ann["bbox"] = [x, y, x1 - x, y1 - y]
            ann["area"] = float((x1 - x) * (y1 - y))
            ann["segmentation"] = [[x, y, x1, y, x1, y1, x, y1]]
            kept.append(ann)
    data["annotations"] = kept
    ann_file.write_text(json.dumps(data))
    marker.write_text(json.dumps({"sizes": MIXED_SIZES}))
    return root


def tiny_flags(coco_path: Path, batch_size: int, invariant: bool) -> list[str]:
    """A tiny DETR (resnet18, hidden 32) evaluated at ``batch_size`` on ``coco_path``, images at their own size."""
    return ["--backbone", "resnet18", "--no_pretrained_backbone", "--backbone_norm", "bn", "--hidden_dim", "32",
            "--nheads", "2", "--enc_layers", "1", "--dec_layers", "1", "--dim_feedforward", "64", "--num_queries",
            "10", "--num_classes", "12", "--image_size", "64", "--num_workers", "0", "--device", "cpu",
            "--print_freq", "1000", "--coco_path", str(coco_path), "--batch_size", str(batch_size)] + \
        (["--eval_batch_invariant"] if invariant else [])


def seeded_model(coco_path: Path, train_steps: int, seed: int = 0):
    """(model, criterion, postprocessors) of a tiny DETR from ``seed``, trained ``train_steps`` steps on the val
    images (so that it detects something)."""
    import cli
    from datasets import build_dataset
    from models import build_model
    from util.nested_tensor import collate_fn

    args = cli.get_args_parser().parse_args(tiny_flags(coco_path, 4, False))
    torch.manual_seed(seed)
    model, criterion, postprocessors = build_model(args)
    if train_steps:
        dataset = build_dataset("val", args)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        generator = torch.Generator().manual_seed(seed)
        model.train()
        for _ in range(train_steps):
            order = torch.randperm(len(dataset), generator=generator)[:4].tolist()
            samples, targets = collate_fn([dataset[i] for i in order])
            loss_dict = criterion(model(samples), list(targets))
            loss = sum(loss_dict[k] * criterion.weight_dict[k] for k in loss_dict if k in criterion.weight_dict)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model, criterion, postprocessors


def coco_numbers(model, criterion, postprocessors, coco_path: Path, batch_size: int, invariant: bool) -> list[float]:
    """The 12 COCO box numbers of ``model`` on the val images at ``batch_size``."""
    import cli
    from datasets import build_dataset, get_coco_api_from_dataset
    from datasets.loaders import build_loaders
    from engine import evaluate

    args = cli.get_args_parser().parse_args(tiny_flags(coco_path, batch_size, invariant))
    dataset = build_dataset("val", args)
    loader = build_loaders(None, dataset, batch_size, 0, distributed=False).val
    with contextlib.redirect_stdout(io.StringIO()):
        stats, _ = evaluate(model, criterion, postprocessors, loader, get_coco_api_from_dataset(dataset),
                            torch.device("cpu"), 1000, batch_invariant=invariant)
    return stats["coco_eval_bbox"]


def measure(out: Path, images: int = 16, train_steps: int = 60, batch_sizes=(1, 2, 4)) -> dict:
    """{'default' | 'invariant': {batch size: 12 numbers}} for one seeded tiny model."""
    coco_path = mixed_size_dataset(out, num_val=images)
    model, criterion, postprocessors = seeded_model(coco_path, train_steps)
    return {mode: {b: coco_numbers(model, criterion, postprocessors, coco_path, b, mode == "invariant")
                   for b in batch_sizes} for mode in ("default", "invariant")}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the synthetic dataset")
    parser.add_argument("--images", type=int, default=16, help="val images (mixed sizes)")
    parser.add_argument("--train_steps", type=int, default=60, help="training steps of the tiny model (0: random)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    results = measure(args.out, args.images, args.train_steps)
    print(f"{'mode':<10} {'batch':>5}  " + " ".join(f"{n:>6}" for n in STAT_NAMES))
    for mode, by_batch in results.items():
        for batch_size, numbers in by_batch.items():
            print(f"{mode:<10} {batch_size:>5}  " + " ".join(f"{v:6.4f}" for v in numbers))
        spread = np.ptp(np.array(list(by_batch.values())), axis=0)
        print(f"{mode:<10} {'range':>5}  " + " ".join(f"{v:6.4f}" for v in spread))
    return results


if __name__ == "__main__":
    main()
