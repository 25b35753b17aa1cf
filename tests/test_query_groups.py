"""Group DETR training (--query_groups): grouped matching, grouped loss normalisation, isolated query groups."""
import pytest
import torch

from models.detr import build
from models.matcher import HungarianMatcher
from models.query_groups import QueryGroups


def _random_outputs(batch: int, queries: int, classes: int, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(batch, queries, 2, generator=g) * 0.6 + 0.2
    sizes = torch.rand(batch, queries, 2, generator=g) * 0.3 + 0.05
    return {"pred_logits": torch.randn(batch, queries, classes + 1, generator=g),
            "pred_boxes": torch.cat([centres, sizes], -1)}


def _targets(counts: list[int], classes: int, seed: int) -> list[dict]:
    g = torch.Generator().manual_seed(seed + 100)
    return [{"labels": torch.randint(0, classes, (n,), generator=g),
             "boxes": torch.cat([torch.rand(n, 2, generator=g) * 0.6 + 0.2,
                                 torch.rand(n, 2, generator=g) * 0.3 + 0.05], -1)} for n in counts]


@pytest.mark.parametrize("seed", range(3))
def test_grouped_matching_equals_matching_each_group_alone(seed):
    matcher = HungarianMatcher(1, 5, 2)
    outputs = _random_outputs(2, 3 * 4, 5, seed)
    targets = _targets([3, 0], 5, seed)
    grouped = matcher(outputs, targets, groups=3)
    for image, (rows, cols) in enumerate(grouped):
        expected_rows, expected_cols = [], []
        for g in range(3):
            part = {k: v[image:image + 1, g * 4:(g + 1) * 4] for k, v in outputs.items()}
            (r, c), = matcher(part, [targets[image]])
            expected_rows.append(r + g * 4)
            expected_cols.append(c)
        assert torch.equal(rows, torch.cat(expected_rows)) and torch.equal(cols, torch.cat(expected_cols))
        # each target is matched exactly once per group
        assert sorted(cols.tolist()) == sorted(list(range(len(targets[image]["labels"]))) * 3)


def test_grouped_matching_rejects_uneven_groups():
    with pytest.raises(ValueError, match="groups"):
        HungarianMatcher(1, 1, 1)(_random_outputs(1, 10, 3, 0), _targets([1], 3, 0), groups=3)


def test_identical_groups_give_the_single_group_losses(tiny_args, tiny_coco):
    """Two copies of the same predictions: each box loss sums over twice the matches and divides by twice the boxes."""
    args = tiny_args(tiny_coco, "--num_classes", "6", "--no_aux_loss", "--num_queries", "4", "--query_groups", "2")
    _, criterion, _ = build(args)
    single = _random_outputs(2, 4, 6, seed=1)  # the first group alone, as in evaluation
    targets = _targets([2, 3], 6, seed=1)
    doubled = {k: torch.cat([v, v], dim=1) for k, v in single.items()}
    one, two = criterion(single, targets), criterion(doubled, targets)
    for key in ("loss_ce", "loss_bbox", "loss_giou", "cardinality_error", "class_error"):
        assert two[key].item() == pytest.approx(one[key].item(), rel=1e-5), key


def test_model_trains_with_all_groups_and_predicts_with_the_first(tiny_args, tiny_coco):
    torch.manual_seed(0)
    args = tiny_args(tiny_coco, "--num_classes", "6", "--query_groups", "3")
    model, _, _ = build(args)
    images = [torch.rand(3, 64, 64), torch.rand(3, 48, 64)]
    model.train()
    out = model(images)
    assert out["pred_logits"].shape == (2, 8 * 3, 7)
    assert all(aux["pred_boxes"].shape == (2, 24, 4) for aux in out["aux_outputs"])
    model.eval()
    out = model(images)
    assert out["pred_logits"].shape == (2, 8, 7)


def test_query_groups_object():
    groups = QueryGroups(num_queries=2, groups=3)
    table = torch.arange(6.0)[:, None]
    assert torch.equal(groups.queries(table, training=True), table)
    assert torch.equal(groups.queries(table, training=False), table[:2])
    mask = groups.self_attention_mask(training=True, device=torch.device("cpu"))
    expected = torch.tensor([[0, 0, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1], [1, 1, 0, 0, 1, 1], [1, 1, 0, 0, 1, 1],
                             [1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 0, 0]], dtype=torch.bool)
    assert torch.equal(mask, expected)
    assert groups.self_attention_mask(training=False, device=torch.device("cpu")) is None
    assert QueryGroups(2, 1).self_attention_mask(training=True, device=torch.device("cpu")) is None
    assert groups.groups_in({"pred_logits": torch.zeros(1, 6, 3)}) == 3
    assert groups.groups_in({"pred_logits": torch.zeros(1, 2, 3)}) == 1
    assert torch.equal(groups.first_group(torch.arange(12).view(2, 6)), torch.tensor([[0, 1], [6, 7]]))
    with pytest.raises(ValueError, match="at least 1"):
        QueryGroups(2, 0)


def test_groups_do_not_see_each_other(tiny_args, tiny_coco):
    """Changing the second group's query embeddings leaves the first group's training outputs unchanged."""
    torch.manual_seed(0)
    model, _, _ = build(tiny_args(tiny_coco, "--num_classes", "6", "--query_groups", "2", "--backbone_norm",
                                  "frozen_bn"))
    model.train()
    images = [torch.rand(3, 64, 64)]
    before = model(images)["pred_boxes"]
    with torch.no_grad():
        model.query_embed.weight[8:] += torch.randn(8, 32)
    after = model(images)["pred_boxes"]
    assert torch.allclose(after[:, :8], before[:, :8], atol=1e-6)
    assert not torch.allclose(after[:, 8:], before[:, 8:], atol=1e-3)  # the second group itself did change
