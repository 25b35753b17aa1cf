"""Issue 14, data read correctly or refused by name: image files (16-bit, EXIF orientation, size, corrupt or
truncated data), annotation files (schema, invalid boxes), --skip_bad_images through DataLoader workers, and preset
values checked as the command line checks them."""
import contextlib
import io
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import cli
from datasets import build_run_data, get_coco_api_from_dataset
from datasets.bad_images import SkippedImage, SkippedImages, collate_skipping
from datasets.coco import build
from datasets.image_file import BadImageError, read_image
from datasets.jpeg_structure import jpeg_structure_error
from datasets.loaders import build_loaders
from engine import train_one_epoch
from evaluation.coco_eval import CocoEvaluator
from util.config import ConfigError, parse_args_with_config

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools")

W, H = 48, 32  # the hand-made images: landscape, so a transposed one is caught


def _args(root, **kw) -> SimpleNamespace:
    base = dict(dataset_file="coco", coco_path=str(root), masks=False, image_size=32, multiscale=False,
                num_classes=None, strict_annotations=False, skip_bad_images=False, cache_mode=False)
    base.update(kw)
    return SimpleNamespace(**base)


def _pattern(w: int = W, h: int = H) -> np.ndarray:
    """A [h, w, 3] uint8 image whose every pixel is distinct enough to tell a rotation from the original."""
    ys, xs = np.mgrid[0:h, 0:w]
    return np.stack([xs * 5, ys * 7, (xs + ys) * 3], axis=-1).astype(np.uint8)


def _folder(root: Path, files: dict, annotations=None, images=None, split: str = "train", **extra) -> Path:
    """A COCO folder: ``files`` {file name: PIL image or bytes} under SPLIT2017/, images listed W x H (unless
    ``images`` is given), the annotation file under annotations/; returns the annotation file."""
    (root / f"{split}2017").mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(exist_ok=True)
    for name, content in files.items():
        target = root / f"{split}2017" / name
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            content.save(target, **({"quality": 95} if name.endswith(".jpg") else {}))
    if images is None:
        images = [{"id": i + 1, "file_name": name, "width": W, "height": H} for i, name in enumerate(files)]
    data = {"images": images, "annotations": annotations if annotations is not None else [
        _ann(1, [4, 4, 10, 8])], "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}], **extra}
    ann_file = root / "annotations" / f"instances_{split}2017.json"
    ann_file.write_text(json.dumps(data))
    return ann_file


def _ann(ann_id: int, bbox: list, image_id: int = 1, category_id: int = 1) -> dict:
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "bbox": bbox, "iscrowd": 0,
            "area": float(bbox[2] * bbox[3]) if all(np.isfinite(bbox)) else 0.0}


def _jpeg_bytes(pixels: np.ndarray, exif=None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=95, **({"exif": exif} if exif is not None else {}))
    return buf.getvalue()


# ---------------------------------------------------------------- image files


@pytest.mark.parametrize("mode", ["I;16", "I"])
def test_16_bit_greyscale_keeps_its_range(tmp_path, mode):
    values = np.linspace(6682, 54484, W * H).reshape(H, W).round().astype(np.uint16)  # the range
    if mode == "I;16":
        path = tmp_path / "deep.png"
        Image.fromarray(values).save(path)  # a 16-bit greyscale PNG
    else:
        path = tmp_path / "deep.tif"
        Image.fromarray(values.astype(np.int32)).save(path)  # 32-bit integer pixels holding 16-bit values
    with Image.open(path) as raw:
        assert raw.mode == mode
    rgb = np.asarray(read_image(path, 7, "ann.json", expected_size=(W, H)))
    assert rgb.shape == (H, W, 3) and rgb.dtype == np.uint8
    expected = (values >> 8).astype(np.uint8)  # the high byte, as Pillow reads 16-bit colour PNGs
    for channel in range(3):
        np.testing.assert_array_equal(rgb[..., channel], expected)
    assert rgb.min() == 6682 >> 8 and rgb.max() == 54484 >> 8  # not a solid white image


def test_float_and_out_of_range_pixels_are_refused_by_name(tmp_path):
    path = tmp_path / "float.tif"
    Image.fromarray(np.full((H, W), 0.5, dtype=np.float32)).save(path)
    with pytest.raises(BadImageError, match="floating-point") as err:
        read_image(path, 3, "ann.json")
    assert str(path) in str(err.value) and "image id 3" in str(err.value)
    path = tmp_path / "wide.tif"
    Image.fromarray(np.full((H, W), 70000, dtype=np.int32)).save(path)
    with pytest.raises(BadImageError, match="70000"):
        read_image(path, 3, "ann.json")


def test_exif_orientation_is_applied_and_sizes_are_checked(tmp_path):
    stored = _pattern(H, W)  # stored portrait, W pixels high: orientation 6 shows it rotated to W x H
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    path.write_bytes(_jpeg_bytes(stored, exif.tobytes()))
    upright = read_image(path, 5, "ann.json", expected_size=(W, H))
    assert upright.size == (W, H)
    with Image.open(path) as img:  # what the file holds, rotated by hand: 90 degrees clockwise
        by_hand = np.asarray(img.convert("RGB").transpose(Image.Transpose.ROTATE_270))
    np.testing.assert_array_equal(np.asarray(upright), by_hand)
    # an annotation file that says another size: an error naming the file and both sizes
    with pytest.raises(BadImageError) as err:
        read_image(path, 5, "instances.json", expected_size=(H, W))
    message = str(err.value)
    assert str(path) in message and "image id 5" in message and f"{W}x{H}" in message and f"{H}x{W}" in message


def test_a_dataset_image_of_another_size_than_its_annotation(tmp_path):
    _folder(tmp_path, {"a.png": Image.fromarray(_pattern())},
            images=[{"id": 1, "file_name": "a.png", "width": W + 1, "height": H}])
    with pytest.raises(BadImageError, match=f"is {W}x{H} pixels .* says {W + 1}x{H}"):
        build("train", _args(tmp_path))[0]
    item = build("train", _args(tmp_path, skip_bad_images=True))[0]
    assert isinstance(item, SkippedImage) and item.image_id == 1 and "a.png" in item.reason


def _corruptions(good: bytes) -> dict[str, bytes]:
    n = len(good)
    garbage = np.random.default_rng(0).integers(0, 256, 300, dtype=np.uint8).tobytes()
    return {
        "zero_bytes": b"",
        "truncated": good[: n // 2],
        "zero_filled_tail": good[: n * 6 // 10] + bytes(n - n * 6 // 10),  # header intact, data gone
        "garbage_in_data": good[: n // 2] + garbage + good[n // 2 + 300:],
        "not_an_image": b"this is not an image at all",
    }


@pytest.mark.parametrize("kind", ["zero_bytes", "truncated", "zero_filled_tail", "garbage_in_data", "not_an_image"])
def test_damaged_jpeg_is_refused_with_file_and_id(tmp_path, kind):
    good = _jpeg_bytes(np.random.default_rng(1).integers(0, 256, (H, W, 3), dtype=np.uint8))
    assert jpeg_structure_error(good) is None
    path = tmp_path / "damaged.jpg"
    path.write_bytes(_corruptions(good)[kind])
    if kind == "zero_filled_tail":
        with Image.open(path) as img:
            img.load()  # what the issue found: Pillow decodes this without a word
    with pytest.raises(BadImageError) as err:
        read_image(path, 42, "ann.json")
    message = str(err.value)
    assert str(path) in message and "image id 42" in message and "\n" not in message


def test_synthetic_jpegs_pass_the_structure_check(tiny_coco):
    files = sorted((tiny_coco / "val2017").glob("*.jpg"))
    assert files and all(jpeg_structure_error(f.read_bytes()) is None for f in files)


# ---------------------------------------------------------------- annotation files


def _perfect_detector_ap(dataset) -> float:
    """Box AP of detections equal to the boxes of the valid annotations (what a perfect detector outputs)."""
    coco = get_coco_api_from_dataset(dataset)
    evaluator = CocoEvaluator(coco, ["bbox"])
    for image_id in dataset.ids:
        anns = coco.loadAnns(coco.getAnnIds(imgIds=image_id))
        xyxy = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)]).reshape(-1, 4)
        evaluator.update({image_id: {"boxes": xyxy, "scores": torch.ones(len(anns)),
                                     "labels": torch.tensor([a["category_id"] for a in anns])}})
    evaluator.accumulate()
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.summarize()
    return float(evaluator.coco_eval["bbox"].stats[0])


def test_invalid_boxes_leave_evaluation_too_reported_once(tmp_path, capsys):
    annotations = [_ann(1, [4, 4, 10, 8]), _ann(2, [20, 10, 12, 12]),
                   _ann(3, [5, 5, -4, 6]), _ann(4, [5, 5, 6, 0]),  # negative width, zero height
                   _ann(5, [float("nan"), 5, 6, 6]),  # not finite
                   _ann(6, [W + 2, 3, 5, 5]), _ann(7, [-9, 3, 5, 5])]  # right of the image, left of it
    ann_file = _folder(tmp_path, {"a.png": Image.fromarray(_pattern())}, annotations=annotations, split="val")
    capsys.readouterr()
    dataset = build("val", _args(tmp_path))
    printed = capsys.readouterr().out
    assert printed.count("\n") == 1 and str(ann_file) in printed
    assert "left 5 of 7 annotations out" in printed
    assert "1 with a coordinate that is not a finite number" in printed
    assert "2 with zero or negative width or height" in printed and "2 entirely outside the image" in printed
    assert sorted(get_coco_api_from_dataset(dataset).anns) == [1, 2]
    assert _perfect_detector_ap(dataset) == pytest.approx(1.0)  # was 0.95-like with the invalid ones in
    _, target = dataset[0]
    assert len(target["boxes"]) == 2  # training sees the same two
    with pytest.raises(ValueError, match="--strict_annotations") as err:
        build("val", _args(tmp_path, strict_annotations=True))
    assert str(ann_file) in str(err.value) and "5 annotations whose box is invalid" in str(err.value)


@pytest.mark.parametrize("change, names", [
    (lambda d: d.pop("annotations"), ["'annotations'"]),
    (lambda d: d.pop("images"), ["'images'"]),
    (lambda d: d.update(categories={"id": 1}), ["'categories' must be a list"]),
    (lambda d: d["annotations"][0].update(bbox=[1, 2, 3]), ["annotation id 1", "'bbox'", "4 numbers"]),
    (lambda d: d["annotations"][0].update(bbox=[1, 2, "3", 4]), ["annotation id 1", "'bbox'"]),
    (lambda d: d["annotations"][0].update(category_id=9), ["annotation id 1", "category_id 9", "categories"]),
    (lambda d: d["annotations"][0].update(image_id=77), ["annotation id 1", "image_id 77"]),
    (lambda d: d["images"].append(dict(d["images"][0])), ["image id 1 twice"]),
    (lambda d: d["annotations"].append(dict(d["annotations"][0])), ["annotation id 1 twice"]),
    (lambda d: d["images"][0].pop("width"), ["image id 1", "'width'"]),
    (lambda d: d["annotations"][0].pop("area"), ["annotation id 1", "'area'"]),
    (lambda d: d["categories"][0].update(id="1"), ["category at position 0", "'id'"]),
])
def test_schema_errors_name_file_key_and_id(tmp_path, change, names):
    ann_file = _folder(tmp_path, {"a.png": Image.fromarray(_pattern())})
    data = json.loads(ann_file.read_text())
    change(data)
    ann_file.write_text(json.dumps(data))
    with pytest.raises(ValueError) as err:
        build("train", _args(tmp_path))
    message = str(err.value)
    assert str(ann_file) in message and "\n" not in message
    for name in names:
        assert name in message, message


def test_unknown_category_no_longer_widens_num_classes(tmp_path):
    ann_file = _folder(tmp_path, {"a.png": Image.fromarray(_pattern())},
                       annotations=[_ann(1, [4, 4, 10, 8], category_id=40)])
    with pytest.raises(ValueError, match="category_id 40") as err:
        build("train", _args(tmp_path))
    assert str(ann_file) in str(err.value)


def test_a_train_file_with_no_annotation_and_empty_splits(tmp_path):
    ann_file = _folder(tmp_path, {"a.png": Image.fromarray(_pattern())}, annotations=[])
    with pytest.raises(ValueError, match="nothing to train on") as err:
        build("train", _args(tmp_path))
    assert str(ann_file) in str(err.value)
    _folder(tmp_path, {"a.png": Image.fromarray(_pattern())})
    val_file = _folder(tmp_path, {}, images=[], annotations=[], split="val")
    with pytest.raises(ValueError, match="the val set is empty") as err:
        build_run_data(_args(tmp_path), with_train=True)
    assert str(val_file) in str(err.value)


# ---------------------------------------------------------------- --skip_bad_images


def _skip_folder(root: Path) -> Path:
    """8 training images, two of them damaged (ids 3 and 6)."""
    files = {f"{i}.jpg": Image.fromarray(_pattern()) for i in range(1, 9)}
    _folder(root, files, annotations=[_ann(i, [4, 4, 10, 8], image_id=i) for i in range(1, 9)])
    (root / "train2017" / "3.jpg").write_bytes(b"")
    good = (root / "train2017" / "6.jpg").read_bytes()
    (root / "train2017" / "6.jpg").write_bytes(good[: len(good) // 2])
    return root


def test_skipped_images_are_counted_across_dataloader_workers(tmp_path, capsys, local_sockets):
    root = _skip_folder(tmp_path)
    dataset = build("train", _args(root, skip_bad_images=True))
    loader = build_loaders(None, dataset, batch_size=4, num_workers=2, distributed=False,
                           skip_bad_images=True).val
    skipped = SkippedImages()
    seen = []
    for batch in loader:
        samples, targets, left_out = batch
        skipped.add(left_out)
        seen += [t["image_id"].item() for t in targets]
        assert samples.tensors.shape[0] == len(targets)
    assert sorted(seen) == [1, 2, 4, 5, 7, 8]
    assert skipped.report("epoch 0") == 2
    printed = capsys.readouterr().out
    assert "3.jpg (image id 3) is empty" in printed and "6.jpg (image id 6)" in printed
    assert "epoch 0 skipped 2 image(s)" in printed and "image ids 3, 6" in printed


def test_a_batch_that_lost_every_image_is_skipped_and_the_epoch_reports(tmp_path, tiny_args, capsys):
    from models import build_model

    root = _skip_folder(tmp_path)
    args = tiny_args(root, "--num_classes", "3", "--image_size", "32", "--lr_backbone", "0")
    torch.manual_seed(0)
    model, criterion, _ = build_model(args)
    dataset = build("train", _args(root, skip_bad_images=True))
    items = [dataset[i] for i in range(len(dataset))]
    batches = [collate_skipping(items[2:3]), collate_skipping(items[0:2]), collate_skipping(items[3:6])]
    assert batches[0][0] is None and len(batches[2][1]) == 2
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    stats = train_one_epoch(model, criterion, batches, optimizer, torch.device("cpu"), epoch=0, print_freq=1000,
                            skipped=SkippedImages())
    assert stats["skipped_images"] == 2
    assert "epoch 0 skipped 2 image(s)" in capsys.readouterr().out


# ---------------------------------------------------------------- presets checked as the command line


@pytest.mark.parametrize("line, key", [
    ("batch_size: 2.7", "batch_size"),  # int(2.7) would silently give 2
    ("batch_size: 3.0", "batch_size"),  # refused on the command line too
    ("epochs: '12.5'", "epochs"),
    ("lr: '1e-4x'", "lr"),
    ("lr_drop_epochs: [10, 2.5]", "lr_drop_epochs"),
    ("decoder_module_seq: [sa, ca]", "decoder_module_seq"),  # nargs=3
    ("backbone: true", "backbone"),
])
def test_preset_values_get_the_command_line_checks(tmp_path, line, key):
    preset = tmp_path / "preset.yaml"
    preset.write_text(line + "\n")
    with pytest.raises(ConfigError) as err:
        parse_args_with_config(cli.get_args_parser(), ["--config", str(preset)])
    assert str(preset) in str(err.value) and f"'{key}'" in str(err.value)
    flag_line = ["--" + key, *line.split(": ", 1)[1].strip("[]'").replace(",", " ").split()]
    if key not in ("backbone", "decoder_module_seq"):
        with pytest.raises(SystemExit):  # the same value on the command line is refused as well
            with contextlib.redirect_stderr(io.StringIO()):
                cli.get_args_parser().parse_args(flag_line)


def test_preset_values_the_command_line_accepts(tmp_path):
    preset = tmp_path / "preset.yaml"
    preset.write_text("batch_size: 3\nlr: 1e-4\nlr_backbone: 0\nlr_drop_epochs: [4, 8]\nbackbone: resnet18\n")
    args = parse_args_with_config(cli.get_args_parser(), ["--config", str(preset)])
    assert (args.batch_size, args.lr, args.lr_backbone, args.lr_drop_epochs, args.backbone) == \
        (3, 1e-4, 0.0, [4, 8], "resnet18")
    assert type(args.batch_size) is int and type(args.lr_backbone) is float


def test_bool_typed_preset_values_need_true_or_false(tmp_path):
    import argparse

    from util.config import load_preset

    parser = argparse.ArgumentParser()
    parser.add_argument("--flag", type=bool, default=False)
    for text, expected in (("flag: false", False), ("flag: true", True)):
        (tmp_path / "p.yaml").write_text(text)
        assert load_preset(parser, tmp_path / "p.yaml") == {"flag": expected}
    (tmp_path / "p.yaml").write_text("flag: 'false'")  # bool('false') is True: refused
    with pytest.raises(ConfigError, match="true or false"):
        load_preset(parser, tmp_path / "p.yaml")
