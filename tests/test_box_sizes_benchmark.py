"""benchmarks/box_sizes.py: box sizes at the network's input against the annotations resized by hand."""
import json

import pytest

from benchmarks.box_sizes import shorter_sides
from tools.data.synthetic import generate

PRESET = "configs/demo_cpu_rtdetrv2.yaml"  # eval_spatial_size 128: every image resized to 128 x 128


@pytest.fixture(scope="module")
def hard(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("hard_boxes"), num_train=8, num_val=2, image_size=128, seed=3,
                    difficulty="hard")


def test_without_augmentation_the_sides_are_the_annotations_resized_to_128(hard):
    coco = json.loads((hard / "annotations" / "instances_train2017.json").read_text())
    images = {image["id"]: image for image in coco["images"]}
    expected = []
    for annotation in coco["annotations"]:
        if annotation.get("iscrowd", 0):
            continue
        image = images[annotation["image_id"]]
        _, _, w, h = annotation["bbox"]
        w, h = w * 128 / image["width"], h * 128 / image["height"]
        if w >= 1 and h >= 1:
            expected.append(min(w, h))
    measured = shorter_sides(PRESET, str(hard), images=8, augmented=False, seed=0)
    assert len(expected) > 10
    assert sorted(measured) == pytest.approx(sorted(expected), abs=1e-3)


def test_augmentation_keeps_no_more_boxes_and_is_seeded(hard):
    off = shorter_sides(PRESET, str(hard), images=8, augmented=False, seed=0)
    on = shorter_sides(PRESET, str(hard), images=8, augmented=True, seed=0)
    assert len(on) <= len(off)
    assert shorter_sides(PRESET, str(hard), images=8, augmented=True, seed=0) == on
