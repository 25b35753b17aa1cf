"""Deformable DETR (``--meta_arch deformable_detr``): equal to the official model, and its parts on hand-made cases.

The reference values in tests/golden/deformable_detr_reference.pt come from the official code (regenerate with
``python -m tools.reference.deformable_detr --official PATH``); these tests never import it. Our outputs, losses,
gradient norms and detections were bit-equal to the official ones on the machine that wrote the file (one
thread, as here): the tolerance (1e-5 relative, 1e-5 absolute; 1e-3 for detections in pixels) covers only
floating-point differences between CPU instruction sets and thread counts (two threads: up to 3e-6 relative).
Names, shapes, matches and labels must be equal.
"""
import argparse
import math

import pytest
import torch

import cli
from datasets import build_dataset
from engine import train_one_epoch
from models import architecture, build_model
from models.deformable_detr import DeformableTransformer
from models.deformable_detr.build import linear_projections
from run import run
from tests.conftest import TINY_MODEL_FLAGS, tiny_architecture_flags
from tools.reference import deformable_detr as reference_values
from tools.reference.common import unpack
from tools.reference.deformable_detr import CASES, parse
from util.checkpoint import load_checkpoint
from util.config import parse_args_with_config
from util.nested_tensor import collate_fn, nested_tensor_from_tensor_list

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = [*TINY_MODEL_FLAGS, *tiny_architecture_flags("deformable_detr"), "--num_classes", "5"]


def _small(*extra: str, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(parse([*SMALL, *extra]))


def _images():
    g = torch.Generator().manual_seed(3)
    return [torch.randn(3, 64, 48, generator=g), torch.randn(3, 56, 64, generator=g)]


# --- the official model ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def reference() -> dict:
    return torch.load(reference_values.REFERENCE_FILE, weights_only=True)


@pytest.mark.parametrize("name", sorted(CASES))
def test_equals_the_official_model(name, reference):
    expected = unpack(reference[name])
    # the official build for COCO: state-dict names and shapes in order, seeded initialisation, loss weights
    torch.manual_seed(0)
    model, criterion, _ = build_model(parse(reference_values.TINY + CASES[name]))
    state = [f"{k}:{','.join(map(str, v.shape))}" for k, v in model.state_dict().items()]
    assert state == reference_values.names_and_shapes_text(expected.pop("state"))
    torch.testing.assert_close(reference_values.init_sums(model), expected.pop("init_sums"), rtol=1e-6, atol=1e-6)
    assert criterion.weight_dict == expected.pop("weight_dict")
    # same weights, same inputs: outputs, matches, losses, gradient norms, detections
    flags = reference_values.TINY + CASES[name] + ["--num_classes", str(reference_values.NUM_CLASSES)]
    model, criterion, postprocessors = build_model(parse(flags))
    reference_values.fill_weights(model)
    actual = reference_values.run_filled(model, criterion, postprocessors["bbox"])
    assert sorted(actual) == sorted(expected)
    for key, value in expected.items():
        if value.is_floating_point():
            atol = 1e-3 if key.endswith(".boxes") else 1e-5  # detections are in pixels (images of 144 to 200)
            torch.testing.assert_close(actual[key], value, rtol=1e-5, atol=atol, msg=lambda m, k=key: f"{k}: {m}")
        else:
            assert torch.equal(actual[key], value), key


# --- presets and flags -------------------------------------------------------------------------------------------

PRESETS = ["deformable_detr", "deformable_detr_single_scale", "deformable_detr_single_scale_dc5",
           "deformable_detr_refine", "deformable_detr_two_stage"]


@pytest.mark.parametrize("preset", PRESETS)
def test_presets_build_the_official_variants_with_the_expected_outputs(preset):
    small = [f for f in SMALL if f != "--meta_arch" and f != "deformable_detr"]
    if preset.endswith("dc5"):  # dilation needs a bottleneck ResNet
        small[small.index("resnet18")] = "resnet50"
    args = parse_args_with_config(cli.get_args_parser(), ["--config", f"configs/{preset}.yaml", *small])
    cli.check_args(args)
    assert (args.lr, args.lr_backbone, args.epochs, args.lr_drop) == (2e-4, 2e-5, 50, 40)
    assert (args.set_cost_class, args.cls_loss_coef, args.focal_alpha, args.lr_linear_proj_mult) == (2, 2, 0.25, 0.1)
    torch.manual_seed(0)
    model, _, _ = build_model(args)
    model.eval()
    with torch.no_grad():
        out = model(_images())
    assert out["pred_logits"].shape == (2, 8, 5) and out["pred_boxes"].shape == (2, 8, 4)
    assert len(out["aux_outputs"]) == 1
    levels = 1 if "single_scale" in preset else 4
    assert len(model.input_proj) == levels == model.transformer.level_embed.shape[0]
    if preset.endswith("two_stage"):
        # 64 x 64 padded: 8x8 + 4x4 + 2x2 + 1x1 encoder tokens
        assert out["enc_outputs"]["pred_logits"].shape == (2, 85, 5)
        assert out["enc_outputs"]["pred_boxes"].shape == (2, 85, 4)
    else:
        assert "enc_outputs" not in out
    assert ((out["pred_boxes"] >= 0) & (out["pred_boxes"] <= 1)).all()


def test_feature_layer3_reads_layer2_and_layer3_and_adds_strided_levels():
    model, _, _ = _small("--feature_layer", "layer3", "--backbone_trainable_layers", "4")
    assert [p[0].in_channels for p in model.input_proj] == [128, 256, 256, 32]  # resnet18 layer2, layer3, extras
    assert model.backbone.strides == [8, 16]
    model.eval()
    with torch.no_grad():
        assert model(_images())["pred_boxes"].shape == (2, 8, 4)


@pytest.mark.parametrize("flags, match", [
    (["--masks"], "--masks"),
    (["--query_groups", "2"], "--query_groups"),
    (["--pre_norm"], "--pre_norm"),
    (["--two_stage"], "--two_stage"),
    (["--num_feature_levels", "2"], "--num_feature_levels"),
    (["--num_feature_levels", "0"], "--num_feature_levels"),
    (["--enc_n_points", "0"], "--enc_n_points"),
    (["--hidden_dim", "48", "--nheads", "2"], "--hidden_dim"),
    (["--lr_linear_proj_mult", "-1"], "--lr_linear_proj_mult"),
])
def test_unsupported_flags_are_errors_naming_the_flag(flags, match):
    with pytest.raises(ValueError, match=match):
        cli.check_args(parse([*SMALL, *flags]))


def test_two_stage_needs_enough_encoder_tokens():
    model, _, _ = _small("--with_box_refine", "--two_stage", "--num_queries", "100")
    model.eval()
    with pytest.raises(ValueError, match="proposals"):
        model([torch.randn(3, 32, 32), torch.randn(3, 32, 32)])  # 4x4 + 2x2 + 1x1 + 1x1 = 22 tokens


# --- parts on hand-made numbers ----------------------------------------------------------------------------------

def _focal(x: float, t: int, alpha: float = 0.25) -> float:
    p = 1 / (1 + math.exp(-x))
    ce = -(t * math.log(p) + (1 - t) * math.log(1 - p))
    p_t = p if t else 1 - p
    return (alpha if t else 1 - alpha) * ce * (1 - p_t) ** 2


def test_focal_classification_loss_sums_over_queries_and_classes():
    _, criterion, _ = _small()
    logits = torch.tensor([[[0.0, 1.0, -2.0, 0.5, 3.0], [-1.0, 2.0, 0.0, 0.0, -3.0]]])
    targets = [{"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}]
    indices = [(torch.tensor([0]), torch.tensor([0]))]  # query 0 is class 1, query 1 is nothing
    losses = criterion.loss_labels({"pred_logits": logits}, targets, indices, num_boxes=2.0)
    expected = sum(_focal(x, int(q == 0 and k == 1)) for q, row in enumerate(logits[0].tolist())
                   for k, x in enumerate(row)) / 2.0
    assert losses["loss_ce"].item() == pytest.approx(expected, rel=1e-6)
    assert losses["class_error"].item() == 100.0  # query 0's best class is 4, not 1


def test_cardinality_counts_queries_whose_best_class_is_not_the_last():
    _, criterion, _ = _small()
    logits = torch.tensor([[[0.0, 0, 0, 0, 1.0], [2.0, 0, 0, 0, 1.0], [0.0, 0, 3.0, 0, 1.0]]])
    targets = [{"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}]
    assert criterion.loss_cardinality({"pred_logits": logits}, targets, None, 1)["cardinality_error"].item() == 1.0


def test_two_stage_proposals_on_a_hand_made_padding_mask():
    torch.manual_seed(0)
    transformer = DeformableTransformer(d_model=32, nhead=2, num_encoder_layers=0, num_decoder_layers=1,
                                        dim_feedforward=16, num_feature_levels=6, two_stage=True,
                                        two_stage_num_proposals=3)
    shapes = [(2, 4), (1, 2), (1, 1), (1, 1), (1, 1), (1, 1)]
    mask = torch.zeros(1, 14, dtype=torch.bool)
    mask[0, [3, 7, 9]] = True  # level 0: column 3 is padding (3 of 4 columns valid); level 1: column 1
    memory = torch.randn(1, 14, 32)
    output_memory, proposals = transformer.gen_encoder_output_proposals(memory, mask, shapes)

    def logit(v: float) -> float:
        return math.log(v / (1 - v))

    expected = torch.full((14, 4), math.inf)
    for i in range(2):
        for j in range(3):
            expected[i * 4 + j] = torch.tensor([logit((j + 0.5) / 3), logit((i + 0.5) / 2), logit(0.05), logit(0.05)])
    expected[8] = torch.tensor([0.0, 0.0, logit(0.1), logit(0.1)])
    for level, token in zip((2, 3, 4), (10, 11, 12)):
        wh = logit(0.05 * 2 ** level)
        expected[token] = torch.tensor([0.0, 0.0, wh, wh])
    # token 13, level 5: width 1.6 is not inside (0.01, 0.99), so it is no proposal
    torch.testing.assert_close(proposals[0], expected)
    valid = torch.isfinite(expected).all(-1)
    zeroed = transformer.enc_output_norm(transformer.enc_output(torch.zeros(32)))
    kept = transformer.enc_output_norm(transformer.enc_output(memory[0]))
    torch.testing.assert_close(output_memory[0], torch.where(valid[:, None], kept, zeroed))


# --- the model as a whole ----------------------------------------------------------------------------------------

def test_inputs_as_a_list_a_nested_tensor_or_a_batch_tensor_agree():
    model, _, _ = _small("--with_box_refine")
    model.eval()
    images = _images()
    with torch.no_grad():
        from_list = model(images)
        from_nested = model(nested_tensor_from_tensor_list(images))
        same_size = [images[0], images[0].flip(-1)]
        torch.testing.assert_close(model(torch.stack(same_size))["pred_boxes"], model(same_size)["pred_boxes"])
    torch.testing.assert_close(from_list["pred_logits"], from_nested["pred_logits"], rtol=0, atol=0)


def test_box_refinement_shares_the_heads_with_the_decoder_and_the_state_dict_round_trips():
    model, _, _ = _small("--with_box_refine", "--two_stage", seed=0)
    assert model.transformer.decoder.bbox_embed is model.bbox_embed
    assert model.transformer.decoder.class_embed is model.class_embed
    assert len(model.class_embed) == 3 and model.class_embed[0] is not model.class_embed[1]
    other, _, _ = _small("--with_box_refine", "--two_stage", seed=1)
    other.load_state_dict(model.state_dict(), strict=True)
    model.eval()
    other.eval()
    with torch.no_grad():
        a, b = model(_images()), other(_images())
    for key in ("pred_logits", "pred_boxes"):
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
        torch.testing.assert_close(a["enc_outputs"][key], b["enc_outputs"][key], rtol=0, atol=0)
    plain, _, _ = _small()
    assert plain.class_embed[0] is plain.class_embed[1] and plain.transformer.decoder.bbox_embed is None


def test_initialisation_follows_the_official_rules():
    model, _, _ = _small("--with_box_refine")
    prior = -math.log((1 - 0.01) / 0.01)
    for head in model.class_embed:
        torch.testing.assert_close(head.bias.detach(), torch.full((5,), prior))
    for i, head in enumerate(model.bbox_embed):
        assert not head.layers[-1].weight.any()
        assert head.layers[-1].bias.tolist() == [0.0, 0.0] + ([-2.0, -2.0] if i == 0 else [0.0, 0.0])
    two_stage, _, _ = _small("--with_box_refine", "--two_stage")
    assert all(not head.layers[-1].bias.any() for head in two_stage.bbox_embed)
    plain, _, _ = _small()
    assert plain.bbox_embed[0].layers[-1].bias.tolist() == [0.0, 0.0, -2.0, -2.0]
    assert plain.query_embed.weight.shape == (8, 64) and not hasattr(two_stage, "query_embed")


def test_param_groups_scale_exactly_the_sampling_offsets_and_reference_points():
    for flags in ([], ["--with_box_refine", "--two_stage"]):
        args = parse([*SMALL, *flags, "--lr", "2e-4", "--lr_backbone", "2e-5"])
        model, _, _ = build_model(args)
        groups = architecture("deformable_detr").param_groups(model, args)
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        # the official rule, by name: lr_linear_proj_names and lr_backbone_names
        scaled = {id(p) for n, p in named if "sampling_offsets" in n or "reference_points" in n}
        backbone = {id(p) for n, p in named if "backbone.0" in n}
        assert len(groups) == 3
        assert {id(p) for p in groups[2]["params"]} == scaled and groups[2]["lr"] == pytest.approx(2e-5)
        assert {id(p) for p in groups[1]["params"]} == backbone and groups[1]["lr"] == 2e-5
        assert {id(p) for p in groups[0]["params"]} == {id(p) for _, p in named} - scaled - backbone
        assert "lr" not in groups[0]
        assert any("reference_points" in n for n, _ in named) == (not flags)
        assert len(linear_projections(model)) == 3 + (0 if flags else 1)  # 1 encoder + 2 decoder layers


def test_an_official_format_checkpoint_loads_strictly_with_its_optimizer(tmp_path):
    args = parse([*SMALL, "--with_box_refine"])
    model, _, _ = _small("--with_box_refine", seed=0)
    optimizer = torch.optim.AdamW(architecture("deformable_detr").param_groups(model, args), lr=args.lr)
    model(_images())["pred_boxes"].sum().backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 40)
    official_args = argparse.Namespace(lr=2e-4, lr_backbone_names=["backbone.0"], with_box_refine=True,
                                       two_stage=False, num_feature_levels=4, lr_linear_proj_mult=0.1)
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "lr_scheduler": scheduler.state_dict(), "epoch": 7, "args": official_args}, tmp_path / "ckpt.pth")
    checkpoint = load_checkpoint(str(tmp_path / "ckpt.pth"))
    assert checkpoint["epoch"] == 7 and checkpoint["args"].lr_backbone_names == ["backbone.0"]
    restored, _, _ = _small("--with_box_refine", seed=1)
    restored.load_state_dict(checkpoint["model"], strict=True)
    restored_optimizer = torch.optim.AdamW(architecture("deformable_detr").param_groups(restored, args), lr=args.lr)
    restored_optimizer.load_state_dict(checkpoint["optimizer"])
    model.eval()
    restored.eval()
    with torch.no_grad():
        torch.testing.assert_close(restored(_images())["pred_boxes"], model(_images())["pred_boxes"], rtol=0, atol=0)


def test_exports_end_to_end():
    model, _, _ = _small("--with_box_refine", "--two_stage")
    model.eval()

    class Boxes(torch.nn.Module):
        def forward(self, images, mask):
            from util.nested_tensor import NestedTensor

            out = model(NestedTensor(images, mask))
            return out["pred_logits"], out["pred_boxes"]

    batch = nested_tensor_from_tensor_list(_images())
    exported = torch.export.export(Boxes(), (batch.tensors, batch.mask)).module()
    torch.testing.assert_close(exported(batch.tensors, batch.mask), Boxes()(batch.tensors, batch.mask))


def test_loss_falls_when_fitting_a_few_images(tiny_coco, tiny_args):
    torch.manual_seed(0)
    args = tiny_args(tiny_coco, "--meta_arch", "deformable_detr", "--with_box_refine", "--two_stage",
                     "--num_classes", "12")
    cli.check_args(args)
    model, criterion, _ = build_model(args)
    batch = collate_fn([build_dataset("train", args)[i] for i in range(4)])
    optimizer = torch.optim.AdamW(architecture("deformable_detr").param_groups(model, args), lr=args.lr)
    losses = [train_one_epoch(model, criterion, [batch], optimizer, torch.device("cpu"), epoch=i, max_norm=0.1,
                              print_freq=1000)["loss"] for i in range(20)]
    assert losses[-1] < 0.7 * losses[0], losses


def test_trains_and_evaluates_through_run(tiny_coco, tiny_args, tmp_path):
    out = tmp_path / "run"
    stats = run(tiny_args(tiny_coco, "--meta_arch", "deformable_detr", "--epochs", "1", "--output_dir", str(out)))
    assert len(stats["coco_eval_bbox"]) == 12
    assert (out / "checkpoint.pth").is_file()
