"""Category names for pictures of predictions: from a dataset's annotation files, or COCO's own for models trained
on COCO (the official checkpoints and the hub entries predict COCO's category ids). The YOLO and VOC layouts
(``--dataset_file yolo|voc --data_path DIR``) name their categories as ``datasets.yolo`` and ``datasets.voc`` number
them: ``data.yaml``'s names, ``labels.txt``'s, or the sorted names of the VOC annotations, ids 0..K-1."""
import argparse
import json
from pathlib import Path

COCO_NAMES_FILE = Path(__file__).with_name("coco_category_names.json")
INSTANCE_FILES = ("instances_val2017.json", "instances_train2017.json")
PANOPTIC_FILES = ("panoptic_val2017.json", "panoptic_train2017.json")


def coco_category_names() -> dict[int, str]:
    """COCO 2017's category id -> name: the 80 things (ids 1..90) and the 53 panoptic stuff categories (92..200)."""
    data = json.loads(COCO_NAMES_FILE.read_text())
    return {int(k): v for part in ("things", "stuff") for k, v in data[part].items()}


def annotation_file_names(path: str | Path) -> dict[int, str]:
    """Category id -> name of a COCO-format annotation file (its ``categories``); {} when it lists none."""
    with open(path) as f:
        data = json.load(f)
    return {int(c["id"]): str(c.get("name", c["id"])) for c in data.get("categories", [])}


def dataset_annotation_files(coco_path: str | Path | None, coco_panoptic_path: str | Path | None = None, *,
                             dataset_file: str = "coco", data_path: str | Path | None = None) -> list[Path]:
    """The files that name a dataset's categories, those that exist among: for COCO,
    ``COCO_PATH/annotations/instances_{val,train}2017.json`` (``data_path`` in place of ``coco_path``) and
    ``COCO_PANOPTIC_PATH/annotations/panoptic_{val,train}2017.json``; for yolo ``DATA_PATH/data.yaml``; for voc
    ``DATA_PATH/labels.txt``, else the lists ``DATA_PATH/ImageSets/Main/{val,train}.txt`` (whose images'
    annotation files name the objects)."""
    if dataset_file in ("yolo", "voc"):
        return _layout_name_files(dataset_file, data_path)
    coco_path = coco_path or data_path
    candidates = []
    if coco_path:
        candidates += [Path(coco_path) / "annotations" / name for name in INSTANCE_FILES]
    if coco_panoptic_path:
        candidates += [Path(coco_panoptic_path) / "annotations" / name for name in PANOPTIC_FILES]
    return [path for path in candidates if path.is_file()]


def dataset_category_names(coco_path: str | Path | None, coco_panoptic_path: str | Path | None = None, *,
                           dataset_file: str = "coco", data_path: str | Path | None = None) -> dict[int, str]:
    """Category id -> name of a dataset folder (see :func:`dataset_annotation_files`; panoptic files add the stuff
    categories), as training numbers them; {} when there are no such files."""
    if dataset_file in ("yolo", "voc"):
        return _layout_names(dataset_file, data_path) if _layout_name_files(dataset_file, data_path) else {}
    names: dict[int, str] = {}
    for path in reversed(dataset_annotation_files(coco_path, coco_panoptic_path, data_path=data_path)):
        names.update(annotation_file_names(path))  # val files win over train
    return names


def category_names_for(args: argparse.Namespace) -> tuple[dict[int, str], list[Path]]:
    """(category id -> name, the files they come from) of the dataset that flags ``args`` name (``dataset_file``,
    ``coco_path``, ``coco_panoptic_path``, ``data_path``; absent ones count as not given); ({}, []) without files."""
    folders = {key: getattr(args, key, None) for key in ("coco_path", "coco_panoptic_path", "data_path")}
    dataset_file = getattr(args, "dataset_file", None) or "coco"
    files = dataset_annotation_files(folders["coco_path"], folders["coco_panoptic_path"], dataset_file=dataset_file,
                                     data_path=folders["data_path"])
    if not files:
        return {}, []
    return dataset_category_names(folders["coco_path"], folders["coco_panoptic_path"], dataset_file=dataset_file,
                                  data_path=folders["data_path"]), files


def _layout_name_files(dataset_file: str, data_path: str | Path | None) -> list[Path]:
    if not data_path:
        return []
    root = Path(data_path)
    if dataset_file == "yolo":
        candidates = [root / "data.yaml"]
    else:
        candidates = [root / "labels.txt"] if (root / "labels.txt").is_file() else \
            [root / "ImageSets" / "Main" / f"{split}.txt" for split in ("val", "train")]
    return [path for path in candidates if path.is_file()]


def _layout_names(dataset_file: str, data_path: str | Path) -> dict[int, str]:
    if dataset_file == "yolo":
        from datasets.yolo import yolo_class_names
        return dict(enumerate(yolo_class_names(Path(data_path))))
    from datasets.voc import voc_class_names
    return dict(enumerate(voc_class_names(Path(data_path))))
