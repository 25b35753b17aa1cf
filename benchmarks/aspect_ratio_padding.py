"""How much padding ``--aspect_ratio_grouping`` removes from DETR's training batches on COCO-like image sizes, and
what that does to the speed of a training step.

    python -m benchmarks.aspect_ratio_padding [--images 5000] [--batch_sizes 2 4 8] [--time_batches 6]

Image sizes are drawn from a mixture resembling COCO train2017 (most images 640 px on the longer side: 640x480,
640x427, 480x640, 427x640, 640x360, 500x375, 640x640 ... and a tail of other heights; about 70% landscape, 25%
portrait, 5% square; ``COCO_LIKE_SIZES``). Each image then gets the size DETR's training transforms give it, with
the same arithmetic and random draws (datasets/transforms.py: flip; either a multi-scale resize of the shorter side
to 480..800 with the longer side capped at 1333, or a resize to 400/500/600, a random crop of 384..600 and the
multi-scale resize), without decoding any image. Batches are formed by the training sampler (random order, full
batches) or by the aspect-ratio grouped sampler over the same order, and padded as ``nested_tensor_from_tensor_list``
pads them (to the largest height and width of the batch). Padding = 1 - image pixels / padded pixels; the backbone's
and encoder's work grows with the padded pixels.

``--time_batches N`` also times N training steps of DETR R50 (random weights, fp32, CPU) on the first N batches of
each sampler at ``--time_scale`` of those sizes (0.4: about 320 px), alternating, and prints the time per image.
"""
import argparse
import json
import random
import statistics
import time

import torch
from torch.utils.data import BatchSampler, RandomSampler

from datasets.aspect_ratio_sampler import AspectRatioBatchSampler
from datasets.transforms import get_size_with_aspect_ratio

# (width, height): share of images. The rest of the mass goes to a tail of 640 x 300..520 landscapes and
# 300..520 x 640 portraits.
COCO_LIKE_SIZES = {(640, 480): 0.27, (640, 427): 0.17, (640, 426): 0.05, (640, 428): 0.03, (640, 360): 0.03,
                   (500, 375): 0.02, (480, 640): 0.09, (427, 640): 0.07, (426, 640): 0.02, (375, 500): 0.01,
                   (640, 640): 0.03, (612, 612): 0.01, (500, 500): 0.01}
TAIL_LANDSCAPE, TAIL_PORTRAIT = 0.13, 0.06
SCALES = [480 + 32 * i for i in range(11)]


def coco_like_sizes(count: int, rng: random.Random) -> list[tuple[int, int]]:
    """``count`` (width, height) pairs drawn from COCO_LIKE_SIZES and its tail."""
    sizes, weights = list(COCO_LIKE_SIZES), list(COCO_LIKE_SIZES.values())
    drawn = []
    for _ in range(count):
        u = rng.random()
        if u < TAIL_LANDSCAPE:
            drawn.append((640, rng.randint(300, 520)))
        elif u < TAIL_LANDSCAPE + TAIL_PORTRAIT:
            drawn.append((rng.randint(300, 520), 640))
        else:
            drawn.append(rng.choices(sizes, weights)[0])
    return drawn


def training_size(width: int, height: int, rng: random.Random, multiscale: bool = True) -> tuple[int, int]:
    """(h, w) after DETR's training transforms at the official 800 px, with their random draws (``multiscale``
    False: ``--no_multiscale``, the shorter side 800)."""
    rng.random()  # the horizontal flip's draw (no size change)
    if not multiscale:
        return get_size_with_aspect_ratio((width, height), 800, 1333)
    if rng.random() < 0.5:
        return get_size_with_aspect_ratio((width, height), rng.choice(SCALES), 1333)
    h, w = get_size_with_aspect_ratio((width, height), rng.choice([400, 500, 600]), None)
    crop_w = rng.randint(min(384, w), min(w, 600))
    crop_h = rng.randint(min(384, h), min(h, 600))
    return get_size_with_aspect_ratio((crop_w, crop_h), rng.choice(SCALES), 1333)


def padding(batches: list[list[int]], sizes: list[tuple[int, int]]) -> tuple[float, int]:
    """(fraction of padded pixels, padded pixels) of ``batches`` of images of ``sizes`` (h, w)."""
    image_pixels = padded_pixels = 0
    for batch in batches:
        height = max(sizes[i][0] for i in batch)
        width = max(sizes[i][1] for i in batch)
        padded_pixels += len(batch) * height * width
        image_pixels += sum(sizes[i][0] * sizes[i][1] for i in batch)
    return 1 - image_pixels / padded_pixels, padded_pixels


def compare(count: int, batch_size: int, seed: int = 0, multiscale: bool = True) -> dict:
    rng = random.Random(seed)
    originals = coco_like_sizes(count, rng)
    wide = [w > h for w, h in originals]
    sizes = [training_size(w, h, rng, multiscale) for w, h in originals]
    order = RandomSampler(range(count), generator=torch.Generator().manual_seed(seed))
    plain = list(BatchSampler(order, batch_size, drop_last=True))
    grouped = list(AspectRatioBatchSampler(order, wide, batch_size))
    plain_padding, plain_pixels = padding(plain, sizes)
    grouped_padding, grouped_pixels = padding(grouped, sizes)
    return {"batch_size": batch_size, "multiscale": multiscale, "images": count,
            "landscape_share": round(sum(wide) / count, 3),
            "padding_random": round(plain_padding, 4), "padding_grouped": round(grouped_padding, 4),
            # padded pixels per image, random / grouped: how much less the backbone and encoder process
            "padded_pixels_ratio": round(plain_pixels / sum(len(b) for b in plain) / (grouped_pixels / count), 4),
            "batches": (plain, grouped), "sizes": sizes}


def time_steps(result: dict, batches: int, scale: float, threads: int) -> dict:
    """Seconds per image of R50 training steps on the first ``batches`` batches of each sampler (alternating)."""
    import cli
    from benchmarks.speed import random_batch
    from models import architecture, build_model
    from util.config import parse_args_with_config
    from util.optimizer import build_optimizer
    from util.train_step import TrainStep

    torch.set_num_threads(threads)
    args = parse_args_with_config(cli.get_args_parser(), ["--config", "configs/detr_r50.yaml", "--device", "cpu",
                                                          "--no_pretrained_backbone", "--num_classes", "91"])
    torch.manual_seed(0)
    model, criterion, _ = build_model(args)
    optimizer = build_optimizer(architecture("detr").param_groups(model, args), args.lr, args.weight_decay)
    step = TrainStep(model, criterion, optimizer, args.clip_max_norm)
    plain, grouped = result["batches"]
    sizes = result["sizes"]
    per_image = {"random": [], "grouped": []}
    for k in range(batches + 1):  # the first pair warms up
        for name, batch in (("random", plain[k]), ("grouped", grouped[k])):
            scaled = [(max(16, int(sizes[i][0] * scale)), max(16, int(sizes[i][1] * scale))) for i in batch]
            samples, targets = random_batch(scaled, 91, torch.device("cpu"), seed=k)
            start = time.perf_counter()
            result_step = step(samples, targets)
            [v.item() for v in result_step.loss_dict.values()]
            if k:
                per_image[name].append((time.perf_counter() - start) / len(batch))
    return {name: round(statistics.mean(v), 4) for name, v in per_image.items()}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--time_batches", type=int, default=0)
    parser.add_argument("--time_scale", type=float, default=0.4)
    parser.add_argument("--time_batch_size", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no_multiscale", dest="multiscale", action="store_false",
                        help="training sizes of --no_multiscale (shorter side 800) instead of DETR's augmentation")
    args = parser.parse_args(argv)
    rows = []
    for batch_size in args.batch_sizes:
        result = compare(args.images, batch_size, multiscale=args.multiscale)
        if args.time_batches and batch_size == args.time_batch_size:
            result["seconds_per_image"] = time_steps(result, args.time_batches, args.time_scale, args.threads)
        result.pop("batches"), result.pop("sizes")
        rows.append(result)
        print(json.dumps(result), flush=True)
    return rows


if __name__ == "__main__":
    main()
