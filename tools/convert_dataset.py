"""A YOLO or Pascal VOC dataset folder written in the COCO layout, for those who want the files.

    python -m tools.convert_dataset --from yolo|voc --data_path DIR --out OUT [--images link|copy]

writes ``OUT/train2017/`` and ``OUT/val2017/`` (the images, under the names they have in the layout: hard links by
default, so no space is used twice and the originals stay as they are, or copies with ``--images copy``; a file
that cannot be linked, on another file system, is copied) and ``OUT/annotations/instances_{train,val}2017.json``:
the ground truth that ``--dataset_file yolo|voc --data_path DIR`` builds in memory (``datasets.yolo``,
``datasets.voc``: category ids 0..K-1, image and annotation ids from 1, boxes in pixels, VOC's difficult objects as
crowd regions), so that ``--coco_path OUT`` trains and evaluates as ``--data_path DIR`` does. Boxes that training
leaves out (not finite, empty, outside the image: ``datasets.invalid_boxes``) are left out of the files, with the
same warning.

Both splits are read and checked before anything is written; ``train2017/``, ``val2017/`` or ``annotations/``
already under ``OUT`` are refused. Errors are one line ``error: ...`` naming the file and line.
"""
import argparse
import json
import os
import shutil
import sys
from pathlib import Path

from datasets.coco import COCO_SPLITS
from datasets.invalid_boxes import drop_invalid_boxes
from datasets.layouts import LayoutSplit
from datasets.voc import read_voc
from datasets.yolo import read_yolo
from tools.command_line import run_tool
from util.user_error import UserError

READERS = {"yolo": read_yolo, "voc": read_voc}
IMAGE_MODES = ("link", "copy")


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("Write a YOLO or Pascal VOC dataset in the COCO layout")
    parser.add_argument("--from", dest="layout", required=True, choices=tuple(READERS),
                        help="the layout of --data_path (as --dataset_file)")
    parser.add_argument("--data_path", required=True, help="the dataset folder to read")
    parser.add_argument("--out", required=True, help="the folder to write (becomes --coco_path)")
    parser.add_argument("--images", default="link", choices=IMAGE_MODES,
                        help="hard-link the images (default; copied where a link cannot be made) or copy them")
    return parser


def _place_image(source: Path, target: Path, mode: str) -> bool:
    """Link (or with ``mode`` 'copy', copy) ``source`` to ``target``; returns whether it was linked."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if mode == "link":
        try:
            os.link(source, target)
            return True
        except OSError:
            pass  # another file system, or links not allowed: copy
    shutil.copy2(source, target)
    return False


def _write_json(data: dict, path: Path) -> None:
    """``data`` as JSON at ``path``, whole or not at all (a temporary file renamed)."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(data))
    os.replace(temporary, path)


def convert(layout: str, data_path: Path, out: Path, images: str = "link") -> dict[str, Path]:
    """Write the ``layout`` ('yolo' or 'voc') folder ``data_path`` in the COCO layout under ``out`` (see the module
    docstring); returns split -> the annotation file written."""
    if not data_path.is_dir():
        raise FileNotFoundError(f"--data_path {data_path} is not a directory")
    targets = {split: (out / folder, out / "annotations" / ann_name)
               for split, (folder, ann_name) in COCO_SPLITS.items()}
    existing = [path for path in [folder for folder, _ in targets.values()] + [out / "annotations"] if path.exists()]
    if existing:
        raise UserError(f"--out {out} already has {', '.join(p.name + '/' for p in existing)}; refusing to overwrite "
                        f"(choose another --out)")
    splits: dict[str, LayoutSplit] = {split: READERS[layout](data_path, split) for split in COCO_SPLITS}
    for layout_split in splits.values():
        dropped = drop_invalid_boxes(layout_split.annotations, layout_split.source)
        if dropped:
            print(f"warning: {dropped}", flush=True)
    written = {}
    for split, layout_split in splits.items():
        folder, ann_file = targets[split]
        images_data = layout_split.annotations["images"]
        linked = sum(_place_image(layout_split.image_folder / image["file_name"], folder / image["file_name"], images)
                     for image in images_data)
        ann_file.parent.mkdir(parents=True, exist_ok=True)
        _write_json(layout_split.annotations, ann_file)
        how = f"{linked} linked, {len(images_data) - linked} copied" if images == "link" else "copied"
        print(f"{split}: {len(images_data)} images ({how}) -> {folder}; "
              f"{len(layout_split.annotations['annotations'])} objects, "
              f"{len(layout_split.annotations['categories'])} categories -> {ann_file}", flush=True)
        written[split] = ann_file
    return written


def main(argv: list[str] | None = None) -> dict[str, Path]:
    args = get_parser().parse_args(argv)
    return convert(args.layout, Path(args.data_path), Path(args.out), args.images)


if __name__ == "__main__":
    sys.exit(run_tool(main))
