"""The structure of a COCO instances annotation file, checked when the dataset is built.

A file that would train on nothing, fail an epoch later, or silently widen the class count is refused at once, with
an error naming the file, the key and the offending id. Checked: the top-level lists ``images``, ``annotations``
and ``categories``; every category an integer ``id`` (unique); every image an integer ``id`` (unique), a
``file_name`` and positive integer ``width`` and ``height``; every annotation an integer ``id`` (unique), an
``image_id`` among the images, a ``category_id`` among the categories, a ``bbox`` of 4 numbers, a numeric ``area``,
an ``iscrowd`` of 0 or 1 when present, and a ``segmentation`` when masks are trained. Whether a box is usable (finite,
not empty, inside the image) is ``datasets.invalid_boxes``'s question.
"""
from pathlib import Path

TOP_LEVEL_KEYS = ("images", "annotations", "categories")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_top_level(data, source: Path, keys: tuple[str, ...] = TOP_LEVEL_KEYS, kind: str = "COCO instances"
                    ) -> None:
    """``data`` is a JSON object with a list under each of ``keys``; ``source`` names the file in errors."""
    if not isinstance(data, dict):
        raise ValueError(f"annotation file {source}: expected a JSON object with the keys {list(keys)}, got "
                         f"{type(data).__name__}")
    for key in keys:
        if key not in data:
            raise ValueError(f"annotation file {source} has no key '{key}' (a {kind} file has "
                             f"{', '.join(repr(k) for k in keys)})")
        if not isinstance(data[key], list):
            raise ValueError(f"annotation file {source}: '{key}' must be a list, got {type(data[key]).__name__}")


def _unique_ids(entries: list, what: str, source: Path) -> set[int]:
    ids: set[int] = set()
    for position, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ValueError(f"annotation file {source}: {what} at position {position} is a "
                             f"{type(entry).__name__}, not an object")
        if "id" not in entry:
            raise ValueError(f"annotation file {source}: {what} at position {position} has no key 'id'")
        if not _is_int(entry["id"]):
            raise ValueError(f"annotation file {source}: {what} at position {position} has 'id' {entry['id']!r}, "
                             "not an integer")
        if entry["id"] in ids:
            raise ValueError(f"annotation file {source} lists {what} id {entry['id']} twice")
        ids.add(entry["id"])
    return ids


def _require(entry: dict, key: str, test, expected: str, who: str, source: Path) -> None:
    if key not in entry:
        raise ValueError(f"annotation file {source}: {who} has no key '{key}'")
    if not test(entry[key]):
        raise ValueError(f"annotation file {source}: {who} has '{key}' {entry[key]!r} (expected {expected})")


def check_instances(data, source: Path, need_segmentation: bool = False) -> None:
    """Raise ValueError naming ``source``, the key and the id of the first entry of ``data`` (a loaded COCO
    instances file) that does not have the structure described in the module docstring."""
    check_top_level(data, source)
    category_ids = _unique_ids(data["categories"], "category", source)
    image_ids = _unique_ids(data["images"], "image", source)
    _unique_ids(data["annotations"], "annotation", source)
    for image in data["images"]:
        who = f"image id {image['id']}"
        _require(image, "file_name", lambda v: isinstance(v, str) and v, "a file name", who, source)
        for key in ("width", "height"):
            _require(image, key, lambda v: _is_int(v) and v > 0, "a positive integer", who, source)
    for ann in data["annotations"]:
        who = f"annotation id {ann['id']}"
        _require(ann, "image_id", _is_int, "an integer", who, source)
        if ann["image_id"] not in image_ids:
            raise ValueError(f"annotation file {source}: {who} has image_id {ann['image_id']}, which is not among "
                             "its images")
        _require(ann, "category_id", _is_int, "an integer", who, source)
        if ann["category_id"] not in category_ids:
            known = sorted(category_ids)
            raise ValueError(f"annotation file {source}: {who} has category_id {ann['category_id']}, which is not "
                             f"among its categories (ids {known[:20]}{' ...' if len(known) > 20 else ''})")
        _require(ann, "bbox", lambda v: isinstance(v, list) and len(v) == 4 and all(_is_number(x) for x in v),
                 "a list of 4 numbers: x, y, width, height", who, source)
        _require(ann, "area", _is_number, "a number", who, source)
        if "iscrowd" in ann:
            _require(ann, "iscrowd", lambda v: v in (0, 1), "0 or 1", who, source)
        if need_segmentation:
            _require(ann, "segmentation", lambda v: isinstance(v, (list, dict)),
                     "polygons or RLE (masks are trained)", who, source)
