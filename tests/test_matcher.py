"""models.matcher.HungarianMatcher against brute force over all one-to-one assignments."""
import itertools
import math

import pytest
import torch

from models.matcher import HungarianMatcher

NUM_QUERIES = 4
NUM_CLASSES = 3  # logits have NUM_CLASSES + 1 entries (the last is "no object")
COSTS = {"cost_class": 1.0, "cost_bbox": 5.0, "cost_giou": 2.0}


def _random_boxes(n: int, gen: torch.Generator) -> torch.Tensor:
    """Normalised cxcywh boxes that stay inside the image."""
    wh = torch.rand(n, 2, generator=gen) * 0.4 + 0.05
    c = wh / 2 + torch.rand(n, 2, generator=gen) * (1 - wh)
    return torch.cat([c, wh], dim=1)


def _problem(num_targets: list[int], seed: int) -> tuple[dict, list[dict]]:
    gen = torch.Generator().manual_seed(seed)
    bs = len(num_targets)
    outputs = {
        "pred_logits": torch.randn(bs, NUM_QUERIES, NUM_CLASSES + 1, generator=gen),
        "pred_boxes": torch.stack([_random_boxes(NUM_QUERIES, gen) for _ in range(bs)]),
    }
    targets = [{"labels": torch.randint(0, NUM_CLASSES, (n,), generator=gen), "boxes": _random_boxes(n, gen)}
               for n in num_targets]
    return outputs, targets


def _pair_cost(logits: list[float], box: list[float], label: int, tgt_box: list[float]) -> float:
    """DETR's matching cost of one (prediction, target) pair, in plain Python."""
    exps = [math.exp(v) for v in logits]
    prob = exps[label] / sum(exps)
    l1 = sum(abs(p - t) for p, t in zip(box, tgt_box))

    def corners(b):
        return b[0] - b[2] / 2, b[1] - b[3] / 2, b[0] + b[2] / 2, b[1] + b[3] / 2

    a, b = corners(box), corners(tgt_box)
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    enclosing = (max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1]))
    giou = inter / union - (enclosing - union) / enclosing
    return COSTS["cost_class"] * -prob + COSTS["cost_bbox"] * l1 + COSTS["cost_giou"] * -giou


def _image_costs(outputs: dict, targets: list[dict], b: int) -> list[list[float]]:
    logits, boxes = outputs["pred_logits"][b].tolist(), outputs["pred_boxes"][b].tolist()
    labels, tgt_boxes = targets[b]["labels"].tolist(), targets[b]["boxes"].tolist()
    return [[_pair_cost(logits[q], boxes[q], labels[t], tgt_boxes[t]) for t in range(len(labels))]
            for q in range(NUM_QUERIES)]


def _brute_force_min(cost: list[list[float]], num_targets: int) -> float:
    """Minimum total cost over every injective map target -> query."""
    return min(sum(cost[q][t] for t, q in enumerate(queries))
               for queries in itertools.permutations(range(NUM_QUERIES), num_targets))


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("num_targets", [0, 1, 2, 3])
def test_matches_brute_force_minimum(seed, num_targets):
    outputs, targets = _problem([num_targets], seed)
    (src, tgt), = HungarianMatcher(**COSTS)(outputs, targets)
    assert len(src) == len(tgt) == num_targets
    cost = _image_costs(outputs, targets, 0)
    total = sum(cost[q][t] for q, t in zip(src.tolist(), tgt.tolist()))
    assert total == pytest.approx(_brute_force_min(cost, num_targets), abs=1e-5)


def test_batch_equals_each_image_alone():
    outputs, targets = _problem([2, 0, 3, 1], seed=7)
    matcher = HungarianMatcher(**COSTS)
    batched = matcher(outputs, targets)
    for b in range(4):
        single = matcher({k: v[b:b + 1] for k, v in outputs.items()}, [targets[b]])[0]
        assert torch.equal(batched[b][0], single[0]) and torch.equal(batched[b][1], single[1])


def test_image_without_targets_gives_empty_int64():
    outputs, targets = _problem([0, 2], seed=3)
    indices = HungarianMatcher(**COSTS)(outputs, targets)
    src, tgt = indices[0]
    assert src.dtype == tgt.dtype == torch.int64
    assert src.shape == tgt.shape == (0,)
    assert indices[1][0].dtype == torch.int64 and len(indices[1][0]) == 2


@pytest.mark.parametrize("seed", range(3))
def test_every_target_matched_exactly_once(seed):
    outputs, targets = _problem([3, 1, 4], seed)
    for (src, tgt), t in zip(HungarianMatcher(**COSTS)(outputs, targets), targets):
        assert sorted(tgt.tolist()) == list(range(len(t["labels"])))
        assert len(set(src.tolist())) == len(src)  # no query used twice
        assert all(0 <= q < NUM_QUERIES for q in src.tolist())


def test_all_zero_costs_raise():
    with pytest.raises(ValueError, match="all costs are 0"):
        HungarianMatcher(cost_class=0, cost_bbox=0, cost_giou=0)
