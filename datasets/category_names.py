"""Category names for pictures of predictions: from a dataset's annotation files, or COCO's own for models trained
on COCO (the official checkpoints and the hub entries predict COCO's category ids)."""
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


def dataset_annotation_files(coco_path: str | Path | None, coco_panoptic_path: str | Path | None = None
                             ) -> list[Path]:
    """The annotation files that exist among ``COCO_PATH/annotations/instances_{val,train}2017.json`` and
    ``COCO_PANOPTIC_PATH/annotations/panoptic_{val,train}2017.json``."""
    candidates = []
    if coco_path:
        candidates += [Path(coco_path) / "annotations" / name for name in INSTANCE_FILES]
    if coco_panoptic_path:
        candidates += [Path(coco_panoptic_path) / "annotations" / name for name in PANOPTIC_FILES]
    return [path for path in candidates if path.is_file()]


def dataset_category_names(coco_path: str | Path | None, coco_panoptic_path: str | Path | None = None
                           ) -> dict[int, str]:
    """Category id -> name from the annotation files of a dataset folder (see :func:`dataset_annotation_files`;
    panoptic files add the stuff categories); {} when there are none."""
    names: dict[int, str] = {}
    for path in reversed(dataset_annotation_files(coco_path, coco_panoptic_path)):  # val files win over train
        names.update(annotation_file_names(path))
    return names
