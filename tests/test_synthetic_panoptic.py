"""The panoptic mode of the synthetic generator, and that the detection output did not change with it."""
import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import tools.data.synthetic as synthetic
from tools.data.synthetic import generate
from util.panoptic_png import read_panoptic_png

# pycocotools' mask decoding warns about numpy 2 on every call
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools")

SIZE = 48
THING_IDS, STUFF_IDS = {1, 3, 5, 8, 11}, {13, 17, 20}  # written down independently of tools.data.synthetic
SPLITS = ("train2017", "val2017")


@pytest.fixture(scope="module")
def panoptic(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("panoptic"), num_train=16, num_val=4, image_size=SIZE, seed=2,
                    panoptic=True, quiet=True)


def _json(root: Path, name: str) -> dict:
    return json.loads((root / "annotations" / name).read_text())


def _segments(root: Path, folder: str):
    """(image, annotation, [H, W] segment ids) of each image of a split."""
    data = _json(root, f"panoptic_{folder}.json")
    anns = {a["image_id"]: a for a in data["annotations"]}
    for image in data["images"]:
        ann = anns[image["id"]]
        yield image, ann, read_panoptic_png(root / f"panoptic_{folder}" / ann["file_name"])


def test_every_pixel_is_in_one_segment_or_void(panoptic):
    void = total = 0
    for folder in SPLITS:
        data = _json(panoptic, f"panoptic_{folder}.json")
        assert len(data["annotations"]) == len(data["images"])
        for image, ann, ids in _segments(panoptic, folder):
            assert ann["file_name"] == Path(image["file_name"]).stem + ".png"
            assert ids.shape == (image["height"], image["width"]) == (SIZE, SIZE)
            segment_ids = [s["id"] for s in ann["segments_info"]]
            assert len(set(segment_ids)) == len(segment_ids) and 0 not in segment_ids
            assert set(np.unique(ids).tolist()) - {0} == set(segment_ids), "the PNG holds exactly the listed segments"
            for segment in ann["segments_info"]:
                mask = ids == segment["id"]
                assert segment["area"] == mask.sum() > 0
                ys, xs = np.nonzero(mask)
                assert segment["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
            void += int((ids == 0).sum())
            total += ids.size
    assert 0 < void < 0.05 * total, "some void along stuff boundaries, not much"


def test_categories_and_stuff(panoptic):
    data = _json(panoptic, "panoptic_train2017.json")
    isthing = {c["id"]: c["isthing"] for c in data["categories"]}
    assert isthing == {**{i: 1 for i in THING_IDS}, **{i: 0 for i in STUFF_IDS}}
    assert all(c["name"] for c in data["categories"])
    assert sorted(c["id"] for c in _json(panoptic, "instances_train2017.json")["categories"]) == sorted(THING_IDS)
    bands = Counter()
    for folder in SPLITS:
        for _, ann, _ in _segments(panoptic, folder):
            stuff = [s for s in ann["segments_info"] if not isthing[s["category_id"]]]
            assert 1 <= len(stuff) <= 3 and len({s["category_id"] for s in stuff}) == len(stuff)
            assert all(s["iscrowd"] == 0 for s in stuff)
            bands[len(stuff)] += 1
    assert len(bands) >= 2, "images have different numbers of stuff bands"


def test_stuff_textures_differ(panoptic):
    colours = {i: [] for i in STUFF_IDS}
    for image, ann, ids in _segments(panoptic, "train2017"):
        with Image.open(panoptic / "train2017" / image["file_name"]) as im:
            pixels = np.asarray(im.convert("RGB"), dtype=np.float32)
        for segment in ann["segments_info"]:
            if segment["category_id"] in STUFF_IDS:
                colours[segment["category_id"]].append(pixels[ids == segment["id"]].mean(0))
    means = {i: np.mean(c, axis=0) for i, c in colours.items() if c}
    assert len(means) == 3
    for a in means:
        for b in means:
            if a < b:
                assert np.linalg.norm(means[a] - means[b]) > 40, (a, b, means)


def test_instances_match_the_panoptic_things(panoptic):
    for folder in SPLITS:
        instances = _json(panoptic, f"instances_{folder}.json")
        assert instances["images"] == _json(panoptic, f"panoptic_{folder}.json")["images"]
        by_image = {image["id"]: [] for image in instances["images"]}
        for ann in instances["annotations"]:
            by_image[ann["image_id"]].append(ann)
        for image, ann, _ in _segments(panoptic, folder):
            things = [s for s in ann["segments_info"] if s["category_id"] in THING_IDS]
            objects = by_image[image["id"]]
            assert Counter(s["category_id"] for s in things) == Counter(o["category_id"] for o in objects)
            # the same shapes in the same (drawing) order: a segment is the visible part of its whole shape
            for segment, obj in zip(things, objects):
                assert (segment["category_id"], segment["iscrowd"]) == (obj["category_id"], obj["iscrowd"])
                assert segment["area"] <= obj["area"]
                sx, sy, sw, sh = segment["bbox"]
                ox, oy, ow, oh = obj["bbox"]
                assert ox <= sx and oy <= sy and sx + sw <= ox + ow and sy + sh <= oy + oh


def test_crowd_segments_are_marked_in_both_files(tmp_path, monkeypatch):
    monkeypatch.setattr(synthetic, "CROWD_FRACTION", 0.5)
    out = generate(tmp_path, num_train=6, num_val=1, image_size=32, seed=0, panoptic=True, quiet=True)
    panoptic_crowd = Counter(s["iscrowd"] for a in _json(out, "panoptic_train2017.json")["annotations"]
                             for s in a["segments_info"] if s["category_id"] in THING_IDS)
    instances_crowd = Counter(a["iscrowd"] for a in _json(out, "instances_train2017.json")["annotations"])
    assert panoptic_crowd == instances_crowd and panoptic_crowd[1] > 0 and panoptic_crowd[0] > 0


def test_panoptic_mode_is_deterministic(tmp_path):
    def files(root: Path) -> dict:
        return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    a = files(generate(tmp_path / "a", num_train=3, num_val=2, image_size=32, seed=4, panoptic=True, quiet=True))
    b = files(generate(tmp_path / "b", num_train=3, num_val=2, image_size=32, seed=4, panoptic=True, quiet=True))
    c = files(generate(tmp_path / "c", num_train=3, num_val=2, image_size=32, seed=5, panoptic=True, quiet=True))
    assert len([p for p in a if p.suffix == ".png"]) == 5 and a == b
    assert a[Path("annotations/panoptic_train2017.json")] != c[Path("annotations/panoptic_train2017.json")]


# sha256 of the files of generate(DIR, num_train=4, num_val=3, image_size=48, seed=5, quiet=True) (the detection
# default), computed with datasets/synthetic.py as committed before the panoptic mode (git 6ba5ca8). The images are
# left out: their JPEG bytes depend on the libjpeg build, while the JSON depends only on numpy's random streams and
# pycocotools (every random draw for a colour shifts the draws after it, so the JSON follows the images' colours too).
DETECTION_SHA256 = {
    "annotations/instances_train2017.json": "2156f00b6a86a5589a6c830bf55595083991cba87c777da232cd0622b6b9688e",
    "annotations/instances_val2017.json": "9c526c7d79dde599dc8d16e0158d28efe78fd44aafe9e86f18febaf7e8414ccc",
    "synthetic_params.json": "76201ae691880f29cb69566c339641273aa141502808d81bbc3afdb12ef99890",
}


# The generator moved to tools/data/synthetic.py since; the one change in its output is the file named in the JSON's
# info.description.
MOVED_DESCRIPTION = (b"synthetic shapes (tools/data/synthetic.py)", b"synthetic shapes (datasets/synthetic.py)")


def test_detection_output_is_unchanged(tmp_path):
    out = generate(tmp_path, num_train=4, num_val=3, image_size=48, seed=5, quiet=True)
    assert {name: hashlib.sha256((out / name).read_bytes().replace(*MOVED_DESCRIPTION)).hexdigest()
            for name in DETECTION_SHA256} == DETECTION_SHA256
    assert sorted(p.name for p in out.iterdir()) == ["annotations", "synthetic_params.json", "train2017", "val2017"]
    assert sorted(p.name for p in (out / "annotations").iterdir()) == ["instances_train2017.json",
                                                                       "instances_val2017.json"]


def test_panoptic_flag_is_a_parameter(tmp_path, capsys):
    generate(tmp_path, num_train=2, num_val=1, image_size=32, seed=0)
    assert "panoptic" not in json.loads((tmp_path / "synthetic_params.json").read_text())["params"]
    generate(tmp_path, num_train=2, num_val=1, image_size=32, seed=0, panoptic=True)
    assert json.loads((tmp_path / "synthetic_params.json").read_text())["params"]["panoptic"] is True
    assert len(list((tmp_path / "panoptic_train2017").glob("*.png"))) == 2
    assert "num_classes 21" in capsys.readouterr().out
    generate(tmp_path, num_train=2, num_val=1, image_size=32, seed=0, panoptic=True)
    assert "kept" in capsys.readouterr().out
    generate(tmp_path, num_train=2, num_val=1, image_size=32, seed=0)  # back to detection: the panoptic files go
    assert not (tmp_path / "panoptic_train2017").exists()
    assert not (tmp_path / "annotations" / "panoptic_train2017.json").exists()


def test_panoptic_cli(tmp_path):
    out = synthetic.main(["--out", str(tmp_path), "--num_train", "2", "--num_val", "1", "--image_size", "32",
                          "--panoptic"])
    assert json.loads((out / "synthetic_params.json").read_text())["params"]["panoptic"] is True
    assert len(_json(out, "panoptic_val2017.json")["annotations"]) == 1
    assert len(list((out / "panoptic_val2017").glob("*.png"))) == 1
