"""D-FINE's parts: the HGNetv2 backbone (models/hgnetv2.py), its hybrid encoder blocks
(models/layers/hybrid_encoder.py), the decoder with fine-grained distribution refinement (models/dfine/), the FDR
functions (models/layers/fdr.py), the criterion (models/criterion.py ``DFINECriterion``) and the matcher
(models/matcher.py ``DFINEHungarianMatcher``).

The official numbers come from tools/reference/dfine.py (run it with a clone of Peterande/D-FINE to regenerate
tests/golden/dfine_reference.pt); the tests never import the official code. The other tests check against values
computed here by hand or by a direct computation.
"""
import math
from urllib.error import URLError

import pytest
import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from models import backbone_attention
from models.criterion import DFINECriterion, union_of_matches
from models.dfine.decoder import DFINETransformer
from models.dfine.dfine import DFINE
from models.hgnetv2 import PRETRAINED_URLS, HGNetv2
from models.layers.box_encoding import inverse_sigmoid
from models.layers.denoising import contrastive_denoising_group, dfine_denoising_group
from models.layers.fdr import (
    box_edge_distances,
    deployed_weighting_function,
    distance_bins,
    distance_to_box,
    distribution_integral,
    fdr_weighting_function,
)
from models.layers.hybrid_encoder import FusableConvNormLayer, VGGBlock, dfine_hybrid_encoder
from models.matcher import DFINEHungarianMatcher, FocalHungarianMatcher
from models.postprocess import RTDETRPostProcessor
from tests.golden_values import COCO_IDS, assert_same_values
from tools.reference import dfine as reference
from tools.reference.common import case_inputs, case_targets, our_encoder_kwargs, perturb
from util.box_ops import sized_box_corners
from util.nested_tensor import NestedTensor

pytestmark = pytest.mark.usefixtures("one_thread")

F64 = torch.float64


@pytest.fixture(scope="module")
def golden() -> dict:
    return reference.load_reference()


def tiny_decoder(**overrides) -> DFINETransformer:
    torch.manual_seed(reference.CASE_SEED)
    decoder = DFINETransformer(**{**reference.DECODER_CASES["denoising"][0], **overrides})
    perturb(decoder)
    return decoder.double()


def square_maps() -> list[torch.Tensor]:
    return case_inputs(reference.DECODER_CASES["denoising"][1])


def tensor(values) -> torch.Tensor:
    return torch.tensor(values, dtype=F64)


# ---------------------------------------------------------------------------------------------------------------
# Against the official numbers

@pytest.mark.parametrize("name", sorted(reference.BACKBONE_CASES))
def test_backbone_reproduces_the_official_numbers(name, golden):
    torch.manual_seed(reference.CASE_SEED)
    backbone = HGNetv2(**reference.BACKBONE_CASES[name][0])
    assert_same_values(reference.run_backbone_case(backbone, name), golden["backbone"][name], name)


@pytest.mark.parametrize("name", sorted(reference.ENCODER_CASES))
def test_encoder_reproduces_the_official_numbers(name, golden):
    """Training, gradients, evaluation (stored position tables where the case has them) and deployed."""
    torch.manual_seed(reference.CASE_SEED)
    encoder = dfine_hybrid_encoder(**our_encoder_kwargs(reference.ENCODER_CASES[name][0]))
    assert_same_values(reference.run_encoder_case(encoder, name), golden["encoder"][name], name)


@pytest.mark.parametrize("name", sorted(reference.DECODER_CASES))
def test_decoder_reproduces_the_official_numbers(name, golden):
    """Initial weights from the official seed; perturbed, float64: every training output, dn_meta, the criterion's
    terms, the matches, the gradients, and the evaluation outputs before and after deploy."""
    kwargs = reference.DECODER_CASES[name][0]
    torch.manual_seed(reference.CASE_SEED)
    decoder = DFINETransformer(**kwargs)
    criterion = reference.our_criterion(kwargs["num_classes"], kwargs["num_layers"], kwargs["reg_max"])
    assert_same_values(reference.run_decoder_case(decoder, criterion, name), golden["decoder"][name], name)


@pytest.mark.parametrize("name", sorted(reference.MODEL_CASES))
def test_whole_model_reproduces_the_official_numbers(name, golden):
    """HGNetv2-B0, encoder and decoder from the official seed; training step with the criterion, evaluation,
    post-processing and the deployed model, in float64."""
    kwargs = reference.MODEL_CASES[name][0]
    torch.manual_seed(reference.CASE_SEED)
    model = reference.our_model(kwargs["backbone"], kwargs["encoder"], kwargs["decoder"])
    decoder = kwargs["decoder"]
    criterion = reference.our_criterion(decoder["num_classes"], decoder["num_layers"], decoder["reg_max"])
    postprocessor = RTDETRPostProcessor(num_classes=decoder["num_classes"], num_top_queries=kwargs["num_top_queries"])
    assert_same_values(reference.run_model_case(model, criterion, postprocessor, name), golden["model"][name], name)


@pytest.mark.parametrize("name", sorted(reference.POSTPROCESSOR_CASES))
def test_rtdetr_postprocessor_is_dfines(name, golden):
    kwargs, _, coco = reference.POSTPROCESSOR_CASES[name]
    postprocessor = RTDETRPostProcessor(**kwargs, category_ids=COCO_IDS if coco else None)
    assert_same_values(reference.run_postprocessor_case(postprocessor, name), golden["postprocessor"][name], name)


@pytest.mark.parametrize("preset", sorted(reference.OFFICIAL_CONFIGS))
def test_state_dict_names_are_the_official_ones(preset, golden):
    """The five released configs' backbone and whole model, in training form and after deploy()."""
    with torch.device("meta"):
        backbone = HGNetv2(**reference.BACKBONE_PRESETS[preset])
        assert reference.state_names(backbone) == golden["names"][f"backbone/{preset}"]
        model = reference.our_model(reference.BACKBONE_PRESETS[preset], reference.ENCODER_PRESETS[preset],
                                    reference.DECODER_PRESETS[preset])
        assert reference.state_names(model) == golden["names"][f"model/{preset}"]
        assert reference.state_names(model.deploy()) == golden["names"][f"model_deploy/{preset}"]


# ---------------------------------------------------------------------------------------------------------------
# Fine-grained distribution refinement, by hand

def test_weighting_function_by_hand():
    """reg_max 8, up 0.5, reg_scale 4: a c = 2, s = 3^(1/3), W = -4, 1 - s^3 = -2, 1 - s^2, 1 - s, 0, s - 1, s^2 - 1,
    2, 4; reg_max 4: s = 3, W = -4, -2, 0, 2, 4."""
    s = 3 ** (1 / 3)
    expected = [-4, -2, 1 - s * s, 1 - s, 0, s - 1, s * s - 1, 2, 4]
    values = fdr_weighting_function(8, tensor([0.5]), tensor([4.0]))
    torch.testing.assert_close(values, tensor(expected), rtol=1e-15, atol=1e-15)
    torch.testing.assert_close(fdr_weighting_function(4, tensor([0.5]), tensor([-4.0])), tensor([-4, -2, 0, 2, 4]))
    x_config = fdr_weighting_function(32, tensor([0.5]), tensor([8.0]))  # the x config: ends +-8, next +-4
    assert x_config.shape == (33,) and x_config[16] == 0 and bool((x_config.diff() > 0).all())
    torch.testing.assert_close(x_config[[0, 1, 31, 32]], tensor([-8, -4, 4, 8]), rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(x_config, -x_config.flip(0), rtol=0, atol=1e-14)
    up, scale = torch.tensor([0.5]), torch.tensor([4.0])
    deployed = deployed_weighting_function(32, up, scale)  # computed in double precision, then rounded
    assert deployed.dtype == torch.float32  # the training form's float32 powers are off by a few ulps
    torch.testing.assert_close(deployed, fdr_weighting_function(32, up, scale), rtol=1e-6, atol=0)
    torch.testing.assert_close(deployed_weighting_function(32, up.double(), scale.double()),
                               fdr_weighting_function(32, up.double(), scale.double()), rtol=1e-15, atol=0)


def test_integral_against_a_direct_computation():
    g = torch.Generator().manual_seed(0)
    corners = torch.randn(2, 3, 4 * 9, generator=g, dtype=F64)
    project = fdr_weighting_function(8, tensor([0.5]), tensor([4.0]))
    expected = torch.zeros(2, 3, 4, dtype=F64)
    for b, q, edge in torch.cartesian_prod(torch.arange(2), torch.arange(3), torch.arange(4)).tolist():
        logits = corners[b, q, 9 * edge: 9 * (edge + 1)]
        weights = [math.exp(v) for v in logits.tolist()]
        expected[b, q, edge] = sum(w * p for w, p in zip(weights, project.tolist())) / sum(weights)
    torch.testing.assert_close(distribution_integral(corners, project, 8), expected, rtol=1e-14, atol=1e-14)


def test_distances_place_the_edges_in_units_of_the_reference_size():
    """Reference (0.5, 0.5, 0.2, 0.4), reg_scale 4: units of 0.05 and 0.1 beyond the half size; distance 0 gives the
    reference back; left +1 moves the left edge out by 0.05, bottom -1 the bottom edge in by 0.1."""
    reference_box = tensor([[0.5, 0.5, 0.2, 0.4]])
    torch.testing.assert_close(distance_to_box(reference_box, torch.zeros(1, 4, dtype=F64), tensor([4.0])),
                               reference_box)
    box = distance_to_box(reference_box, tensor([[1.0, 0.0, 0.0, -1.0]]), tensor([4.0]))
    torch.testing.assert_close(box, tensor([[0.475, 0.45, 0.25, 0.3]]))  # xyxy (0.35, 0.3, 0.6, 0.6)


def test_distance_bins_by_hand():
    """W = -4, -2, 0, 2, 4 (reg_max 4): 1 is halfway from bin 2 to 3; -2 sits on bin 1; -5 is below bin 0; 4 and
    beyond give index 3.9 with all the weight on the right."""
    index, right, left = distance_bins(tensor([1.0, -2.0, -3.5, -5.0, 4.0, 7.0]), 4, tensor([4.0]), tensor([0.5]))
    assert index.dtype == F64
    torch.testing.assert_close(index, tensor([2, 1, 0, 0, 3.9, 3.9]))
    torch.testing.assert_close(right, tensor([0.5, 0, 0.25, 0, 1, 1]))
    torch.testing.assert_close(left, tensor([0.5, 1, 0.75, 1, 0, 0]))
    assert distance_bins(tensor([1.0]), 4, torch.tensor([4.0]), torch.tensor([0.5]))[0].dtype == torch.float64


def fgl_case() -> tuple[dict, list[dict], list[float]]:
    """One image, one query, reg_max 4 (W = -4, -2, 0, 2, 4), reference (0.5, 0.5, 0.4, 0.4) (units of 0.1 beyond
    0.2): the target's left, top, right and bottom edges at distances 1, -1, 3 and 5 (x0 0.2, y0 0.4, x1 1.0,
    y1 1.2), so bins (2, 3) with weights 1/2, (1, 2) 1/2, (3, 4) 1/2 and (3, 4) with all the weight on 4."""
    target = {"labels": torch.tensor([0]), "boxes": tensor([[0.6, 0.8, 0.8, 0.8]])}
    corners = torch.arange(20, dtype=F64).reshape(1, 1, 20).sin() * 2
    outputs = {"pred_logits": torch.zeros(1, 1, 2, dtype=F64), "pred_boxes": target["boxes"][None].clone(),
               "pred_corners": corners, "ref_points": tensor([[[0.5, 0.5, 0.4, 0.4]]])}
    return outputs, [target], [(2, 3, 0.5), (1, 2, 0.5), (3, 4, 0.5), (3, 4, 1.0)]


def cross_entropy(logits: list[float], k: int) -> float:
    return -logits[k] + math.log(sum(math.exp(v) for v in logits))


def test_fgl_of_one_box_by_hand():
    """The predicted box is the target (IoU 1): FGL = sum over edges of CE(left bin) w_left + CE(right bin) w_right,
    over num_boxes 2."""
    outputs, targets, bins = fgl_case()
    criterion = DFINECriterion(DFINEHungarianMatcher(), {"loss_fgl": 1}, ["local"], num_classes=2, reg_max=4,
                               num_decoder_layers=1)
    corners = outputs["pred_corners"].reshape(4, 5).tolist()
    expected = sum(cross_entropy(c, lo) * (1 - w) + cross_entropy(c, hi) * w for c, (lo, hi, w) in zip(corners, bins))
    losses = criterion.loss_local(outputs, targets, [(torch.tensor([0]), torch.tensor([0]))], 2.0, tensor([0.5]),
                                  tensor([4.0]), [None, None])
    assert list(losses) == ["loss_fgl"]
    torch.testing.assert_close(losses["loss_fgl"], tensor(expected / 2), rtol=1e-12, atol=0)
    bins_, right, _ = box_edge_distances(outputs["ref_points"][0], sized_box_corners(targets[0]["boxes"]), 4,
                                         tensor([4.0]), tensor([0.5]))
    torch.testing.assert_close(bins_, tensor([2, 1, 3, 3.9]), rtol=0, atol=1e-12)  # 3.9: 4 - 0.1
    torch.testing.assert_close(right, tensor([0.5, 0.5, 0.5, 1.0]), rtol=0, atol=1e-12)


def test_ddf_by_hand():
    """Two queries, query 0 matched (IoU 1): every edge's KL divergence at temperature 5 times 25, weighted by the
    IoU (matched) or the teacher's best class probability (the other); the two means mixed by the square roots of
    their counts (4 edges each: equal weights)."""
    outputs, targets, _ = fgl_case()
    g = torch.Generator().manual_seed(1)
    corners = torch.randn(1, 2, 20, generator=g, dtype=F64)
    teacher = torch.randn(1, 2, 20, generator=g, dtype=F64)
    teacher_logits = tensor([[[0.3, -1.0], [-0.5, 0.2]]])
    outputs = {**outputs, "pred_corners": corners, "teacher_corners": teacher, "teacher_logits": teacher_logits,
               "pred_logits": torch.zeros(1, 2, 2, dtype=F64),
               "pred_boxes": torch.cat([outputs["pred_boxes"], tensor([[[0.3, 0.3, 0.1, 0.1]]])], 1),
               "ref_points": outputs["ref_points"].repeat(1, 2, 1)}

    def kl(student, teacher_row):
        p = [math.exp(v / 5) for v in teacher_row]
        q = [math.exp(v / 5) for v in student]
        p, q = [v / sum(p) for v in p], [v / sum(q) for v in q]
        return sum(a * math.log(a / b) for a, b in zip(p, q))

    rows = [kl(s, t) * 25 for s, t in zip(corners.reshape(8, 5).tolist(), teacher.reshape(8, 5).tolist())]
    matched = sum(rows[:4]) / 4  # IoU 1
    other = sum(rows[4:]) / 4 / (1 + math.exp(-0.2))
    criterion = DFINECriterion(DFINEHungarianMatcher(), {"loss_fgl": 1, "loss_ddf": 1}, ["local"], num_classes=2,
                               reg_max=4, num_decoder_layers=2)
    balance = [None, None]
    losses = criterion.loss_local(outputs, targets, [(torch.tensor([0]), torch.tensor([0]))], 1.0, tensor([0.5]),
                                  tensor([4.0]), balance)
    torch.testing.assert_close(losses["loss_ddf"], tensor((matched + other) / 2), rtol=1e-12, atol=0)
    root = torch.tensor(32.0).sqrt()  # as for 8 images: sqrt(4 * 8), in float32 as official
    assert all(b.dtype == torch.float32 and torch.equal(b, root) for b in balance)
    own = criterion.loss_local({**outputs, "teacher_corners": corners}, targets,
                               [(torch.tensor([0]), torch.tensor([0]))], 1.0, tensor([0.5]), tensor([4.0]), balance)
    assert own["loss_ddf"] == 0  # the last layer is its own teacher


def test_union_of_matches_keeps_each_query_once_with_its_most_frequent_target():
    def pairs(*matched):
        return [(torch.tensor([q for q, _ in matched]), torch.tensor([t for _, t in matched]))]

    union = union_of_matches(pairs((0, 0), (1, 1)), [pairs((0, 0), (2, 1)), pairs((0, 1), (2, 1), (3, 0))])
    (queries, targets), = union
    assert queries.dtype == targets.dtype == torch.int64
    assert sorted(zip(queries.tolist(), targets.tolist())) == [(0, 0), (1, 1), (2, 1), (3, 0)]
    assert queries[:2].tolist() in ([0, 2], [2, 0])  # the pairs matched twice first
    empty = (torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int64))
    assert [len(q) for q, _ in union_of_matches([empty], [[empty]])] == [0]


# ---------------------------------------------------------------------------------------------------------------
# Denoising

def test_denoising_is_rtdetrs_with_absolute_sizes():
    """The same draws as RT-DETRv2's groups (labels, content, mask, meta equal); boxes turned inside out by the noise
    keep their absolute size where RT-DETRv2's clamp to the logit's eps."""
    embed = nn.Embedding(6, 8, padding_idx=5)
    targets = [{"labels": torch.tensor([1, 4]), "boxes": torch.tensor([[0.5, 0.5, 0.6, 0.6], [0.2, 0.3, 0.1, 0.2]])},
               {"labels": torch.tensor([3]), "boxes": torch.tensor([[0.7, 0.6, 0.3, 0.5]])}]
    torch.manual_seed(3)
    ours = dfine_denoising_group(targets, 5, 4, embed, num_denoising=12)
    torch.manual_seed(3)
    rtdetr = contrastive_denoising_group(targets, 5, 4, embed, num_denoising=12)
    assert ours.meta["dn_num_group"] == 6 and ours.meta["dn_num_split"] == [24, 4]
    assert all(torch.equal(a, b) for a, b in zip(ours.meta["dn_positive_idx"], rtdetr.meta["dn_positive_idx"]))
    assert torch.equal(ours.content, rtdetr.content) and torch.equal(ours.attn_mask, rtdetr.attn_mask)
    clamped = rtdetr.anchors == inverse_sigmoid(torch.zeros(()))  # RT-DETRv2: sizes <= 0 at the eps logit
    assert torch.equal(ours.anchors[~clamped], rtdetr.anchors[~clamped])
    differ = ours.anchors != rtdetr.anchors
    assert bool(differ.any()) and not bool(differ[..., :2].any())  # only sizes, the inside-out ones
    assert bool((ours.anchors[differ] > rtdetr.anchors[differ]).all())
    assert ours.anchors.dtype == torch.float32


def test_denoising_of_a_batch_without_targets_adds_no_query():
    empty = {"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}
    dn = dfine_denoising_group([empty, empty], 5, 4, nn.Embedding(6, 8, padding_idx=5))
    assert dn.content.shape == (2, 0, 8) and dn.anchors.shape == (2, 0, 4) and dn.attn_mask is None
    assert dn.meta == {"dn_positive_idx": None, "dn_num_group": 0, "dn_num_split": [0, 4]}
    assert dfine_denoising_group([empty], 5, 4, nn.Embedding(6, 8), num_denoising=0) is None


# ---------------------------------------------------------------------------------------------------------------
# Decoder and model

def test_output_keys_and_shapes_in_training_and_evaluation():
    decoder = tiny_decoder(eval_idx=0)
    targets = case_targets("mixed")
    out = decoder(square_maps(), targets)
    assert list(out) == ["pred_logits", "pred_boxes", "pred_corners", "ref_points", "up", "reg_scale", "aux_outputs",
                         "enc_aux_outputs", "pre_outputs", "enc_meta", "dn_outputs", "dn_pre_outputs", "dn_meta"]
    assert out["pred_corners"].shape == (2, 6, 36) and out["ref_points"].shape == (2, 6, 4)
    assert out["up"] is decoder.up and out["reg_scale"] is decoder.reg_scale and not decoder.up.requires_grad
    assert [sorted(layer) for layer in out["aux_outputs"]] == [sorted(["pred_logits", "pred_boxes", "pred_corners",
                                                                       "ref_points", "teacher_corners",
                                                                       "teacher_logits"])] * 2
    assert torch.equal(out["aux_outputs"][0]["teacher_corners"], out["pred_corners"])
    assert len(out["dn_outputs"]) == 3 and out["dn_outputs"][0]["pred_boxes"].shape == (2, 12, 4)
    assert out["dn_pre_outputs"]["pred_logits"].shape == (2, 12, 5) and out["pre_outputs"]["pred_boxes"].shape == (
        2, 6, 4)
    assert torch.equal(out["ref_points"], out["pre_outputs"]["pred_boxes"].detach())
    without_targets = decoder(square_maps(), case_targets("empty"))
    assert without_targets["dn_meta"]["dn_num_group"] == 0 and without_targets["dn_outputs"][0]["pred_boxes"].shape == (
        2, 0, 4)
    decoder.eval()
    with torch.no_grad():
        evaluated = decoder(square_maps())
        layers = decoder.decoder.layers
        decoder.decoder.layers = layers[:1]  # eval_idx 0: the later layers never run
        assert torch.equal(decoder(square_maps())["pred_boxes"], evaluated["pred_boxes"])
    assert list(evaluated) == ["pred_logits", "pred_boxes"]
    decoder.decoder.layers = layers
    decoder.train()
    with pytest.raises(ValueError, match="targets"):
        decoder(square_maps())


def test_up_and_reg_scale_are_frozen_parameters_held_twice():
    decoder = DFINETransformer(**reference.DECODER_CASES["denoising"][0])
    state = decoder.state_dict()
    assert list(state)[:2] == ["up", "reg_scale"] and "decoder.up" in state and "decoder.reg_scale" in state
    assert decoder.decoder.up is decoder.up and decoder.decoder.reg_scale is decoder.reg_scale
    assert [name for name, _ in decoder.named_parameters()][:2] == ["up", "reg_scale"]
    assert not decoder.up.requires_grad and not decoder.reg_scale.requires_grad


def test_stored_anchors_serve_only_their_size():
    computed = tiny_decoder(eval_spatial_size=None).eval()
    torch.manual_seed(reference.CASE_SEED)
    stored = DFINETransformer(**reference.DECODER_CASES["denoising"][0]).double().eval()
    stored.load_state_dict({**computed.state_dict(), "anchors": stored.anchors, "valid_mask": stored.valid_mask})
    other = case_inputs([(16, 8, 6), (16, 4, 3), (16, 2, 2)])
    with torch.no_grad():
        for feats in (square_maps(), other):
            assert torch.equal(stored(feats)["pred_boxes"], computed(feats)["pred_boxes"])
        stored.anchors += 0.1
        assert not torch.equal(stored(square_maps())["pred_boxes"], computed(square_maps())["pred_boxes"])


@pytest.mark.parametrize("kwargs", [{"query_select_method": "best"}, {"cross_attn_method": "bilinear"},
                                    {"feat_strides": [8, 16]}, {"num_levels": 2}, {"eval_idx": 3},
                                    {"num_points": [2, 2]}, {"reg_max": 7}])
def test_bad_decoder_arguments_are_refused(kwargs):
    with pytest.raises(ValueError):
        DFINETransformer(**{**reference.DECODER_CASES["denoising"][0], **kwargs})


def tiny_model() -> DFINE:
    kwargs = reference.MODEL_CASES["b0_tiny"][0]
    torch.manual_seed(0)
    return reference.our_model(kwargs["backbone"], kwargs["encoder"], kwargs["decoder"])


def test_model_takes_a_tensor_a_list_or_a_nested_tensor_and_deploys():
    model = tiny_model().double().eval()
    perturb(model)
    assert DFINE.takes_targets and list(dict(model.named_children())) == ["backbone", "decoder", "encoder"]
    images = torch.rand(2, 3, 64, 64, dtype=F64)
    with torch.no_grad():
        expected = model(images)
        for samples in (list(images), NestedTensor(images, torch.zeros(2, 64, 64, dtype=torch.bool))):
            assert torch.equal(model(samples)["pred_logits"], expected["pred_logits"])
        deployed = model.deploy()(images)
    assert not model.training and len(model.decoder.decoder.layers) == 3
    block = model.encoder.fpn_blocks[0].cv2[0].bottlenecks[0]
    assert block.conv is not None and not hasattr(block, "conv1")
    for key in ("pred_logits", "pred_boxes"):  # folded norms: the same up to rounding
        torch.testing.assert_close(deployed[key], expected[key], rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="one size"):
        model([torch.rand(3, 64, 64), torch.rand(3, 64, 32)])


def test_deploy_keeps_only_what_evaluation_runs():
    decoder = tiny_decoder(eval_idx=1).eval()
    with torch.no_grad():
        expected = decoder(square_maps())
        reference._deploy(decoder)
        deployed = decoder(square_maps())
    names = list(decoder.state_dict())
    assert not any(name.startswith(("decoder.layers.2.", "dec_score_head.0.", "dec_score_head.2.",
                                    "dec_bbox_head.2.", "decoder.lqe_layers.0.", "decoder.lqe_layers.2."))
                   for name in names)
    assert any(name.startswith("dec_bbox_head.0.") for name in names)
    assert decoder.decoder.project is not None and "decoder.project" not in names
    torch.testing.assert_close(deployed["pred_boxes"], expected["pred_boxes"], rtol=1e-14, atol=1e-14)


# ---------------------------------------------------------------------------------------------------------------
# Criterion and matcher

def test_weight_dict_names_every_term_and_the_terms_come_weighted():
    criterion = reference.our_criterion(num_classes=5, num_layers=3, reg_max=8)
    main = ["loss_vfl", "loss_bbox", "loss_giou", "loss_fgl"]
    every, first = main + ["loss_ddf"], main[:3]
    expected = (main + [f"{n}_aux_{i}" for i in range(2) for n in every] + [f"{n}_pre" for n in first]
                + [f"{n}_enc_0" for n in first] + [f"{n}_dn_{i}" for i in range(3) for n in every]
                + [f"{n}_dn_pre" for n in first])
    assert list(criterion.weight_dict) == expected and set(criterion.weight_dict.values()) == {1.0}
    targets = case_targets("mixed")
    outputs = tiny_decoder()(square_maps(), targets)
    losses = criterion(outputs, targets)
    assert list(losses) == expected  # l, x (6 layers): 4 + 5 * 5 + 3 + 3 + 6 * 5 + 3 = 68 terms
    unweighted = DFINECriterion(criterion.matcher, dict.fromkeys(every, 1), alpha=0.75, gamma=2.0, num_classes=5,
                                reg_max=8, num_decoder_layers=3)(outputs, targets)
    for name, value in losses.items():
        weight = criterion.loss_weights["_".join(name.split("_")[:2])]
        torch.testing.assert_close(value, unweighted[name] * weight, rtol=1e-15, atol=0)
    with pytest.raises(ValueError, match="num_decoder_layers"):
        reference.our_criterion(num_classes=5, num_layers=2, reg_max=8)(outputs, targets)
    with pytest.raises(ValueError):
        DFINECriterion(criterion.matcher, {"loss_ce": 1})
    assert list(DFINECriterion(criterion.matcher, criterion.loss_weights, aux_loss=False).weight_dict) == main


def test_a_batch_without_targets_gives_finite_terms_and_gradients():
    criterion = reference.our_criterion(num_classes=5, num_layers=3, reg_max=8)
    decoder = tiny_decoder()
    targets = case_targets("empty")
    losses = criterion(decoder(square_maps(), targets), targets)
    assert all(bool(torch.isfinite(loss)) for loss in losses.values())
    assert all(losses[f"{name}_dn_0"].item() == 0 for name in ("loss_vfl", "loss_bbox", "loss_giou", "loss_fgl"))
    sum(losses.values()).backward()
    assert all(bool(torch.isfinite(p.grad).all()) for p in decoder.parameters() if p.grad is not None)


def test_matcher_sees_inside_out_boxes_as_points_and_nan_costs_as_one():
    logits = torch.zeros(1, 3, 2, dtype=F64)
    boxes = tensor([[[0.5, 0.5, -0.2, 0.2], [0.2, 0.2, 0.1, 0.1], [0.8, 0.8, 0.2, 0.2]]])
    targets = [{"labels": torch.tensor([0, 1]), "boxes": tensor([[0.5, 0.5, 0.2, 0.2], [0.8, 0.8, 0.2, 0.2]])}]
    matcher = DFINEHungarianMatcher(cost_class=2, cost_bbox=5, cost_giou=2)
    with pytest.raises(ValueError):  # RT-DETRv2's matcher refuses the inside-out box
        FocalHungarianMatcher(cost_class=2, cost_bbox=5, cost_giou=2)({"pred_logits": logits, "pred_boxes": boxes},
                                                                      targets)
    (cost,) = matcher.cost_matrices({"pred_logits": logits, "pred_boxes": boxes}, targets)
    segment = sized_box_corners(boxes[0, 0])
    torch.testing.assert_close(segment, tensor([0.5, 0.4, 0.5, 0.6]), rtol=0, atol=1e-15)
    # a segment inside the first target: IoU 0, enclosing box the target's: GIoU 0
    torch.testing.assert_close(cost[0, 0], 5 * 0.4 + 2 * matcher.class_cost(logits[0, :1], torch.tensor([0]))[0, 0])
    indices = matcher({"pred_logits": logits, "pred_boxes": boxes}, targets)
    assert [q.tolist() for q, _ in indices] == [[0, 2]]
    nan = {"pred_logits": logits.clone().index_fill_(1, torch.tensor([1]), float("nan")), "pred_boxes": boxes}
    (cost,) = matcher.cost_matrices(nan, targets)
    assert cost[1].tolist() == [1.0, 1.0]


# ---------------------------------------------------------------------------------------------------------------
# HGNetv2

@pytest.mark.parametrize("name, channels", [("B0", [64, 256, 512, 1024]), ("B2", [96, 384, 768, 1536]),
                                            ("B4", [128, 512, 1024, 2048]), ("B5", [128, 512, 1024, 2048])])
def test_hgnetv2_returns_its_stages_at_strides_4_to_32(name, channels):
    with torch.device("meta"):
        model = HGNetv2(name=name, return_idx=[0, 1, 2, 3], freeze_norm=False)
        outputs = model(torch.zeros(1, 3, 64, 96))
    assert [tuple(o.shape) for o in outputs] == [(1, c, 64 // s, 96 // s) for c, s in zip(channels, (4, 8, 16, 32))]
    assert model.out_channels == channels and model.out_strides == [4, 8, 16, 32]


def test_hgnetv2_freezing_follows_the_official_arguments():
    def trainable(model):
        return [name.split(".")[0] + ("." + name.split(".")[1] if name.startswith("stages") else "")
                for name, p in model.named_parameters() if p.requires_grad]

    assert "stem" not in trainable(HGNetv2(name="B0"))  # the official defaults: the stem frozen, frozen norms
    assert {"stem", "stages.0"} <= set(trainable(HGNetv2(name="B0", freeze_at=-1)))
    frozen = set(trainable(HGNetv2(name="B0", freeze_at=1, freeze_stem_only=False)))
    assert frozen == {"stages.2", "stages.3"}  # freeze_at 1: the stem and stages 0 and 1
    model = HGNetv2(name="B0", use_lab=True)
    assert all(isinstance(m, FrozenBatchNorm2d) for m in model.modules() if "Norm" in type(m).__name__)
    lab = model.stages[2].blocks[1].layers[0].conv2.lab
    assert lab.scale.shape == (1,) and lab.scale.item() == 1 and lab.bias.item() == 0
    assert isinstance(model.stages[2].blocks[1].layers[0].conv1.lab, nn.Identity)  # no activation, no affine
    with pytest.raises(ValueError):
        HGNetv2(name="B7")
    with pytest.raises(ValueError):
        HGNetv2(name="B0", return_idx=[2, 1])


def test_hgnetv2_weights_load_only_when_asked(monkeypatch, tmp_path):
    asked = []
    source = HGNetv2(name="B0", use_lab=True, freeze_norm=False)
    perturb(source)

    def from_url(url, **kwargs):
        asked.append(url)
        return source.state_dict()

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", from_url)
    HGNetv2(name="B0", use_lab=True)
    assert asked == []
    downloaded = HGNetv2(name="B0", use_lab=True, pretrained=True)  # frozen norms drop num_batches_tracked
    assert asked == [PRETRAINED_URLS["B0"]] and PRETRAINED_URLS["B0"].endswith("/dfinev1.0/PPHGNetV2_B0_stage1.pth")
    path = tmp_path / "weights.pth"
    torch.save(source.state_dict(), path)
    from_file = HGNetv2(name="B0", use_lab=True, freeze_norm=False, pretrained=str(path))
    for model in (downloaded, from_file):
        assert all(torch.equal(v, source.state_dict()[k]) for k, v in model.state_dict().items())

    def offline(url, **kwargs):
        raise URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(FileNotFoundError, match="PPHGNetV2_B4_stage1.pth"):
        HGNetv2(name="B4", pretrained=True)


def test_hgnetv2_blocks_name_the_places_of_attention():
    model = HGNetv2(name="B0", freeze_norm=False).double().eval()
    perturb(model)
    for number in (1, 2, 3, 4):
        assert model.residual_stage(number) is model.stages[number - 1].blocks
    block = model.residual_stage(3)[1]  # a residual block of light layers: its spatial convolution is depthwise 5x5
    assert block.residual and block.spatial_conv.kernel_size == (5, 5) and block.spatial_conv.groups == 64
    assert model.residual_stage(2)[0].spatial_conv.kernel_size == (3, 3)
    x = torch.randn(2, 512, 4, 4, dtype=F64)
    handle = block.last_norm.register_forward_hook(lambda module, inputs, output: torch.full_like(output, -1.0))
    torch.testing.assert_close(block(x), x, rtol=0, atol=0)  # relu(-1) = 0: the block adds nothing to its input
    handle.remove()
    with pytest.raises(ValueError):
        model.residual_stage(5)


@pytest.mark.parametrize("block, position", [("se", "block"), ("gc", "stage"), ("aa", "block")])
def test_attention_blocks_are_identities_at_init_and_keep_the_official_names(block, position):
    model = HGNetv2(name="B0", use_lab=True, freeze_norm=False).eval()
    names = list(model.state_dict())
    x = torch.randn(1, 3, 64, 64)
    expected = model(x)
    attention = backbone_attention.MaskedAttention(model, backbone_attention.make_plan(block, None, position, 4))
    assert all(torch.equal(a, b) for a, b in zip(model(x), expected))
    assert list(model.state_dict()) == names
    perturb(attention)
    assert not all(torch.equal(a, b) for a, b in zip(model(x), expected))


# ---------------------------------------------------------------------------------------------------------------
# Encoder blocks

def test_foldable_convolutions_fold_once_and_drop_their_branches():
    layer = FusableConvNormLayer(4, 6, 3, 2, groups=2, act="silu").double()
    perturb(layer)
    layer.eval()
    x = torch.randn(2, 4, 9, 7, dtype=F64)
    with torch.no_grad():
        expected = layer(x)
        layer.convert_to_deploy()
        weight = layer.conv_bn_fused.weight.clone()
        layer.convert_to_deploy()  # a second call changes nothing
        torch.testing.assert_close(layer(x), expected, rtol=1e-13, atol=1e-13)
    assert torch.equal(layer.conv_bn_fused.weight, weight) and layer.conv_bn_fused.groups == 2
    assert list(layer.state_dict()) == ["conv_bn_fused.weight", "conv_bn_fused.bias"]
    block = VGGBlock(4, 4, act="relu").double().eval()
    perturb(block)
    with torch.no_grad():
        expected = block(x)
        block.convert_to_deploy()
        block.convert_to_deploy()
        torch.testing.assert_close(block(x), expected, rtol=1e-13, atol=1e-13)
    assert list(block.state_dict()) == ["conv.weight", "conv.bias"]


def test_encoder_widths_follow_the_official_rounding():
    """n: branch channels round(0.34 * 128 // 2) = 21, round(3 * 0.5) = 2 RepVGG blocks (Python rounds half to
    even); s: round(0.5 * 256 // 2) = 64 and 1 block."""
    with torch.device("meta"):
        n = dfine_hybrid_encoder(**our_encoder_kwargs(reference.ENCODER_PRESETS["n"]))
        s = dfine_hybrid_encoder(**our_encoder_kwargs(reference.ENCODER_PRESETS["s"]))
    assert n.fpn_blocks[0].cv2[1].conv.out_channels == 21 and len(n.fpn_blocks[0].cv2[0].bottlenecks) == 2
    assert s.pan_blocks[1].cv3[1].conv.out_channels == 64 and len(s.pan_blocks[1].cv3[0].bottlenecks) == 1
    assert isinstance(s.downsample_convs[0], nn.Sequential) and isinstance(s.lateral_convs[0].act, nn.Identity)
    assert [name for name, _ in s.named_buffers() if name.startswith("pos_embed")] == ["pos_embed2"]
    assert not any(name.startswith("pos_embed") for name in s.state_dict())


# ---------------------------------------------------------------------------------------------------------------
# The presets: configs/dfine_*.yaml through the flags and build_model, as a user builds them

def preset_args(config: str, *extra: str):
    """The parsed, checked flags of ``configs/<config>.yaml`` for 80 classes, without downloading weights."""
    import argparse

    import cli
    from util.config import parse_args_with_config

    parser = argparse.ArgumentParser(parents=[cli.get_args_parser()])
    args = parse_args_with_config(parser, ["--config", f"configs/{config}.yaml", "--num_classes", "80",
                                           "--no_pretrained_backbone", "--device", "cpu", *extra])
    cli.check_args(args)
    return cli.resolve_data_pipeline(args)


def official_multiscale_sizes(repeat: int | None) -> list[int]:
    """The official ``generate_scales(640, repeat)`` order: 480..608, 640 ``repeat`` times, 800..672 (none
    without ``repeat``)."""
    if repeat is None:
        return []
    return [480, 512, 544, 576, 608] + [640] * repeat + [800, 768, 736, 704, 672]


@pytest.mark.parametrize("preset", sorted(reference.OFFICIAL_CONFIGS))
def test_preset_builds_the_official_state_dict_through_build_model(preset, golden):
    from models import build_model

    with torch.device("meta"):
        model, criterion, postprocessors = build_model(preset_args(f"dfine_{preset}"))
        assert reference.state_names(model) == golden["names"][f"model/{preset}"]
        assert reference.state_names(model.deploy()) == golden["names"][f"model_deploy/{preset}"]
    official = reference.CRITERION_PRESET
    assert criterion.loss_weights == official["weight_dict"]
    assert (criterion.alpha, criterion.gamma, criterion.reg_max) == (official["alpha"], official["gamma"],
                                                                      official["reg_max"])
    assert criterion.teacher_self_term  # D-FINE's criterion: a zero DDF term for the teacher layer
    costs, matcher = reference.MATCHER_PRESET["weight_dict"], criterion.matcher
    assert isinstance(matcher, DFINEHungarianMatcher)
    assert (matcher.cost_class, matcher.cost_bbox, matcher.cost_giou, matcher.alpha, matcher.gamma) == (
        costs["cost_class"], costs["cost_bbox"], costs["cost_giou"], reference.MATCHER_PRESET["alpha"],
        reference.MATCHER_PRESET["gamma"])
    post = postprocessors["bbox"]
    assert post.num_top_queries == reference.POSTPROCESSOR_PRESET["num_top_queries"]
    assert post.category_ids == COCO_IDS


@pytest.mark.parametrize("preset", sorted(reference.OFFICIAL_CONFIGS))
def test_preset_values_are_the_official_configs(preset):
    """What each flag resolves to equals the official config's value (tools/reference/dfine.py checks those values
    against the official YAML files when it runs): model, loss and training recipe."""
    from models.param_groups import parse_group_pattern

    args = preset_args(f"dfine_{preset}")
    backbone = reference.BACKBONE_PRESETS[preset]
    ours = {"name": args.hgnetv2_name, "return_idx": args.return_idx, "freeze_at": args.freeze_at,
            "freeze_norm": args.freeze_norm, "use_lab": args.use_lab, "freeze_stem_only": args.freeze_stem_only}
    assert {key: ours[key] for key in backbone} == backbone
    encoder = reference.ENCODER_PRESETS[preset]
    ours = {"hidden_dim": args.enc_hidden_dim, "use_encoder_idx": args.use_encoder_idx,
            "num_encoder_layers": args.enc_layers, "nhead": args.nheads, "dim_feedforward": args.enc_dim_feedforward,
            "dropout": args.dropout, "enc_act": args.enc_act, "expansion": args.expansion,
            "depth_mult": args.depth_mult, "act": args.act, "eval_spatial_size": args.eval_spatial_size}
    assert ours == {key: encoder[key] for key in ours}
    decoder = reference.DECODER_PRESETS[preset]
    ours = {"hidden_dim": args.hidden_dim, "num_levels": args.num_feature_levels, "num_layers": args.dec_layers,
            "eval_idx": args.eval_idx, "num_queries": args.num_queries, "num_denoising": args.num_denoising,
            "label_noise_ratio": args.label_noise_ratio, "reg_max": args.reg_max, "reg_scale": args.reg_scale,
            "layer_scale": args.layer_scale, "num_points": args.num_points, "dim_feedforward": args.dim_feedforward,
            "cross_attn_method": args.cross_attn_method, "query_select_method": args.query_select_method,
            "num_classes": args.num_classes, "eval_spatial_size": args.eval_spatial_size}
    assert {key: ours[key] for key in decoder if key in ours} == {key: decoder[key] for key in decoder if key in ours}
    assert (args.activation, args.mlp_act, args.use_mal) == ("relu", "relu", False)
    training = reference.TRAINING_PRESETS[preset]
    assert (args.lr, args.lr_backbone, args.weight_decay, args.epochs, args.stop_epoch) == (
        training["lr"], training["lr_backbone"], training["weight_decay"], training["epochs"], training["stop_epoch"])
    assert (args.ema, args.ema_warmups, args.ema_restart_decay) == (
        training["ema_decay"], training["ema_warmups"], training["ema_restart_decay"])
    assert (args.clip_max_norm, args.warmup_iters, args.batch_size * 4) == (
        training["clip_max_norm"], training["warmup_duration"], training["total_batch_size"])
    assert args.multiscale_sizes == official_multiscale_sizes(training["base_size_repeat"])
    assert args.lr_scheduler == "step" and args.lr_drop > args.epochs  # the official milestone is never reached
    groups = [parse_group_pattern(text) for text in args.optimizer_groups]
    assert [{"params": g.pattern, **({"lr": g.lr} if g.lr is not None else {}),
             **({"weight_decay": g.weight_decay} if g.weight_decay is not None else {})} for g in groups] == [
        {**group, **({"weight_decay": float(group["weight_decay"])} if "weight_decay" in group else {})}
        for group in training["groups"]]
    assert args.data_pipeline == "rtdetr" and args.image_size == training["base_size"] and args.remap_mscoco_category
