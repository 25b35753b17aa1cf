"""Speed of multi-scale deformable attention (``MSDeformAttn``, pure PyTorch on grid_sample): forward and
forward + backward, at Deformable DETR R50's sizes.

    python -m benchmarks.deformable_attention [--device cpu|cuda] [--image 800 1066] [--batch 1] [--rounds 5]

Feature levels of strides 8, 16, 32 and 64 of an ``--image`` H x W input (800 x 1066: 100x134, 50x67, 25x34 and
13x17, 17,821 tokens), d_model 256, 8 heads, 4 levels, 4 points (the official defaults). Two uses per model: the
encoder's self-attention (one query per token) and the decoder's cross-attention (300 queries with box reference
points). Each round times ``--steps`` calls of each case; medians over ``--rounds`` rounds (after one warm-up round)
are printed in milliseconds per call, as JSON.
"""
import argparse
import json
import math
import statistics
import time

import torch

from benchmarks.benchmark import hardware
from models.layers.ms_deform_attn import MSDeformAttn


def level_shapes(height: int, width: int) -> list[tuple[int, int]]:
    """Sizes of the stride 8, 16, 32 and 64 maps of an image (each a ceil-halving of the one before)."""
    shapes = [(math.ceil(height / 8), math.ceil(width / 8))]
    for _ in range(3):
        h, w = shapes[-1]
        shapes.append((math.ceil(h / 2), math.ceil(w / 2)))
    return shapes


def cases(batch: int, shapes: list[tuple[int, int]], device: torch.device, gen: torch.Generator) -> dict:
    """name -> (query, reference points, values): the encoder's and the decoder's use."""
    tokens = sum(h * w for h, w in shapes)
    values = torch.randn(batch, tokens, 256, generator=gen).to(device)
    return {
        "encoder": (torch.randn(batch, tokens, 256, generator=gen).to(device),
                    torch.rand(batch, tokens, len(shapes), 2, generator=gen).to(device), values),
        "decoder": (torch.randn(batch, 300, 256, generator=gen).to(device),
                    torch.cat([torch.rand(batch, 300, len(shapes), 2, generator=gen) * 0.8 + 0.1,
                               torch.rand(batch, 300, len(shapes), 2, generator=gen) * 0.3 + 0.02], -1).to(device),
                    values),
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser("deformable attention speed", description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--image", nargs=2, type=int, default=[800, 1066], metavar=("H", "W"))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    attn = MSDeformAttn(256, 4, 8, 4).to(device)
    shapes = level_shapes(*args.image)
    starts = torch.tensor([0] + [h * w for h, w in shapes[:-1]], device=device).cumsum(0)
    inputs = cases(args.batch, shapes, device, torch.Generator().manual_seed(0))
    times = {(name, kind): [] for name in inputs for kind in ("forward", "forward_backward")}
    for r in range(args.rounds + 1):
        for name, (query, points, values) in inputs.items():
            for kind in ("forward", "forward_backward"):
                _sync(device)
                start = time.perf_counter()
                for _ in range(args.steps):
                    if kind == "forward":
                        with torch.no_grad():
                            attn(query, points, values, shapes, starts)
                    else:
                        attn.zero_grad()
                        attn(query.requires_grad_(), points, values.requires_grad_(), shapes, starts).sum().backward()
                _sync(device)
                if r:
                    times[name, kind].append((time.perf_counter() - start) / args.steps * 1000)
    result = {"hardware": hardware(device), "threads": torch.get_num_threads(), "image": args.image,
              "batch": args.batch, "level_shapes": shapes, "tokens": sum(h * w for h, w in shapes),
              "ms_per_call": {f"{name}_{kind}": round(statistics.median(t), 2) for (name, kind), t in times.items()}}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
