"""DINO (--meta_arch dino): numbers of the official code, denoising, query selection, look-forward-twice, losses,
presets, checkpoints and training.

The official reference values come from tools/reference/dino.py (run it with a clone of the official DINO to
regenerate tests/golden/dino_reference.pt); the tests never import the official code.
"""
import argparse
import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from datasets import build_dataset
from models import architecture, build_model
from models.dino.criterion import GIOU_EPS, DINOCriterion
from models.matcher import FocalHungarianMatcher
from models.param_groups import build_param_groups
from run import run
from tests.conftest import TINY_MODEL_FLAGS
from tests.handmade_targets import handmade_targets
from tools.data.synthetic import generate
from tools.reference import dino as reference
from tools.reference.common import unpack
from util.checkpoint import load_checkpoint
from util.nested_tensor import collate_fn

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
TINY = [*TINY_MODEL_FLAGS, "--meta_arch", "dino", "--num_queries", "10", "--enc_n_points", "2", "--dec_n_points", "2",
        "--num_classes", "7", "--num_select", "30"]


def _model(*flags, seed=0):
    torch.manual_seed(seed)
    args = reference.parse([*TINY, *flags])
    return (*build_model(args), args)


def _images(*sizes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(3, h, w, generator=g) for h, w in sizes]


@pytest.fixture(scope="module")
def golden() -> dict:
    return torch.load(reference.REFERENCE_FILE, weights_only=True)


# --------------------------------------------------------------------------------------------------------------
# the official numbers


@pytest.mark.parametrize("scales", [4, 5])
def test_state_dict_names_and_shapes_are_the_official_ones(scales, golden):
    torch.manual_seed(0)
    args = reference.parse(["--config", str(ROOT / reference.PRESETS[scales]), "--no_pretrained_backbone"])
    model = build_model(args)[0]
    expected = reference.names_and_shapes(golden["names"][f"state_{scales}scale"])
    actual = reference.names_and_shapes(reference.state_names_and_shapes(model))
    assert actual == expected
    assert len(expected) == {4: 626, 5: 630}[scales]


@pytest.mark.parametrize("name", sorted(reference.CASES))
def test_tiny_models_reproduce_the_official_numbers(name, golden):
    """Initial weights (seed 0), loss weights, eval outputs, losses and detections, training outputs with the
    denoising noise of a fixed seed, training losses and gradient norms: as the official code computed them."""
    expected = unpack(golden[name])
    torch.manual_seed(0)
    args = reference.parse(reference.case_flags(name))
    model, criterion, postprocessors = build_model(args)
    torch.testing.assert_close(reference.init_sums(model), expected.pop("init_sums"), rtol=1e-7, atol=1e-9)
    assert criterion.weight_dict == expected.pop("weight_dict")
    reference.perturb(model)
    actual = reference.run_case(model, criterion, postprocessors["bbox"], args.use_dn)
    actual.pop("init_sums", None)
    grads = dict(zip(actual.pop("grad_names"), actual.pop("grad_norms")))
    expected_grads = dict(zip(expected.pop("grad_names"), expected.pop("grad_norms")))
    assert sorted(grads) == sorted(expected_grads)
    torch.testing.assert_close(torch.stack([grads[k] for k in expected_grads]),
                               torch.stack(list(expected_grads.values())), rtol=1e-4, atol=1e-6)
    assert sorted(actual) == sorted(expected)
    for key, e in expected.items():
        a = actual[key]
        if e.is_floating_point():
            torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-5, msg=lambda m, k=key: f"{k}: {m}")
        else:
            assert torch.equal(a, e), key


# --------------------------------------------------------------------------------------------------------------
# contrastive denoising


def test_training_with_denoising_needs_the_targets():
    model = _model()[0]
    model.train()
    with pytest.raises(ValueError, match="targets"):
        model(_images((64, 64), (48, 64)))


# --------------------------------------------------------------------------------------------------------------
# query selection and the decoder


class _FixedScores(nn.Module):
    """Class logits of every encoder token fixed by hand (zeros for the selected queries' features)."""

    def __init__(self, scores: torch.Tensor):
        super().__init__()
        self.scores = scores

    def forward(self, x):
        if x.shape[1] == self.scores.shape[1]:
            return self.scores.expand(x.shape[0], -1, -1)
        return torch.zeros(*x.shape[:2], self.scores.shape[-1])


def test_query_selection_starts_the_decoder_from_the_best_tokens_proposals():
    model = _model("--num_queries", "4", "--dec_layers", "1")[0]
    model.eval()
    # 64 x 64 images: levels of 8 x 8, 4 x 4, 2 x 2 and 1 x 1 tokens (85); token -> (level, row, col)
    scores = torch.zeros(1, 85, 7)
    scores[0, 10, 4] = 1.5  # a decoy, ranked fifth
    for token, cls, value in [(81, 2, 5.0), (5, 0, 4.0), (84, 1, 3.0), (70, 6, 2.0)]:
        scores[0, token, cls] = value
    model.transformer.enc_out_class_embed = _FixedScores(scores)
    with torch.no_grad():
        out = model(_images((64, 64), (64, 64)))  # (two: GroupNorm of one channel cannot take one value)
    # cell centres of the unpadded image, 0.05 * 2**level wide; the encoder's box head starts at zero offsets
    expected = torch.tensor([[1.5 / 2, 0.5 / 2, 0.2, 0.2],  # token 81: level 2, row 0, col 1
                             [5.5 / 8, 0.5 / 8, 0.05, 0.05],  # token 5: level 0, row 0, col 5
                             [0.5, 0.5, 0.4, 0.4],  # token 84: level 3
                             [2.5 / 4, 1.5 / 4, 0.1, 0.1]])  # token 70: level 1, row 1, col 2
    torch.testing.assert_close(out["interm_outputs"]["pred_boxes"][0], expected)
    torch.testing.assert_close(out["interm_outputs_for_matching_pre"]["pred_boxes"][0], expected)
    # the first decoder layer refines these anchors (its box head also starts at zero offsets)
    torch.testing.assert_close(out["pred_boxes"][0], expected, rtol=0, atol=1e-5)


def _head_grads(model, loss) -> list[bool]:
    """For each decoder layer's box head: does ``loss`` reach its parameters?"""
    heads = [list(head.parameters()) for head in model.bbox_embed]
    grads = torch.autograd.grad(loss, [p for ps in heads for p in ps], allow_unused=True, retain_graph=True)
    reached, i = [], 0
    for ps in heads:
        reached.append(any(g is not None and g.abs().sum() > 0 for g in grads[i:i + len(ps)]))
        i += len(ps)
    return reached


@pytest.mark.parametrize("detached", [False, True])
def test_box_loss_of_a_layer_reaches_the_previous_layers_refinement(detached):
    flags = ["--dec_layers", "3", "--no_dec_pred_bbox_embed_share", "--no_use_dn"]
    model = _model(*flags, *(["--use_detached_boxes_dec_out"] if detached else []))[0]
    reference.perturb(model)
    out = model(_images((48, 40), (40, 56)))
    layer_boxes = [aux["pred_boxes"] for aux in out["aux_outputs"]] + [out["pred_boxes"]]
    # look forward twice: layer i's boxes are refined from layer i-1's undetached boxes, whose offset layer i-1
    # predicted; the anchors that layer i's queries attend with are detached, so it stops there
    assert _head_grads(model, layer_boxes[0].sum()) == [True, False, False]
    if detached:
        assert _head_grads(model, layer_boxes[1].sum()) == [False, True, False]
        assert _head_grads(model, layer_boxes[2].sum()) == [False, False, True]
    else:
        assert _head_grads(model, layer_boxes[1].sum()) == [True, True, False]
        assert _head_grads(model, layer_boxes[2].sum()) == [False, True, True]


# --------------------------------------------------------------------------------------------------------------
# losses


def _focal(logit: float, target: float, alpha: float = 0.25) -> float:
    p = 1 / (1 + math.exp(-logit))
    ce = -(target * math.log(p) + (1 - target) * math.log(1 - p))
    p_t = p * target + (1 - p) * (1 - target)
    return (alpha * target + (1 - alpha) * (1 - target)) * (1 - p_t) ** 2 * ce


def _focal_loss(logits: torch.Tensor, positives: set, normaliser: float) -> float:
    """Sum over images, queries and classes / normaliser (the official: mean over queries, times queries)."""
    total = 0.0
    for b in range(logits.shape[0]):
        for q in range(logits.shape[1]):
            total += sum(_focal(logits[b, q, c].item(), float((b, q, c) in positives))
                         for c in range(logits.shape[2]))
    return total / normaliser


def _giou(a, b, eps=1e-6) -> float:
    ax0, ay0, ax1, ay1 = a[0] - a[2] / 2, a[1] - a[3] / 2, a[0] + a[2] / 2, a[1] + a[3] / 2
    bx0, by0, bx1, by1 = b[0] - b[2] / 2, b[1] - b[3] / 2, b[0] + b[2] / 2, b[1] + b[3] / 2
    inter = max(0, min(ax1, bx1) - max(ax0, bx0)) * max(0, min(ay1, by1) - max(ay0, by0))
    union = a[2] * a[3] + b[2] * b[3] - inter
    hull = (max(ax1, bx1) - min(ax0, bx0)) * (max(ay1, by1) - min(ay0, by0))
    return inter / (union + eps) - (hull - union) / (hull + eps)


def test_losses_by_hand_with_denoising_and_an_image_without_targets():
    criterion = DINOCriterion(3, FocalHungarianMatcher(2, 5, 2, giou_eps=GIOU_EPS), weight_dict={}, focal_alpha=0.25)
    target_box = [0.5, 0.5, 0.2, 0.2]
    targets = [{"labels": torch.tensor([1]), "boxes": torch.tensor([target_box])},
               {"labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4)}]
    logits = torch.tensor([[[-1.0, 2.0, -3.0], [0.5, -2.0, -1.0]], [[-2.0, -1.0, 0.0], [1.0, -0.5, -4.0]]])
    boxes = torch.tensor([[[0.52, 0.5, 0.2, 0.24], [0.2, 0.2, 0.1, 0.1]],
                          [[0.5, 0.5, 0.3, 0.3], [0.3, 0.6, 0.2, 0.1]]])
    dn_logits = torch.linspace(-3, 2, 24).reshape(2, 4, 3)
    dn_boxes = torch.tensor([[[0.55, 0.45, 0.2, 0.2], [0.5, 0.5, 0.5, 0.5], [0.5, 0.52, 0.18, 0.2],
                              [0.1, 0.1, 0.1, 0.1]], [[0.5, 0.5, 0.1, 0.1]] * 4])
    outputs = {"pred_logits": logits, "pred_boxes": boxes,
               "dn_meta": {"pad_size": 4, "num_dn_group": 2,  # pad 1 (the most crowded image), 2 groups
                           "output_known_lbs_bboxes": {"pred_logits": dn_logits, "pred_boxes": dn_boxes}}}
    losses = criterion(outputs, targets)

    # matching: query 0 of image 0 (closest box, confident class 1); one target in the batch
    assert losses["loss_ce"].item() == pytest.approx(_focal_loss(logits, {(0, 0, 1)}, 1), rel=1e-5)
    assert losses["loss_bbox"].item() == pytest.approx(0.02 + 0.04, rel=1e-5)
    assert losses["loss_xy"].item() == pytest.approx(0.02, rel=1e-5)
    assert losses["loss_hw"].item() == pytest.approx(0.04, rel=1e-5)
    assert losses["loss_giou"].item() == pytest.approx(1 - _giou([0.52, 0.5, 0.2, 0.24], target_box), rel=1e-5)
    assert losses["class_error"].item() == 0
    # denoising: the positives of the two groups (queries 0 and 2 of image 0) against the target, over 1 * 2 boxes;
    # negatives, padding and the image without targets are background
    assert losses["loss_ce_dn"].item() == pytest.approx(_focal_loss(dn_logits, {(0, 0, 1), (0, 2, 1)}, 2), rel=1e-5)
    assert losses["loss_bbox_dn"].item() == pytest.approx((0.1 + 0.02 + 0.02) / 2, rel=1e-5)
    giou_dn = 2 - _giou([0.55, 0.45, 0.2, 0.2], target_box) - _giou([0.5, 0.52, 0.18, 0.2], target_box)
    assert losses["loss_giou_dn"].item() == pytest.approx(giou_dn / 2, rel=1e-5)
    assert "class_error_dn" not in losses

    # outside training, and without denoising outputs, the denoising entries are zeros (as the official)
    criterion.eval()
    zeros = criterion(outputs, targets)
    criterion.train()
    no_dn = criterion({**{k: v for k, v in outputs.items() if k != "dn_meta"},
                       "aux_outputs": [{"pred_logits": logits, "pred_boxes": boxes}]}, targets)
    for losses_without_dn in (zeros, no_dn):
        for name in ("loss_ce_dn", "loss_bbox_dn", "loss_giou_dn", "loss_xy_dn", "loss_hw_dn",
                     "cardinality_error_dn"):
            assert losses_without_dn[name].item() == 0
    assert no_dn["loss_bbox_dn_0"].item() == 0 and no_dn["loss_bbox_0"].item() == pytest.approx(0.06, rel=1e-5)


def test_weight_dict_of_the_preset_is_the_official_one():
    args = reference.parse(["--config", str(ROOT / reference.PRESETS[4]), "--no_pretrained_backbone"])
    criterion = build_model(argparse.Namespace(**{**vars(args), "backbone": "resnet18", "num_queries": 4,
                                                  "hidden_dim": 32, "nheads": 2, "dim_feedforward": 32}))[1]
    expected = {"loss_ce": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0}
    expected.update({f"{k}_dn": v for k, v in list(expected.items())})
    expected.update({f"{k}_{i}": v for i in range(5) for k, v in list(expected.items())})
    expected.update({"loss_ce_interm": 1.0, "loss_bbox_interm": 5.0, "loss_giou_interm": 2.0})
    assert criterion.weight_dict == expected


# --------------------------------------------------------------------------------------------------------------
# presets, state dicts, checkpoints


@pytest.mark.parametrize("scales", [4, 5])
def test_output_shapes_of_the_presets_at_tiny_widths(scales):
    torch.manual_seed(0)
    args = reference.parse(["--config", str(ROOT / reference.PRESETS[scales]), *TINY[2:]])
    assert (args.num_feature_levels, len(args.return_interm_indices)) == (scales, scales - 1)
    model = build_model(args)[0]
    assert len(model.input_proj) == scales and model.transformer.level_embed.shape == (scales, 32)
    images = _images((64, 48), (40, 72))
    model.eval()
    with torch.no_grad():
        out = model(images)
    assert set(out) == {"pred_logits", "pred_boxes", "aux_outputs", "interm_outputs",
                        "interm_outputs_for_matching_pre"}
    assert out["pred_logits"].shape == (2, 10, 7) and out["pred_boxes"].shape == (2, 10, 4)
    assert len(out["aux_outputs"]) == 1 and out["aux_outputs"][0]["pred_logits"].shape == (2, 10, 7)
    assert out["interm_outputs"]["pred_logits"].shape == (2, 10, 7)
    model.train()
    out = model(images, handmade_targets()[:2])
    # 200 // (2 * 3) groups of 3 positives and 3 negatives
    assert out["dn_meta"]["num_dn_group"] == 33 and out["dn_meta"]["pad_size"] == 33 * 6
    assert out["pred_logits"].shape == (2, 10, 7)
    assert out["dn_meta"]["output_known_lbs_bboxes"]["pred_boxes"].shape == (2, 198, 4)


def test_strict_state_dict_round_trip():
    model = _model(seed=0)[0]
    reference.perturb(model)
    other = _model(seed=1)[0]
    other.load_state_dict(model.state_dict(), strict=True)
    model.eval()
    other.eval()
    images = _images((48, 40), (40, 56))
    with torch.no_grad():
        a, b = model(images), other(images)
    assert torch.equal(a["pred_logits"], b["pred_logits"]) and torch.equal(a["pred_boxes"], b["pred_boxes"])


def test_official_format_checkpoint_loads_safely_and_strictly(tmp_path):
    """The official main.py saves model, optimizer, lr_scheduler, epoch and args (an argparse.Namespace of plain
    values: the config's keys, the command line's, --options as a dict), plus ema_model with use_ema."""
    model, _, _, args = _model()
    optimizer = torch.optim.AdamW(build_param_groups(model, 1e-5), lr=1e-4, weight_decay=1e-4)
    model.train()
    images, targets = _images((48, 40), (40, 56)), handmade_targets()[:2]
    criterion = _model()[1]
    losses = criterion(model(images, targets), targets)
    sum(losses[k] * criterion.weight_dict[k] for k in losses if k in criterion.weight_dict).backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 11)
    official_args = argparse.Namespace(
        config_file="config/DINO/DINO_4scale.py", options={"dn_scalar": 100, "embed_init_tgt": True,
                                                           "dn_box_noise_scale": 1.0, "use_ema": False},
        dataset_file="coco", coco_path="/data/coco", output_dir="logs/DINO/R50-MS4", device="cuda", seed=42,
        resume="", pretrain_model_path=None, finetune_ignore=None, start_epoch=0, eval=False, num_workers=10,
        world_size=8, dist_url="env://", rank=0, local_rank=0, amp=False, distributed=True, gpu=0,
        dist_backend="nccl", modelname="dino", num_classes=91, lr=0.0001, lr_drop_list=[33, 45],
        return_interm_indices=[1, 2, 3], dec_layer_number=None, decoder_module_seq=["sa", "ca", "ffn"],
        frozen_weights=None, use_dn=True, dn_number=100, use_ema=False, ema_decay=0.9997, debug=False)
    path = tmp_path / "checkpoint0011_4scale.pth"
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "lr_scheduler": scheduler.state_dict(), "epoch": 11, "args": official_args,
                "ema_model": model.state_dict()}, path)
    checkpoint = load_checkpoint(str(path))
    assert checkpoint["epoch"] == 11 and checkpoint["args"].options["dn_scalar"] == 100
    fresh = _model(seed=1)[0]
    fresh.load_state_dict(checkpoint["model"], strict=True)
    fresh.load_state_dict(checkpoint["ema_model"], strict=True)
    for key, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key


def test_param_groups_are_the_official_default():
    """The backbone at --lr_backbone, everything else at --lr: the official 'default' parameter dict, which does
    not scale the deformable attention's offset projections (--lr_linear_proj_mult)."""
    model, _, _, args = _model("--lr_backbone", "2e-5")
    groups = architecture("dino").param_groups(model, args)
    assert len(groups) == 2 and groups[1]["lr"] == 2e-5 and "lr" not in groups[0]
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in model.backbone.parameters() if p.requires_grad}
    rest = {id(p) for n, p in model.named_parameters() if p.requires_grad and not n.startswith("backbone.")}
    assert {id(p) for p in groups[0]["params"]} == rest


def test_flag_errors_name_the_flag():
    cases = [(["--matcher_type", "SimpleMinsumMatcher"], "--matcher_type"),
             (["--decoder_sa_type", "ca_label"], "--decoder_sa_type"),
             (["--return_interm_indices", "2", "3"], "--return_interm_indices"),
             (["--num_feature_levels", "2"], "--num_feature_levels"),
             (["--dn_number", "0"], "--dn_number"),
             (["--two_stage_bbox_embed_share", "--no_dec_pred_bbox_embed_share"], "--two_stage_bbox_embed_share"),
             (["--hidden_dim", "48"], "--hidden_dim"),
             (["--masks"], "--masks")]
    for flags, name in cases:
        with pytest.raises((ValueError, SystemExit)) as error:
            reference.parse([*TINY, *flags])
        assert error.type is ValueError and name in str(error.value), flags
    args = reference.parse([*TINY, "--decoder_sa_type", "ca_label", "--no_use_dn"])
    assert args.use_dn is False


# --------------------------------------------------------------------------------------------------------------
# training


def test_loss_falls_when_fitting_a_few_images(tiny_coco):
    torch.manual_seed(0)
    model, criterion, _, args = _model("--coco_path", str(tiny_coco), "--num_classes", "12", "--image_size", "64",
                                       "--no_multiscale", "--dn_number", "2", "--lr_backbone", "0")
    dataset = build_dataset("train", args)
    samples, targets = collate_fn([dataset[i] for i in range(2)])
    optimizer = torch.optim.AdamW(build_param_groups(model, 0.0), lr=2e-3, weight_decay=1e-4)
    model.train()
    totals = []
    for _ in range(30):
        torch.manual_seed(0)  # the same denoising noise at every step: one fixed problem to fit
        losses = criterion(model(samples, targets), targets)
        total = sum(losses[k] * criterion.weight_dict[k] for k in losses if k in criterion.weight_dict)
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        totals.append(total.item())
    assert losses["loss_ce_dn"] > 0 and losses["loss_bbox_interm"] > 0
    assert sum(totals[-3:]) < 0.7 * sum(totals[:3]), totals


def test_run_trains_and_evaluates_end_to_end(tmp_path):
    coco = generate(tmp_path / "data", num_train=4, num_val=2, image_size=64, seed=1, quiet=True)
    stats = run(reference.parse([*TINY, "--coco_path", str(coco), "--num_classes", "12", "--epochs", "1",
                                 "--batch_size", "2", "--image_size", "64", "--no_multiscale", "--num_workers", "0",
                                 "--print_freq", "100", "--output_dir", str(tmp_path / "out")]))
    assert len(stats["coco_eval_bbox"]) == 12
    log = json.loads((tmp_path / "out" / "log.txt").read_text())
    assert "train_loss_ce_dn" in log and math.isfinite(log["train_loss"])  # denoising trained through run.run
    assert (tmp_path / "out" / "checkpoint.pth").is_file()
