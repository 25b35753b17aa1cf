"""The YOLO and Pascal VOC layouts (``--dataset_file yolo|voc --data_path DIR``) and ``tools.convert_dataset``: the
same synthetic data in the three layouts gives the same boxes, labels and COCO evaluation; class names and ids;
VOC's difficult objects; bad files named with their line; training through main.py."""
import argparse
import contextlib
import copy
import io
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO

import cli
import main
from datasets import build_dataset, build_run_data
from datasets.category_names import category_names_for, dataset_category_names
from datasets.voc import read_voc
from datasets.yolo import read_yolo
from evaluation.coco_eval import CocoEvaluator
from tests.conftest import TINY_FLAGS
from tools import convert_dataset
from tools.command_line import run_tool
from tools.data.synthetic import generate, write_voc_copy, write_yolo_copy
from util.checkpoint import load_checkpoint

# The synthetic shapes, written down independently of tools.data.synthetic.CATEGORIES: COCO id -> name.
SHAPES = {1: "rectangle", 3: "ellipse", 5: "triangle", 8: "diamond", 11: "cross"}
SHAPE_ORDER = ["rectangle", "ellipse", "triangle", "diamond", "cross"]  # the order of the COCO file's categories
TOLERANCE = 1e-6  # of normalised coordinates: YOLO's label files hold them with 8 decimals


def _args(*flags: str) -> argparse.Namespace:
    return cli.get_args_parser().parse_args([*TINY_FLAGS, *flags])


def _coco(data: dict) -> COCO:
    coco = COCO()
    coco.dataset = copy.deepcopy(data)
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


@pytest.fixture(scope="module")
def yolo_copy(tiny_coco, tmp_path_factory) -> Path:
    return write_yolo_copy(tiny_coco, tmp_path_factory.mktemp("yolo"))


@pytest.fixture(scope="module")
def voc_copy(tiny_coco, tmp_path_factory) -> Path:
    return write_voc_copy(tiny_coco, tmp_path_factory.mktemp("voc"))


def _layout_flags(layout: str, folder: Path) -> list[str]:
    return ["--coco_path", str(folder)] if layout == "coco" else ["--dataset_file", layout, "--data_path", str(folder)]


def _objects_by_file(dataset) -> dict[str, list[tuple[str, list[float], int]]]:
    """file name -> [(category name, COCO box, iscrowd)] of a dataset's ground truth, in annotation order."""
    coco = dataset.coco
    names = {c["id"]: c["name"] for c in coco.dataset["categories"]}
    objects = {img["file_name"]: [] for img in coco.dataset["images"]}
    for ann in coco.dataset["annotations"]:
        objects[coco.imgs[ann["image_id"]]["file_name"]].append((names[ann["category_id"]], ann["bbox"],
                                                                 ann["iscrowd"]))
    return objects


def _targets_by_file(dataset) -> dict[str, tuple[list[str], torch.Tensor]]:
    """file name -> (category names of the labels, boxes ``[N, 4]`` normalised cxcywh) as training sees them, the
    augmentation's random draws seeded (the same draws for the same images in the same order)."""
    names = {c["id"]: c["name"] for c in dataset.coco.dataset["categories"]}
    random.seed(0)
    torch.manual_seed(0)
    targets = {}
    for index, image_id in enumerate(dataset.ids):
        _, target = dataset[index]
        targets[dataset.coco.imgs[image_id]["file_name"]] = ([names[int(i)] for i in target["labels"]],
                                                             target["boxes"])
    return targets


@pytest.mark.parametrize("layout", ["yolo", "voc"])
@pytest.mark.parametrize("split", ["train", "val"])
def test_a_layout_copy_gives_the_coco_boxes_labels_and_targets(tiny_coco, yolo_copy, voc_copy, layout, split):
    copy_folder = yolo_copy if layout == "yolo" else voc_copy
    original = build_dataset(split, _args("--coco_path", str(tiny_coco)))
    converted = build_dataset(split, _args("--dataset_file", layout, "--data_path", str(copy_folder)))
    expected, got = _objects_by_file(original), _objects_by_file(converted)
    assert sorted(got) == sorted(expected) and sum(map(len, got.values())) > 10
    for file_name, objects in expected.items():
        assert [(name, crowd) for name, _, crowd in got[file_name]] == [(SHAPES[i], 0) for i in
                                                                       _category_ids(tiny_coco, split, file_name)]
        assert [name for name, _, _ in got[file_name]] == [name for name, _, _ in objects]
        for (_, box, _), (_, expected_box, _) in zip(got[file_name], objects):
            assert np.allclose(np.asarray(box) / 64, np.asarray(expected_box) / 64, atol=TOLERANCE, rtol=0)
    expected_targets, targets = _targets_by_file(original), _targets_by_file(converted)
    for file_name, (names, boxes) in expected_targets.items():
        assert targets[file_name][0] == names
        assert torch.allclose(targets[file_name][1], boxes, atol=TOLERANCE, rtol=0)


def _category_ids(coco_path: Path, split: str, file_name: str) -> list[int]:
    """The category ids of an image's objects, read straight from the COCO file."""
    data = json.loads((coco_path / f"annotations/instances_{split}2017.json").read_text())
    image_id = next(img["id"] for img in data["images"] if img["file_name"] == file_name)
    return [a["category_id"] for a in data["annotations"] if a["image_id"] == image_id]


def test_category_ids_are_0_to_k_minus_1_in_name_order(yolo_copy, voc_copy, tmp_path):
    yolo = build_dataset("val", _args("--dataset_file", "yolo", "--data_path", str(yolo_copy)))
    assert {c["id"]: c["name"] for c in yolo.coco.dataset["categories"]} == dict(enumerate(SHAPE_ORDER))
    assert yolo.num_classes() == 5  # DETR's softmax: 5 classes + no-object, no unused logit
    voc = build_dataset("val", _args("--dataset_file", "voc", "--data_path", str(voc_copy)))
    assert [c["name"] for c in voc.coco.dataset["categories"]] == sorted(SHAPE_ORDER)  # no labels.txt: sorted
    remapped = build_dataset("val", _args("--dataset_file", "yolo", "--data_path", str(yolo_copy),
                                          "--remap_mscoco_category"))
    assert remapped.label_to_category_id == [0, 1, 2, 3, 4]  # RT-DETR's remap: label = category id
    assert dataset_category_names(None, dataset_file="yolo", data_path=yolo_copy) == dict(enumerate(SHAPE_ORDER))
    assert dataset_category_names(None, dataset_file="voc", data_path=voc_copy) == dict(enumerate(sorted(SHAPE_ORDER)))
    assert category_names_for(argparse.Namespace(dataset_file="voc", data_path=str(tmp_path))) == ({}, [])


def _detections(tiny_coco: Path) -> dict[str, list[tuple[str, list[float], float]]]:
    """Made-up detections of the val images: each object found with a jittered box (some well off), plus a false
    positive per image; file name -> [(category name, [x0, y0, x1, y1] px, score)]."""
    data = json.loads((tiny_coco / "annotations/instances_val2017.json").read_text())
    rng = np.random.default_rng(0)
    files = {img["id"]: img["file_name"] for img in data["images"]}
    detections = {name: [] for name in files.values()}
    for ann in data["annotations"]:
        x, y, w, h = ann["bbox"]
        jitter = rng.normal(0, 0.08, 4) * [w, h, w, h]
        box = [x + jitter[0], y + jitter[1], x + w + jitter[2], y + h + jitter[3]]
        detections[files[ann["image_id"]]].append((SHAPES[ann["category_id"]], box, float(rng.uniform(0.2, 1))))
    for name in detections:
        x, y = rng.uniform(0, 40, 2)
        detections[name].append((SHAPE_ORDER[int(rng.integers(5))], [x, y, x + 20, y + 15], float(rng.uniform(0, 1))))
    return detections


def _coco_stats(coco_gt: COCO, detections: dict, backend: str = "pycocotools") -> np.ndarray:
    """The 12 COCO numbers of ``detections`` (file name -> [(name, xyxy, score)]) against ``coco_gt``."""
    image_ids = {img["file_name"]: img["id"] for img in coco_gt.dataset["images"]}
    category_ids = {c["name"]: c["id"] for c in coco_gt.dataset["categories"]}
    evaluator = CocoEvaluator(coco_gt, ["bbox"], backend=backend)
    for file_name, found in detections.items():
        evaluator.update({image_ids[file_name]: {
            "scores": torch.tensor([s for _, _, s in found]),
            "labels": torch.tensor([category_ids[n] for n, _, _ in found], dtype=torch.int64),
            "boxes": torch.tensor([b for _, b, _ in found], dtype=torch.float64).reshape(-1, 4)}})
    evaluator.synchronize_between_processes()
    evaluator.accumulate()
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.summarize()
    return np.asarray(evaluator.coco_eval["bbox"].stats)


@pytest.mark.parametrize("backend", ["pycocotools", "faster_coco_eval"])
def test_a_layout_copy_gives_the_coco_evaluation(tiny_coco, yolo_copy, voc_copy, backend):
    detections = _detections(tiny_coco)
    original = json.loads((tiny_coco / "annotations/instances_val2017.json").read_text())
    expected = _coco_stats(_coco(original), detections, backend)
    assert 0.2 < expected[0] < 0.95  # neither trivial nor perfect
    # the layouts have no masks: their area is the box's, which only moves the small/medium/large numbers
    for ann in original["annotations"]:
        ann["area"] = ann["bbox"][2] * ann["bbox"][3]
    expected_with_box_areas = _coco_stats(_coco(original), detections, backend)
    for layout, folder in (("yolo", yolo_copy), ("voc", voc_copy)):
        run_data = build_run_data(_args("--dataset_file", layout, "--data_path", str(folder)), with_train=False)
        stats = _coco_stats(run_data.coco_ground_truth, detections, backend)
        assert np.allclose(stats, expected_with_box_areas, atol=1e-6), layout
        all_areas = [0, 1, 2, 6, 7, 8]  # AP, AP50, AP75, AR1, AR10, AR100
        assert np.allclose(stats[all_areas], expected[all_areas], atol=1e-6), layout


def test_data_yaml_names_as_list_or_mapping(tiny_coco, yolo_copy, tmp_path):
    mapping_copy = write_yolo_copy(tiny_coco, tmp_path / "mapping", names_as_mapping=True)
    text = (mapping_copy / "data.yaml").read_text()
    assert "0: rectangle" in text and "- rectangle" not in text
    as_list = read_yolo(yolo_copy, "train").annotations
    as_mapping = read_yolo(mapping_copy, "train").annotations
    assert as_mapping["categories"] == as_list["categories"] == [{"id": i, "name": n} for i, n in
                                                                 enumerate(SHAPE_ORDER)]
    assert as_mapping["annotations"] == as_list["annotations"]
    # a mapping in any key order names the same classes
    (mapping_copy / "data.yaml").write_text("names:\n  2: triangle\n  0: rectangle\n  4: cross\n  1: ellipse\n"
                                            "  3: diamond\n")
    assert read_yolo(mapping_copy, "train").annotations["categories"] == as_list["categories"]


def test_labels_txt_decides_the_voc_order(tiny_coco, voc_copy, tmp_path):
    listed = write_voc_copy(tiny_coco, tmp_path / "listed", labels_file=True)
    assert (listed / "labels.txt").read_text().split() == SHAPE_ORDER
    with_file, sorted_names = read_voc(listed, "val").annotations, read_voc(voc_copy, "val").annotations
    assert [c["name"] for c in with_file["categories"]] == SHAPE_ORDER
    assert [c["name"] for c in sorted_names["categories"]] == sorted(SHAPE_ORDER)
    name_in = {id(data): {c["id"]: c["name"] for c in data["categories"]} for data in (with_file, sorted_names)}
    for a, b in zip(with_file["annotations"], sorted_names["annotations"]):
        assert name_in[id(with_file)][a["category_id"]] == name_in[id(sorted_names)][b["category_id"]]
        assert a["category_id"] == SHAPE_ORDER.index(name_in[id(with_file)][a["category_id"]])
    # a class the annotations never use still gets its id from labels.txt
    (listed / "labels.txt").write_text("rectangle\nellipse\ntriangle\ndiamond\ncross\nstar\n")
    assert read_voc(listed, "val").annotations["categories"][-1] == {"id": 5, "name": "star"}


def test_difficult_objects_are_ignored_in_evaluation_and_training(tiny_coco, yolo_copy, tmp_path):
    val = json.loads((tiny_coco / "annotations/instances_val2017.json").read_text())
    difficult = {a["id"] for a in val["annotations"][::3]}
    marked = write_voc_copy(tiny_coco, tmp_path / "difficult", difficult={"val": difficult})
    dataset = build_dataset("val", _args("--dataset_file", "voc", "--data_path", str(marked)))
    gt = dataset.coco
    assert sum(a["iscrowd"] == 1 and a["difficult"] == 1 for a in gt.dataset["annotations"]) == len(difficult)
    targets = _targets_by_file(dataset)
    assert sum(len(names) for names, _ in targets.values()) == len(val["annotations"]) - len(difficult)

    files = {img["id"]: img["file_name"] for img in val["images"]}

    def found(annotations, score):
        result = {name: [] for name in files.values()}
        for a in annotations:
            x, y, w, h = a["bbox"]
            result[files[a["image_id"]]].append((SHAPES[a["category_id"]], [x, y, x + w, y + h], score))
        return result

    easy = [a for a in val["annotations"] if a["id"] not in difficult]
    hard = [a for a in val["annotations"] if a["id"] in difficult]
    only_easy = found(easy, 0.5)
    assert _coco_stats(gt, only_easy)[0] == pytest.approx(1.0)  # a difficult object missed costs nothing
    with_hard = {name: boxes + found(hard, 0.9)[name] for name, boxes in only_easy.items()}
    assert _coco_stats(gt, with_hard)[0] == pytest.approx(1.0)  # nor does one found, ranked first
    yolo_gt = build_run_data(_args("--dataset_file", "yolo", "--data_path", str(yolo_copy)), False).coco_ground_truth
    assert _coco_stats(yolo_gt, only_easy)[0] < 0.9  # without the difficult marks the same detections miss them


def test_the_converter_writes_the_in_memory_ground_truth(yolo_copy, voc_copy, tmp_path, capsys):
    for layout, folder in (("yolo", yolo_copy), ("voc", voc_copy)):
        out = tmp_path / layout
        assert run_tool(convert_dataset.main, ["--from", layout, "--data_path", str(folder), "--out", str(out)]) == 0
        assert "linked" in capsys.readouterr().out
        for split in ("train", "val"):
            in_memory = build_dataset(split, _args("--dataset_file", layout, "--data_path", str(folder)))
            written = build_dataset(split, _args("--coco_path", str(out)))
            for key in ("images", "annotations", "categories"):
                assert written.coco.dataset[key] == in_memory.coco.dataset[key]
            image = out / f"{split}2017" / written.coco.dataset["images"][0]["file_name"]
            assert image.stat().st_nlink == 2  # a hard link to the layout's image
            expected, got = _targets_by_file(in_memory), _targets_by_file(written)
            for file_name, (names, boxes) in expected.items():
                assert got[file_name][0] == names and torch.equal(got[file_name][1], boxes)
        # a second run refuses, one line, and leaves what is there as it was
        annotation_file = out / "annotations/instances_val2017.json"
        before = annotation_file.read_bytes()
        assert run_tool(convert_dataset.main, ["--from", layout, "--data_path", str(folder), "--out", str(out)]) == 1
        assert _one_error_line(capsys.readouterr().err).endswith("refusing to overwrite (choose another --out)")
        assert annotation_file.read_bytes() == before


def test_copies_and_data_path_for_coco(yolo_copy, tiny_coco, tmp_path, capsys):
    out = tmp_path / "copied"
    convert_dataset.main(["--from", "yolo", "--data_path", str(yolo_copy), "--out", str(out), "--images", "copy"])
    assert "(copied)" in capsys.readouterr().out
    assert all(p.stat().st_nlink == 1 for p in (out / "val2017").iterdir())
    by_flag = build_dataset("val", _args("--coco_path", str(tiny_coco))).coco.dataset
    by_data_path = build_dataset("val", _args("--data_path", str(tiny_coco))).coco.dataset
    assert by_data_path == by_flag


# ---------------------------------------------------------------- hand-made folders: sizes, background, errors


def _image(path: Path, width: int = 40, height: int = 24, orientation: int = 1) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(np.full((height, width, 3), 120, dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = orientation
    image.save(path, exif=exif.tobytes()) if path.suffix == ".jpg" else image.save(path)


def _small_yolo(root: Path) -> Path:
    """2 train images (one without a label file), 1 val image of 40 x 24 px; classes cat, dog."""
    root.mkdir(parents=True)
    (root / "data.yaml").write_text("names: [cat, dog]\n")
    for split, stems in (("train", ["a", "b"]), ("val", ["c"])):
        (root / "labels" / split).mkdir(parents=True)
        for stem in stems:
            _image(root / "images" / split / f"{stem}.png")
    (root / "labels/train/a.txt").write_text("0 0.5 0.25 0.5 0.5\n1 0.25 0.5 0.25 0.25\n")
    (root / "labels/val/c.txt").write_text("1 0.5 0.5 0.5 0.5\n")
    return root


VOC_OBJECT = ("<object><name>{name}</name><difficult>0</difficult>\n"
              "<bndbox><xmin>{xmin}</xmin><ymin>1</ymin><xmax>10</xmax><ymax>5</ymax></bndbox></object>\n")


def _small_voc(root: Path) -> Path:
    """2 train images (one without an annotation file), 1 val image of 40 x 24 px; classes cat, dog."""
    (root / "ImageSets/Main").mkdir(parents=True)
    (root / "Annotations").mkdir()
    for stem in ("a", "b", "c"):
        _image(root / "JPEGImages" / f"{stem}.jpg")
    (root / "ImageSets/Main/train.txt").write_text("a\nb\n")
    (root / "ImageSets/Main/val.txt").write_text("c\n")
    for stem, name in (("a", "dog"), ("c", "cat")):
        (root / "Annotations" / f"{stem}.xml").write_text(
            "<annotation>\n<filename>x.jpg</filename>\n" + VOC_OBJECT.format(name=name, xmin=1) + "</annotation>\n")
    return root


def test_boxes_in_pixels_of_non_square_and_rotated_images(tmp_path):
    yolo = _small_yolo(tmp_path / "yolo")
    data = read_yolo(yolo, "train").annotations
    assert [(img["file_name"], img["width"], img["height"]) for img in data["images"]] == [("a.png", 40, 24),
                                                                                           ("b.png", 40, 24)]
    assert [a["bbox"] for a in data["annotations"]] == [[10, 0, 20, 12], [5, 9, 10, 6]]
    assert [a["area"] for a in data["annotations"]] == [240, 60]
    voc = _small_voc(tmp_path / "voc")
    data = read_voc(voc, "train").annotations
    assert [a["bbox"] for a in data["annotations"]] == [[0, 0, 10, 5]]  # VOC's xmin 1..xmax 10 covers 10 pixels
    # an image stored 40 x 24 with EXIF orientation 6 (turned a quarter) is 24 x 40 upright, as training reads it
    _image(voc / "JPEGImages/b.jpg", orientation=6)
    dataset = build_dataset("train", _args("--dataset_file", "voc", "--data_path", str(voc)))
    assert [(img["width"], img["height"]) for img in dataset.coco.dataset["images"]] == [(40, 24), (24, 40)]
    assert dataset[1][1]["orig_size"].tolist() == [40, 24]  # read and checked against that size: no error


def test_images_without_or_with_empty_label_files_are_background(tmp_path):
    yolo = _small_yolo(tmp_path / "yolo")
    _image(yolo / "images/train/sub/d.png")
    (yolo / "labels/train/sub").mkdir()
    (yolo / "labels/train/sub/d.txt").write_text("\n  \n")
    dataset = build_dataset("train", _args("--dataset_file", "yolo", "--data_path", str(yolo)))
    assert [img["file_name"] for img in dataset.coco.dataset["images"]] == ["a.png", "b.png", "sub/d.png"]
    assert [len(dataset[i][1]["boxes"]) for i in range(3)] == [2, 0, 0]
    voc = _small_voc(tmp_path / "voc")
    (voc / "Annotations/b.xml").write_text("<annotation><filename>b.jpg</filename></annotation>")
    dataset = build_dataset("train", _args("--dataset_file", "voc", "--data_path", str(voc)))
    assert [len(dataset[i][1]["boxes"]) for i in range(2)] == [1, 0]


def test_invalid_boxes_are_counted_and_left_out(tmp_path, capsys):
    yolo = _small_yolo(tmp_path / "yolo")
    (yolo / "labels/train/b.txt").write_text("0 0.5 0.5 0 0.2\n1 1.5 0.5 0.2 0.2\n0 nan 0.5 0.2 0.2\n")
    capsys.readouterr()
    dataset = build_dataset("train", _args("--dataset_file", "yolo", "--data_path", str(yolo)))
    printed = capsys.readouterr().out
    assert f"annotation file {yolo / 'labels/train'}: left 3 of 5 annotations out" in printed
    assert "1 with a coordinate that is not a finite number, 1 with zero or negative width or height, 1 entirely " \
           "outside the image" in printed
    assert len(dataset.coco.anns) == 2
    convert_dataset.main(["--from", "yolo", "--data_path", str(yolo), "--out", str(tmp_path / "coco")])
    assert "left 3 of 5 annotations out" in capsys.readouterr().out  # the converter writes what training reads
    written = json.loads((tmp_path / "coco/annotations/instances_train2017.json").read_text())
    assert [a["bbox"] for a in written["annotations"]] == [a["bbox"] for a in dataset.coco.dataset["annotations"]]


def test_an_unreadable_image_is_named_or_skipped(tmp_path, capsys):
    yolo = _small_yolo(tmp_path / "yolo")
    (yolo / "images/train/b.png").write_bytes(b"not an image" * 10)
    capsys.readouterr()
    assert main.command_line([*TINY_FLAGS, "--dataset_file", "yolo", "--data_path", str(yolo), "--epochs", "1"]) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert f"image file {yolo / 'images/train/b.png'} is not in an image format Pillow can read" in line
    dataset = build_dataset("train", _args("--dataset_file", "yolo", "--data_path", str(yolo), "--skip_bad_images"))
    assert [img["file_name"] for img in dataset.coco.dataset["images"]] == ["a.png"]
    assert "b.png is not in an image format Pillow can read; left out (--skip_bad_images)" in capsys.readouterr().out


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


YOLO_ERRORS = {
    "label file without an image": (lambda r: _write(r / "labels/train/ghost.txt", "0 0.5 0.5 0.1 0.1\n"),
                                    "labels/train/ghost.txt", ["has no image"]),
    "wrong column count": (lambda r: _write(r / "labels/train/a.txt", "0 0.5 0.5 0.1 0.1\n1 0.5 0.5 0.1\n"),
                           "labels/train/a.txt, line 2", ["has 4 values; expected 5"]),
    "a polygon": (lambda r: _write(r / "labels/val/c.txt", "1 0.1 0.1 0.5 0.1 0.5 0.5\n"),
                  "labels/val/c.txt, line 1", ["has 7 values", "segmentation polygons"]),
    "not a number": (lambda r: _write(r / "labels/train/a.txt", "\n0 0.5 abc 0.1 0.1\n"),
                     "labels/train/a.txt, line 2", ["cy 'abc' is not a number"]),
    "class out of range": (lambda r: _write(r / "labels/val/c.txt", "2 0.5 0.5 0.1 0.1\n"),
                           "labels/val/c.txt, line 1", ["class 2 is out of range", "data.yaml names 2 classes"]),
    "class not an integer": (lambda r: _write(r / "labels/val/c.txt", "1.5 0.5 0.5 0.1 0.1\n"),
                             "labels/val/c.txt, line 1", ["'1.5' is not an integer"]),
    "no data.yaml": (lambda r: (r / "data.yaml").unlink(), "data.yaml not found", ["'names'"]),
    "data.yaml without names": (lambda r: _write(r / "data.yaml", "nc: 2\n"), "data.yaml has no key 'names'", []),
    "data.yaml not YAML": (lambda r: _write(r / "data.yaml", "names: [cat, dog\nnc: 2\n"), "data.yaml, line 2",
                           ["not valid YAML"]),
    "names mapping with a gap": (lambda r: _write(r / "data.yaml", "names: {0: cat, 2: dog}\n"), "data.yaml",
                                 ["'names' must map the class indices 0..1", "missing [1]"]),
    "nc disagrees": (lambda r: _write(r / "data.yaml", "nc: 3\nnames: [cat, dog]\n"), "data.yaml",
                     ["'nc' is 3 but 'names' has 2 names"]),
    "no val images": (lambda r: [p.unlink() for p in (r / "images/val").iterdir()], "images/val has no image", []),
}


@pytest.mark.parametrize("case", list(YOLO_ERRORS))
def test_bad_yolo_files_end_in_one_line_naming_file_and_line(tmp_path, capsys, case):
    damage, where, says = YOLO_ERRORS[case]
    root = _small_yolo(tmp_path / "yolo")
    damage(root)
    capsys.readouterr()
    status = main.command_line([*TINY_FLAGS, "--dataset_file", "yolo", "--data_path", str(root), "--epochs", "1"])
    line = _one_error_line(capsys.readouterr().err)
    assert status == 1 and str(root) in line and where in line, line
    for text in says:
        assert text in line, line


VOC_ERRORS = {
    "malformed XML": (lambda r: _write(r / "Annotations/a.xml", "<annotation>\n<object><name>dog</name>\n"
                                                               "</annotation>\n"),
                      "Annotations/a.xml, line 3", ["not well-formed XML (mismatched tag"]),
    "unknown class name": (lambda r: (_write(r / "labels.txt", "cat\ndog\n"), _write(
        r / "Annotations/c.xml", "<annotation>\n" + VOC_OBJECT.format(name="cat", xmin=1)
        + VOC_OBJECT.format(name="zebra", xmin=1) + "</annotation>\n")),
        "Annotations/c.xml, line 4", ["class name 'zebra' is not in", "labels.txt (2 names)"]),
    "missing image": (lambda r: (r / "JPEGImages/b.jpg").unlink(), "ImageSets/Main/train.txt, line 2",
                      ["image b not found", "JPEGImages/b.jpg"]),
    "not a number": (lambda r: _write(r / "Annotations/c.xml", "<annotation>\n"
                                      + VOC_OBJECT.format(name="cat", xmin="one") + "</annotation>\n"),
                     "Annotations/c.xml, line 3", ["<xmin> 'one' is not a number"]),
    "object without a name": (lambda r: _write(r / "Annotations/c.xml", "<annotation>\n\n<object><bndbox/>"
                                               "</object></annotation>"),
                              "Annotations/c.xml, line 3", ["<object> without a <name>"]),
    "no list": (lambda r: (r / "ImageSets/Main/val.txt").unlink(), "ImageSets/Main/val.txt not found", []),
    "id listed twice": (lambda r: _write(r / "ImageSets/Main/train.txt", "a\nb\n\na\n"),
                        "ImageSets/Main/train.txt, line 4", ["listed again (first on line 1)"]),
}


@pytest.mark.parametrize("case", list(VOC_ERRORS))
def test_bad_voc_files_end_in_one_line_naming_file_and_line(tmp_path, capsys, case):
    damage, where, says = VOC_ERRORS[case]
    root = _small_voc(tmp_path / "voc")
    damage(root)
    capsys.readouterr()
    status = main.command_line([*TINY_FLAGS, "--dataset_file", "voc", "--data_path", str(root), "--epochs", "1"])
    line = _one_error_line(capsys.readouterr().err)
    assert status == 1 and str(root) in line and where in line, line
    for text in says:
        assert text in line, line


@pytest.mark.parametrize("flags, says", [
    (["--dataset_file", "yolo", "--coco_path", "x"], "--coco_path is read by --dataset_file coco and coco_panoptic"),
    (["--coco_path", "x", "--data_path", "y"], "--coco_path x and --data_path y both name the dataset folder"),
    (["--dataset_file", "coco_panoptic", "--data_path", "y"], "--data_path is not read by --dataset_file coco_pan"),
    (["--dataset_file", "voc", "--data_path", "y", "--masks"], "--dataset_file voc has boxes only"),
])
def test_folder_flags_that_do_not_fit_the_layout(flags, says):
    with pytest.raises(ValueError, match=says):
        cli.check_args(_args(*flags))


def test_a_layout_without_data_path_is_one_line(capsys):
    assert main.command_line([*TINY_FLAGS, "--dataset_file", "yolo"]) == 1
    assert "--dataset_file yolo needs --data_path" in _one_error_line(capsys.readouterr().err)


# ---------------------------------------------------------------- training through main.py


@pytest.fixture(scope="module")
def few_images(tmp_path_factory) -> Path:
    """A COCO-layout folder of 6 train and 2 val images (64 px), for training runs."""
    return generate(tmp_path_factory.mktemp("few"), num_train=6, num_val=2, image_size=64, seed=5, quiet=True)


@pytest.mark.parametrize("layout", ["yolo", "voc"])
def test_main_trains_and_evaluates_on_a_layout_folder(few_images, tmp_path, layout, capsys):
    folder = tmp_path / layout
    if layout == "yolo":
        write_yolo_copy(few_images, folder)
    else:
        write_voc_copy(few_images, folder, labels_file=True)  # labels.txt: all five names, in its order
    out = tmp_path / "run"
    flags = [*TINY_FLAGS, *_layout_flags(layout, folder), "--epochs", "1", "--output_dir", str(out)]
    assert main.command_line(flags) == 0, capsys.readouterr().err
    assert "num_classes inferred from the annotations: 5" in capsys.readouterr().out
    log = json.loads((out / "log.txt").read_text().splitlines()[-1])
    assert len(log["test_coco_eval_bbox"]) == 12
    stored = load_checkpoint(str(out / "checkpoint.pth"))["args"]
    assert stored["dataset_file"] == layout and stored["data_path"] == str(folder)
    names, files = category_names_for(argparse.Namespace(**stored))
    assert names == dict(enumerate(SHAPE_ORDER)) and files
