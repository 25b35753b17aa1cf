"""The hard mode of the synthetic generator (``--difficulty hard``): its properties measured on a small generated set,
determinism, boxes where the shapes are, the files loading in pycocotools and this codebase's dataset, the YOLO and
VOC copies, and the easy mode byte for byte as before the hard mode existed."""
import contextlib
import copy
import hashlib
import io
import json
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as coco_mask
from pycocotools.coco import COCO

import cli
import tools.data.synthetic as synthetic
from datasets import build_dataset
from datasets.annotation_schema import check_instances
from datasets.invalid_boxes import drop_invalid_boxes
from tests.conftest import TINY_FLAGS
from tools.data.synthetic import generate, write_voc_copy, write_yolo_copy

# Written down independently of tools.data.synthetic: the hard mode's category ids and names.
HARD_SHAPES = {3: "rectangle", 17: "ellipse", 28: "triangle", 44: "diamond", 62: "cross", 77: "star", 90: "ring"}
SEED, NUM_TRAIN, NUM_VAL, SIZE = 0, 160, 40, 128
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
# pycocotools' decode warns about numpy 2's copy keyword on every call
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools")


@pytest.fixture(scope="module")
def hard(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("hard"), num_train=NUM_TRAIN, num_val=NUM_VAL, image_size=SIZE, seed=SEED,
                    difficulty="hard", quiet=True)


def _load(folder: Path, split: str = "train") -> dict:
    return json.loads((folder / "annotations" / f"instances_{split}2017.json").read_text())


def _both(folder: Path) -> tuple[list[dict], list[dict]]:
    """Images and annotations of both splits (image ids do not repeat across them)."""
    train, val = _load(folder, "train"), _load(folder, "val")
    return train["images"] + val["images"], train["annotations"] + val["annotations"]


def _singles(annotations: list[dict]) -> list[dict]:
    return [a for a in annotations if not a["iscrowd"]]


def _iou(a: list, b: list) -> float:
    iw = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    ih = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    return iw * ih / (a[2] * a[3] + b[2] * b[3] - iw * ih)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for name, data in _files(folder).items():
        h.update(name.encode())
        h.update(data)
    return h.hexdigest()


def _mode(path: Path) -> str:
    with Image.open(path) as img:
        return img.mode


def _decode(segmentation: dict) -> np.ndarray:
    return coco_mask.decode(segmentation).astype(bool)


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    def make(name, seed):
        return _files(generate(tmp_path / name, num_train=6, num_val=2, image_size=64, seed=seed, difficulty="hard",
                               quiet=True))

    a, b, c = make("a", 1), make("b", 1), make("c", 2)
    assert a == b
    assert a.keys() == c.keys() and all(a[k] != c[k] for k in a if k.endswith(".jpg"))
    assert json.loads(a["synthetic_params.json"])["params"]["difficulty"] == "hard"


def test_image_sizes_128_to_192_with_mixed_aspect_ratios(hard):
    images, _ = _both(hard)
    widths, heights = np.array([i["width"] for i in images]), np.array([i["height"] for i in images])
    assert widths.min() >= 128 and heights.min() >= 128 and widths.max() <= 192 and heights.max() <= 192
    assert widths.max() - widths.min() > 50 and heights.max() - heights.min() > 50
    ratio = widths / heights
    assert (ratio > 1.2).mean() > 0.08 and (ratio < 1 / 1.2).mean() > 0.08  # landscape and portrait
    for image in images[:20]:  # the files are the sizes the annotations say
        with Image.open(hard / ("train2017" if image["id"] <= NUM_TRAIN else "val2017") / image["file_name"]) as img:
            assert img.size == (image["width"], image["height"])


def test_about_ten_percent_greyscale_and_twelve_percent_empty_images(hard):
    images, annotations = _both(hard)
    modes = [_mode(hard / ("train2017" if i["id"] <= NUM_TRAIN else "val2017") / i["file_name"]) for i in images]
    assert set(modes) == {"L", "RGB"}
    assert 0.05 <= modes.count("L") / len(images) <= 0.16
    empty = 1 - len({a["image_id"] for a in annotations}) / len(images)
    assert 0.07 <= empty <= 0.18


def test_tiny_objects_border_boxes_and_categories(hard):
    images, annotations = _both(hard)
    singles = _singles(annotations)
    sides = np.array([max(a["bbox"][2:]) for a in singles])
    assert 0.10 <= (sides < 10).mean() <= 0.35 and (sides < 8).mean() >= 0.05
    size = {i["id"]: (i["width"], i["height"]) for i in images}
    touching = 0
    for a in annotations:
        x, y, w, h = a["bbox"]
        width, height = size[a["image_id"]]
        assert x >= 0 and y >= 0 and x + w <= width and y + h <= height and w > 0 and h > 0  # clipped to the image
        touching += not a["iscrowd"] and (x == 0 or y == 0 or x + w == width or y + h == height)
    assert touching / len(singles) >= 0.10
    for folder in (_load(hard, "train"), _load(hard, "val")):
        assert {c["id"]: c["name"] for c in folder["categories"]} == HARD_SHAPES
    assert {a["category_id"] for a in annotations} == set(HARD_SHAPES)


def test_occlusion_and_crowd_regions(hard):
    images, annotations = _both(hard)
    by_image: dict[int, list] = {}
    for a in _singles(annotations):
        by_image.setdefault(a["image_id"], []).append(a["bbox"])
    occluded = [image_id for image_id, boxes in by_image.items()
                if any(_iou(p, q) > 0.3 for p, q in combinations(boxes, 2))]
    assert len(occluded) / len(images) >= 0.15
    crowds = [a for a in annotations if a["iscrowd"]]
    assert len(crowds) >= 5
    for crowd in crowds:  # a region over a group of small shapes: several separate pieces, much empty space
        mask = _decode(crowd["segmentation"])
        assert mask.sum() == crowd["area"] < 0.8 * crowd["bbox"][2] * crowd["bbox"][3]


def test_segmentations_boxes_and_areas_agree(hard):
    images, annotations = _both(hard)
    size = {i["id"]: (i["width"], i["height"]) for i in images}
    for a in annotations:
        assert a["segmentation"]["size"] == [size[a["image_id"]][1], size[a["image_id"]][0]]
        mask = _decode(a["segmentation"])
        cols, rows = np.flatnonzero(mask.any(0)), np.flatnonzero(mask.any(1))
        assert a["bbox"] == [int(cols[0]), int(rows[0]), int(cols[-1] - cols[0]) + 1, int(rows[-1] - rows[0]) + 1]
        assert a["area"] == int(mask.sum())


def test_each_object_shows_its_colour_where_its_mask_and_box_are(hard):
    """Draw the train split again as ``generate`` does (one generator seeded [seed, 0]) to learn each shape's colour,
    then find that colour in the written JPEG under the object's mask (by luminance: JPEG keeps it, its 4:2:0
    chroma smears tiny shapes)."""
    data = _load(hard, "train")
    by_image: dict[int, list] = {}
    for a in data["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    rng = np.random.default_rng([SEED, 0])
    checked = 0
    for image in data["images"][:60]:
        _, objects, colours = synthetic._make_hard_image(SIZE, synthetic.HARD_MAX_OBJECTS, rng)
        annotations = by_image.get(image["id"], [])
        assert [{key: a[key] for key in obj} for a, obj in zip(annotations, objects)] == objects
        assert len(annotations) == len(objects)
        with Image.open(hard / "train2017" / image["file_name"]) as img:
            pixels = np.asarray(img, dtype=np.float32)
        luma = pixels if pixels.ndim == 2 else pixels @ LUMA
        for a, colour in zip(annotations, colours):
            x, y, w, h = a["bbox"]
            mask = _decode(a["segmentation"])
            inside = luma[mask]
            assert abs(np.median(inside) - np.float32(colour) @ LUMA) <= (25 if a["iscrowd"] else 20), a
            # the box is tight: its first and last rows and columns hold pixels of the shape
            assert mask[y, x:x + w].any() and mask[y + h - 1, x:x + w].any()
            assert mask[y:y + h, x].any() and mask[y:y + h, x + w - 1].any()
            checked += 1
    assert checked > 100


def test_loads_in_pycocotools_passes_the_checks_and_builds(hard):
    for split in ("train", "val"):
        data = _load(hard, split)
        source = hard / "annotations" / f"instances_{split}2017.json"
        check_instances(copy.deepcopy(data), source, need_segmentation=True)
        assert drop_invalid_boxes(copy.deepcopy(data), source) is None
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO(str(source))
        for ann in coco.loadAnns(coco.getAnnIds()[:50]):
            assert coco.annToMask(ann).sum() == ann["area"]
    args = cli.get_args_parser().parse_args([*TINY_FLAGS, "--coco_path", str(hard), "--masks"])
    dataset = build_dataset("val", args)
    assert len(dataset) == NUM_VAL
    data = _load(hard, "val")
    grey = [i["id"] for i in data["images"] if _mode(hard / "val2017" / i["file_name"]) == "L"]
    assert grey
    for image_id in dataset.ids[:6] + grey[:2]:  # greyscale files become 3-channel images
        image, target = dataset[dataset.ids.index(image_id)]
        singles = [a for a in data["annotations"] if a["image_id"] == image_id and not a["iscrowd"]]
        assert image.shape[0] == 3 and len(target["labels"]) == len(target["masks"]) == len(singles)
        assert set(target["labels"].tolist()) <= set(HARD_SHAPES)


def test_yolo_and_voc_copies_of_hard_data(hard, tmp_path):
    """Crowd regions: left out of the YOLO copy, difficult objects (read back as crowd regions) in the VOC copy."""
    annotations = _both(hard)[1]
    yolo = write_yolo_copy(hard, tmp_path / "yolo")
    lines = [line for p in (yolo / "labels").rglob("*.txt") for line in p.read_text().splitlines()]
    assert len(lines) == len(_singles(annotations))
    voc = write_voc_copy(hard, tmp_path / "voc")
    xml = "".join(p.read_text() for p in (voc / "Annotations").glob("*.xml"))
    assert xml.count("<difficult>1</difficult>") == len(annotations) - len(_singles(annotations))
    for layout, folder, crowd in (("yolo", yolo, 0), ("voc", voc, 1)):
        args = cli.get_args_parser().parse_args([*TINY_FLAGS, "--dataset_file", layout, "--data_path", str(folder)])
        dataset = build_dataset("val", args)
        val = _load(hard, "val")["annotations"]
        expected = len(_singles(val)) + crowd * (len(val) - len(_singles(val)))
        assert len(dataset) == NUM_VAL and len(dataset.coco.dataset["annotations"]) == expected
        dataset[0]


def test_command_line_and_refusals(tmp_path):
    out = synthetic.main(["--out", str(tmp_path / "cli"), "--num_train", "2", "--num_val", "1", "--difficulty", "hard",
                          "--image_size", "32"])
    params = json.loads((out / "synthetic_params.json").read_text())["params"]
    assert params["difficulty"] == "hard" and params["max_objects"] == synthetic.HARD_MAX_OBJECTS
    assert all(32 <= i[k] <= 48 for i in _load(out)["images"] for k in ("width", "height"))
    with pytest.raises(ValueError, match="panoptic"):
        generate(tmp_path / "p", num_train=1, num_val=1, difficulty="hard", panoptic=True)
    with pytest.raises(ValueError, match="difficulty"):
        generate(tmp_path / "d", num_train=1, num_val=1, difficulty="medium")
    with pytest.raises(SystemExit):
        synthetic.main(["--out", str(tmp_path / "x"), "--difficulty", "hard", "--panoptic"])


# sha256 over (relative path, bytes) of every file generate() wrote with these arguments, computed with
# tools/data/synthetic.py as it was before the hard mode existed: the easy mode (the default) must not change.
EASY_DIGESTS = [
    (dict(num_train=12, num_val=4, image_size=64, seed=3),
     "99685764b57fa92fd1ca28a3aa17100d1b559e7c363e30f483fc424fdb23ade6"),
    (dict(num_train=8, num_val=2, image_size=96, seed=7, max_objects=6),
     "f0f089a6c72b8db84bfb8953e503938199bf7e79a530fffeb5547e20d6e6f620"),
    (dict(num_train=6, num_val=2, image_size=48, seed=1, panoptic=True),
     "adde7a8ef328852c4f32cca4e7aa1e2b067c488b9ebf328603538813b3c52900"),
]


@pytest.mark.parametrize("explicit", [False, True])
@pytest.mark.parametrize("kwargs,digest", EASY_DIGESTS)
def test_easy_mode_unchanged(tmp_path, kwargs, digest, explicit):
    extra = {"difficulty": "easy"} if explicit else {}
    out = generate(tmp_path, quiet=True, **kwargs, **extra)
    assert _digest(out) == digest
    assert "difficulty" not in json.loads((out / "synthetic_params.json").read_text())["params"]


# sha256 (as above) of a small hard set written by tools/data/synthetic.py before --hard_without existed: switching
# nothing off must keep the hard mode byte for byte.
HARD_DIGEST = (dict(num_train=10, num_val=4, image_size=64, seed=5),
               "f1a4755584c4551f5b64d9f27b60e696023401655ad1412625ee33e76e230a3c")


def test_hard_mode_unchanged_when_nothing_is_switched_off(tmp_path):
    kwargs, digest = HARD_DIGEST
    out = generate(tmp_path, quiet=True, difficulty="hard", hard_without=(), **kwargs)
    assert _digest(out) == digest
    assert "hard_without" not in json.loads((out / "synthetic_params.json").read_text())["params"]


@pytest.fixture(scope="module")
def hard_without_all(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("without"), num_train=NUM_TRAIN, num_val=NUM_VAL, image_size=SIZE,
                    seed=SEED, difficulty="hard", quiet=True, hard_without=synthetic.HARD_SCENE_PROPERTIES)


def _edge_share(folder: Path, images: list[dict]) -> float:
    """The share of horizontally adjacent pixels whose luma differs by more than 25 (of 255): edges, not noise."""
    energies = []
    for image in images:
        with Image.open(folder / ("train2017" if image["id"] <= NUM_TRAIN else "val2017") / image["file_name"]) as img:
            luma = np.asarray(img.convert("RGB"), dtype=np.float32) @ LUMA
        energies.append((np.abs(np.diff(luma, axis=1)) > 25).mean())
    return float(np.mean(energies))


def test_hard_without_each_property_switches_it_off(hard, hard_without_all):
    images, annotations = _both(hard_without_all)
    singles = _singles(annotations)
    assert len(singles) == len(annotations) > 300  # crowd: none
    assert all((i["width"], i["height"]) == (SIZE, SIZE) for i in images)  # sizes: square image_size
    folders = [hard_without_all / ("train2017" if i["id"] <= NUM_TRAIN else "val2017") / i["file_name"]
               for i in images]
    assert {_mode(path) for path in folders} == {"RGB"}  # greyscale: none
    assert {c["id"] for c in _load(hard_without_all)["categories"]} == set(range(1, 8))  # sparse ids: 1..7
    assert {a["category_id"] for a in annotations} == set(range(1, 8))
    names = {c["id"]: c["name"] for c in _load(hard_without_all)["categories"]}
    assert sorted(names.values()) == sorted(HARD_SHAPES.values())
    # tiny, border, occlusion: no shape drawn under 10 px and none across the border, so a box under 10 px or one
    # touching the border is a shape cut by another (random placement still lets shapes overlap, far less often)
    default_images, default_annotations = _both(hard)
    default_singles = _singles(default_annotations)

    def share_small(boxes):
        return np.mean([max(a["bbox"][2:]) < 10 for a in boxes])

    def share_heavy_overlap(boxes_by_image):
        pairs = [_iou(p, q) > 0.3 for boxes in boxes_by_image.values() for p, q in combinations(boxes, 2)]
        return np.mean(pairs)

    def by_image(boxes):
        grouped: dict[int, list] = {}
        for a in boxes:
            grouped.setdefault(a["image_id"], []).append(a["bbox"])
        return grouped

    assert share_small(singles) < 0.03 < 0.10 <= share_small(default_singles)
    assert share_heavy_overlap(by_image(singles)) < 0.5 * share_heavy_overlap(by_image(default_singles))
    # textures: plain backgrounds have far fewer edges than the textured ones
    assert _edge_share(hard_without_all, images[:40]) < 0.5 * _edge_share(hard, default_images[:40])


def test_hard_without_the_drawing_properties_draws_as_the_easy_mode(hard_without_all, tmp_path):
    """All thirteen off against the nine scene properties off: five shapes, at most 4 objects per image, sizes
    13-64 px (10-50% of 128) instead of log-uniform from 10 px to 70% of the shorter side (colours: next test)."""
    like_easy = generate(tmp_path, num_train=NUM_TRAIN, num_val=NUM_VAL, image_size=SIZE, seed=SEED,
                         difficulty="hard", quiet=True, hard_without=synthetic.HARD_PROPERTIES)
    categories = _load(like_easy)["categories"]
    assert sorted(c["name"] for c in categories) == ["cross", "diamond", "ellipse", "rectangle", "triangle"]
    assert {c["id"] for c in categories} == {a["category_id"] for a in _both(like_easy)[1]} == set(range(1, 6))
    counts = {}
    for folder in (like_easy, hard_without_all):
        per_image: dict[int, list] = {}
        for a in _both(folder)[1]:
            per_image.setdefault(a["image_id"], []).append(max(a["bbox"][2:]))
        counts[folder] = per_image
    easy_like, nine_off = counts[like_easy], counts[hard_without_all]
    assert max(map(len, easy_like.values())) <= 4 < max(map(len, nine_off.values()))
    easy_sides = [side for sides in easy_like.values() for side in sides]
    nine_sides = [side for sides in nine_off.values() for side in sides]
    assert max(easy_sides) <= 64 < max(nine_sides)
    assert np.median(easy_sides) > 1.2 * np.median(nine_sides)


def test_hard_without_low_contrast_and_refusals(tmp_path):
    rng = np.random.default_rng(0)
    under = np.array([120.0, 90.0, 60.0])

    def close_share(fraction):
        colours = [synthetic._hard_colour(under, [], rng, fraction) for _ in range(400)]
        return np.mean([np.linalg.norm(c - under) <= 60 for c in colours])

    assert close_share(0.0) < 0.08 and close_share(synthetic.LOW_CONTRAST_FRACTION) > 0.25
    # free_colours off: the colours that are not deliberately close differ in luminance by 70 (of 255) from the
    # colour under them and by 70 in RGB from the shapes they cover; free ones often do not
    covered = [np.array([200.0, 40.0, 90.0])]

    def luma_gaps(free):
        colours = [synthetic._hard_colour(under, covered, rng, 0.0, free=free) for _ in range(300)]
        assert all(np.linalg.norm(c - covered[0]) >= (70 if not free else 50) for c in colours)
        return np.array([abs(float(c @ LUMA) - float(under @ LUMA)) for c in colours])

    assert luma_gaps(free=False).min() >= 70 - 1e-3 and (luma_gaps(free=True) < 70).mean() > 0.3
    out = synthetic.main(["--out", str(tmp_path / "cli"), "--num_train", "2", "--num_val", "1", "--difficulty", "hard",
                          "--image_size", "32", "--hard_without", "textures", "crowd"])
    assert json.loads((out / "synthetic_params.json").read_text())["params"]["hard_without"] == ["crowd", "textures"]
    with pytest.raises(ValueError, match="unknown properties"):
        generate(tmp_path / "u", num_train=1, num_val=1, difficulty="hard", hard_without=["clouds"])
    with pytest.raises(ValueError, match="hard"):
        generate(tmp_path / "e", num_train=1, num_val=1, hard_without=["textures"])
    with pytest.raises(SystemExit):
        synthetic.main(["--out", str(tmp_path / "x"), "--hard_without", "tiny"])
