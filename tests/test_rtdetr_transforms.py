"""RT-DETR's data pipeline (datasets/rtdetr_transforms.py), its flags, the shared epoch in DataLoader workers, and
--remap_mscoco_category."""
import json
import os
import random

import numpy as np
import PIL.Image
import PIL.ImageDraw
import pytest
import torch
import torch.nn.functional as nnf
from torch.utils.data import DataLoader
from torchvision.transforms import v2

import cli
from datasets import build_run_data
from datasets.coco import build as build_coco
from datasets.coco import make_pipeline
from datasets.loaders import PinnableCollate, build_loaders
from datasets.rtdetr_transforms import OFFICIAL_MULTISCALE_SIZES, MultiScaleBatchResize, make_rtdetr_transforms
from datasets.shared_epoch import SharedEpoch
from tests.epoch_reporter import EpochReporter
from tools import visualize_dataset
from tools.data.synthetic import generate
from util.nested_tensor import NestedTensor, collate_fn

# The official mscoco_category2label written out: label i is the i-th of these COCO category ids.
OFFICIAL_COCO_LABEL_TO_CATEGORY = [
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28, 31, 32, 33, 34, 35,
    36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64,
    65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90,
]




def _args(argv: list[str]):
    return cli.get_args_parser().parse_args(argv)


def _target(boxes: list[list[float]], labels: list[int], height: int, width: int) -> dict:
    """A target as datasets.coco.ConvertCocoPolysToMask makes it (boxes absolute xyxy)."""
    boxes_t = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    return {
        "boxes": boxes_t,
        "labels": torch.tensor(labels, dtype=torch.int64),
        "image_id": torch.tensor([7]),
        "area": (boxes_t[:, 2] - boxes_t[:, 0]) * (boxes_t[:, 3] - boxes_t[:, 1]),
        "iscrowd": torch.zeros(len(labels), dtype=torch.int64),
        "orig_size": torch.tensor([height, width]),
        "size": torch.tensor([height, width]),
    }


# Three rectangles on black, one shade each. Shades, not hues: the photometric distortion permutes channels and
# shifts hue, which leaves greys grey, and its brightness and contrast change every grey the same increasing way.
SHADES = {1: 70, 2: 150, 3: 230}
RECTANGLES = {1: [12, 10, 70, 50], 2: [110, 14, 180, 100], 3: [30, 72, 90, 120]}  # xyxy, 30+ px apart


def _shaded_image(width: int = 192, height: int = 128) -> PIL.Image.Image:
    image = PIL.Image.new("RGB", (width, height), (0, 0, 0))
    draw = PIL.ImageDraw.Draw(image)
    for label, (x0, y0, x1, y1) in RECTANGLES.items():
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], fill=(SHADES[label],) * 3)
    return image


def test_train_pipeline_boxes_cover_their_shades():
    """Zoom-out, IoU crop, flip and the non-square -> square resize move the boxes with the image: inside each
    output box is one uniform shade, the brighter the higher the label (as drawn), and just outside it is black."""
    size = 256
    transforms = make_rtdetr_transforms("train", size)
    labels = sorted(RECTANGLES)
    target = _target([RECTANGLES[k] for k in labels], labels, 128, 192)
    crops = flips = 0
    for seed in range(12):
        torch.manual_seed(seed)
        image, out = transforms(_shaded_image(), {k: v.clone() for k, v in target.items()})
        assert image.shape == (3, size, size) and image.dtype == torch.float32
        assert 0 <= image.min() and image.max() <= 1
        assert out["size"].tolist() == [size, size] and out["orig_size"].tolist() == [128, 192]
        assert out["boxes"].dtype == torch.float32 and out["labels"].dtype == torch.int64
        assert len(out["boxes"]) == len(out["labels"]) == len(out["area"]) == len(out["iscrowd"]) >= 1
        grey = image.mean(dim=0)
        inside_levels = {}
        for (cx, cy, w, h), label in zip((out["boxes"] * size).tolist(), out["labels"].tolist()):
            x0, y0, x1, y1 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
            core = grey[int(y0 + h / 4):int(y1 - h / 4) + 1, int(x0 + w / 4):int(x1 - w / 4) + 1]
            assert core.numel() > 0 and core.std() < 0.02, (seed, label)  # one shade
            inside_levels[label] = core.mean().item()
            for ring in (grey[max(int(y0) - 3, 0):max(int(y0) - 1, 0), int(x0):int(x1)],  # above
                         grey[int(y1) + 2:int(y1) + 4, int(x0):int(x1)],  # below
                         grey[int(y0):int(y1), max(int(x0) - 3, 0):max(int(x0) - 1, 0)],  # left
                         grey[int(y0):int(y1), int(x1) + 2:int(x1) + 4]):  # right
                if ring.numel():
                    assert ring.max() < inside_levels[label] - 0.05, (seed, label)
        ordered = [inside_levels[k] for k in sorted(inside_levels)]
        assert ordered == sorted(ordered), seed
        expected_area = out["boxes"][:, 2] * out["boxes"][:, 3] * size * size  # box areas: the annotation's here
        torch.testing.assert_close(out["area"], expected_area, rtol=1e-4, atol=1e-3)
        crops += len(out["boxes"]) < 3
        flips += out["boxes"][out["labels"] == 1, 0].sum().item() > 0.5
    assert crops and flips  # the draws exercised the crop and the flip


def test_val_pipeline_is_torchvision_resize_scaled_to_unit_range():
    """Val: PIL's bilinear resize to size x size (aspect ratio not kept), uint8 -> [0, 1] without mean/std; boxes
    keep their place relative to the image."""
    rng = np.random.default_rng(0)
    image = PIL.Image.fromarray(rng.integers(0, 256, (70, 100, 3), dtype=np.uint8))
    target = _target([[10, 5, 60, 40], [0, 0, 100, 70]], [3, 5], 70, 100)
    out_image, out = make_rtdetr_transforms("val", 64)(image, target)
    resized = np.asarray(image.resize((64, 64), PIL.Image.BILINEAR)).astype(np.float32)
    expected = torch.from_numpy(resized).permute(2, 0, 1) / 255
    assert torch.equal((out_image * 255).round(), expected * 255)  # the very same pixels
    torch.testing.assert_close(out_image, expected, rtol=0, atol=6e-8)  # torchvision's x * (1/255): 1 ulp of x / 255
    expected_boxes = torch.tensor([[35 / 100, 22.5 / 70, 50 / 100, 35 / 70], [0.5, 0.5, 1, 1]])
    torch.testing.assert_close(out["boxes"], expected_boxes)
    torch.testing.assert_close(out["area"], torch.tensor([50 * 35, 100 * 70]) * (64 * 64 / (100 * 70)))
    assert out["labels"].tolist() == [3, 5] and out["size"].tolist() == [64, 64]
    assert out["orig_size"].tolist() == [70, 100] and out["image_id"].tolist() == [7]


def test_stop_epoch_skips_the_three_strong_augmentations(monkeypatch):
    calls = {name: 0 for name in ("RandomPhotometricDistort", "RandomZoomOut", "RandomApply", "Resize")}
    for name in calls:
        cls = getattr(v2, name)
        original = cls.forward

        def counting(self, *inputs, _original=original, _name=name):
            calls[_name] += 1
            return _original(self, *inputs)

        monkeypatch.setattr(cls, "forward", counting)
    epoch = SharedEpoch(2)
    transforms = make_rtdetr_transforms("train", 32, stop_epoch=3, epoch=epoch)
    image = _shaded_image()
    target = _target([RECTANGLES[1]], [1], 128, 192)
    torch.manual_seed(0)
    for _ in range(4):
        transforms(image, target)
    assert calls == {"RandomPhotometricDistort": 4, "RandomZoomOut": 4, "RandomApply": 4, "Resize": 4}
    epoch.set(3)
    for _ in range(4):
        out_image, out = transforms(image, target)
    assert calls == {"RandomPhotometricDistort": 4, "RandomZoomOut": 4, "RandomApply": 4, "Resize": 8}
    # without the three, only flip and resize remain: the box keeps its place (up to the flip)
    x0, y0, x1, y1 = RECTANGLES[1]
    cx = (x0 + x1) / 2 / 192
    assert out["boxes"][0, 0].item() == pytest.approx(cx, abs=1e-6) or \
        out["boxes"][0, 0].item() == pytest.approx(1 - cx, abs=1e-6)


def _batch(sizes: list[tuple[int, int]]) -> tuple[NestedTensor, tuple[dict, ...]]:
    generator = torch.Generator().manual_seed(0)
    items = []
    for h, w in sizes:
        target = {"boxes": torch.tensor([[0.5, 0.5, 0.2, 0.4]]), "labels": torch.tensor([1]),
                  "area": torch.tensor([0.08 * h * w]), "size": torch.tensor([h, w]),
                  "masks": torch.zeros((1, h, w), dtype=torch.uint8)}
        items.append((torch.rand(3, h, w, generator=generator), target))
    return collate_fn(items)


def test_multiscale_batch_resize_sizes_and_nearest_interpolation():
    epoch = SharedEpoch(0)
    resize = MultiScaleBatchResize([32, 48, 48, 80], stop_epoch=2, epoch=epoch)
    samples, targets = _batch([(64, 64), (64, 64)])
    torch.manual_seed(0)
    seen = set()
    for _ in range(40):
        out, out_targets = resize(samples, targets)
        side = out.tensors.shape[-1]
        seen.add(side)
        assert out.tensors.shape == (2, 3, side, side)
        torch.testing.assert_close(out.tensors, nnf.interpolate(samples.tensors, size=(side, side)), rtol=0, atol=0)
        rows = (torch.arange(side) * 64 // side)  # nearest: source pixel floor(i * in / out)
        torch.testing.assert_close(out.tensors, samples.tensors[:, :, rows][:, :, :, rows], rtol=0, atol=0)
        assert not out.mask.any() and out.mask.shape == (2, side, side)
        for before, after in zip(targets, out_targets):
            assert torch.equal(after["boxes"], before["boxes"])  # relative boxes stay
            assert after["size"].tolist() == [side, side] and after["masks"].shape == (1, side, side)
            torch.testing.assert_close(after["area"], before["area"] * side * side / (64 * 64))
    assert seen == {32, 48, 80}
    epoch.set(2)  # from stop_epoch on: unchanged
    out, out_targets = resize(samples, targets)
    assert out is samples and out_targets == targets
    off = MultiScaleBatchResize([], stop_epoch=None, epoch=SharedEpoch(0))
    assert off(samples, targets)[0] is samples


def test_multiscale_batch_resize_of_a_padded_batch():
    """A smaller image padded in its batch: its size and valid region scale with the canvas."""
    samples, targets = _batch([(64, 64), (32, 48)])
    torch.manual_seed(0)
    out, out_targets = MultiScaleBatchResize([32], stop_epoch=None, epoch=SharedEpoch(0))(samples, targets)
    assert out_targets[1]["size"].tolist() == [16, 24] and out_targets[1]["masks"].shape == (1, 16, 24)
    assert (~out.mask[1]).sum() == 16 * 24 and not out.mask[1, :16, :24].any()


def test_official_sizes():
    assert OFFICIAL_MULTISCALE_SIZES == (480, 512, 544, 576, 608, 640, 640, 640, 672, 704, 736, 768, 800)
    args = _args(["--data_pipeline", "rtdetr", "--coco_path", "unused"])
    assert make_pipeline("train", args)[1].sizes == OFFICIAL_MULTISCALE_SIZES
    args.multiscale_sizes = []
    assert make_pipeline("train", args)[1] is None
    assert make_pipeline("val", _args(["--data_pipeline", "rtdetr"]))[1:] == (None, None)


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_epoch_reaches_persistent_workers(start_method, local_sockets):
    epoch = SharedEpoch()
    loader = DataLoader(EpochReporter(epoch), batch_size=1, num_workers=2, persistent_workers=True,
                        multiprocessing_context=start_method)
    workers = []
    for value in (5, 71):
        epoch.set(value)
        seen = [(int(e), int(pid)) for e, pid in loader]
        assert [e for e, _ in seen] == [value] * 4
        workers.append({pid for _, pid in seen})
    assert workers[0] == workers[1] and os.getpid() not in workers[0] and len(workers[0]) == 2  # the same two


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("rtdetr_synthetic"), num_train=6, num_val=3, image_size=48, seed=1,
                    max_objects=3, quiet=True)


def test_rtdetr_loader_batches_until_and_after_stop_epoch(tiny, local_sockets):
    """The real dataset and collation in two persistent workers: multi-scale square batches (mask all False)
    before --stop_epoch, --image_size after; the epoch set through RunData.set_epoch."""
    args = _args(["--coco_path", str(tiny), "--data_pipeline", "rtdetr", "--image_size", "64", "--stop_epoch", "1",
                  "--multiscale_sizes", "32", "96"])
    data = build_run_data(args, with_train=True)
    train = data.train
    collate = PinnableCollate(collate_fn, train.batch_transform)
    loader = DataLoader(train, batch_size=3, num_workers=2, persistent_workers=True, collate_fn=collate,
                        multiprocessing_context="fork")
    sides = {}
    for epoch in (0, 1):
        data.set_epoch(epoch)
        sides[epoch] = set()
        for samples, targets in loader:
            side = samples.tensors.shape[-1]
            sides[epoch].add(side)
            assert samples.tensors.shape[-2:] == (side, side) and not samples.mask.any()
            for target in targets:
                assert target["size"].tolist() == [side, side] and target["orig_size"].tolist() == [48, 48]
                boxes = target["boxes"]
                assert boxes.dtype == torch.float32 and ((0 <= boxes) & (boxes <= 1)).all()
                assert set(target) == {"boxes", "labels", "image_id", "area", "iscrowd", "orig_size", "size"}
    assert sides[0] <= {32, 96} and sides[1] == {64}
    val_samples, val_targets = next(iter(build_loaders(None, data.val, 3, 0, distributed=False).val))
    assert val_samples.tensors.shape == (3, 3, 64, 64) and not val_samples.mask.any()
    assert 0 <= val_samples.tensors.min() and val_samples.tensors.max() <= 1  # not normalised


def test_build_loaders_applies_the_multiscale_resize(tiny):
    args = _args(["--coco_path", str(tiny), "--data_pipeline", "rtdetr", "--image_size", "64",
                  "--multiscale_sizes", "40"])
    data = build_run_data(args, with_train=True)
    loaders = build_loaders(data.train, data.val, 2, 0, distributed=False)
    samples, targets = next(iter(loaders.train))
    assert samples.tensors.shape == (2, 3, 40, 40) and targets[0]["size"].tolist() == [40, 40]
    assert next(iter(loaders.val))[0].tensors.shape == (2, 3, 64, 64)  # val batches are not resized


def _with_coco_categories(root, shuffle_seed: int = 0, drop: int | None = None):
    """Give the synthetic dataset COCO's 80 categories (listed shuffled; ``drop``: one id left out of the val file),
    its shapes becoming COCO ids 90, 1, 44, 27, 67."""
    shapes_to_coco = {1: 90, 3: 1, 5: 44, 8: 27, 11: 67}
    categories = [{"id": i, "name": f"c{i}"} for i in OFFICIAL_COCO_LABEL_TO_CATEGORY]
    random.Random(shuffle_seed).shuffle(categories)
    for name in ("instances_train2017.json", "instances_val2017.json"):
        path = root / "annotations" / name
        data = json.loads(path.read_text())
        data["categories"] = [c for c in categories if not (drop and "val" in name and c["id"] == drop)]
        for ann in data["annotations"]:
            ann["category_id"] = shapes_to_coco[ann["category_id"]]
        path.write_text(json.dumps(data))
    return root


def test_remap_round_trip_on_coco_ids_is_the_official_table(tmp_path):
    root = _with_coco_categories(generate(tmp_path / "d", num_train=4, num_val=2, image_size=32, quiet=True))
    args = _args(["--coco_path", str(root), "--remap_mscoco_category"])
    data = build_run_data(args, with_train=True)
    assert data.label_to_category_id == OFFICIAL_COCO_LABEL_TO_CATEGORY and data.num_classes == 80
    for dataset in (data.train, data.val):
        assert dataset.label_to_category_id == OFFICIAL_COCO_LABEL_TO_CATEGORY
        assert dataset.category_to_label() == {c: i for i, c in enumerate(OFFICIAL_COCO_LABEL_TO_CATEGORY)}
        for index in range(len(dataset)):
            _, target = dataset[index]
            annotations = [a for a in dataset.coco.imgToAnns[dataset.ids[index]] if not a.get("iscrowd")]
            expected = [OFFICIAL_COCO_LABEL_TO_CATEGORY.index(a["category_id"]) for a in annotations]
            assert sorted(target["labels"].tolist()) == sorted(expected)
            back = [dataset.label_to_category_id[label] for label in target["labels"].tolist()]
            assert sorted(back) == sorted(a["category_id"] for a in annotations)
    plain = build_run_data(_args(["--coco_path", str(root)]), with_train=False)
    assert plain.label_to_category_id is None and plain.num_classes == 91  # without the remap: ids, max id + 1
    # evaluation keeps category ids: the ground truth is the file's
    assert sorted(data.coco_ground_truth.getCatIds()) == OFFICIAL_COCO_LABEL_TO_CATEGORY


def test_remap_errors_name_the_file_and_id(tmp_path):
    root = _with_coco_categories(generate(tmp_path / "d", num_train=4, num_val=2, image_size=32, quiet=True))
    with pytest.raises(ValueError, match=r"instances_val2017.json has 80 categories, so category id 90 is label 79 "
                                         r".* --num_classes is 79"):
        build_run_data(_args(["--coco_path", str(root), "--remap_mscoco_category", "--num_classes", "79"]), True)
    assert build_run_data(_args(["--coco_path", str(root), "--remap_mscoco_category", "--num_classes", "80"]),
                          True).num_classes == 80
    # a file listing a subset of COCO's categories keeps COCO's table (labels do not move with the subset)
    subset = _with_coco_categories(generate(tmp_path / "e", num_train=4, num_val=2, image_size=32, quiet=True), drop=13)
    data = build_run_data(_args(["--coco_path", str(subset), "--remap_mscoco_category"]), True)
    assert data.label_to_category_id == OFFICIAL_COCO_LABEL_TO_CATEGORY
    # ids beyond COCO's: each file's own sorted ids, which must then agree
    other = generate(tmp_path / "f", num_train=4, num_val=2, image_size=32, quiet=True)
    train_file = other / "annotations" / "instances_train2017.json"
    data = json.loads(train_file.read_text())
    data["categories"].append({"id": 95, "name": "extra"})
    train_file.write_text(json.dumps(data))
    # (the val file's ids are COCO's, so its table is COCO's 80, which has 2; the train file's is its own 6)
    with pytest.raises(ValueError, match=r"list different categories \(category id 2 is only in \S*"
                                         r"instances_val2017.json\)"):
        build_run_data(_args(["--coco_path", str(other), "--remap_mscoco_category"]), True)


@pytest.mark.parametrize("argv, message", [
    (["--data_pipeline", "yolo"], "--data_pipeline"),
    (["--data_pipeline", "rtdetr", "--stop_epoch", "-1"], "--stop_epoch must be 0 or more, got -1"),
    (["--data_pipeline", "rtdetr", "--multiscale_sizes", "640", "0"], "--multiscale_sizes must be at least 1"),
    (["--data_pipeline", "detr", "--stop_epoch", "3"], "--stop_epoch is read by --data_pipeline rtdetr only"),
    (["--data_pipeline", "detr", "--multiscale_sizes", "320"], "--multiscale_sizes is read by --data_pipeline rtdetr"),
    (["--data_pipeline", "rtdetr", "--no_multiscale"], "--no_multiscale is read by --data_pipeline detr only"),
    (["--dataset_file", "coco_panoptic", "--data_pipeline", "rtdetr"], "--data_pipeline rtdetr is not supported"),
    (["--dataset_file", "coco_panoptic", "--remap_mscoco_category"], "--remap_mscoco_category is not supported"),
])
def test_bad_flags_name_the_flag(argv, message, capsys):
    with pytest.raises(SystemExit):
        cli.parse_args(cli.get_args_parser(), argv)
    assert message in capsys.readouterr().err


def test_good_flags_parse_from_the_command_line_and_presets(tmp_path):
    args = cli.parse_args(cli.get_args_parser(), ["--data_pipeline", "rtdetr", "--stop_epoch", "71",
                                                  "--multiscale_sizes", "--image_size", "640"])
    assert (args.data_pipeline, args.stop_epoch, args.multiscale_sizes) == ("rtdetr", 71, [])
    defaults = cli.parse_args(cli.get_args_parser(), [])
    assert (defaults.data_pipeline, defaults.stop_epoch, defaults.multiscale_sizes) == (None, None, None)
    assert not defaults.remap_mscoco_category
    preset = tmp_path / "rtdetr_data.yaml"
    preset.write_text("data_pipeline: rtdetr\nstop_epoch: 71\nmultiscale_sizes: [480, 640]\n"
                      "remap_mscoco_category: true\nimage_size: 640\n")
    args = cli.parse_args(cli.get_args_parser(), ["--config", str(preset)])
    assert (args.data_pipeline, args.stop_epoch, args.multiscale_sizes) == ("rtdetr", 71, [480, 640])
    assert args.remap_mscoco_category and args.image_size == 640


def test_dataset_builder_without_the_pipeline_is_detrs(tiny):
    """--data_pipeline unset (and args of before the flag) build DETR's pipeline: the same items as 'detr'."""
    old_style = _args(["--coco_path", str(tiny), "--image_size", "48"])
    for name in ("data_pipeline", "stop_epoch", "multiscale_sizes", "remap_mscoco_category"):
        delattr(old_style, name)
    explicit = _args(["--coco_path", str(tiny), "--image_size", "48", "--data_pipeline", "detr"])
    for image_set in ("train", "val"):
        a, b = build_coco(image_set, old_style), build_coco(image_set, explicit)
        assert a.batch_transform is None and a.epoch is None and a.label_to_category_id is None
        assert repr(a._transforms) == repr(b._transforms)
    val_a, val_b = build_coco("val", old_style), build_coco("val", explicit)
    image_a, target_a = val_a[0]
    image_b, target_b = val_b[0]
    assert torch.equal(image_a, image_b) and image_a.min() < 0  # ImageNet-normalised
    assert all(torch.equal(target_a[k], target_b[k]) for k in target_a)


def test_visualize_dataset_draws_the_rtdetr_pipeline(tiny, tmp_path, capsys):
    written = visualize_dataset.main(["--coco_path", str(tiny), "--num", "2", "--output_dir", str(tmp_path),
                                      "--image_size", "64", "--data_pipeline", "rtdetr", "--multiscale_sizes", "40"])
    augmented = [PIL.Image.open(path) for path in written if path.name.endswith("_augmented.png")]
    assert len(augmented) == 2 and all(picture.size == (40, 40) for picture in augmented)
    assert "at 40x40" in capsys.readouterr().out
