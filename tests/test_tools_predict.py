"""tools/predict.py on tiny trained checkpoints: pictures of the inputs' sizes with the predicted boxes drawn,
COCO results that pycocotools loads, the same predictions whatever the image's storage (greyscale, RGBA, 16-bit,
EXIF-rotated) or the batch size, every architecture, and one-line errors."""
import argparse
import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO

from tests.conftest import TINY_FLAGS
from tests.tiny_checkpoints import train_tiny
from tools import predict
from tools.command_line import run_tool
from util.user_error import UserError

pytestmark = pytest.mark.usefixtures("one_thread")

EXIF_ORIENTATION = 0x0112


@pytest.fixture(scope="module")
def checkpoints(tiny_coco, tmp_path_factory) -> dict[str, Path]:
    """One epoch of each architecture on the tiny dataset (24 images of 64 px, 12 classes, 8 queries)."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("predict_runs")
    return {arch: train_tiny(tiny_coco, root / arch, arch) for arch in ("detr", "deformable_detr", "dino", "rtdetrv2",
                                                                        "dfine")}


def _predict(checkpoint: Path, inputs: list, out: Path, *flags: str) -> list[dict]:
    with contextlib.redirect_stdout(io.StringIO()):
        path = predict.main(["--resume", str(checkpoint), "--input", *map(str, inputs), "--output_dir", str(out),
                             "--device", "cpu", *flags])
    return json.loads(path.read_text())


def _val_images(coco: Path, n: int) -> list[Path]:
    return sorted((coco / "val2017").glob("*.jpg"))[:n]


def test_pictures_show_the_predicted_boxes_and_the_results_load_in_pycocotools(checkpoints, tiny_coco, tmp_path):
    images = _val_images(tiny_coco, 4)
    results = _predict(checkpoints["detr"], images, tmp_path, "--threshold", "0", "--coco_path", str(tiny_coco))
    # DETR keeps one prediction per query (8) and per image at threshold 0
    assert len(results) == 8 * len(images)
    gt = COCO(str(tiny_coco / "annotations" / "instances_val2017.json"))
    loaded = gt.loadRes(str(tmp_path / "predictions.json"))
    assert len(loaded.anns) == len(results)
    ids = {Path(img["file_name"]).name: img["id"] for img in gt.dataset["images"]}
    assert {(Path(r["file_name"]).name, r["image_id"]) for r in results} == {(p.name, ids[p.name]) for p in images}
    checked = 0
    for path in images:
        original = np.asarray(Image.open(path).convert("RGB"))
        picture = np.asarray(Image.open(tmp_path / f"{path.stem}.png"))
        assert picture.shape == original.shape
        for r in results:
            x, y, w, h = r["bbox"]
            if r["file_name"] != str(path) or not (1 <= x and x + w <= 62 and 1 <= y and y + h <= 62 and h >= 4):
                continue
            # the box's left edge, half-way down, is drawn over the image
            row, col = int(round(y + h / 2)), int(round(x))
            assert (picture[row, col] != original[row, col]).any(), (path.name, r["bbox"])
            checked += 1
    assert checked >= 4


def test_nothing_drawn_leaves_the_image_as_it_was(checkpoints, tiny_coco, tmp_path):
    image = _val_images(tiny_coco, 1)[0]
    assert _predict(checkpoints["detr"], [image], tmp_path, "--threshold", "1") == []
    assert np.array_equal(np.asarray(Image.open(tmp_path / f"{image.stem}.png")),
                          np.asarray(Image.open(image).convert("RGB")))


def _stored_variants(source: Path, folder: Path) -> dict[str, tuple[Path, Path]]:
    """name -> (an image stored in an unusual way, the same pixels stored as plain 8-bit RGB PNG)."""
    folder.mkdir()
    rgb = Image.open(source).convert("RGB").resize((48, 64))
    pairs = {}
    grey = rgb.convert("L")
    grey.save(folder / "grey.png")
    grey.convert("RGB").save(folder / "grey_ref.png")
    pairs["greyscale"] = ("grey.png", "grey_ref.png")
    alpha = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 48), dtype=np.uint8))
    rgba = rgb.copy()
    rgba.putalpha(alpha)
    rgba.save(folder / "rgba.png")
    rgb.save(folder / "rgba_ref.png")
    pairs["rgba"] = ("rgba.png", "rgba_ref.png")
    low = np.random.default_rng(1).integers(0, 256, (64, 48))
    wide = (np.asarray(grey).astype(np.int64) * 256 + low).astype(np.uint16)  # high byte: the 8-bit value
    Image.fromarray(wide).save(folder / "sixteen.png")
    pairs["16-bit"] = ("sixteen.png", "grey_ref.png")
    # EXIF orientation 6: shown after a quarter turn clockwise, so store the upright image turned counter-clockwise
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    rgb.transpose(Image.Transpose.ROTATE_90).save(folder / "rotated.png", exif=exif)
    rgb.save(folder / "upright_ref.png")
    pairs["exif"] = ("rotated.png", "upright_ref.png")
    return {name: (folder / a, folder / b) for name, (a, b) in pairs.items()}


def test_greyscale_rgba_16_bit_and_exif_rotated_images_give_the_predictions_of_their_rgb_pixels(
        checkpoints, tiny_coco, tmp_path):
    pairs = _stored_variants(_val_images(tiny_coco, 1)[0], tmp_path / "in")
    assert Image.open(pairs["exif"][0]).size == (64, 48)  # stored sideways
    inputs = [p for pair in pairs.values() for p in pair]
    results = _predict(checkpoints["detr"], inputs, tmp_path / "out", "--threshold", "0")
    by_file = {}
    for r in results:
        by_file.setdefault(Path(r["file_name"]).name, []).append([r["category_id"], *r["bbox"], r["score"]])
    for name, (stored, reference) in pairs.items():
        assert np.allclose(by_file[stored.name], by_file[reference.name], atol=1e-3), name
        assert Image.open(tmp_path / "out" / f"{stored.stem}.png").size == (48, 64), name  # upright size


def test_a_large_image_is_drawn_at_its_own_size(checkpoints, tiny_coco, tmp_path):
    large = tmp_path / "large.jpg"
    Image.open(_val_images(tiny_coco, 1)[0]).resize((2400, 1600)).save(large, quality=90)
    results = _predict(checkpoints["detr"], [large], tmp_path / "out", "--threshold", "0")
    assert Image.open(tmp_path / "out" / "large.png").size == (2400, 1600)
    assert len(results) == 8
    boxes = np.array([r["bbox"] for r in results])
    # boxes in the image's pixels: most of them reach beyond what a 64 or 96 px input would allow
    assert boxes[:, 0].max() + boxes[:, 2].max() > 200 and boxes[:, 0].min() > -2400


def test_batches_give_the_predictions_of_single_images(checkpoints, tiny_coco, tmp_path):
    images = _val_images(tiny_coco, 4)
    one = _predict(checkpoints["detr"], images, tmp_path / "one", "--batch_size", "1", "--threshold", "0")
    four = _predict(checkpoints["detr"], images, tmp_path / "four", "--batch_size", "4", "--threshold", "0")
    assert [(r["file_name"], r["category_id"]) for r in one] == [(r["file_name"], r["category_id"]) for r in four]
    assert np.allclose([r["bbox"] + [r["score"]] for r in one], [r["bbox"] + [r["score"]] for r in four], atol=1e-3)


@pytest.mark.parametrize("arch, per_image", [("deformable_detr", 96), ("dino", 20), ("rtdetrv2", 20), ("dfine", 20)])
def test_every_architecture_predicts(checkpoints, tiny_coco, tmp_path, arch, per_image):
    # top-k over query-class pairs: Deformable DETR min(100, 8 queries x 12 classes), DINO --num_select 20,
    # RT-DETRv2 and D-FINE --num_top_queries 20
    images = _val_images(tiny_coco, 2)
    results = _predict(checkpoints[arch], images, tmp_path, "--threshold", "0", "--coco_path", str(tiny_coco))
    assert len(results) == per_image * len(images)
    gt = COCO(str(tiny_coco / "annotations" / "instances_val2017.json"))
    assert len(gt.loadRes(str(tmp_path / "predictions.json")).anns) == len(results)
    assert all(Image.open(tmp_path / f"{p.stem}.png").size == Image.open(p).size for p in images)


def test_folders_and_globs_are_expanded_and_names_kept_apart(checkpoints, tiny_coco, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    first = _val_images(tiny_coco, 1)[0]
    (other / first.name).write_bytes(first.read_bytes())  # the same file name in another folder
    results = _predict(checkpoints["detr"], [tiny_coco / "val2017", str(other / "*.jpg")], tmp_path / "out",
                       "--threshold", "0.99")
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == sorted(
        [f"{p.stem}.png" for p in (tiny_coco / "val2017").glob("*.jpg")] + [f"{first.stem}_2.png"])
    assert all(r["score"] >= 0.99 for r in results)


def test_user_errors_are_one_line(checkpoints, tiny_coco, tmp_path, capsys):
    def error(*argv) -> str:
        capsys.readouterr()
        assert run_tool(predict.main, list(argv)) == 1
        lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: ")
        return lines[0]

    out = ["--output_dir", str(tmp_path)]
    image = str(sorted((tiny_coco / "val2017").glob("*.jpg"))[0])
    assert "configs/dino_4scale.yaml" in error("--resume", "dino_resnet50_4scale", "--input", image, *out)
    assert "no such file or folder" in error("--resume", str(checkpoints["detr"]), "--input", "missing.jpg", *out)
    assert "--threshold" in error("--resume", str(checkpoints["detr"]), "--input", image, "--threshold", "2", *out)
    assert "--num_classes" in error("--resume", str(checkpoints["detr"]), "--num_classes", "5", "--input", image,
                                    *out)


def test_an_official_format_checkpoint_takes_its_model_flags_from_the_command_line(checkpoints, tiny_coco, tmp_path):
    # the official checkpoints pickle their own code base's Namespace under "args": its flags are not used
    saved = torch.load(checkpoints["detr"], weights_only=True)
    official = tmp_path / "official.pth"
    torch.save({"model": saved["model"], "args": argparse.Namespace(lr=1e-4, hidden_dim=256)}, official)
    image = _val_images(tiny_coco, 1)[0]
    flags = [f for f in TINY_FLAGS if f not in ("--device", "cpu")] + ["--num_classes", "12"]
    ours = _predict(checkpoints["detr"], [image], tmp_path / "ours", "--threshold", "0")
    assert _predict(official, [image], tmp_path / "official", "--threshold", "0", *flags) == ours
    with pytest.raises(UserError, match="does not fit the model built from these flags"):
        _predict(official, [image], tmp_path / "defaults", "--threshold", "0")


def test_the_checkpoint_carries_the_category_names_to_the_tools(checkpoints, tiny_coco, tmp_path):
    """The names are stored in the checkpoint, so predictions name the categories without the dataset at hand."""
    import shutil

    from tools.model_loading import load_model, parse_with_checkpoint_flags

    saved = torch.load(checkpoints["detr"], weights_only=True)["category_names"]
    expected = {str(c["id"]): c["name"] for c in json.loads(
        (tiny_coco / "annotations" / "instances_train2017.json").read_text())["categories"]}
    assert saved == expected
    moved = tmp_path / "checkpoint.pth"
    shutil.copy(checkpoints["detr"], moved)
    args, checkpoint = parse_with_checkpoint_flags(predict.get_parser(), [
        "--resume", str(moved), "--input", "x.jpg", "--output_dir", str(tmp_path), "--coco_path",
        str(tmp_path / "gone")])
    loaded = load_model(args, checkpoint)
    assert loaded.category_names == {int(k): v for k, v in expected.items()}
    assert loaded.names_source == f"the checkpoint {moved}"
