"""Parts shared by several architectures (models/layers/, models/matcher.py, models/postprocess.py,
models/criterion.py, util/box_ops.py), on hand-made cases and against direct computations."""
import math

import pytest
import torch
from torch import nn

from models.criterion import FocalSetCriterion, SetCriterion
from models.layers.box_encoding import anchor_sine_embedding, inverse_sigmoid, sine_embedding
from models.layers.clones import clones
from models.layers.denoising import denoising_attention_mask, denoising_indices, num_denoising_groups, prepare_denoising
from models.layers.input_projections import level_projections, project_levels
from models.layers.levels import flatten_levels, valid_ratios
from models.layers.query_selection import gather_tokens, top_k_tokens
from models.layers.token_positions import encoder_reference_points
from models.matcher import FocalHungarianMatcher, HungarianMatcher
from models.position_encoding import PositionEmbeddingSine
from models.postprocess import SigmoidTopKPostProcess
from tests.handmade_targets import handmade_targets
from util.box_ops import box_cxcywh_to_xyxy, generalized_box_iou, paired_generalized_box_iou
from util.nested_tensor import NestedTensor

# --------------------------------------------------------------------------------------------------------------
# contrastive denoising


def test_denoising_group_count_follows_the_official_rule():
    assert num_denoising_groups(100, 3) == 200 // 6  # a budget of 2 * 100 queries
    assert num_denoising_groups(50, 7) == 100 // 14
    assert num_denoising_groups(100, 150) == 1  # never fewer than one group
    assert num_denoising_groups(3, 5) == 6  # below a budget of 100: 2 * dn_number groups
    assert num_denoising_groups(100, 0) == 1  # no targets: one empty group


def test_denoising_queries_without_noise_copy_the_targets_into_positive_and_negative_parts():
    label_enc = nn.Embedding(4, 5)
    targets = handmade_targets()
    dn = prepare_denoising(targets, dn_number=2, label_noise_ratio=0.0, box_noise_scale=0.0, num_queries=10,
                           num_classes=3, label_enc=label_enc, logit_eps=1e-3)
    groups, pad = 4, 3  # 2 * dn_number groups (below the budget of 100), parts of the most crowded image's size
    assert dn.meta == {"pad_size": 2 * pad * groups, "num_dn_group": groups}
    assert dn.content.shape == (3, 24, 5) and dn.anchors.shape == (3, 24, 4)
    for b, t in enumerate(targets):
        n = len(t["labels"])
        for g in range(groups):
            for part in (0, 1):  # positives, then negatives
                start = (2 * g + part) * pad
                for j in range(pad):
                    content, anchor = dn.content[b, start + j], dn.anchors[b, start + j]
                    if j < n:
                        assert torch.equal(content, label_enc.weight[t["labels"][j]])
                        torch.testing.assert_close(anchor.sigmoid(), t["boxes"][j])
                    else:  # padding slot
                        assert not content.any() and not anchor.any()


def test_denoising_box_noise_moves_positives_less_and_negatives_more_than_the_scale():
    targets = handmade_targets()
    scale = 0.4
    torch.manual_seed(0)
    dn = prepare_denoising(targets, dn_number=2, label_noise_ratio=0.0, box_noise_scale=scale, num_queries=10,
                           num_classes=3, label_enc=nn.Embedding(4, 5), logit_eps=1e-3)
    pad, positives, negatives = 3, 0, 0
    for b, t in enumerate(targets):
        corners = box_cxcywh_to_xyxy(t["boxes"])
        half = torch.cat([t["boxes"][:, 2:], t["boxes"][:, 2:]], 1) / 2
        for g in range(4):
            for part in (0, 1):
                start = (2 * g + part) * pad
                noised = box_cxcywh_to_xyxy(dn.anchors[b, start:start + len(t["labels"])].sigmoid())
                moved = (noised - corners).abs() / (scale * half)  # in units of scale * half size, per edge
                if part == 0:
                    assert (moved <= 1 + 1e-4).all()
                    positives += len(moved)
                else:
                    assert ((moved >= 1 - 1e-4) & (moved <= 2 + 1e-4)).all()
                    negatives += len(moved)
    assert positives == negatives == 4 * 5  # every group: one positive and one negative per target


def test_denoising_label_noise_flips_about_half_the_ratio():
    n, num_classes, ratio = 50, 10, 0.5
    labels = torch.arange(n) % num_classes
    targets = [{"labels": labels, "boxes": torch.full((n, 4), 0.5)}]
    label_enc = nn.Embedding(num_classes + 1, 2)
    label_enc.weight.data = torch.arange(num_classes + 1.0)[:, None].repeat(1, 2)  # row i = (i, i)
    torch.manual_seed(3)
    dn = prepare_denoising(targets, dn_number=1000, label_noise_ratio=ratio, box_noise_scale=0.4, num_queries=5,
                           num_classes=num_classes, label_enc=label_enc, logit_eps=1e-3)
    groups = dn.meta["num_dn_group"]
    assert groups == 2000 // (2 * n)
    drawn = dn.content[0, :, 0].round().long()
    assert ((drawn >= 0) & (drawn < num_classes)).all()
    true = labels.repeat(2 * groups)
    flipped = (drawn != true).float().mean().item()
    # a label is redrawn with probability ratio / 2, to another class with probability 1 - 1 / num_classes
    assert flipped == pytest.approx(ratio / 2 * (1 - 1 / num_classes), abs=0.04)
    # the first draw decides which labels are redrawn (one uniform per label, the official order)
    torch.manual_seed(3)
    redrawn = torch.rand(len(true)) < ratio / 2
    assert not (drawn != true)[~redrawn].any()


def test_attention_mask_separates_matching_queries_and_denoising_groups():
    pad_size, groups, queries = 12, 3, 5
    mask = denoising_attention_mask(pad_size, groups, queries, torch.device("cpu"))
    group_of = [i // (pad_size // groups) for i in range(pad_size)]
    for i in range(pad_size + queries):
        for j in range(pad_size + queries):
            if i >= pad_size:  # matching query: sees the matching queries only
                blocked = j < pad_size
            else:  # denoising query: sees its own group and the matching queries
                blocked = j < pad_size and group_of[i] != group_of[j]
            assert bool(mask[i, j]) == blocked, (i, j)


def test_denoising_indices_pair_positive_queries_with_their_targets():
    targets = handmade_targets()
    indices = denoising_indices(targets, {"pad_size": 24, "num_dn_group": 4})
    assert indices[0][0].tolist() == [0, 1, 2, 6, 7, 8, 12, 13, 14, 18, 19, 20]
    assert indices[0][1].tolist() == [0, 1, 2] * 4
    assert indices[1][0].numel() == indices[1][1].numel() == 0
    assert indices[2][0].tolist() == [0, 1, 6, 7, 12, 13, 18, 19]


def test_top_k_tokens_ranks_by_the_best_class():
    logits = torch.tensor([[[0.0, 1.0], [3.0, -1.0], [0.5, 0.2], [-2.0, 2.0]]])
    assert top_k_tokens(logits, 3).tolist() == [[1, 3, 0]]


def test_focal_matching_cost_on_hand_computed_numbers():
    matcher = FocalHungarianMatcher(cost_class=2, cost_bbox=5, cost_giou=2)
    logits = torch.tensor([[0.0, 2.0, -1.0], [1.0, -3.0, 0.5]])
    cost = matcher.class_cost(logits, torch.tensor([2, 0, 2]))

    def focal_cost(x: float) -> float:
        p = 1 / (1 + math.exp(-x))
        return 0.25 * (1 - p) ** 2 * -math.log(p + 1e-8) - 0.75 * p ** 2 * -math.log(1 - p + 1e-8)

    expected = [[focal_cost(row[j]) for j in (2, 0, 2)] for row in logits.tolist()]
    torch.testing.assert_close(cost, torch.tensor(expected), rtol=1e-6, atol=1e-7)
    assert focal_cost(0.0) == pytest.approx(-0.5 * math.log(2) * 0.25, rel=1e-6)


def test_postprocess_keeps_the_best_query_class_pairs_with_their_boxes_in_pixels():
    logits = torch.tensor([[[0.0, 3.0, -1.0], [2.0, 1.0, 4.0]]])
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.4], [0.25, 0.75, 0.5, 0.5]]])
    sizes = torch.tensor([[100, 200]])  # h, w
    (result,) = SigmoidTopKPostProcess(num_select=3)({"pred_logits": logits, "pred_boxes": boxes}, sizes)
    torch.testing.assert_close(result["scores"], torch.sigmoid(torch.tensor([4.0, 3.0, 2.0])))
    assert result["labels"].tolist() == [2, 1, 0]
    first, second = [0.0, 50.0, 100.0, 100.0], [80.0, 30.0, 120.0, 70.0]  # xyxy of queries 1 and 0
    torch.testing.assert_close(result["boxes"], torch.tensor([first, second, first]))
    (everything,) = SigmoidTopKPostProcess()({"pred_logits": logits, "pred_boxes": boxes}, sizes)
    assert len(everything["scores"]) == 6  # 100 asked, 2 queries x 3 classes exist


def test_valid_ratios_and_encoder_reference_points_on_a_padded_mask():
    masks = [torch.ones(1, 4, 4, dtype=torch.bool), torch.ones(1, 2, 2, dtype=torch.bool)]
    masks[0][0, :2, :3] = False  # image: 2 of 4 rows, 3 of 4 columns
    masks[1][0, :1, :2] = False
    ratios = torch.stack([valid_ratios(m) for m in masks], 1)
    torch.testing.assert_close(ratios, torch.tensor([[[0.75, 0.5], [1.0, 0.5]]]))
    points = encoder_reference_points([(4, 4), (2, 2)], ratios)
    assert points.shape == (1, 20, 2, 2)
    # level-0 cell (row 1, column 2): (2.5 / 3, 1.5 / 2) of the image; its own level sees its padded cell centre
    torch.testing.assert_close(points[0, 6], torch.tensor([[2.5 / 4, 1.5 / 4], [2.5 / 3, 0.375]]))
    # level-1 cell (row 1, column 0), under padding: past 1 in y of the image
    torch.testing.assert_close(points[0, 18], torch.tensor([[0.5 / 2 * 0.75, 1.5 * 0.5], [0.25, 0.75]]))


# --------------------------------------------------------------------------------------------------------------
# box encodings, clones, levels, projections


def test_sine_embedding_against_a_direct_computation():
    coords = torch.tensor([[0.1, 0.7, 0.25, 0.5], [1.0, 0.0, 0.33, 0.9]])
    num_feats, temperature = 6, 20
    expected = torch.zeros(2, 4 * num_feats)
    for row in range(2):
        for c in range(4):
            for i in range(num_feats):
                angle = coords[row, c].item() * 2 * math.pi / temperature ** (2 * (i // 2) / num_feats)
                expected[row, c * num_feats + i] = math.sin(angle) if i % 2 == 0 else math.cos(angle)
    torch.testing.assert_close(sine_embedding(coords, num_feats, temperature), expected)
    # DINO's anchor embedding: the same features with the coordinates in the order y, x, w, h
    swapped = torch.cat([expected[:, num_feats:2 * num_feats], expected[:, :num_feats], expected[:, 2 * num_feats:]], 1)
    torch.testing.assert_close(anchor_sine_embedding(coords, num_feats, temperature), swapped)
    torch.testing.assert_close(anchor_sine_embedding(coords[:, :2], num_feats, temperature), swapped[:, :2 * num_feats])
    with pytest.raises(ValueError, match="boxes"):
        anchor_sine_embedding(torch.zeros(2, 3))


@pytest.mark.parametrize("eps", [1e-5, 1e-3])
def test_inverse_sigmoid_inverts_the_sigmoid_inside_the_clamp(eps):
    x = torch.tensor([eps, 0.1, 0.5, 0.9, 1 - eps], dtype=torch.float64)
    torch.testing.assert_close(inverse_sigmoid(x, eps).sigmoid(), x)
    edges = inverse_sigmoid(torch.tensor([-1.0, 0.0, 1.0, 2.0], dtype=torch.float64), eps)
    torch.testing.assert_close(edges, torch.tensor([math.log(eps / 1)] * 2 + [math.log(1 / eps)] * 2,
                                                   dtype=torch.float64))


def test_clones_are_equal_at_first_and_independent():
    layers = clones(nn.Linear(3, 2), 3)
    assert all(torch.equal(layer.weight, layers[0].weight) for layer in layers)
    with torch.no_grad():
        layers[1].weight.add_(1.0)
    assert not torch.equal(layers[1].weight, layers[0].weight) and torch.equal(layers[2].weight, layers[0].weight)


def test_flatten_levels_concatenates_levels_row_by_row_with_their_embeddings():
    srcs = [torch.arange(2 * 3 * 2 * 3.0).view(2, 3, 2, 3), torch.arange(2 * 3 * 1 * 2.0).view(2, 3, 1, 2) + 100]
    masks = [torch.zeros(2, 2, 3, dtype=torch.bool), torch.zeros(2, 1, 2, dtype=torch.bool)]
    masks[0][1, :, 2] = True  # second image: 2 of 3 columns
    masks[1][1, :, 1] = True
    pos = [torch.ones_like(s) for s in srcs]
    level_embed = torch.tensor([[1.0, 2, 3], [10, 20, 30]])
    levels = flatten_levels(srcs, masks, pos, level_embed)
    assert levels.sizes == [(2, 3), (1, 2)]
    assert levels.spatial_shapes.tolist() == [[2, 3], [1, 2]] and levels.level_start_index.tolist() == [0, 6]
    # token 4 of image 1 = level 0, row 1, column 1; token 7 = level 1, column 1
    torch.testing.assert_close(levels.src[1, 4], srcs[0][1, :, 1, 1])
    torch.testing.assert_close(levels.src[1, 7], srcs[1][1, :, 0, 1])
    torch.testing.assert_close(levels.pos[0, 7], 1 + level_embed[1])
    assert levels.mask[1].tolist() == [False, False, True, False, False, True, False, True]
    torch.testing.assert_close(levels.valid_ratios[1], torch.tensor([[2 / 3, 1.0], [0.5, 1.0]]))
    assert torch.equal(flatten_levels(srcs, masks, pos, None).pos, levels.pos - level_embed.repeat_interleave(
        torch.tensor([6, 2]), dim=0))


def test_extra_levels_halve_the_last_map_and_get_masks_and_positions():
    torch.manual_seed(0)
    input_proj = level_projections([8, 16], hidden_dim=32, num_levels=4)
    assert [type(p[0]).__name__ for p in input_proj] == ["Conv2d"] * 4
    assert [p[0].stride for p in input_proj] == [(1, 1), (1, 1), (2, 2), (2, 2)]
    mask = torch.zeros(1, 64, 64, dtype=torch.bool)
    mask[:, :, 32:] = True
    features = [NestedTensor(torch.randn(1, 8, 16, 16), mask[:, ::4, ::4]),
                NestedTensor(torch.randn(1, 16, 8, 8), mask[:, ::8, ::8])]
    encoding = PositionEmbeddingSine(16, normalize=True)
    positions = [encoding(f) for f in features]
    srcs, masks, poss = project_levels(input_proj, features, mask, encoding, positions)
    assert [tuple(s.shape[-2:]) for s in srcs] == [(16, 16), (8, 8), (4, 4), (2, 2)]
    assert masks[3][0].tolist() == [[False, True], [False, True]]
    torch.testing.assert_close(poss[2], encoding(NestedTensor(srcs[2], masks[2])))
    assert len(positions) == 2  # the caller's list is left as it was
    with pytest.raises(ValueError, match="2 levels cannot hold"):
        level_projections([8, 16, 32], hidden_dim=32, num_levels=2)


def test_gather_tokens_picks_each_images_rows():
    x = torch.arange(2 * 4 * 3.0).view(2, 4, 3)
    picked = gather_tokens(x, torch.tensor([[3, 0], [1, 1]]))
    assert torch.equal(picked, torch.stack([x[0, [3, 0]], x[1, [1, 1]]]))


# --------------------------------------------------------------------------------------------------------------
# generalised IoU with an epsilon, matcher, criterion, post-processing


def _random_boxes(n: int, generator: torch.Generator, dtype=torch.float32) -> torch.Tensor:
    x = torch.rand(n, 4, generator=generator, dtype=dtype)
    return torch.cat([x[:, :2], x[:, :2] + x[:, 2:]], 1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_giou_without_epsilon_is_torchvisions_bit_for_bit(dtype):
    from torchvision.ops import generalized_box_iou as torchvision_giou

    g = torch.Generator().manual_seed(0)
    a, b = _random_boxes(50, g, dtype), _random_boxes(7, g, dtype)
    assert torch.equal(generalized_box_iou(a, b), torchvision_giou(a, b))
    assert torch.equal(paired_generalized_box_iou(a[:7], b), generalized_box_iou(a[:7], b).diagonal())


def test_giou_epsilon_keeps_zero_area_boxes_finite_and_matches_a_hand_computation():
    point = torch.tensor([[0.5, 0.5, 0.5, 0.5]])
    box = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    assert generalized_box_iou(point, point).isnan().all()  # 0 / 0 without an epsilon
    eps = 1e-6
    # two equal points: IoU 0 / eps = 0, enclosing area 0: GIoU = 0 - (0 - 0) / eps = 0
    assert generalized_box_iou(point, point, eps=eps).item() == 0.0
    # a point inside the unit box: IoU 0 / (1 + eps), enclosing 1: GIoU = -(1 - 1) / (1 + eps) = 0
    assert generalized_box_iou(point, box, eps=eps).item() == 0.0
    a, b = torch.tensor([[0.0, 0.0, 2.0, 1.0]]), torch.tensor([[1.0, 0.0, 3.0, 2.0]])  # inter 1, union 5, hull 6
    expected = 1 / (5 + eps) - (6 - 5) / (6 + eps)
    assert generalized_box_iou(a, b, eps=eps).item() == pytest.approx(expected, rel=1e-6)
    assert paired_generalized_box_iou(a, b, eps=eps).item() == pytest.approx(expected, rel=1e-6)


def test_matcher_uses_its_giou_epsilon():
    outputs = {"pred_logits": torch.zeros(1, 2, 3), "pred_boxes": torch.tensor([[[0.5, 0.5, 0.0, 0.0],
                                                                                [0.2, 0.2, 0.1, 0.1]]])}
    targets = [{"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.0, 0.0]])}]
    (cost,) = FocalHungarianMatcher(1, 5, 2, giou_eps=1e-6).cost_matrices(outputs, targets)
    assert torch.isfinite(cost).all()
    (cost,) = FocalHungarianMatcher(1, 5, 2).cost_matrices(outputs, targets)
    assert cost[0].isnan().all()  # DETR's GIoU of two points is 0 / 0


class _NoMatching(HungarianMatcher):
    def forward(self, outputs, targets, groups=1):
        raise AssertionError("given indices must not be matched again")


@pytest.mark.parametrize("criterion_class", [SetCriterion, FocalSetCriterion])
def test_layer_losses_with_given_indices_use_those_pairs(criterion_class):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 3 + (criterion_class is SetCriterion), generator=g)
    boxes = torch.rand(2, 4, 4, generator=g) * 0.5 + 0.2
    targets = [{"labels": torch.tensor([0, 2]), "boxes": torch.tensor([[0.4, 0.4, 0.2, 0.2], [0.6, 0.5, 0.2, 0.3]])},
               {"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.4, 0.4]])}]
    indices = [(torch.tensor([3, 1]), torch.tensor([0, 1])), (torch.tensor([0]), torch.tensor([0]))]
    kwargs = {"eos_coef": 0.1} if criterion_class is SetCriterion else {}
    criterion = criterion_class(3, _NoMatching(), {}, losses=["labels", "boxes", "cardinality"], **kwargs)
    losses = criterion.layer_losses({"pred_logits": logits, "pred_boxes": boxes}, targets, 3.0, "_x", indices)
    assert set(losses) == {"loss_ce_x", "loss_bbox_x", "loss_giou_x", "cardinality_error_x"}
    matched = torch.stack([boxes[0, 3], boxes[0, 1], boxes[1, 0]])
    target_boxes = torch.cat([t["boxes"] for t in targets])
    torch.testing.assert_close(losses["loss_bbox_x"], (matched - target_boxes).abs().sum() / 3)
    giou = paired_generalized_box_iou(box_cxcywh_to_xyxy(matched), box_cxcywh_to_xyxy(target_boxes))
    torch.testing.assert_close(losses["loss_giou_x"], (1 - giou).sum() / 3)


def test_only_the_softmax_criterion_keeps_class_weights():
    assert "empty_weight" in dict(SetCriterion(3, HungarianMatcher(), {}, 0.1, ["labels"]).named_buffers())
    assert dict(FocalSetCriterion(3, HungarianMatcher(), {}, ["labels"]).named_buffers()) == {}


def test_sigmoid_top_k_with_nms_drops_pairs_overlapping_a_better_one():
    logits = torch.tensor([[[4.0, -9.0], [3.0, -9.0], [-9.0, 2.0]]])
    boxes = torch.tensor([[[0.5, 0.5, 0.4, 0.4], [0.52, 0.5, 0.4, 0.4], [0.2, 0.2, 0.1, 0.1]]])
    sizes = torch.tensor([[100, 100]])
    (plain,) = SigmoidTopKPostProcess(num_select=3)({"pred_logits": logits, "pred_boxes": boxes}, sizes)
    assert plain["labels"].tolist() == [0, 0, 1]
    (kept,) = SigmoidTopKPostProcess(num_select=3, nms_iou_threshold=0.5)({"pred_logits": logits,
                                                                         "pred_boxes": boxes}, sizes)
    torch.testing.assert_close(kept["scores"], torch.sigmoid(torch.tensor([4.0, 2.0])))
    torch.testing.assert_close(kept["boxes"], torch.tensor([[30.0, 30.0, 70.0, 70.0], [15.0, 15.0, 25.0, 25.0]]))
    with pytest.raises(ValueError, match="num_select"):
        SigmoidTopKPostProcess(num_select=0)
