"""A trained model's predictions on images: one picture per image and one COCO-format results file.

    python -m tools.predict --resume outputs/run/checkpoint.pth --input photos/ more/*.jpg --output_dir outputs/pred \\
        [--threshold 0.5] [--batch_size 4] [--device cpu] [--coco_path DIR] [--config FILE | model flags]
        [--tile 640 [--overlap 0.2] [--tile_nms_iou 0.5]]

``--resume``: a checkpoint of this code base (its stored flags build the model: no other flag is needed), an official
checkpoint file or https URL (give its preset, e.g. ``--config configs/detr_r50.yaml``), or a hub entry name of
hubconf.py (``detr_resnet50``, ``detr_resnet101_panoptic`` ...: the official weights are downloaded). ``--input``:
image files, folders (their images) and glob patterns (quote them). Each image is read upright (EXIF orientation),
as RGB (greyscale, palette, RGBA and 16-bit images converted), resized for the model as the validation transform
does (``--image_size``), and drawn at its own size.

``--tile SIZE`` (sliced inference, tools/tiling.py): an image larger than SIZE x SIZE pixels is also cut into tiles
of SIZE pixels overlapping by the fraction ``--overlap`` (default 0.2; the last row and column end at the border),
each of which goes through the model as an image of its own (resized as above); their detections, moved to the
image's coordinates, join the whole image's, and per-class NMS at IoU ``--tile_nms_iou`` (default 0.5) removes the
duplicates. The whole-image pass stays (SAHI's default): it finds the objects larger than a tile. Box and instance-mask
models; not panoptic ones.

Writes to ``--output_dir``:
- ``<image name>.png``: the image with every prediction of score >= ``--threshold`` (box, category name, score; a
  mask model's masks; a panoptic model's segments in colour, as its panoptic post-processor keeps them: queries
  above that post-processor's own threshold, 0.85 as in the official code, whatever ``--threshold`` says);
- ``predictions.json``: the boxes as a COCO results list ``{"file_name", "image_id", "category_id", "bbox":
  [x, y, w, h] (pixels), "score"}`` (with ``"segmentation"`` (RLE) for instance-mask models; panoptic models'
  segments are in the pictures only), loadable with pycocotools' ``COCO.loadRes``. ``image_id`` is the image's id
  in the ``--coco_path`` annotation files when they list its file name, else a running number (from the largest
  listed id + 1).

Category names come from the annotation files under ``--coco_path`` (given, or stored in the checkpoint), else COCO's
for models with COCO's class count. Consecutive images of the same size after resizing share a batch (padding would
change the predictions); an image that cannot be read is skipped with a warning.
"""
import argparse
import io
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from pycocotools import mask as coco_mask

import cli
from datasets.coco import image_transform
from datasets.image_file import BadImageError
from models.postprocess import detections
from tools.command_line import run_tool
from tools.image_inputs import expand_inputs, read_input_image
from tools.model_loading import LoadedModel, load_model, parse_with_checkpoint_flags
from tools.tiling import DEFAULT_NMS_IOU, DEFAULT_OVERLAP, MIN_TILE, merge_detections, tile_grid
from util.drawing import blend_masks, colour, draw_boxes
from util.nested_tensor import nested_tensor_from_tensor_list
from util.panoptic_png import rgb2id
from util.user_error import UserError

RESULTS_NAME = "predictions.json"
PROGRESS_INTERVAL_S = 2.0


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("DETR family predictions on images", parents=[cli.get_args_parser()])
    parser.add_argument("--input", nargs="+", required=True, metavar="PATH",
                        help="image files, folders of images, glob patterns")
    parser.add_argument("--threshold", type=float, default=0.5,
                        help="score a prediction needs to be drawn and written (0: all of them)")
    parser.add_argument("--tile", type=int, default=None, metavar="SIZE",
                        help=f"also predict on tiles of SIZE x SIZE image pixels (at least {MIN_TILE}) of the images "
                             "larger than that, merged with the whole image's predictions (small objects)")
    parser.add_argument("--overlap", type=float, default=None,
                        help=f"with --tile: the fraction of a tile that neighbours share, in [0, 1) (default "
                             f"{DEFAULT_OVERLAP})")
    parser.add_argument("--tile_nms_iou", type=float, default=None,
                        help="with --tile: the IoU above which a prediction of a class is dropped for a better one "
                             f"of that class (default {DEFAULT_NMS_IOU})")
    parser.set_defaults(batch_size=4)
    return parser


@dataclass(frozen=True)
class Tiling:
    """``--tile``: tiles of ``size`` image pixels overlapping by the fraction ``overlap``, merged by per-class NMS
    at IoU ``nms_iou``."""

    size: int
    overlap: float
    nms_iou: float


def tiling_flags(args: argparse.Namespace) -> Tiling | None:
    """The checked ``--tile``, ``--overlap`` and ``--tile_nms_iou`` (None without ``--tile``)."""
    if args.tile is None:
        given = [f"--{name}" for name in ("overlap", "tile_nms_iou") if getattr(args, name) is not None]
        if given:
            raise ValueError(f"{' and '.join(given)} {'needs' if len(given) == 1 else 'need'} --tile SIZE")
        return None
    if args.tile < MIN_TILE:
        raise ValueError(f"--tile must be at least {MIN_TILE} (pixels of the image), got {args.tile}")
    overlap = DEFAULT_OVERLAP if args.overlap is None else args.overlap
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"--overlap must be in [0, 1) (the fraction of a tile that neighbours share), got {overlap}")
    nms_iou = DEFAULT_NMS_IOU if args.tile_nms_iou is None else args.tile_nms_iou
    if not 0.0 <= nms_iou <= 1.0:
        raise ValueError(f"--tile_nms_iou must be in [0, 1], got {nms_iou}")
    return Tiling(args.tile, overlap, nms_iou)


@dataclass
class Item:
    """One input: its file, the upright RGB image and the model's input tensor ``[3, h, w]``."""

    path: Path
    image: Image.Image
    tensor: torch.Tensor


@dataclass
class Prediction:
    """An image's predictions of score >= the threshold: ``scores`` ``[n]``, ``labels`` ``[n]`` (category ids),
    ``boxes`` ``[n, 4]`` (xyxy pixels of the image), a mask model's boolean ``masks`` ``[H, W]`` (one each), and a
    panoptic model's segment ids ``[H, W]`` with their segments' info."""

    scores: torch.Tensor
    labels: torch.Tensor
    boxes: torch.Tensor
    masks: list[np.ndarray] | None = None
    segment_ids: np.ndarray | None = None
    segments: list[dict] | None = None


def main(argv: list[str] | None = None) -> Path:
    """Run the command line ``argv``; returns the path of ``predictions.json``."""
    parser = get_parser()
    given = parser.parse_args(argv)  # before the checkpoint's flags: was --coco_path given?
    args, checkpoint = parse_with_checkpoint_flags(parser, argv)
    if not 0.0 <= args.threshold <= 1.0:
        raise ValueError(f"--threshold must be in [0, 1], got {args.threshold}")
    if not args.output_dir:
        raise ValueError("--output_dir is required: the folder for the pictures and predictions.json")
    tiling = tiling_flags(args)
    paths = expand_inputs(args.input)
    loaded = load_model(args, checkpoint)
    print(f"model: {loaded.args.meta_arch} from {loaded.source}; category names: {loaded.names_source}", flush=True)
    if tiling is not None:
        if "panoptic" in loaded.postprocessors:
            raise UserError("--tile: a panoptic model's segments cannot be merged across tiles; predict without it")
        print(f"tiles of {tiling.size} px, overlap {tiling.overlap}, with the whole image; per-class NMS at IoU "
              f"{tiling.nms_iou}", flush=True)
    transform = image_transform(loaded.args.data_pipeline, loaded.args.image_size)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    image_ids = ImageIds(given.coco_path)
    names = OutputNames(paths, output_dir)
    results, skipped = [], 0
    progress = Progress(len(paths))
    for batch, batch_skipped in batches(paths, transform, args.batch_size):
        skipped += batch_skipped
        for item, prediction in zip(batch, predict(loaded, batch, args.threshold)):
            if tiling is not None:
                prediction = with_tiles(loaded, item, prediction, transform, tiling, args.threshold, args.batch_size)
            picture(item.image, prediction, loaded.category_names).save(output_dir / names.of(item.path))
            results += coco_results(item.path, image_ids.of(item.path), prediction)
        progress.update(len(batch) + batch_skipped)
    results_path = output_dir / RESULTS_NAME
    results_path.write_text(json.dumps(results))
    done = len(paths) - skipped
    print(f"wrote {done} pictures and {results_path} ({len(results)} predictions with score >= {args.threshold})"
          + (f"; skipped {skipped} unreadable images" if skipped else ""), flush=True)
    return results_path


def batches(paths: list[Path], transform, batch_size: int):
    """Yield (items, images skipped before them): consecutive readable images whose model inputs (``transform``:
    PIL image -> tensor) have the same size, at most ``batch_size`` together."""
    batch, skipped = [], 0
    for path in paths:
        try:
            image = read_input_image(path)
        except BadImageError as exc:
            print(f"warning: skipped {exc}", flush=True)
            skipped += 1
            continue
        tensor = transform(image)
        if batch and (len(batch) == batch_size or batch[0].tensor.shape != tensor.shape):
            yield batch, skipped
            batch, skipped = [], 0
        batch.append(Item(path, image, tensor))
    if batch or skipped:
        yield batch, skipped


@torch.inference_mode()
def predict(loaded: LoadedModel, batch: list[Item], threshold: float) -> list[Prediction]:
    """The model's predictions of score >= ``threshold`` on a batch of same-sized inputs, at each image's size."""
    if not batch:
        return []
    device = torch.device(loaded.args.device)
    samples = nested_tensor_from_tensor_list([item.tensor for item in batch]).to(device)
    outputs = loaded.model(samples)
    image_sizes = torch.tensor([[item.image.height, item.image.width] for item in batch], device=device)
    results = detections(loaded.postprocessors["bbox"], outputs, image_sizes)
    predictions = []
    for i, result in enumerate(results):
        keep = (result["scores"] >= threshold).nonzero().flatten()
        prediction = Prediction(result["scores"][keep].cpu(), result["labels"][keep].cpu(),
                                result["boxes"][keep].cpu())
        if "pred_masks" in outputs and "panoptic" not in loaded.postprocessors:  # DETR's queries keep their order
            prediction.masks = _instance_masks(outputs["pred_masks"][i, keep], tuple(samples.tensors.shape[-2:]),
                                               tuple(image_sizes[i].tolist()))
        predictions.append(prediction)
    if "panoptic" in loaded.postprocessors:
        input_size = list(batch[0].tensor.shape[-2:])
        panoptic = loaded.postprocessors["panoptic"](outputs, [input_size] * len(batch), image_sizes.tolist())
        for prediction, segmentation in zip(predictions, panoptic):
            with Image.open(io.BytesIO(segmentation["png_string"])) as png:
                prediction.segment_ids = rgb2id(np.asarray(png.convert("RGB")))
            prediction.segments = segmentation["segments_info"]
    return predictions


def with_tiles(loaded: LoadedModel, item: Item, whole: Prediction, transform, tiling: Tiling, threshold: float,
               batch_size: int) -> Prediction:
    """The image's own prediction ``whole`` merged with those of its tiles (``transform``: PIL image -> model input;
    ``batch_size`` tiles a batch; predictions of score >= ``threshold``), as tools/tiling.py describes; ``whole``
    alone for an image no larger than a tile."""
    tiles = tile_grid(item.image.width, item.image.height, tiling.size, tiling.overlap)
    if not tiles:
        return whole
    parts = [whole]
    for start in range(0, len(tiles), batch_size):
        crops = [item.image.crop(box) for box in tiles[start:start + batch_size]]
        parts += predict(loaded, [Item(item.path, crop, transform(crop)) for crop in crops], threshold)
    offsets = [(0, 0)] + [(x0, y0) for x0, y0, _, _ in tiles]
    scores, labels, boxes, keep = merge_detections([(p.scores, p.labels, p.boxes) for p in parts], offsets,
                                                   tiling.nms_iou)
    merged = Prediction(scores, labels, boxes)
    if whole.masks is not None:  # each kept mask pasted at its tile's place in an image-sized one
        placed = [(mask, offset) for part, offset in zip(parts, offsets) for mask in part.masks]
        merged.masks = [_pasted(*placed[k], (item.image.height, item.image.width)) for k in keep.tolist()]
    return merged


def _pasted(mask: np.ndarray, offset: tuple[int, int], image_size: tuple[int, int]) -> np.ndarray:
    """A boolean ``mask`` ``[h, w]`` of a tile at ``offset`` (x0, y0) as a mask of the image ``image_size`` (H, W)."""
    (x0, y0), (height, width) = offset, mask.shape
    pasted = np.zeros(image_size, dtype=bool)
    pasted[y0:y0 + height, x0:x0 + width] = mask
    return pasted


def _instance_masks(mask_logits: torch.Tensor, input_size: tuple[int, int], image_size: tuple[int, int]
                    ) -> list[np.ndarray]:
    """Mask logits ``[n, h', w']`` of an unpadded input of ``input_size`` (h, w) -> boolean masks at the image's
    size (H, W): upsampled to the input size, thresholded at probability 0.5, resized by nearest neighbour, as
    PostProcessSegm does."""
    if len(mask_logits) == 0:
        return []
    binary = F.interpolate(mask_logits[None].float(), size=input_size, mode="bilinear", align_corners=False)[0]
    binary = (binary.sigmoid() > 0.5).to(torch.uint8).cpu()
    return [F.interpolate(m[None, None], size=image_size, mode="nearest")[0, 0].numpy().astype(bool) for m in binary]


def picture(image: Image.Image, prediction: Prediction, names: dict[int, str]) -> Image.Image:
    """``image`` with the prediction drawn: panoptic segments or instance masks in colour, then boxes with
    'name score' captions."""
    labels = prediction.labels.tolist()
    if prediction.segment_ids is not None:
        segments = prediction.segments
        image = blend_masks(image, [prediction.segment_ids == s["id"] for s in segments],
                            [colour(s["category_id"]) for s in segments])
    elif prediction.masks:
        image = blend_masks(image, prediction.masks, [colour(label) for label in labels])
    captions = [f"{names.get(label, label)} {score:.2f}" for label, score in zip(labels, prediction.scores.tolist())]
    return draw_boxes(image, prediction.boxes.tolist(), captions, [colour(label) for label in labels])


def coco_results(path: Path, image_id: int, prediction: Prediction) -> list[dict]:
    """The prediction as COCO results entries (boxes as x, y, width, height; masks as compressed RLE)."""
    entries = []
    for k, (box, label, score) in enumerate(zip(prediction.boxes.tolist(), prediction.labels.tolist(),
                                                prediction.scores.tolist())):
        x0, y0, x1, y1 = box
        entry = {"file_name": str(path), "image_id": image_id, "category_id": int(label),
                 "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)], "score": round(score, 5)}
        if prediction.masks:
            rle = coco_mask.encode(np.asfortranarray(prediction.masks[k].astype(np.uint8)))
            entry["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
        entries.append(entry)
    return entries


class ImageIds:
    """An input's image id: the one the ``--coco_path`` annotation files give its file name, else a running number
    from the largest listed id + 1 (from 1 without annotation files)."""

    def __init__(self, coco_path: str | None):
        self.by_name: dict[str, int] = {}
        if coco_path:
            from datasets.category_names import INSTANCE_FILES

            files = [Path(coco_path) / "annotations" / name for name in INSTANCE_FILES]
            if not any(f.is_file() for f in files):
                raise UserError(f"--coco_path {coco_path}: no annotations/instances_{{val,train}}2017.json there")
            for path in reversed([f for f in files if f.is_file()]):
                with open(path) as f:
                    self.by_name.update({Path(i["file_name"]).name: int(i["id"])
                                         for i in json.load(f).get("images", [])})
        self.next_id = max(self.by_name.values(), default=0) + 1

    def of(self, path: Path) -> int:
        if path.name in self.by_name:
            return self.by_name[path.name]
        self.next_id += 1
        return self.next_id - 1


class OutputNames:
    """``<stem>.png`` for each input, made unique (``<stem>_2.png`` ...) when stems repeat or the name is an input's
    own file (``--output_dir`` the input folder)."""

    def __init__(self, paths: list[Path], output_dir: Path):
        self.names: dict[Path, str] = {}
        inputs = {path.resolve() for path in paths}
        used: set[str] = set()
        for path in paths:
            name, n = f"{path.stem}.png", 1
            while name in used or (output_dir / name).resolve() in inputs:
                n += 1
                name = f"{path.stem}_{n}.png"
            used.add(name)
            self.names[path] = name

    def of(self, path: Path) -> str:
        return self.names[path]


class Progress:
    """A progress line every few seconds: images done, rate and time left."""

    def __init__(self, total: int):
        self.total, self.done = total, 0
        self.start = self.last = time.perf_counter()

    def update(self, n: int) -> None:
        self.done += n
        now = time.perf_counter()
        if now - self.last < PROGRESS_INTERVAL_S and self.done < self.total:
            return
        self.last = now
        rate = self.done / max(now - self.start, 1e-9)
        left = (self.total - self.done) / max(rate, 1e-9)
        print(f"predict: {self.done}/{self.total} images, {rate:.2f} images/s, {left:.0f} s left", flush=True)


if __name__ == "__main__":
    raise SystemExit(run_tool(main))
