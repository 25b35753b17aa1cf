"""Does a trained detector read the image? How much its predicted boxes change from image to image, against how much
they differ from query to query.

Usage: python -m benchmarks.image_dependence --runs outputs/.../RUN [RUN ...] [--images 32] [--no_write]

Each run folder holds the ``config.yaml`` and ``checkpoint.pth`` that ``main.py`` writes. The first ``--images``
validation images of the run's data go through the model in one batch; for the first ``--num_queries`` queries
(the ones inference uses) the script prints the sample standard deviation of the predicted boxes (cx, cy, w, h, as
fractions of the image side) over the images, averaged over queries and coordinates, and over the queries, averaged
over images and coordinates. A detector that predicts the same box for a query whatever the image (queries as fixed
anchors, the image not read) has the first near zero while the second is not. Results are kept in
benchmarks/image_dependence.json (one entry per run folder; a rerun replaces its own) and the table of all of them
goes between the image-dependence markers of benchmarks/RESULTS.md.
"""
import argparse
from pathlib import Path

import torch

from benchmarks.convergence import preset_args
from benchmarks.results_section import update_record
from datasets import build_dataset
from models import build_model
from util.nested_tensor import nested_tensor_from_tensor_list

RECORD = Path(__file__).with_name("image_dependence.json")
BEGIN, END = "<!-- image-dependence:begin -->", "<!-- image-dependence:end -->"


def box_spreads(run: Path, num_images: int) -> tuple[float, float]:
    """(std over images, std over queries) of the run's predicted boxes [num_images, num_queries, 4] (fractions of
    the image side) on its first ``num_images`` val images."""
    args = preset_args(str(run / "config.yaml"), [])
    args.pretrained_backbone = False  # the checkpoint holds every weight: no ImageNet download
    model, _, _ = build_model(args)
    checkpoint = torch.load(run / "checkpoint.pth", map_location="cpu", weights_only=False)
    model.load_state_dict(checkpoint["model"])
    model.eval()
    dataset = build_dataset("val", args)
    count = min(num_images, len(dataset))
    if count < 2:
        raise ValueError(f"a spread over images needs at least 2; {run}'s data has {len(dataset)} val images")
    batch = [dataset[i][0] for i in range(count)]
    with torch.no_grad():
        boxes = model(nested_tensor_from_tensor_list(batch))["pred_boxes"][:, :args.num_queries]
    return boxes.std(0).mean().item(), boxes.std(1).mean().item()


def table(rows: list[dict]) -> str:
    lines = [BEGIN, "", "Spread of the predicted boxes (cx, cy, w, h as fractions of the image side; sample standard "
             "deviation, averaged over the other axis and the coordinates) over the first val images and over the "
             "inference queries (`python -m benchmarks.image_dependence --runs RUN ...`). Near zero over images: "
             "each query predicts the same box whatever the image.", "",
             "| run | images | box std over images | box std over queries |", "| --- | --- | --- | --- |"]
    lines += [f"| `{r['run']}` | {r['images']} | {r['over_images']:.3f} | {r['over_queries']:.3f} |" for r in rows]
    return "\n".join(lines + ["", END])


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser("How much a detector's boxes depend on the image")
    parser.add_argument("--runs", nargs="+", required=True, help="run folders with config.yaml and checkpoint.pth")
    parser.add_argument("--images", type=int, default=32, help="validation images, in one batch (at least 2)")
    parser.add_argument("--no_write", action="store_true", help="print the table; leave the record and RESULTS.md")
    options = parser.parse_args(argv)
    if options.images < 2:
        parser.error(f"--images: a spread over images needs at least 2, got {options.images}")
    for run in options.runs:
        missing = [name for name in ("config.yaml", "checkpoint.pth") if not (Path(run) / name).is_file()]
        if missing:
            parser.error(f"--runs: {run} has no {' or '.join(missing)} (a main.py output folder has both)")
    fresh = []
    for run in options.runs:
        torch.manual_seed(0)
        over_images, over_queries = box_spreads(Path(run), options.images)
        fresh.append({"run": run, "images": options.images, "over_images": over_images, "over_queries": over_queries})
    return update_record(RECORD, fresh, lambda row: row["run"], table, BEGIN, END, "Does the detector read the image",
                         write=not options.no_write)


if __name__ == "__main__":
    main()
