"""models.detr.SetCriterion and PostProcess on tiny cases computed by hand."""
import math

import pytest
import torch
from torch import nn

from models.detr import PostProcess, SetCriterion, build
from models.matcher import HungarianMatcher

NUM_CLASSES = 2  # logits have 3 entries: classes 0, 1 and "no object" (index 2)


class FixedMatcher(nn.Module):
    """Returns a given matching, so the losses can be checked for a known assignment."""

    def __init__(self, indices: list[tuple[list[int], list[int]]]):
        super().__init__()
        self.indices = [(torch.tensor(i, dtype=torch.int64), torch.tensor(j, dtype=torch.int64)) for i, j in indices]
        self.calls = 0

    def forward(self, outputs, targets, groups=1):
        assert groups == 1
        self.calls += 1
        return self.indices


def _criterion(indices, eos_coef=0.1, losses=("labels", "boxes", "cardinality")) -> SetCriterion:
    return SetCriterion(NUM_CLASSES, FixedMatcher(indices), weight_dict={}, eos_coef=eos_coef, losses=list(losses))


def _logits_one_image() -> torch.Tensor:
    return torch.tensor([[[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 3.0]]])  # [1, 3 queries, 3]


def test_loss_ce_weights_no_object_by_eos_coef():
    # Query 1 is matched to a target of class 1; queries 0 and 2 must predict "no object" (class 2).
    outputs = {"pred_logits": _logits_one_image(), "pred_boxes": torch.full((1, 3, 4), 0.5)}
    targets = [{"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}]
    losses = _criterion([([1], [0])], eos_coef=0.1, losses=["labels"])(outputs, targets)
    e = math.e
    nll_q0 = math.log(e**2 + 1 + 1) - 0.0  # -log softmax([2, 0, 0])[2]
    nll_q1 = math.log(1 + e + 1) - 1.0  # -log softmax([0, 1, 0])[1]
    nll_q2 = math.log(1 + 1 + e**3) - 3.0  # -log softmax([0, 0, 3])[2]
    expected = (0.1 * nll_q0 + 1.0 * nll_q1 + 0.1 * nll_q2) / (0.1 + 1.0 + 0.1)
    assert losses["loss_ce"].item() == pytest.approx(expected, rel=1e-6)


def test_class_error_zero_when_right_and_hundred_when_wrong():
    outputs = {"pred_logits": _logits_one_image(), "pred_boxes": torch.full((1, 3, 4), 0.5)}
    box = torch.tensor([[0.5, 0.5, 0.2, 0.2]])
    right = _criterion([([1], [0])], losses=["labels"])(outputs, [{"labels": torch.tensor([1]), "boxes": box}])
    wrong = _criterion([([1], [0])], losses=["labels"])(outputs, [{"labels": torch.tensor([0]), "boxes": box}])
    assert right["class_error"].item() == 0.0
    assert wrong["class_error"].item() == 100.0


def test_loss_bbox_and_giou_summed_over_matches_divided_by_num_boxes():
    # Image 0: two targets; image 1: one target. num_boxes = 3.
    pred_boxes = torch.tensor([
        [[0.5, 0.5, 0.2, 0.2], [0.15, 0.15, 0.1, 0.1], [0.9, 0.9, 0.1, 0.1]],
        [[0.3, 0.3, 0.2, 0.2], [0.5, 0.5, 0.5, 0.5], [0.5, 0.5, 0.1, 0.1]],
    ])
    targets = [
        # nested in the prediction's place: pred xyxy [.4,.4,.6,.6] inside target xyxy [.3,.3,.7,.7]
        # disjoint: pred xyxy [.1,.1,.2,.2], target xyxy [.3,.3,.4,.4]
        {"labels": torch.tensor([0, 1]), "boxes": torch.tensor([[0.5, 0.5, 0.4, 0.4], [0.35, 0.35, 0.1, 0.1]])},
        # identical to query 0 of image 1
        {"labels": torch.tensor([1]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2]])},
    ]
    outputs = {"pred_logits": torch.zeros(2, 3, 3), "pred_boxes": pred_boxes}
    losses = _criterion([([0, 1], [0, 1]), ([0], [0])], losses=["boxes"])(outputs, targets)
    l1 = (0 + 0 + 0.2 + 0.2) + (0.2 + 0.2 + 0 + 0) + 0.0
    assert losses["loss_bbox"].item() == pytest.approx(l1 / 3, rel=1e-5)
    # 1 - GIoU: nested 1 - 0.04/0.16; disjoint 1 - (0 - (0.09 - 0.02)/0.09); identical 0.
    giou_loss = (1 - 0.25) + (1 + 7 / 9) + 0.0
    assert losses["loss_giou"].item() == pytest.approx(giou_loss / 3, rel=1e-5)


def test_cardinality_error():
    # Image 0 predicts 2 objects (argmax not class 2) for 1 target; image 1 predicts 1 for 3 targets.
    logits = torch.tensor([
        [[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 3.0]],
        [[0.0, 0.0, 1.0], [5.0, 0.0, 0.0], [0.0, 0.0, 1.0]],
    ])
    box = [0.5, 0.5, 0.2, 0.2]
    targets = [{"labels": torch.tensor([1]), "boxes": torch.tensor([box])},
               {"labels": torch.tensor([0, 0, 1]), "boxes": torch.tensor([box] * 3)}]
    outputs = {"pred_logits": logits, "pred_boxes": torch.full((2, 3, 4), 0.5)}
    losses = _criterion([([1], [0]), ([0, 1, 2], [0, 1, 2])], losses=["cardinality"])(outputs, targets)
    assert losses["cardinality_error"].item() == pytest.approx((abs(2 - 1) + abs(1 - 3)) / 2)


def test_aux_outputs_give_suffixed_keys_and_reuse_the_loss():
    outputs = {"pred_logits": _logits_one_image(), "pred_boxes": torch.tensor([[[0.5, 0.5, 0.2, 0.2]] * 3])}
    # Layer 0 identical to the final layer, layer 1 different.
    outputs["aux_outputs"] = [
        {"pred_logits": outputs["pred_logits"].clone(), "pred_boxes": outputs["pred_boxes"].clone()},
        {"pred_logits": -outputs["pred_logits"], "pred_boxes": outputs["pred_boxes"].clone()},
    ]
    targets = [{"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.4, 0.4]])}]
    criterion = _criterion([([1], [0])])
    losses = criterion(outputs, targets)
    base = {"loss_ce", "loss_bbox", "loss_giou", "cardinality_error"}
    assert set(losses) == base | {"class_error"} | {f"{k}_{i}" for k in base for i in (0, 1)}
    assert criterion.matcher.calls == 3  # matched once per decoder layer
    for k in base:
        assert losses[f"{k}_0"].item() == pytest.approx(losses[k].item())
    assert losses["loss_ce_1"].item() != pytest.approx(losses["loss_ce"].item())


def test_weight_dict_from_build_has_detr_keys_and_flag_coefficients(tiny_args):
    args = tiny_args("unused", "--num_classes", "3", "--dec_layers", "3", "--bbox_loss_coef", "3",
                     "--giou_loss_coef", "4", "--eos_coef", "0.25")
    _, criterion, postprocessors = build(args)
    expected = {"loss_ce": 1, "loss_bbox": 3, "loss_giou": 4}
    for i in range(2):
        expected.update({f"loss_ce_{i}": 1, f"loss_bbox_{i}": 3, f"loss_giou_{i}": 4})
    assert criterion.weight_dict == expected
    assert criterion.empty_weight.tolist() == [1.0, 1.0, 1.0, 0.25]
    assert set(postprocessors) == {"bbox"}

    no_aux = build(tiny_args("unused", "--num_classes", "3", "--no_aux_loss"))[1]
    assert no_aux.weight_dict == {"loss_ce": 1, "loss_bbox": 5, "loss_giou": 2}


def test_images_without_targets():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 3, generator=gen, requires_grad=True)
    outputs = {"pred_logits": logits, "pred_boxes": torch.rand(2, 3, 4, generator=gen) * 0.5 + 0.25}
    empty = {"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}
    criterion = SetCriterion(NUM_CLASSES, HungarianMatcher(1, 5, 2), weight_dict={}, eos_coef=0.1,
                             losses=["labels", "boxes", "cardinality"])
    losses = criterion(outputs, [empty, empty])
    assert all(torch.isfinite(torch.as_tensor(v)).all() for v in losses.values())
    # No matches: the box losses are an empty sum; dividing by an unclamped num_boxes = 0 would give NaN.
    assert losses["loss_bbox"].item() == 0.0 and losses["loss_giou"].item() == 0.0
    # Every query's target is "no object"; equal weights make the weighted mean a plain mean.
    expected_ce = -torch.log_softmax(logits.detach(), -1)[..., 2].mean()
    assert losses["loss_ce"].item() == pytest.approx(expected_ce.item(), rel=1e-6)
    losses["loss_ce"].backward()
    assert torch.isfinite(logits.grad).all()

    # One image with a target, one without: num_boxes = 1, so loss_bbox is the one matched pair's L1.
    target = {"labels": torch.tensor([0]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}
    (src, _), _ = criterion.matcher(outputs, [target, empty])
    losses = criterion(outputs, [target, empty])
    l1 = (outputs["pred_boxes"][0, src[0]] - target["boxes"][0]).abs().sum()
    assert losses["loss_bbox"].item() == pytest.approx(l1.item(), rel=1e-6)


def test_postprocess_scores_labels_and_absolute_boxes():
    probs = torch.tensor([
        [[0.2, 0.1, 0.7], [0.1, 0.6, 0.3]],  # image 0: no-object is most likely for query 0 but excluded
        [[0.5, 0.3, 0.2], [0.05, 0.05, 0.9]],
    ])
    boxes = torch.tensor([
        [[0.5, 0.5, 0.2, 0.4], [0.25, 0.75, 0.5, 0.5]],
        [[0.5, 0.5, 1.0, 1.0], [0.1, 0.2, 0.2, 0.2]],
    ])
    sizes = torch.tensor([[100, 200], [50, 30]])  # (height, width)
    results = PostProcess()({"pred_logits": probs.log(), "pred_boxes": boxes}, sizes)
    assert len(results) == 2
    assert torch.allclose(results[0]["scores"], torch.tensor([0.2, 0.6]), atol=1e-6)
    assert results[0]["labels"].tolist() == [0, 1]
    assert torch.allclose(results[1]["scores"], torch.tensor([0.5, 0.05]), atol=1e-6)
    assert results[1]["labels"].tolist()[0] == 0
    # cxcywh -> xyxy, x scaled by the width, y by the height.
    assert torch.allclose(results[0]["boxes"], torch.tensor([[80.0, 30.0, 120.0, 70.0], [0.0, 50.0, 100.0, 100.0]]),
                          atol=1e-4)
    assert torch.allclose(results[1]["boxes"], torch.tensor([[0.0, 0.0, 30.0, 50.0], [0.0, 5.0, 6.0, 15.0]]),
                          atol=1e-4)


def test_postprocess_rejects_mismatched_sizes():
    outputs = {"pred_logits": torch.zeros(2, 3, 3), "pred_boxes": torch.full((2, 3, 4), 0.5)}
    with pytest.raises(ValueError):
        PostProcess()(outputs, torch.tensor([[10, 10]]))
