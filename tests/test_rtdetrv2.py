"""RT-DETRv2's decoder, whole model, criterion, matcher and post-processor, and the shared parts they added
(per-level points and discrete sampling in models/layers/ms_deform_attn.py, contrastive denoising groups in
models/layers/denoising.py).

The official numbers come from tools/reference/rtdetrv2.py (run it with a clone of lyuwenyu/RT-DETR to regenerate
tests/golden/rtdetrv2_reference.pt); the tests never import the official code. The other tests check against values
computed here by hand or by a direct computation.
"""
import copy
import math

import pytest
import torch

from models.criterion import VarifocalSetCriterion
from models.layers.box_encoding import inverse_sigmoid
from models.layers.denoising import contrastive_denoising_group, contrastive_denoising_indices
from models.layers.ms_deform_attn import MSDeformableAttention, ms_deform_attn_core
from models.layers.token_positions import rtdetr_anchors
from models.losses import varifocal_loss
from models.matcher import FocalHungarianMatcher, HungarianMatcher
from models.postprocess import RTDETRPostProcessor
from models.rtdetrv2.decoder import RTDETRTransformerv2
from models.rtdetrv2.rtdetrv2 import RTDETR
from tests.golden_values import COCO_IDS, assert_same_values
from tools.reference import rtdetrv2 as reference
from util.box_ops import box_cxcywh_to_xyxy
from util.nested_tensor import NestedTensor

pytestmark = pytest.mark.usefixtures("one_thread")



@pytest.fixture(scope="module")
def golden() -> dict:
    return reference.load_reference()


def tiny_decoder(**overrides) -> RTDETRTransformerv2:
    torch.manual_seed(reference.CASE_SEED)
    decoder = RTDETRTransformerv2(**{**reference.DECODER_CASES["denoising_points_list"][0], **overrides})
    reference.perturb(decoder)
    return decoder.double()


def square_maps() -> list[torch.Tensor]:
    return reference.case_inputs(reference.DECODER_CASES["denoising_points_list"][1])


# ---------------------------------------------------------------------------------------------------------------
# Against the official numbers

@pytest.mark.parametrize("name", sorted(reference.DECODER_CASES))
def test_decoder_reproduces_the_official_numbers(name, golden):
    """Initial weights from the official seed; perturbed, float64: every training output, dn_meta, the criterion's
    terms, the matcher's indices, the gradients, and the evaluation outputs."""
    kwargs = reference.DECODER_CASES[name][0]
    torch.manual_seed(reference.CASE_SEED)
    decoder = RTDETRTransformerv2(**kwargs)
    criterion = reference.our_criterion(kwargs["num_classes"], kwargs["num_layers"])
    assert_same_values(reference.run_decoder_case(decoder, criterion, name), golden["decoder"][name], name)


@pytest.mark.parametrize("name", sorted(reference.MODEL_CASES))
def test_whole_model_reproduces_the_official_numbers(name, golden):
    """Backbone, encoder and decoder from the official seed; training step with the criterion, evaluation,
    post-processing and the deployed model, in float64."""
    kwargs = reference.MODEL_CASES[name][0]
    torch.manual_seed(reference.CASE_SEED)
    model = reference.our_model(kwargs["backbone"], kwargs["encoder"], kwargs["decoder"])
    criterion = reference.our_criterion(kwargs["decoder"]["num_classes"], kwargs["decoder"]["num_layers"])
    postprocessor = RTDETRPostProcessor(num_classes=kwargs["decoder"]["num_classes"],
                                        num_top_queries=kwargs["num_top_queries"])
    actual = reference.run_model_case(model, criterion, postprocessor, name)
    assert_same_values(actual, golden["model"][name], name)


@pytest.mark.parametrize("name", sorted(reference.POSTPROCESSOR_CASES))
def test_postprocessor_reproduces_the_official_detections(name, golden):
    kwargs, _, coco = reference.POSTPROCESSOR_CASES[name]
    postprocessor = RTDETRPostProcessor(**kwargs, category_ids=COCO_IDS if coco else None)
    assert_same_values(reference.run_postprocessor_case(postprocessor, name), golden["postprocessor"][name], name)


@pytest.mark.parametrize("preset", sorted(reference.DECODER_PRESETS))
def test_whole_model_state_dict_names_are_the_official_ones(preset, golden):
    """The five released presets, in training form and after deploy()."""
    with torch.device("meta"):
        model = reference.our_model(reference.BACKBONE_PRESETS[preset], reference.ENCODER_PRESETS[preset],
                                    reference.DECODER_PRESETS[preset])
        assert reference.state_names_and_shapes(model) == golden["names"][f"model/{preset}"]
        assert reference.state_names_and_shapes(model.deploy()) == golden["names"][f"model_deploy/{preset}"]


# ---------------------------------------------------------------------------------------------------------------
# Deformable attention: per-level points, discrete sampling, references

def test_per_level_points_give_the_same_bits_as_equal_counts():
    g = torch.Generator().manual_seed(0)
    shapes = [(3, 4), (2, 3)]
    value = torch.randn(2, 18, 2, 3, generator=g, dtype=torch.float64)
    locations = torch.rand(2, 5, 2, 2, 3, 2, generator=g, dtype=torch.float64) * 1.4 - 0.2
    weights = torch.rand(2, 5, 2, 2, 3, generator=g, dtype=torch.float64)
    per_level = ms_deform_attn_core(value, shapes, None, locations.flatten(3, 4), weights.flatten(3, 4),
                                    points_per_level=[3, 3])
    assert torch.equal(per_level, ms_deform_attn_core(value, shapes, None, locations, weights))


def test_per_level_points_against_a_sum_of_single_level_samples():
    """Levels with 1 and 3 points: the sum of each level sampled alone (the other level's weights zero)."""
    g = torch.Generator().manual_seed(1)
    shapes = [(3, 4), (2, 3)]
    value = torch.randn(1, 18, 2, 3, generator=g, dtype=torch.float64)
    locations = torch.rand(1, 4, 2, 4, 2, generator=g, dtype=torch.float64)
    weights = torch.rand(1, 4, 2, 4, generator=g, dtype=torch.float64)
    both = ms_deform_attn_core(value, shapes, None, locations, weights, points_per_level=[1, 3])
    first = ms_deform_attn_core(value[:, :12], shapes[:1], None, locations[:, :, :, :1], weights[:, :, :, :1],
                                points_per_level=[1])
    second = ms_deform_attn_core(value[:, 12:], shapes[1:], None, locations[:, :, :, 1:], weights[:, :, :, 1:],
                                 points_per_level=[3])
    torch.testing.assert_close(both, first + second, rtol=1e-12, atol=1e-12)


def test_discrete_sampling_reads_the_rounded_cell_clamped_into_a_non_square_map():
    height, width, channels = 3, 5, 2
    value = torch.arange(height * width * channels, dtype=torch.float64).reshape(1, height * width, 1, channels)
    # (x, y) -> cell (floor(x W + 0.5), floor(y H + 0.5)) clamped: column up to W - 1 = 4 (the official: H - 1)
    points = [((0.0, 0.0), (0, 0)), ((0.09, 0.16), (0, 0)), ((0.1, 0.17), (1, 1)), ((0.95, 0.5), (4, 2)),
              ((1.3, -0.4), (4, 0)), ((0.55, 0.99), (3, 3 - 1)), ((-2.0, 0.5), (0, 2))]
    locations = torch.tensor([p for p, _ in points], dtype=torch.float64)[None, None, None]  # [1, 1, 1, P, 2]
    weights = torch.rand(1, 1, 1, len(points), generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    actual = ms_deform_attn_core(value, [(height, width)], None, locations, weights, points_per_level=[len(points)],
                                 method="discrete")
    cells = value[0, :, 0].reshape(height, width, channels)
    expected = sum(w * cells[row, column] for w, (_, (column, row)) in zip(weights.flatten(), points))
    torch.testing.assert_close(actual[0, 0], expected, rtol=0, atol=1e-12)


def test_bad_sampling_method_is_refused():
    with pytest.raises(ValueError):
        MSDeformableAttention(16, 2, 2, 2, method="nearest")
    with pytest.raises(ValueError):
        MSDeformableAttention(16, 2, 2, [2, 2, 2])


def test_initial_offsets_point_each_head_its_way_with_per_level_steps():
    attn = MSDeformableAttention(embed_dim=8, num_heads=4, num_levels=2, num_points=[1, 3])
    bias = attn.sampling_offsets.bias.view(4, 4, 2)  # [heads, sum P, (x, y)]
    directions = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])  # 0, 90, 180, 270 degrees
    steps = torch.tensor([1.0, 1.0, 2.0, 3.0])
    torch.testing.assert_close(bias, directions[:, None] * steps[None, :, None], rtol=0, atol=1e-6)
    assert attn.num_points_scale.dtype == torch.float32
    torch.testing.assert_close(attn.num_points_scale, torch.tensor([1.0, 1 / 3, 1 / 3, 1 / 3]))


def test_point_references_equal_boxes_that_scale_the_offsets_by_the_cell_size():
    """A 2-d reference moves point p of level l by offset / (W_l, H_l); a 4-d box (w, h) moves it by offset / P_l
    * (w, h) / 2: boxes of size 2 P_l / (W_l, H_l) on each level give the same locations."""
    torch.manual_seed(0)
    attn = MSDeformableAttention(embed_dim=8, num_heads=2, num_levels=2, num_points=[1, 3]).double()
    with torch.no_grad():  # random offsets and weights (the buffer num_points_scale stays)
        for param in attn.parameters():
            param.add_(0.5 * torch.randn_like(param))
    shapes = [(3, 4), (2, 3)]
    g = torch.Generator().manual_seed(3)
    query = torch.randn(2, 5, 8, generator=g, dtype=torch.float64)
    value = torch.randn(2, 18, 8, generator=g, dtype=torch.float64)
    points = torch.rand(2, 5, 1, 2, generator=g, dtype=torch.float64).expand(2, 5, 2, 2)
    one_over_points = attn.num_points_scale[[0, 1]].double()  # 1 / P_l, rounded to float32 as official
    cells = torch.tensor([[4.0, 3.0], [3.0, 2.0]], dtype=torch.float64)  # (W_l, H_l)
    boxes = torch.cat([points, (2 / (cells * one_over_points[:, None])).expand(2, 5, 2, 2)], -1)
    torch.testing.assert_close(attn(query, points, value, shapes), attn(query, boxes, value, shapes),
                               rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(attn(query, points[:, :, :1], value, shapes), attn(query, points, value, shapes),
                               rtol=0, atol=0)


def test_value_mask_zeroes_the_values():
    torch.manual_seed(0)
    attn = MSDeformableAttention(embed_dim=8, num_heads=2, num_levels=1, num_points=2).double()
    reference.perturb(attn)
    query, value = torch.randn(1, 3, 8, dtype=torch.float64), torch.randn(1, 6, 8, dtype=torch.float64)
    boxes = torch.rand(1, 3, 1, 4, dtype=torch.float64)
    masked = attn(query, boxes, value, [(2, 3)], value_mask=torch.zeros(1, 6, dtype=torch.bool))
    torch.testing.assert_close(masked, attn.output_proj.bias.expand(1, 3, 8), rtol=0, atol=1e-15)


def test_discrete_attention_keeps_its_offsets_frozen():
    attn = MSDeformableAttention(embed_dim=8, num_heads=2, num_levels=1, num_points=2, method="discrete")
    assert not any(p.requires_grad for p in attn.sampling_offsets.parameters())
    assert attn.attention_weights.weight.requires_grad


# ---------------------------------------------------------------------------------------------------------------
# Contrastive denoising

def class_embed(num_classes: int = 5, dim: int = 4) -> torch.nn.Embedding:
    torch.manual_seed(0)
    return torch.nn.Embedding(num_classes + 1, dim, padding_idx=num_classes)


def test_denoising_group_counts_slots_and_attention_mask():
    targets = [{"labels": torch.tensor([1, 2]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.3, 0.3, 0.1, 0.2]])},
               {"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)},
               {"labels": torch.tensor([0, 3, 4]), "boxes": torch.full((3, 4), 0.4)}]
    embed = class_embed()
    dn = contrastive_denoising_group(targets, 5, num_queries=4, class_embed=embed, num_denoising=10,
                                     label_noise_ratio=0.0, box_noise_scale=0.0)
    # M = 3 targets at most: 10 // 3 = 3 groups of 3 positives + 3 negatives
    assert dn.meta["dn_num_group"] == 3 and dn.meta["dn_num_split"] == [18, 4]
    positives = [[0, 1, 6, 7, 12, 13], [], [0, 1, 2, 6, 7, 8, 12, 13, 14]]
    assert [idx.tolist() for idx in dn.meta["dn_positive_idx"]] == positives
    assert dn.content.shape == (3, 18, 4) and dn.anchors.shape == (3, 18, 4)
    for image, target in enumerate(targets):
        for slot in range(18):
            j = slot % 3
            if j < len(target["labels"]):  # a copy of target j (no noise here)
                torch.testing.assert_close(dn.content[image, slot], embed.weight[target["labels"][j]])
                torch.testing.assert_close(dn.anchors[image, slot], inverse_sigmoid(target["boxes"][j]))
            else:  # padding: the zero class row, box (0, 0, 0, 0)
                assert (dn.content[image, slot] == 0).all()
                torch.testing.assert_close(dn.anchors[image, slot], torch.full((4,), math.log(1e-5)))
    expected = torch.zeros(22, 22, dtype=torch.bool)
    for row in range(22):
        for column in range(18):  # queries see the matching queries; dn queries only their own group
            expected[row, column] = row >= 18 or row // 6 != column // 6
    assert torch.equal(dn.attn_mask, expected)
    indices = contrastive_denoising_indices(dn.meta, targets)
    assert [(q.tolist(), t.tolist()) for q, t in indices] == [
        (positives[0], [0, 1] * 3), ([], []), (positives[2], [0, 1, 2] * 3)]


def test_denoising_noise_moves_positives_less_than_negatives():
    """Each edge moves by u half box sizes, u in [0, 1) for positives and [1, 2) for negatives (boxes small and
    central: no clipping); about half the labels (ratio 1 -> probability 1/2) are redrawn."""
    boxes = torch.tensor([[0.5, 0.5, 0.1, 0.2], [0.4, 0.6, 0.2, 0.1]])
    targets = [{"labels": torch.tensor([1, 2]), "boxes": boxes}]
    torch.manual_seed(3)
    dn = contrastive_denoising_group(targets, 5, 4, class_embed(), num_denoising=200, label_noise_ratio=1.0,
                                     box_noise_scale=1.0)
    assert dn.meta["dn_num_group"] == 100
    noised = dn.anchors[0].sigmoid().view(100, 2, 2, 4)  # [group, positive/negative, target, cxcywh]
    half = torch.cat([boxes[:, 2:], boxes[:, 2:]], -1) / 2
    moved = (box_cxcywh_to_xyxy(noised) - box_cxcywh_to_xyxy(boxes)).abs() / half
    kept_shape = (noised[..., 2:] > 1e-4).all(-1)  # a negative may turn inside out: its size is clipped to 1e-5
    assert kept_shape[:, 0].all() and kept_shape[:, 1].sum() > 100
    assert moved[:, 0].max() < 1 + 1e-4
    assert moved[:, 1][kept_shape[:, 1]].min() > 1 - 1e-4 and moved[:, 1][kept_shape[:, 1]].max() < 2 + 1e-4
    embed = class_embed()
    kept = torch.stack([(dn.content[0, 4 * g: 4 * g + 4] == embed.weight[[1, 2, 1, 2]]).all(-1) for g in range(100)])
    assert 0.6 < kept.float().mean() < 0.7  # kept: not redrawn (1/2) or redrawn to itself (1/2 * 1/5)


def test_denoising_of_a_batch_without_targets_is_one_dummy_group():
    targets = [{"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}] * 2
    torch.manual_seed(0)
    dn = contrastive_denoising_group(targets, 5, 3, class_embed(), num_denoising=100)
    assert dn.meta["dn_num_group"] == 1 and dn.meta["dn_num_split"] == [2, 3]
    assert [len(idx) for idx in dn.meta["dn_positive_idx"]] == [0, 0]
    assert (dn.content == 0).all()  # the padding class
    centre = dn.anchors.sigmoid()[..., :2]
    assert ((centre - 0.5).abs() <= 0.1 + 1e-6).all()  # (0.5, 0.5, 0.1, 0.1) moved by at most a box size
    assert contrastive_denoising_group(targets, 5, 3, class_embed(), num_denoising=0) is None


# ---------------------------------------------------------------------------------------------------------------
# Decoder

def test_anchors_by_hand():
    anchors, valid = rtdetr_anchors([[1, 2], [1, 1], [1, 1], [1, 1], [1, 1], [1, 1]])
    probabilities = anchors.sigmoid()[0]
    torch.testing.assert_close(probabilities[0], torch.tensor([0.25, 0.5, 0.05, 0.05]))
    torch.testing.assert_close(probabilities[1], torch.tensor([0.75, 0.5, 0.05, 0.05]))
    torch.testing.assert_close(probabilities[5], torch.tensor([0.5, 0.5, 0.8, 0.8]))  # level 4: 0.05 * 16
    assert valid[0, :6, 0].all() and not valid[0, 6, 0]  # level 5: size 1.6, outside (0.01, 0.99)
    assert torch.isinf(anchors[0, 6]).all() and anchors.dtype == torch.float32


def test_stored_anchors_serve_only_their_size():
    """In evaluation the stored anchors (eval_spatial_size) are used at that size and equal the computed ones; at
    another size the decoder computes its own (the official would fail)."""
    stored = tiny_decoder().eval()
    computed = tiny_decoder(eval_spatial_size=None).eval()
    stored.anchors, stored.valid_mask = rtdetr_anchors([[8, 8], [4, 4], [2, 2]])  # the buffers before perturbing
    state = {k: v for k, v in stored.state_dict().items() if k not in ("anchors", "valid_mask")}
    computed.load_state_dict(state, strict=True)
    other = [torch.randn(2, c, h, h + 1, dtype=torch.float64) for c, h in zip((8, 12, 16), (6, 3, 2))]
    with torch.no_grad():
        for feats in (square_maps(), other):
            a, b = stored(feats), computed(feats)
            assert torch.equal(a["pred_logits"], b["pred_logits"]) and torch.equal(a["pred_boxes"], b["pred_boxes"])
        stored.anchors += 0.1  # read at the stored size only
        assert not torch.equal(stored(square_maps())["pred_boxes"], computed(square_maps())["pred_boxes"])
        assert torch.equal(stored(other)["pred_boxes"], computed(other)["pred_boxes"])


def test_output_keys_and_shapes_in_training_and_evaluation():
    decoder = tiny_decoder(eval_idx=0)
    targets = reference.case_targets("mixed")
    out = decoder(square_maps(), targets)
    assert list(out) == ["pred_logits", "pred_boxes", "aux_outputs", "enc_aux_outputs", "enc_meta",
                         "dn_aux_outputs", "dn_meta"]
    assert out["pred_logits"].shape == (2, 6, 5) and out["pred_boxes"].shape == (2, 6, 4)
    assert len(out["aux_outputs"]) == 2 and len(out["enc_aux_outputs"]) == 1 and len(out["dn_aux_outputs"]) == 3
    assert out["dn_aux_outputs"][0]["pred_boxes"].shape == (2, 12, 4)  # 8 // 3 = 2 groups of 3 + 3
    assert out["enc_meta"] == {"class_agnostic": False}
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


@pytest.mark.parametrize("kwargs", [{"query_select_method": "best"}, {"cross_attn_method": "bilinear"},
                                    {"feat_strides": [8, 16]}, {"num_levels": 2}, {"eval_idx": 3},
                                    {"num_points": [2, 2]}])
def test_bad_decoder_arguments_are_refused(kwargs):
    with pytest.raises(ValueError):
        RTDETRTransformerv2(**{**reference.DECODER_CASES["denoising_points_list"][0], **kwargs})


# ---------------------------------------------------------------------------------------------------------------
# Whole model

def tiny_model() -> RTDETR:
    kwargs = reference.MODEL_CASES["r18vd_tiny"][0]
    torch.manual_seed(0)
    return reference.our_model(kwargs["backbone"], kwargs["encoder"], kwargs["decoder"])


def test_model_takes_a_tensor_a_list_or_a_nested_tensor_and_deploys():
    model = tiny_model().eval()
    assert RTDETR.takes_targets and list(dict(model.named_children())) == ["backbone", "decoder", "encoder"]
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(images)
        for samples in (list(images), NestedTensor(images, torch.zeros(2, 32, 32, dtype=torch.bool))):
            assert torch.equal(model(samples)["pred_logits"], expected["pred_logits"])
        deployed = model.deploy()(images)
    assert not model.training and model.encoder.fpn_blocks[0].bottlenecks[0].conv is not None
    torch.testing.assert_close(deployed["pred_boxes"], expected["pred_boxes"], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="one size"):
        model([torch.rand(3, 32, 32), torch.rand(3, 32, 40)])


# ---------------------------------------------------------------------------------------------------------------
# Criterion and matcher

def test_varifocal_loss_of_two_queries_by_hand():
    """One image, two queries, two classes; query 0 matched to a class-1 target with IoU 0.6 (xyxy (0.3, 0.3, 0.7,
    0.7) against (0.4, 0.3, 0.8, 0.7): 0.12 / 0.2). Positive term: BCE against 0.6, weight 0.6; the others: BCE
    against 0, weight 0.75 sigmoid(x)^2; summed (mean over the 2 queries times 2), over num_boxes 1."""
    logits = torch.tensor([[[0.5, -1.0], [2.0, 0.0]]], dtype=torch.float64)

    def bce(x, t):
        return -(t * math.log(1 / (1 + math.exp(-x))) + (1 - t) * math.log(1 - 1 / (1 + math.exp(-x))))

    def sigmoid(x):
        return 1 / (1 + math.exp(-x))

    expected = 0.6 * bce(-1.0, 0.6) + sum(0.75 * sigmoid(x) ** 2 * bce(x, 0.0) for x in (0.5, 2.0, 0.0))
    target_score = torch.tensor([[[0.0, 0.6], [0.0, 0.0]]], dtype=torch.float64)
    positive = torch.tensor([[[0, 1], [0, 0]]])
    torch.testing.assert_close(varifocal_loss(logits, target_score, positive, 1.0), torch.tensor(
        expected, dtype=torch.float64), rtol=1e-12, atol=0)
    criterion = VarifocalSetCriterion(FocalHungarianMatcher(), {"loss_vfl": 1}, ["vfl"], alpha=0.75, num_classes=2,
                                      num_decoder_layers=1)
    outputs = {"pred_logits": logits, "pred_boxes": torch.tensor([[[0.5, 0.5, 0.4, 0.4], [0.2, 0.2, 0.1, 0.1]]],
                                                                 dtype=torch.float64)}
    targets = [{"labels": torch.tensor([1]), "boxes": torch.tensor([[0.6, 0.5, 0.4, 0.4]], dtype=torch.float64)}]
    loss = criterion.loss_vfl(outputs, targets, [(torch.tensor([0]), torch.tensor([0]))], 1.0)["loss_vfl"]
    torch.testing.assert_close(loss, torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=0)
    torch.testing.assert_close(criterion(outputs, targets)["loss_vfl"], loss, rtol=0, atol=0)  # matched the same


def test_weight_dict_names_every_term_and_the_terms_come_weighted():
    criterion = reference.our_criterion(num_classes=5, num_layers=3)
    assert criterion.loss_weights == {"loss_vfl": 1, "loss_bbox": 5, "loss_giou": 2}
    bases = ["loss_vfl", "loss_bbox", "loss_giou"]
    suffixes = ["", "_aux_0", "_aux_1", "_dn_0", "_dn_1", "_dn_2", "_enc_0"]
    assert criterion.weight_dict == {f"{b}{s}": 1.0 for s in suffixes for b in bases}
    outputs = tiny_decoder()(square_maps(), reference.case_targets("mixed"))
    losses = criterion(outputs, reference.case_targets("mixed"))
    assert list(losses) == list(criterion.weight_dict)  # r50vd: 3 x (1 + 5 + 6 + 1) = 39 terms
    unweighted = VarifocalSetCriterion(criterion.matcher, {"loss_vfl": 1, "loss_bbox": 1, "loss_giou": 1},
                                       alpha=0.75, num_classes=5, num_decoder_layers=3)
    unweighted = unweighted(outputs, reference.case_targets("mixed"))
    for name, value in losses.items():
        torch.testing.assert_close(value, unweighted[name] * criterion.loss_weights[name.split("_")[0] + "_"
                                                                                    + name.split("_")[1]])
    with pytest.raises(ValueError, match="num_decoder_layers"):
        reference.our_criterion(num_classes=5, num_layers=2)(outputs, reference.case_targets("mixed"))
    with pytest.raises(ValueError):
        VarifocalSetCriterion(criterion.matcher, {"loss_ce": 1})
    with pytest.raises(ValueError):
        VarifocalSetCriterion(criterion.matcher, {"loss_vfl": 1}, ["focal"])
    without_aux = VarifocalSetCriterion(criterion.matcher, criterion.loss_weights, aux_loss=False)
    assert list(without_aux.weight_dict) == bases
    without_dn = VarifocalSetCriterion(criterion.matcher, criterion.loss_weights, num_decoder_layers=2, num_denoising=0)
    assert [name for name in without_dn.weight_dict if "_dn_" in name] == []
    assert len(without_dn.weight_dict) == 3 * (1 + 1 + 1)


def test_shared_indices_reuse_the_last_layers_matching():
    criterion = reference.our_criterion(num_classes=5, num_layers=3)
    shared = copy.copy(criterion)
    shared.share_matched_indices = True
    targets = reference.case_targets("mixed")
    outputs = tiny_decoder()(square_maps(), targets)
    indices = criterion.matcher(outputs, targets)
    expected = criterion.weighted_losses(outputs["aux_outputs"][1], targets, indices, 3.0, "_aux_1")
    losses = shared(outputs, targets)
    assert all(torch.equal(losses[k], v) for k, v in expected.items())


def test_agnostic_encoder_terms_treat_every_target_as_class_0():
    """The official matches the one-logit encoder head with the real classes (failing for any class but 0); here
    the encoder terms of any labels are those of all-zero labels."""
    decoder = tiny_decoder(query_select_method="agnostic")
    outputs = decoder(square_maps(), reference.case_targets("mixed"))
    criterion = reference.our_criterion(num_classes=5, num_layers=3)
    real = criterion(outputs, reference.case_targets("mixed"))
    zero = criterion(outputs, reference.case_targets("class_0"))
    for name in ("loss_vfl_enc_0", "loss_bbox_enc_0", "loss_giou_enc_0"):
        torch.testing.assert_close(real[name], zero[name], rtol=0, atol=0)
    assert not torch.equal(real["loss_vfl"], zero["loss_vfl"])


def test_matcher_keeps_float64_costs_and_gives_scipy_float32_for_half_precision(monkeypatch):
    g = torch.Generator().manual_seed(0)
    outputs = {"pred_logits": torch.randn(2, 5, 3, generator=g, dtype=torch.float64),
               "pred_boxes": 0.3 + 0.4 * torch.rand(2, 5, 4, generator=g, dtype=torch.float64)}
    targets = reference.case_targets("class_0")
    matcher = FocalHungarianMatcher(cost_class=2, cost_bbox=5, cost_giou=2)
    assert {c.dtype for c in matcher.cost_matrices(outputs, targets)} == {torch.float64}
    half = {k: v.bfloat16() for k, v in outputs.items()}
    cdist = torch.cdist  # the CPU has no half-precision cdist (CUDA has): computed in float32, given back in bf16
    monkeypatch.setattr(torch, "cdist", lambda a, b, p: cdist(a.float(), b.float(), p=p).to(a.dtype))
    assert {c.dtype for c in HungarianMatcher().cost_matrices(half, targets)} == {torch.float32}
    assert [len(i) for i, _ in matcher(half, targets)] == [3, 0]


# ---------------------------------------------------------------------------------------------------------------
# Post-processor

def test_postprocessor_scales_by_width_and_height_and_maps_labels():
    logits = torch.tensor([[[2.0, -3.0, 0.0], [-1.0, -2.0, 3.0]]])
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.4], [0.25, 0.75, 0.5, 0.5]]])
    sizes = torch.tensor([[200, 100]])  # (width, height)
    postprocessor = RTDETRPostProcessor(num_classes=3, num_top_queries=2, category_ids=[10, 20, 30])
    assert RTDETRPostProcessor.target_sizes_wh
    (result,) = postprocessor({"pred_logits": logits, "pred_boxes": boxes}, sizes)
    assert result["labels"].tolist() == [30, 10]  # (query 1, class 2) then (query 0, class 0)
    torch.testing.assert_close(result["scores"], torch.sigmoid(torch.tensor([3.0, 2.0])))
    torch.testing.assert_close(result["boxes"], torch.tensor([[0.0, 50.0, 100.0, 100.0], [80.0, 30.0, 120.0, 70.0]]))
    labels, deployed_boxes, scores = postprocessor.deploy()({"pred_logits": logits, "pred_boxes": boxes}, sizes)
    assert labels.tolist() == [[2, 0]] and torch.equal(deployed_boxes[0], result["boxes"])
    with pytest.raises(ValueError):
        RTDETRPostProcessor(num_classes=80, category_ids=COCO_IDS[:79])


# ---------------------------------------------------------------------------------------------------------------
# The presets: configs/rtdetrv2_*.yaml through the flags and build_model, as a user builds them

def _preset_args(preset: str, *extra: str):
    import argparse

    import cli
    from util.config import parse_args_with_config

    parser = argparse.ArgumentParser(parents=[cli.get_args_parser()])
    args = parse_args_with_config(parser, ["--config", f"configs/rtdetrv2_{preset}.yaml", "--num_classes", "80",
                                           "--no_pretrained_backbone", "--device", "cpu", *extra])
    cli.check_args(args)
    return cli.resolve_data_pipeline(args)


@pytest.mark.parametrize("preset", sorted(reference.DECODER_PRESETS))
def test_preset_builds_the_official_state_dict_through_build_model(preset, golden):
    from models import build_model

    with torch.device("meta"):
        model, criterion, postprocessors = build_model(_preset_args(preset))
        assert reference.state_names_and_shapes(model) == golden["names"][f"model/{preset}"]
        assert reference.state_names_and_shapes(model.deploy()) == golden["names"][f"model_deploy/{preset}"]
    assert criterion.loss_weights == reference.CRITERION_PRESET["weight_dict"]
    official = reference.CRITERION_PRESET
    assert (criterion.alpha, criterion.gamma) == (official["alpha"], official["gamma"])
    costs = reference.MATCHER_PRESET["weight_dict"]
    matcher = criterion.matcher
    assert (matcher.cost_class, matcher.cost_bbox, matcher.cost_giou, matcher.alpha, matcher.gamma) == (
        costs["cost_class"], costs["cost_bbox"], costs["cost_giou"], reference.MATCHER_PRESET["alpha"],
        reference.MATCHER_PRESET["gamma"])
    post = postprocessors["bbox"]
    assert post.num_top_queries == reference.POSTPROCESSOR_PRESET["num_top_queries"]
    # remap_mscoco_category: label i is the i-th of COCO's 80 ids (12, 26, 29, 30, 45, 66, 68, 69, 71, 83 absent)
    assert post.category_ids[:12] == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13] and post.category_ids[-1] == 90
    assert len(post.category_ids) == 80 and 12 not in post.category_ids and 83 not in post.category_ids


@pytest.mark.parametrize("preset", sorted(reference.DECODER_PRESETS))
def test_preset_values_are_the_official_configs(preset):
    """What each flag resolves to equals the official config's value (tools/reference/rtdetrv2.py checks those
    against the official YAML files when it runs)."""
    args = _preset_args(preset)
    backbone, encoder, decoder = (reference.BACKBONE_PRESETS[preset], reference.ENCODER_PRESETS[preset],
                                  reference.DECODER_PRESETS[preset])
    ours = {"depth": args.depth, "variant": args.variant, "freeze_at": args.freeze_at,
            "return_idx": args.return_idx, "num_stages": 4, "freeze_norm": args.freeze_norm}
    assert ours == backbone
    assert {"hidden_dim": args.enc_hidden_dim, "use_encoder_idx": args.use_encoder_idx,
            "num_encoder_layers": args.enc_layers, "nhead": args.nheads, "dim_feedforward": args.enc_dim_feedforward,
            "dropout": args.dropout, "enc_act": args.enc_act, "expansion": args.expansion,
            "depth_mult": args.depth_mult, "act": args.act, "eval_spatial_size": args.eval_spatial_size} == {
        k: encoder[k] for k in ("hidden_dim", "use_encoder_idx", "num_encoder_layers", "nhead", "dim_feedforward",
                                "dropout", "enc_act", "expansion", "depth_mult", "act", "eval_spatial_size")}
    assert {"hidden_dim": args.hidden_dim, "num_levels": args.num_feature_levels, "num_layers": args.dec_layers,
            "num_queries": args.num_queries, "num_denoising": args.num_denoising,
            "label_noise_ratio": args.label_noise_ratio, "box_noise_scale": args.box_noise_scale,
            "eval_idx": args.eval_idx, "num_points": args.num_points, "cross_attn_method": args.cross_attn_method,
            "query_select_method": args.query_select_method, "num_classes": args.num_classes,
            "eval_spatial_size": args.eval_spatial_size} == {
        k: v for k, v in decoder.items() if k not in ("feat_channels", "feat_strides")}
    assert args.data_pipeline == "rtdetr" and args.image_size == 640 and args.remap_mscoco_category


# ---------------------------------------------------------------------------------------------------------------
# Official-format checkpoints through main.py --eval

def test_official_checkpoint_format_gives_the_ema_weights():
    from util.training_state import model_state

    ema, raw = {"w": torch.ones(1)}, {"w": torch.zeros(1)}
    assert model_state({"ema": {"module": ema, "updates": 5}, "model": raw}, "--resume") is ema  # as official
    assert model_state({"model": raw}, "--resume") is raw  # a file without EMA: the model's weights


def test_main_eval_of_an_official_format_checkpoint(tiny_coco, tmp_path, capsys):
    """A file as the official releases are ({"ema": {"module": state dict}}), evaluated by main.py --eval with the
    flags it was built with: strict load, COCO evaluation of its detections."""
    import cli
    from main import command_line
    from models import build_model
    from tests.conftest import TINY_FLAGS, tiny_architecture_flags

    flags = [*tiny_architecture_flags("rtdetrv2", TINY_FLAGS), "--num_classes", "12", "--coco_path", str(tiny_coco)]
    torch.manual_seed(3)
    model = build_model(cli.resolve_data_pipeline(cli.get_args_parser().parse_args(flags)))[0]
    torch.save({"ema": {"module": model.state_dict(), "updates": 100}}, tmp_path / "official.pth")
    status = command_line([*flags, "--eval", "--resume", str(tmp_path / "official.pth"),
                           "--output_dir", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert status == 0 and "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all" in out
    assert "COCO evaluation of 8 images" in out
