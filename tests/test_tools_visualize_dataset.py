"""tools/visualize_dataset.py: the ground truth drawn on the images as read and after the training augmentation."""
import contextlib
import io
import json

import numpy as np
from PIL import Image

from tools import visualize_dataset


def test_ground_truth_is_drawn_before_and_after_augmentation(tiny_coco, tmp_path):
    with contextlib.redirect_stdout(io.StringIO()):
        written = visualize_dataset.main(["--coco_path", str(tiny_coco), "--image_set", "val", "--num", "3",
                                          "--output_dir", str(tmp_path), "--image_size", "64", "--no_multiscale"])
    data = json.loads((tiny_coco / "annotations" / "instances_val2017.json").read_text())
    images = sorted(data["images"], key=lambda image: image["id"])[:3]
    stems = [image["file_name"].rsplit(".", 1)[0] for image in images]
    assert written == [tmp_path / f"{stem}_{kind}.png" for stem in stems for kind in ("annotations", "augmented")]
    for image in images:
        stem = image["file_name"].rsplit(".", 1)[0]
        original = np.asarray(Image.open(tiny_coco / "val2017" / image["file_name"]).convert("RGB")).astype(int)
        drawn = np.asarray(Image.open(tmp_path / f"{stem}_annotations.png")).astype(int)
        assert drawn.shape == original.shape
        boxes = [a["bbox"] for a in data["annotations"] if a["image_id"] == image["id"] and not a.get("iscrowd")]
        covered = np.zeros(original.shape[:2], dtype=bool)  # boxes, and room for a caption above each
        for x, y, w, h in boxes:
            row, col = int(round(y + h / 2)), int(round(x))
            assert (drawn[row, col] != original[row, col]).any()  # the box's left edge
            covered[max(0, int(y) - 14):int(y + h) + 2, max(0, int(x) - 1):int(x + w) + 40] = True
        assert (drawn[~covered] == original[~covered]).all()  # nothing drawn elsewhere
        # square 64 px images, resized to --image_size 64 (flips only): the same size after augmentation
        assert Image.open(tmp_path / f"{stem}_augmented.png").size == (64, 64)
