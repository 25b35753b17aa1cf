"""The synthetic COCO generator, the COCO dataset and its error messages, and build_dataset."""
import contextlib
import io
import json
import random
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO

from datasets import build_dataset, get_coco_api_from_dataset
from datasets.coco import CocoDetection, build, make_coco_transforms
from tools.data.synthetic import generate

# pycocotools' mask decoding warns about numpy 2 on every call
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools")

SYNTHETIC_IDS = [1, 3, 5, 8, 11]  # written down independently of tools.data.synthetic.CATEGORIES
SIZE = 64


def _load_coco(path: Path) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


def _args(coco_path, **kw) -> SimpleNamespace:
    base = dict(dataset_file="coco", coco_path=str(coco_path), masks=False, image_size=SIZE, multiscale=True,
                num_classes=None)
    base.update(kw)
    return SimpleNamespace(**base)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("synthetic"), num_train=60, num_val=12, image_size=SIZE, seed=3)


# ---------------------------------------------------------------- generator


def test_generator_is_deterministic_for_a_seed(tmp_path):
    a = generate(tmp_path / "a", num_train=6, num_val=2, image_size=SIZE, seed=11)
    b = generate(tmp_path / "b", num_train=6, num_val=2, image_size=SIZE, seed=11)
    c = generate(tmp_path / "c", num_train=6, num_val=2, image_size=SIZE, seed=12)
    for name in ("instances_train2017.json", "instances_val2017.json"):
        assert (a / "annotations" / name).read_bytes() == (b / "annotations" / name).read_bytes()
    files = sorted(p.relative_to(a) for p in a.rglob("*.jpg"))
    assert len(files) == 8
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert (a / "annotations/instances_train2017.json").read_bytes() != \
        (c / "annotations/instances_train2017.json").read_bytes()


def test_generator_reuses_or_regenerates(tmp_path, capsys):
    out = generate(tmp_path, num_train=4, num_val=2, image_size=SIZE, seed=0)
    assert "train 4 images" in capsys.readouterr().out
    ann = out / "annotations/instances_train2017.json"
    ann.write_text(ann.read_text() + " ")  # marker: survives only if the dataset is kept
    generate(tmp_path, num_train=4, num_val=2, image_size=SIZE, seed=0)
    assert ann.read_text().endswith(" ")
    assert "kept" in capsys.readouterr().out
    generate(tmp_path, num_train=5, num_val=2, image_size=SIZE, seed=0)
    assert not ann.read_text().endswith(" ")
    assert len(list((out / "train2017").iterdir())) == 5
    assert len(json.loads(ann.read_text())["images"]) == 5


def test_generator_refuses_to_overwrite_a_foreign_dataset(tmp_path):
    (tmp_path / "train2017").mkdir()
    with pytest.raises(FileExistsError, match=str(tmp_path)):
        generate(tmp_path, num_train=2, num_val=1, image_size=SIZE)


def test_generator_cli(tmp_path):
    from tools.data.synthetic import main
    out = main(["--out", str(tmp_path), "--num_train", "3", "--num_val", "2", "--image_size", "32", "--seed", "1",
                "--max_objects", "2"])
    assert json.loads((out / "synthetic_params.json").read_text())["params"]["max_objects"] == 2
    assert len(list((tmp_path / "val2017").glob("*.jpg"))) == 2


def test_synthetic_is_valid_coco(synthetic):
    coco = {split: _load_coco(synthetic / f"annotations/instances_{split}2017.json") for split in ("train", "val")}
    assert len(coco["train"].imgs) == 60 and len(coco["val"].imgs) == 12
    assert not set(coco["train"].imgs) & set(coco["val"].imgs), "image ids must be unique across splits"
    for c in coco.values():
        assert sorted(c.cats) == SYNTHETIC_IDS
        assert all(cat["name"] and cat["supercategory"] for cat in c.cats.values())
        assert min(c.anns) >= 1, "annotation id 0 breaks pycocotools' matching"
        for img in c.imgs.values():
            assert (img["width"], img["height"]) == (SIZE, SIZE)
            split_dir = "train2017" if c is coco["train"] else "val2017"
            with Image.open(synthetic / split_dir / img["file_name"]) as im:
                assert im.size == (SIZE, SIZE)
        for ann in c.anns.values():
            x, y, w, h = ann["bbox"]
            assert ann["iscrowd"] == 0 and ann["category_id"] in SYNTHETIC_IDS
            assert x >= 0 and y >= 0 and x + w <= SIZE and y + h <= SIZE
            # 10%-50% of the side, give or take the pixel the rasteriser adds
            assert 0.1 * SIZE - 1 <= max(w, h) <= 0.5 * SIZE + 1
            assert 0 < ann["area"] <= w * h
            assert len(ann["segmentation"][0]) >= 6
            # the box is the tight bound of the shape: the polygon's mask has the same extent, the area its size
            mask = c.annToMask(ann)
            assert ann["area"] == mask.sum()
            ys, xs = np.nonzero(mask)
            assert (xs.min(), xs.max() + 1) == (x, x + w)
            assert (ys.min(), ys.max() + 1) == (y, y + h)


def test_synthetic_shape_is_drawn_where_the_box_says(synthetic):
    coco = _load_coco(synthetic / "annotations/instances_train2017.json")
    single = [i for i in coco.imgs if len(coco.getAnnIds(imgIds=i)) == 1]
    assert single, "expected some images with one object"
    for image_id in single[:5]:
        ann = coco.loadAnns(coco.getAnnIds(imgIds=image_id))[0]
        with Image.open(synthetic / "train2017" / coco.imgs[image_id]["file_name"]) as im:
            pixels = np.asarray(im.convert("RGB"), dtype=np.float32)
        mask = coco.annToMask(ann).astype(bool)
        inside, outside = pixels[mask].mean(0), pixels[~mask].mean(0)
        assert np.abs(inside - outside).max() > 20, "the shape should stand out from the background"


def test_synthetic_has_empty_images_and_noncontiguous_ids(synthetic):
    data = json.loads((synthetic / "annotations/instances_train2017.json").read_text())
    with_objects = {a["image_id"] for a in data["annotations"]}
    empty = [img for img in data["images"] if img["id"] not in with_objects]
    assert 1 <= len(empty) <= 0.3 * len(data["images"])
    ids = sorted(c["id"] for c in data["categories"])
    assert ids != list(range(1, len(ids) + 1)) and max(ids) + 1 > len(ids)
    dataset = CocoDetection(synthetic / "train2017", synthetic / "annotations/instances_train2017.json", None,
                            return_masks=False)
    assert dataset.num_classes() == 12


def test_synthetic_max_objects_zero_gives_only_empty_images(tmp_path):
    out = generate(tmp_path, num_train=5, num_val=1, image_size=SIZE, max_objects=0)
    assert json.loads((out / "annotations/instances_train2017.json").read_text())["annotations"] == []


# ---------------------------------------------------------------- dataset items


@pytest.mark.parametrize("image_set", ["train", "val"])
@pytest.mark.parametrize("masks", [False, True])
def test_dataset_items(synthetic, image_set, masks):
    random.seed(0)
    dataset = build_dataset(image_set, _args(synthetic, masks=masks, num_classes=12))
    coco = get_coco_api_from_dataset(dataset)
    for index in range(6):
        image, target = dataset[index]
        assert image.dtype == torch.float32 and image.ndim == 3 and image.shape[0] == 3
        assert target["size"].tolist() == list(image.shape[1:])
        assert target["orig_size"].tolist() == [SIZE, SIZE]
        image_id = target["image_id"].item()
        assert image_id == dataset.ids[index]
        n = len(target["boxes"])
        assert target["boxes"].shape == (n, 4) and target["boxes"].dtype == torch.float32
        assert ((target["boxes"] >= 0) & (target["boxes"] <= 1)).all()
        assert target["labels"].dtype == torch.int64 and set(target["labels"].tolist()) <= set(SYNTHETIC_IDS)
        assert len(target["area"]) == len(target["iscrowd"]) == n
        if image_set == "val":  # no crop at validation: every object of the image is there
            assert n == len(coco.getAnnIds(imgIds=image_id))
        if masks:
            assert target["masks"].shape == (n, *image.shape[1:])
        else:
            assert "masks" not in target


def test_val_item_boxes_match_the_annotations(synthetic):
    dataset = build("val", _args(synthetic))
    coco = dataset.coco
    _, target = dataset[0]
    anns = coco.loadAnns(coco.getAnnIds(imgIds=dataset.ids[0]))
    expected = torch.tensor([[(x + w / 2) / SIZE, (y + h / 2) / SIZE, w / SIZE, h / SIZE]
                             for x, y, w, h in (a["bbox"] for a in anns)]).reshape(-1, 4)
    assert torch.allclose(target["boxes"], expected, atol=1e-6)
    assert target["labels"].tolist() == [a["category_id"] for a in anns]


def test_empty_image_gives_empty_target(synthetic):
    dataset = build("train", _args(synthetic))
    empty = [i for i, image_id in enumerate(dataset.ids) if not dataset.coco.getAnnIds(imgIds=image_id)]
    _, target = dataset[empty[0]]
    assert target["boxes"].shape == (0, 4)
    assert target["labels"].shape == (0,)


def test_get_coco_api_from_dataset_unwraps_subsets(synthetic):
    dataset = build("val", _args(synthetic))
    nested = torch.utils.data.Subset(torch.utils.data.Subset(dataset, [0, 1, 2]), [0])
    assert get_coco_api_from_dataset(nested) is dataset.coco
    with pytest.raises(TypeError):
        get_coco_api_from_dataset([1, 2, 3])


@pytest.mark.parametrize("image_size, first, last, max_size", [(800, 480, 800, 1333), (128, 77, 128, 213)])
def test_make_coco_transforms_scales_detr_recipe(image_size, first, last, max_size):
    train = make_coco_transforms("train", image_size)
    multi = train.transforms[1].transforms1  # flip, RandomSelect(multi-scale, crop branch), normalise
    assert (multi.sizes[0], multi.sizes[-1], len(multi.sizes), multi.max_size) == (first, last, 11, max_size)
    crop_branch = train.transforms[1].transforms2.transforms
    if image_size == 800:
        assert crop_branch[0].sizes == [400, 500, 600]
        assert (crop_branch[1].min_size, crop_branch[1].max_size) == (384, 600)
        assert multi.sizes == list(range(480, 801, 32))
    val = make_coco_transforms("val", image_size)
    assert (val.transforms[0].sizes, val.transforms[0].max_size) == ([image_size], max_size)
    single = make_coco_transforms("train", image_size, multiscale=False)
    assert [type(t).__name__ for t in single.transforms] == ["RandomHorizontalFlip", "RandomResize", "Compose"]
    assert single.transforms[1].sizes == [image_size]


# ---------------------------------------------------------------- conversion of hand-made annotations


def _handmade(tmp_path: Path, annotations: list, categories=None, images=None) -> Path:
    """A tiny COCO folder: train2017/ with 40 x 30 images, annotations/instances_train2017.json."""
    images = images or [{"id": 1, "file_name": "a.png", "width": 40, "height": 30},
                        {"id": 2, "file_name": "b.png", "width": 40, "height": 30}]
    (tmp_path / "train2017").mkdir(parents=True, exist_ok=True)
    (tmp_path / "annotations").mkdir(exist_ok=True)
    for img in images:
        Image.new("RGB", (img["width"], img["height"]), (90, 90, 90)).save(tmp_path / "train2017" / img["file_name"])
    data = {"images": images, "annotations": annotations,
            "categories": categories or [{"id": i, "name": f"c{i}", "supercategory": "x"} for i in (1, 2, 7)]}
    ann_file = tmp_path / "annotations" / "instances_train2017.json"
    ann_file.write_text(json.dumps(data))
    return ann_file


def _box_ann(ann_id, bbox, category_id=1, iscrowd=0, image_id=1):
    x, y, w, h = bbox
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "bbox": bbox, "area": w * h,
            "iscrowd": iscrowd, "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]]}


def test_crowd_excluded_degenerate_dropped_boxes_clipped(tmp_path):
    crowd = _box_ann(2, [0, 0, 20, 20], category_id=2, iscrowd=1)
    crowd["segmentation"] = {"counts": [0, 400, 800], "size": [30, 40]}  # uncompressed RLE, as crowds use
    ann_file = _handmade(tmp_path, [
        _box_ann(1, [5, 5, 10, 10], category_id=1),
        crowd,
        _box_ann(3, [10, 10, 0, 5], category_id=1),  # zero width
        _box_ann(4, [50, 5, 10, 10], category_id=2),  # entirely right of the 40-pixel-wide image
        _box_ann(5, [35, 25, 10, 10], category_id=7),  # sticks out: clipped to [35, 25, 40, 30]
    ])
    for return_masks in (False, True):
        dataset = CocoDetection(tmp_path / "train2017", ann_file, transforms=None, return_masks=return_masks)
        image, target = dataset[0]
        assert image.size == (40, 30)
        assert target["boxes"].tolist() == [[5, 5, 15, 15], [35, 25, 40, 30]]
        assert target["labels"].tolist() == [1, 7]
        assert target["iscrowd"].tolist() == [0, 0]
        assert target["area"].tolist() == [100, 100]  # COCO's annotated area, not the clipped one
        assert target["image_id"].tolist() == [1]
        assert target["orig_size"].tolist() == target["size"].tolist() == [30, 40]
        if return_masks:
            assert target["masks"].shape == (2, 30, 40)
            assert target["masks"][0].sum() > 0 and target["masks"][0][20:, :].sum() == 0
        _, empty = dataset[1]
        assert empty["boxes"].shape == (0, 4) and empty["labels"].shape == (0,)
        if return_masks:
            assert empty["masks"].shape == (0, 30, 40)


def test_num_classes_is_max_id_plus_one(tmp_path):
    _handmade(tmp_path, [_box_ann(1, [5, 5, 10, 10], category_id=2)])
    assert build("train", _args(tmp_path)).num_classes() == 8  # categories 1, 2, 7


# ---------------------------------------------------------------- errors name the path or flag


def test_missing_coco_path(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError) as err:
        build("train", _args(missing))
    assert str(missing) in str(err.value) and "--coco_path" in str(err.value)


def test_missing_image_folder(tmp_path):
    _handmade(tmp_path, [])
    with pytest.raises(FileNotFoundError) as err:
        build("val", _args(tmp_path))
    assert str(tmp_path / "val2017") in str(err.value)


def test_missing_annotation_file(tmp_path):
    _handmade(tmp_path, [])
    (tmp_path / "annotations" / "instances_train2017.json").unlink()
    with pytest.raises(FileNotFoundError) as err:
        build("train", _args(tmp_path))
    assert str(tmp_path / "annotations" / "instances_train2017.json") in str(err.value)


def test_corrupt_annotation_file(tmp_path):
    ann_file = _handmade(tmp_path, [])
    ann_file.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON") as err:
        build("train", _args(tmp_path))
    assert str(ann_file) in str(err.value)


def test_corrupt_and_missing_image(tmp_path):
    _handmade(tmp_path, [_box_ann(1, [5, 5, 10, 10])])
    dataset = build("train", _args(tmp_path))
    bad = tmp_path / "train2017" / "a.png"
    bad.write_bytes(b"this is not an image")
    with pytest.raises(OSError) as err:
        dataset[0]
    assert str(bad) in str(err.value)
    gone = tmp_path / "train2017" / "b.png"
    gone.unlink()
    with pytest.raises(FileNotFoundError) as err:
        dataset[1]
    assert str(gone) in str(err.value)


def test_category_id_not_below_num_classes(synthetic):
    with pytest.raises(ValueError) as err:
        build("train", _args(synthetic, num_classes=11))
    message = str(err.value)
    assert str(synthetic / "annotations" / "instances_train2017.json") in message
    assert "11" in message and "--num_classes" in message
    assert len(build("train", _args(synthetic, num_classes=12))) == 60


def test_unknown_dataset_file_and_image_set(synthetic):
    with pytest.raises(ValueError, match="--dataset_file") as err:
        build_dataset("train", _args(synthetic, dataset_file="kitti"))
    assert "coco" in str(err.value)
    with pytest.raises(ValueError, match="image_set"):
        make_coco_transforms("test")


def test_remove_difficult_leaves_difficult_objects_out_of_training_and_evaluation(synthetic, tmp_path):
    from evaluation.coco_eval import CocoEvaluator

    data = json.loads((synthetic / "annotations/instances_val2017.json").read_text())
    image_id = data["images"][0]["id"]
    objects = [a for a in data["annotations"] if a["image_id"] == image_id]
    assert len(objects) >= 2
    objects[0]["difficult"] = 1  # a VOC-style flag on the first object of the first image
    root = tmp_path / "voc_style"
    (root / "annotations").mkdir(parents=True)
    (root / "val2017").symlink_to(synthetic / "val2017")
    (root / "annotations/instances_val2017.json").write_text(json.dumps(data))

    def boxes(flag: bool) -> int:
        return len(build("val", _args(root, remove_difficult=flag))[0][1]["boxes"])

    assert boxes(False) == len(objects) and boxes(True) == len(objects) - 1

    # Ground-truth boxes as detections for every object except the difficult one: a miss counts only without
    # the flag.
    def ap(flag: bool) -> float:
        dataset = build("val", _args(root, remove_difficult=flag))
        evaluator = CocoEvaluator(get_coco_api_from_dataset(dataset), ["bbox"])
        for img in data["images"]:
            kept = [a for a in data["annotations"] if a["image_id"] == img["id"] and not a.get("difficult")]
            xyxy = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in kept)]).reshape(-1, 4)
            evaluator.update({img["id"]: {"boxes": xyxy, "scores": torch.ones(len(kept)),
                                          "labels": torch.tensor([a["category_id"] for a in kept])}})
        evaluator.accumulate()
        with contextlib.redirect_stdout(io.StringIO()):
            evaluator.summarize()
        return evaluator.coco_eval["bbox"].stats[0]

    assert ap(True) == pytest.approx(1.0) and ap(False) < 0.999
