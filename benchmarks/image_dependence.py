"""Does a trained detector read the image? How much its predicted boxes change from image to image, against how much
they differ from query to query.

Usage: python -m benchmarks.image_dependence --runs outputs/.../RUN [RUN ...] [--images 32]

Each run folder holds the ``config.yaml`` and ``checkpoint.pth`` that ``main.py`` writes. The first ``--images``
validation images of the run's data go through the model in one batch; for the first ``--num_queries`` queries
(the ones inference uses) the script prints the standard deviation of the predicted boxes (cx, cy, w, h, as fractions
of the image) over the images, averaged over queries and coordinates, and over the queries, averaged over images and
coordinates. A detector that predicts the same box for a query whatever the image (queries as fixed anchors, the
image not read) has the first near zero while the second is not.
"""
import argparse
from pathlib import Path

import torch

from benchmarks.convergence import preset_args
from datasets import build_dataset
from models import build_model
from util.nested_tensor import nested_tensor_from_tensor_list


def box_spreads(run: Path, images: int) -> tuple[float, float]:
    """(std over images, std over queries) of the run's predicted boxes on its first ``images`` val images."""
    args = preset_args(str(run / "config.yaml"), [])
    model, _, _ = build_model(args)
    checkpoint = torch.load(run / "checkpoint.pth", map_location="cpu", weights_only=False)
    model.load_state_dict(checkpoint["model"])
    model.eval()
    dataset = build_dataset("val", args)
    batch = [dataset[i][0] for i in range(min(images, len(dataset)))]
    with torch.no_grad():
        boxes = model(nested_tensor_from_tensor_list(batch))["pred_boxes"][:, :args.num_queries]  # [N, Q, 4]
    return boxes.std(0).mean().item(), boxes.std(1).mean().item()


def main(argv: list[str] | None = None) -> list[tuple[str, float, float]]:
    parser = argparse.ArgumentParser("How much a detector's boxes depend on the image")
    parser.add_argument("--runs", nargs="+", required=True, help="run folders with config.yaml and checkpoint.pth")
    parser.add_argument("--images", type=int, default=32, help="validation images, in one batch")
    options = parser.parse_args(argv)
    rows = []
    print("| run | box std over images | box std over queries |\n| --- | --- | --- |")
    for run in options.runs:
        torch.manual_seed(0)
        over_images, over_queries = box_spreads(Path(run), options.images)
        rows.append((run, over_images, over_queries))
        print(f"| `{run}` | {over_images:.3f} | {over_queries:.3f} |")
    return rows


if __name__ == "__main__":
    main()
