"""The Ultralytics YOLO layout (``--dataset_file yolo --data_path DIR``), read as COCO ground truth in memory.

Layout under ``--data_path``::

    data.yaml                  names: [person, car]   or   names: {0: person, 1: car}   (class index -> name)
    images/{train,val}/**/*.jpg (or .png, .bmp, .tif, .webp)
    labels/{train,val}/**/*.txt one line per object: class cx cy w h, the box centre and size normalised to [0, 1]

``images/train/a/b.jpg`` is labelled by ``labels/train/a/b.txt``; an image without a label file, or with an empty
one, is a background image. Category id = class index (``datasets.layouts``). data.yaml's other keys (``path``,
``train``, ``val``, ``nc``) do not move the folders; ``nc``, when given, must be the number of names. Errors name the
file and line: a label file without an image, a line without 5 values (YOLO segmentation polygons are not read), a
value that is not a number, a class index that is not an integer or not among the names. Boxes that are not finite,
empty, or outside the image are left out as for COCO (``datasets.invalid_boxes``).
"""
from pathlib import Path

import yaml

from datasets.coco import CocoDetection
from datasets.image_file import BadImageError
from datasets.layouts import (
    GroundTruth,
    LayoutSplit,
    build_layout_dataset,
    check_split,
    is_image_file,
    read_text_lines,
    upright_size,
)

NAMES_FILE = "data.yaml"
EXPECTED = "data.yaml, images/{train,val}/ and labels/{train,val}/ (the Ultralytics YOLO layout)"
LABEL_COLUMNS = ("class", "cx", "cy", "w", "h")


def yolo_class_names(root: Path) -> list[str]:
    """The class names of ``root/data.yaml``'s ``names`` (index -> name), a list, or a mapping whose keys are
    0..K-1; errors name the file and the key."""
    path = root / NAMES_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: --dataset_file yolo takes the class names from its 'names' (a "
                                f"list, or a mapping from class index to name)")
    try:
        data = yaml.safe_load("\n".join(read_text_lines(path, "class names file")))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark is not None else ""
        raise ValueError(f"{path}{where}: not valid YAML ({getattr(exc, 'problem', None) or exc})") from exc
    if not isinstance(data, dict) or "names" not in data:
        raise ValueError(f"{path} has no key 'names' (the class names: a list, or a mapping from class index to "
                         f"name)")
    names = _names_by_index(data["names"], path)
    if "nc" in data and data["nc"] != len(names):
        raise ValueError(f"{path}: 'nc' is {data['nc']!r} but 'names' has {len(names)} names")
    return names


def _names_by_index(names, path: Path) -> list[str]:
    """data.yaml's ``names`` (a list, or a mapping from 0..K-1) as the list of names by class index."""
    if isinstance(names, list):
        pairs = list(enumerate(names))
    elif isinstance(names, dict):
        pairs = []
        for key, name in names.items():
            is_index = isinstance(key, str) and key.isdigit() or isinstance(key, int) and not isinstance(key, bool)
            if not is_index:
                raise ValueError(f"{path}: 'names' has the key {key!r}; the keys are class indices 0, 1, 2 ...")
            pairs.append((int(key), name))
        pairs.sort(key=lambda pair: pair[0])
        indices = [index for index, _ in pairs]
        if indices != list(range(len(pairs))):
            missing = sorted(set(range(len(pairs))) - set(indices))
            raise ValueError(f"{path}: 'names' must map the class indices 0..{len(pairs) - 1}, one name each (has "
                             f"{indices[:20]}{' ...' if len(indices) > 20 else ''}; missing {missing[:5]})")
    else:
        raise ValueError(f"{path}: 'names' must be a list of class names or a mapping from class index to name, "
                         f"got {type(names).__name__}")
    if not pairs:
        raise ValueError(f"{path}: 'names' lists no class")
    result, seen = [], {}
    for index, name in pairs:
        if isinstance(name, bool) or not isinstance(name, (str, int, float)) or not str(name).strip():
            raise ValueError(f"{path}: 'names' has {name!r} for class {index}; expected a name")
        name = str(name).strip()
        if name in seen:
            raise ValueError(f"{path}: 'names' has {name!r} twice (classes {seen[name]} and {index})")
        seen[name] = index
        result.append(name)
    return result


def _label_boxes(path: Path, names: list[str], names_file: Path, width: int, height: int
                 ) -> list[tuple[int, list[float]]]:
    """(class index, [x, y, w, h] pixels) of each line of the label file ``path`` of a ``width`` x ``height``
    image; errors name the file and line."""
    boxes = []
    for number, line in enumerate(read_text_lines(path, "label file"), start=1):
        fields = line.split()
        if not fields:
            continue
        where = f"label file {path}, line {number}"
        if len(fields) != len(LABEL_COLUMNS):
            polygon = " (YOLO segmentation polygons are not read)" if len(fields) > 5 and len(fields) % 2 else ""
            raise ValueError(f"{where} has {len(fields)} values; expected 5: class cx cy w h, normalised to "
                             f"[0, 1]{polygon}")
        values = []
        for column, text in zip(LABEL_COLUMNS, fields):
            try:
                values.append(float(text))
            except ValueError:
                raise ValueError(f"{where}: {column} {text!r} is not a number") from None
        class_index, cx, cy, w, h = values
        if not class_index.is_integer():
            raise ValueError(f"{where}: class {fields[0]!r} is not an integer class index")
        if not 0 <= class_index < len(names):
            raise ValueError(f"{where}: class {int(class_index)} is out of range: {names_file} names "
                             f"{len(names)} classes (0..{len(names) - 1})")
        boxes.append((int(class_index), [(cx - w / 2) * width, (cy - h / 2) * height, w * width, h * height]))
    return boxes


def _image_by_label(image_folder: Path, label_folder: Path) -> dict[Path, Path]:
    """Label file path -> image path (relative to ``image_folder``) of every image under ``image_folder``, sorted
    by image path; two images that would share a label file are an error."""
    images = sorted(p.relative_to(image_folder) for p in image_folder.rglob("*") if is_image_file(p))
    by_label: dict[Path, Path] = {}
    for image in images:
        label = label_folder / image.with_suffix(".txt")
        if label in by_label:
            raise ValueError(f"images {image_folder / by_label[label]} and {image_folder / image} share the label "
                             f"file {label}; rename one")
        by_label[label] = image
    return by_label


def read_yolo(root: Path, image_set: str, skip_bad_images: bool = False) -> LayoutSplit:
    """Split ``image_set`` ('train' or 'val') of the YOLO folder ``root`` as COCO ground truth (see the module
    docstring); ``skip_bad_images``: an image whose header cannot be read is left out instead of an error."""
    check_split(image_set)
    names = yolo_class_names(root)
    image_folder, label_folder = root / "images" / image_set, root / "labels" / image_set
    for folder, what in ((image_folder, "image"), (label_folder, "label")):
        if not folder.is_dir():
            raise FileNotFoundError(f"{what} folder {folder} not found (--dataset_file yolo reads {EXPECTED})")
    image_by_label = _image_by_label(image_folder, label_folder)
    if not image_by_label:
        raise ValueError(f"image folder {image_folder} has no image (.jpg, .png, .bmp, .tif or .webp)")
    for label in sorted(label_folder.rglob("*.txt")):
        if label not in image_by_label:
            relative = label.relative_to(label_folder).with_suffix("")
            raise ValueError(f"label file {label} has no image: no {image_folder / relative}.jpg (or .png, .bmp, "
                             f".tif, .webp)")
    ground_truth = GroundTruth(names, f"YOLO layout {root}, {image_set} (datasets.yolo)")
    skipped = []
    for label, image in image_by_label.items():
        try:
            width, height = upright_size(image_folder / image)
        except BadImageError as exc:
            if not skip_bad_images:
                raise
            skipped.append(str(exc))
            continue
        image_id = ground_truth.add_image(image.as_posix(), width, height)
        if label.is_file():
            for class_index, box in _label_boxes(label, names, root / NAMES_FILE, width, height):
                ground_truth.add_box(image_id, class_index, box)
    return LayoutSplit(ground_truth.data, image_folder, label_folder, skipped)


def build(image_set: str, args, cache_share: tuple[int, int] = (0, 1)) -> CocoDetection:
    """YOLO ``image_set`` ('train' or 'val') from ``args.data_path`` (see ``datasets.layouts.build_layout_dataset``
    for the other flags)."""
    return build_layout_dataset(image_set, args, read_yolo, EXPECTED, cache_share)
