"""The two-stage panoptic recipe end to end on a tiny synthetic panoptic set: box model, then a mask head on the
frozen box model, evaluated for box AP, mask AP and PQ; and instance masks on COCO detection data."""
import json

import pytest
import torch

import cli
from run import run
from tools.data.synthetic import generate

SEGM_FLAGS = [
    "--backbone", "resnet18", "--no_pretrained_backbone", "--backbone_norm", "bn", "--backbone_trainable_layers", "4",
    "--feature_layer", "layer3", "--hidden_dim", "64", "--nheads", "8", "--enc_layers", "1", "--dec_layers", "2",
    "--dim_feedforward", "64", "--num_queries", "8", "--dropout", "0", "--batch_size", "4", "--image_size", "64",
    "--no_multiscale", "--num_workers", "0", "--print_freq", "100", "--device", "cpu", "--epochs", "1",
]


@pytest.fixture(scope="module")
def tiny_panoptic(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("panoptic"), num_train=8, num_val=4, image_size=64, seed=0, panoptic=True)


def _args(data, out, *extra):
    return cli.get_args_parser().parse_args([
        *SEGM_FLAGS, "--dataset_file", "coco_panoptic", "--coco_path", str(data), "--coco_panoptic_path", str(data),
        "--output_dir", str(out), *extra])


@pytest.fixture(scope="module")
def box_model(tiny_panoptic, tmp_path_factory):
    out = tmp_path_factory.mktemp("box")
    stats = run(_args(tiny_panoptic, out))
    return out / "checkpoint.pth", stats


def test_box_stage_trains_on_things_and_stuff(box_model):
    checkpoint, stats = box_model
    assert checkpoint.is_file() and "coco_eval_bbox" in stats and "PQ_all" not in stats
    state = torch.load(checkpoint, weights_only=True)["model"]
    assert state["class_embed.bias"].shape == (22,)  # synthetic panoptic category ids go up to 20 (stuff)


@pytest.fixture(scope="module")
def mask_model(tiny_panoptic, box_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("masks")
    stats = run(_args(tiny_panoptic, out, "--masks", "--frozen_weights", str(box_model[0])))
    return out, stats


def test_mask_stage_keeps_the_box_model_and_reports_pq(tiny_panoptic, box_model, mask_model):
    checkpoint, _ = box_model
    tmp_path, stats = mask_model
    for key in ("PQ_all", "PQ_th", "PQ_st"):
        assert set(stats[key]) == {"pq", "sq", "rq", "n"} and 0 <= stats[key]["pq"] <= 1
    assert stats["PQ_th"]["n"] == 5 and stats["PQ_st"]["n"] == 3
    assert len(stats["coco_eval_masks"]) == 12 and len(stats["coco_eval_bbox"]) == 12
    # the frozen box model is unchanged inside the segmentation checkpoint
    box_state = torch.load(checkpoint, weights_only=True)["model"]
    segm_state = torch.load(tmp_path / "checkpoint.pth", weights_only=True)["model"]
    for key, value in box_state.items():
        torch.testing.assert_close(segm_state[f"detr.{key}"], value, msg=key)
    # predictions in the COCO panoptic format, one PNG per val image
    predictions = json.loads((tmp_path / "panoptic_eval" / "predictions.json").read_text())["annotations"]
    assert len(predictions) == 4
    assert all((tmp_path / "panoptic_eval" / p["file_name"]).is_file() for p in predictions)
    log = [json.loads(line) for line in (tmp_path / "log.txt").read_text().splitlines()]
    assert log[-1]["test_PQ_all"] == stats["PQ_all"]
    # evaluating the saved model again gives the same numbers
    again = run(_args(tiny_panoptic, tmp_path / "eval", "--masks", "--eval", "--resume",
                                 str(tmp_path / "checkpoint.pth")))
    assert again["PQ_all"] == pytest.approx(stats["PQ_all"])
    assert again["coco_eval_masks"] == pytest.approx(stats["coco_eval_masks"])


def test_frozen_weights_that_do_not_fit_name_the_flag(tiny_panoptic, box_model, tmp_path):
    checkpoint, _ = box_model
    with pytest.raises(ValueError, match="--frozen_weights"):
        run(_args(tiny_panoptic, tmp_path, "--masks", "--frozen_weights", str(checkpoint),
                             "--num_queries", "6"))


def test_instance_masks_on_coco_detection_data(tiny_coco, tmp_path):
    args = cli.get_args_parser().parse_args([*SEGM_FLAGS, "--masks", "--coco_path", str(tiny_coco),
                                                   "--output_dir", str(tmp_path)])
    stats = run(args)
    assert len(stats["coco_eval_masks"]) == 12 and "PQ_all" not in stats
    log = json.loads((tmp_path / "log.txt").read_text().splitlines()[-1])
    assert "train_loss_mask" in log and "train_loss_dice" in log


def test_checkpoints_move_between_box_and_segmentation_models(tiny_panoptic, box_model, mask_model, tmp_path):
    box_state = torch.load(box_model[0], weights_only=True)["model"]
    segm_checkpoint = mask_model[0] / "checkpoint.pth"
    # a segmentation checkpoint's box model as --frozen_weights (e.g. the official panoptic files), evaluated
    stats = run(_args(tiny_panoptic, tmp_path / "a", "--masks", "--frozen_weights", str(segm_checkpoint),
                                 "--eval"))
    assert "PQ_all" in stats
    # a box checkpoint fine-tuned into a mask model loads into its box part
    args = _args(tiny_panoptic, tmp_path / "b", "--masks", "--finetune_from", str(box_model[0]), "--lr", "0",
                 "--lr_backbone", "0")
    run(args)
    tuned = torch.load(tmp_path / "b" / "checkpoint.pth", weights_only=True)["model"]
    torch.testing.assert_close(tuned["detr.class_embed.weight"], box_state["class_embed.weight"])


def test_class_count_mismatch_says_which_num_classes(tiny_panoptic, box_model, tmp_path):
    with pytest.raises(ValueError, match="the checkpoint has 21 classes and this run 30: add --num_classes 21"):
        run(_args(tiny_panoptic, tmp_path, "--eval", "--resume", str(box_model[0]), "--num_classes", "30"))
    with pytest.raises(ValueError, match="exclusive"):
        run(_args(tiny_panoptic, tmp_path, "--masks", "--frozen_weights", str(box_model[0]),
                             "--finetune_from", str(box_model[0])))
