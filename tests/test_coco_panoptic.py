"""datasets.coco_panoptic: items against the PNGs of a tiny synthetic panoptic set, transforms, errors, build."""
import json
import random
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.ops import masks_to_boxes

import datasets.transforms as T
from datasets import DATASET_CHOICES, build_dataset
from datasets.coco_panoptic import CocoPanoptic, build
from tools.data.synthetic import generate
from util.box_ops import box_cxcywh_to_xyxy
from util.panoptic_png import encode_panoptic_png, read_panoptic_png

# pycocotools' mask decoding (used by the generator) warns about numpy 2 on every call
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools")

SIZE = 64
THING_IDS, STUFF_IDS = {1, 3, 5, 8, 11}, {13, 17, 20}  # written down independently of tools.data.synthetic
EDGE = torch.tensor([0.0, 0.0, 1.0, 1.0])  # boxes here have exclusive right/bottom edges


@pytest.fixture(scope="module")
def panoptic(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("panoptic"), num_train=6, num_val=4, image_size=SIZE, seed=1,
                    panoptic=True, quiet=True)


def _dataset(root: Path, split: str = "val", **kw) -> CocoPanoptic:
    return CocoPanoptic(root / f"{split}2017", root / f"panoptic_{split}2017",
                        root / "annotations" / f"panoptic_{split}2017.json", **kw)


def _args(root, **kw) -> SimpleNamespace:
    base = dict(dataset_file="coco_panoptic", coco_path=str(root), coco_panoptic_path=str(root), masks=True,
                image_size=SIZE, multiscale=True, num_classes=None)
    base.update(kw)
    return SimpleNamespace(**base)


def _xyxy(bbox: list) -> list:
    x, y, w, h = bbox
    return [x, y, x + w, y + h]


def _mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    return masks_to_boxes(masks) + EDGE


# ---------------------------------------------------------------- items of the synthetic set


@pytest.mark.parametrize("split", ["train", "val"])
def test_items_match_the_pngs(panoptic, split):
    dataset = _dataset(panoptic, split)
    data = json.loads((panoptic / f"annotations/panoptic_{split}2017.json").read_text())
    anns = {a["image_id"]: a for a in data["annotations"]}
    assert len(dataset) == len(data["images"]) and dataset.ids == sorted(anns)
    for index in range(len(dataset)):
        image, target = dataset[index]
        assert image.size == (SIZE, SIZE)
        image_id = target["image_id"].item()
        assert image_id == dataset.ids[index]
        assert target["size"].tolist() == target["orig_size"].tolist() == [SIZE, SIZE]
        segments = anns[image_id]["segments_info"]
        ids = torch.from_numpy(read_panoptic_png(panoptic / f"panoptic_{split}2017" / anns[image_id]["file_name"]))
        masks = target["masks"]
        assert masks.dtype == torch.uint8 and masks.shape == (len(segments), SIZE, SIZE)
        assert masks.sum(0).max() <= 1, "segments are disjoint"
        for mask, segment in zip(masks, segments):
            assert torch.equal(mask.bool(), ids == segment["id"])
        assert torch.equal(masks.sum(0) == 0, ids == 0), "exactly the void pixels are in no mask"
        assert target["labels"].dtype == torch.int64
        assert target["labels"].tolist() == [s["category_id"] for s in segments]
        assert set(target["labels"].tolist()) <= THING_IDS | STUFF_IDS
        assert target["iscrowd"].tolist() == [s["iscrowd"] for s in segments]
        # nothing occludes a panoptic segment: the annotated area is its pixel count
        assert target["area"].tolist() == [s["area"] for s in segments] == masks.flatten(1).sum(1).tolist()
        assert torch.equal(target["boxes"], _mask_boxes(masks))
        assert target["boxes"].tolist() == [_xyxy(s["bbox"]) for s in segments]


def test_items_without_masks(panoptic):
    with_masks, without = _dataset(panoptic), _dataset(panoptic, return_masks=False)
    for index in range(len(without)):
        _, a = with_masks[index]
        _, b = without[index]
        assert "masks" not in b
        for key in ("boxes", "labels", "area", "iscrowd", "image_id", "size"):
            assert torch.equal(a[key], b[key])


def test_flip_and_crop_keep_boxes_and_masks_exact(panoptic):
    dataset = _dataset(panoptic, "train")
    for index in range(len(dataset)):
        image, target = dataset[index]
        _, flipped = T.hflip(image, target)
        assert torch.equal(_mask_boxes(flipped["masks"]), flipped["boxes"])
        assert torch.equal(flipped["masks"], target["masks"].flip(-1))
        _, cropped = T.crop(image, target, (10, 7, 40, 33))
        for mask, box in zip(cropped["masks"], cropped["boxes"]):
            if mask.any():  # the tight box of the cropped mask lies in the clipped box
                x0, y0, x1, y1 = _mask_boxes(mask[None])[0].tolist()
                assert box[0] <= x0 and box[1] <= y0 and x1 <= box[2] and y1 <= box[3]


def test_resize_moves_mask_edges_by_at_most_a_pixel(panoptic):
    dataset = _dataset(panoptic, "train")
    for index in range(len(dataset)):
        image, target = dataset[index]
        for size in (37, 101):
            _, resized = T.resize(image, target, size)
            tight, boxes = _mask_boxes(resized["masks"]), resized["boxes"]
            assert (tight[:, :2] >= boxes[:, :2] - 1).all() and (tight[:, 2:] <= boxes[:, 2:] + 1).all()
            assert (tight[:, :2] <= boxes[:, :2] + 1).all() and (tight[:, 2:] >= boxes[:, 2:] - 1).all()


# one resize moves a mask edge by up to a pixel against the scaled box; the crop branch of the multi-scale recipe
# resizes twice, the second time by up to 64/31, so an edge can move by 1 * 64/31 + 1 pixels
@pytest.mark.parametrize("multiscale, tolerance", [(False, 1.0), (True, 1.0 * 64 / 31 + 1)],
                         ids=["single_scale", "multiscale"])
def test_training_transforms_keep_masks_and_boxes_consistent(panoptic, multiscale, tolerance):
    dataset = build("train", _args(panoptic, multiscale=multiscale))
    random.seed(0)
    for _ in range(3):
        for index in range(len(dataset)):
            image, target = dataset[index]
            h, w = image.shape[1:]
            assert target["size"].tolist() == [h, w]
            masks, n = target["masks"], len(target["labels"])
            assert masks.shape == (n, h, w) and target["boxes"].shape == (n, 4) and len(target["area"]) == n
            assert masks.flatten(1).any(1).all(), "segments left without pixels are dropped"
            assert masks.to(torch.int64).sum(0).max() <= 1, "segments stay disjoint"
            boxes = box_cxcywh_to_xyxy(target["boxes"]) * torch.tensor([w, h, w, h])
            tight = _mask_boxes(masks)  # the box of each mask lies in its box, give or take the resizing
            assert (tight[:, :2] >= boxes[:, :2] - tolerance - 1e-4).all()
            assert (tight[:, 2:] <= boxes[:, 2:] + tolerance + 1e-4).all()


# ---------------------------------------------------------------- hand-made PNGs

CATEGORIES = [{"id": 1, "name": "thing", "isthing": 1}, {"id": 4, "name": "stuff", "isthing": 0}]


def _handmade(root: Path, segment_map: np.ndarray, segments_info: list, split: str = "val", image_wh=None,
              **data) -> Path:
    """One 40 x 30 image (id 5) and its PNG in the official layout under ``root``; returns the JSON path."""
    h, w = segment_map.shape
    for folder in (f"{split}2017", f"panoptic_{split}2017", "annotations"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    Image.new("RGB", image_wh or (w, h), (90, 90, 90)).save(root / f"{split}2017" / "a.jpg")
    (root / f"panoptic_{split}2017" / "a.png").write_bytes(encode_panoptic_png(segment_map))
    content = {"images": [{"id": 5, "file_name": "a.jpg", "width": w, "height": h}],
               "annotations": [{"image_id": 5, "file_name": "a.png", "segments_info": segments_info}],
               "categories": CATEGORIES}
    content.update(data)
    ann_file = root / "annotations" / f"panoptic_{split}2017.json"
    ann_file.write_text(json.dumps(content))
    return ann_file


def _segment(segment_id, category_id, area, iscrowd=0):
    return {"id": segment_id, "category_id": category_id, "iscrowd": iscrowd, "bbox": [0, 0, 1, 1], "area": area}


@pytest.fixture
def two_segments() -> np.ndarray:
    """30 x 40 ids: a thing 7 at x 5..14, y 5..14, a void column at x 0, stuff 300000 elsewhere."""
    ids = np.full((30, 40), 300000, dtype=np.int64)
    ids[5:15, 5:15] = 7
    ids[:, 0] = 0
    return ids


def test_handmade_item(tmp_path, two_segments):
    _handmade(tmp_path, two_segments, [_segment(7, 1, 100, iscrowd=1), _segment(300000, 4, 1070)])
    dataset = _dataset(tmp_path)
    _, target = dataset[0]
    assert target["boxes"].tolist() == [[5, 5, 15, 15], [1, 0, 40, 30]]
    assert target["labels"].tolist() == [1, 4] and target["iscrowd"].tolist() == [1, 0]
    assert target["area"].tolist() == [100, 1070] and target["image_id"].tolist() == [5]
    assert target["orig_size"].tolist() == [30, 40]
    assert dataset.is_thing_map() == {1: True, 4: False}
    assert dataset.num_classes() == 5 and dataset.get_height_and_width(0) == (30, 40)
    assert dataset.ann_file == tmp_path / "annotations/panoptic_val2017.json"
    assert dataset.ann_folder == tmp_path / "panoptic_val2017"
    assert dataset.categories[4]["name"] == "stuff"


def test_listed_segment_without_pixels_is_dropped(tmp_path, two_segments):
    _handmade(tmp_path, two_segments, [_segment(7, 1, 100), _segment(99, 1, 5), _segment(300000, 4, 1070)])
    for return_masks in (True, False):
        _, target = _dataset(tmp_path, return_masks=return_masks)[0]
        assert target["labels"].tolist() == [1, 4] and target["area"].tolist() == [100, 1070]
        assert target["boxes"].shape == (2, 4)
        if return_masks:
            assert target["masks"].shape == (2, 30, 40)


def test_segment_emptied_by_a_crop_is_dropped_with_masks(tmp_path):
    """A segment in two far corners: a middle crop keeps its clipped box but none of its pixels."""
    ids = np.full((30, 40), 300000, dtype=np.int64)
    ids[0:4, 0:4] = 7
    ids[26:30, 36:40] = 7
    _handmade(tmp_path, ids, [_segment(7, 1, 32), _segment(300000, 4, 1168)])
    crop = lambda img, target: T.crop(img, target, (10, 10, 10, 10))  # noqa: E731
    _, target = _dataset(tmp_path, transforms=crop)[0]
    assert target["labels"].tolist() == [4] and target["masks"].shape == (1, 10, 10)
    _, target = _dataset(tmp_path, transforms=crop, return_masks=False)[0]
    assert target["labels"].tolist() == [1, 4], "without masks, the detection rule (non-empty clipped box) applies"


# ---------------------------------------------------------------- errors name the file, the id or the flag


def test_missing_png_folder_and_file(tmp_path, two_segments):
    ann_file = _handmade(tmp_path, two_segments, [_segment(7, 1, 100)])
    png = tmp_path / "panoptic_val2017" / "a.png"
    png.unlink()
    with pytest.raises(FileNotFoundError) as err:
        _dataset(tmp_path)[0]
    assert str(png) in str(err.value) and "image id 5" in str(err.value) and str(ann_file) in str(err.value)
    (tmp_path / "panoptic_val2017").rmdir()
    with pytest.raises(FileNotFoundError) as err:
        build("val", _args(tmp_path))
    assert str(tmp_path / "panoptic_val2017") in str(err.value) and "--coco_panoptic_path" in str(err.value)
    with pytest.raises(FileNotFoundError) as err:
        _dataset(tmp_path)
    assert str(tmp_path / "panoptic_val2017") in str(err.value)


def test_images_and_annotations_pair_by_id(tmp_path, two_segments):
    ann_file = _handmade(tmp_path, two_segments, [_segment(7, 1, 100)],
                         annotations=[{"image_id": 6, "file_name": "a.png", "segments_info": []}])
    with pytest.raises(ValueError) as err:
        _dataset(tmp_path)
    assert str(ann_file) in str(err.value) and "image id 6" in str(err.value)
    _handmade(tmp_path, two_segments, [_segment(7, 1, 100)], annotations=[])
    with pytest.raises(ValueError) as err:
        _dataset(tmp_path)
    assert str(ann_file) in str(err.value) and "image id 5" in str(err.value) and "no annotation" in str(err.value)
    # the order of the lists does not matter, only the ids
    images = [{"id": 9, "file_name": "a.jpg", "width": 40, "height": 30},
              {"id": 5, "file_name": "a.jpg", "width": 40, "height": 30}]
    annotations = [{"image_id": 5, "file_name": "a.png", "segments_info": [_segment(7, 1, 100)]},
                   {"image_id": 9, "file_name": "a.png", "segments_info": [_segment(300000, 4, 1070)]}]
    _handmade(tmp_path, two_segments, [], images=images, annotations=annotations)
    dataset = _dataset(tmp_path)
    assert dataset.ids == [5, 9]
    assert [dataset[i][1]["labels"].tolist() for i in range(2)] == [[1], [4]]


def test_image_and_png_of_different_sizes(tmp_path, two_segments):
    _handmade(tmp_path, two_segments, [_segment(7, 1, 100)], image_wh=(41, 30))
    with pytest.raises(ValueError) as err:
        _dataset(tmp_path)[0]
    message = str(err.value)
    assert str(tmp_path / "val2017" / "a.jpg") in message and str(tmp_path / "panoptic_val2017" / "a.png") in message
    assert "41x30" in message and "40x30" in message


@pytest.mark.parametrize("segments, match", [
    ([_segment(0, 1, 10)], "segment id 0"),
    ([_segment(7, 1, 100), _segment(7, 4, 100)], "repeated"),
])
def test_bad_segment_ids(tmp_path, two_segments, segments, match):
    ann_file = _handmade(tmp_path, two_segments, segments)
    with pytest.raises(ValueError, match=match) as err:
        _dataset(tmp_path)[0]
    assert str(ann_file) in str(err.value) and "image id 5" in str(err.value)


def test_bad_categories_and_json(tmp_path, two_segments):
    ann_file = _handmade(tmp_path, two_segments, [_segment(7, 2, 100)])
    with pytest.raises(ValueError, match="category id 2") as err:
        _dataset(tmp_path)
    assert str(ann_file) in str(err.value)
    _handmade(tmp_path, two_segments, [_segment(7, 1, 100)], categories=[{"id": 1, "name": "x"}])
    with pytest.raises(ValueError, match="isthing") as err:
        _dataset(tmp_path)
    assert str(ann_file) in str(err.value)
    ann_file.write_text(json.dumps({"images": []}))
    with pytest.raises(ValueError, match="annotations") as err:
        _dataset(tmp_path)
    assert str(ann_file) in str(err.value)
    ann_file.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON") as err:
        _dataset(tmp_path)
    assert str(ann_file) in str(err.value)


def test_build_errors_name_the_flag(tmp_path, panoptic):
    with pytest.raises(ValueError, match="--coco_panoptic_path"):
        build("val", _args(panoptic, coco_panoptic_path=None))
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError) as err:
        build("val", _args(panoptic, coco_panoptic_path=str(missing)))
    assert str(missing) in str(err.value) and "--coco_panoptic_path" in str(err.value)
    with pytest.raises(FileNotFoundError) as err:
        build("val", _args(panoptic, coco_path=str(missing)))
    assert str(missing) in str(err.value) and "--coco_path" in str(err.value)
    (tmp_path / "annotations").mkdir()
    with pytest.raises(FileNotFoundError) as err:
        build("val", _args(panoptic, coco_panoptic_path=str(tmp_path)))
    assert str(tmp_path / "annotations" / "panoptic_val2017.json") in str(err.value)
    assert "--coco_panoptic_path" in str(err.value)
    with pytest.raises(ValueError, match="image_set"):
        build("test", _args(panoptic))


def test_category_id_not_below_num_classes(panoptic):
    with pytest.raises(ValueError) as err:
        build("train", _args(panoptic, num_classes=20))
    message = str(err.value)
    assert str(panoptic / "annotations" / "panoptic_train2017.json") in message
    assert "20" in message and "--num_classes 21" in message
    assert build("train", _args(panoptic, num_classes=21)).num_classes() == 21


def test_build_dataset_from_main_flags(panoptic, tiny_args):
    assert "coco_panoptic" in DATASET_CHOICES
    args = tiny_args(panoptic, "--dataset_file", "coco_panoptic", "--coco_panoptic_path", str(panoptic), "--masks")
    dataset = build_dataset("val", args)
    assert isinstance(dataset, CocoPanoptic) and len(dataset) == 4
    assert dataset.num_classes() == 21
    assert dataset.is_thing_map() == {**{i: True for i in THING_IDS}, **{i: False for i in STUFF_IDS}}
    image, target = dataset[0]
    assert image.shape[1:] == (SIZE, SIZE)  # val: resized to --image_size, already square
    assert target["masks"].shape == (len(target["labels"]), SIZE, SIZE)
    assert ((target["boxes"] > 0) & (target["boxes"] <= 1)).all()
