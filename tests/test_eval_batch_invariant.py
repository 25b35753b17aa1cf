"""--eval_batch_invariant: the 12 COCO numbers (and every detection) do not depend on the evaluation batch size when
image sizes differ; without it they do (padding reaches the backbone's convolutions), as in the official code."""
import contextlib
import io

import pytest
import torch

import cli
from datasets import build_dataset, get_coco_api_from_dataset
from datasets.loaders import build_loaders
from engine import evaluate
from tools.analysis.eval_batch_dependence import mixed_size_dataset, seeded_model, tiny_flags

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools")


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """6 val images of 6 different sizes and a seeded random tiny DETR (its detections differ from image to image;
    tools/analysis/eval_batch_dependence.py trains one to measure the AP differences)."""
    root = mixed_size_dataset(tmp_path_factory.mktemp("mixed"), num_val=6, num_train=2)
    return root, seeded_model(root, train_steps=0)


def _evaluate(mixed, batch_size: int, invariant: bool):
    root, (model, criterion, postprocessors) = mixed
    args = cli.get_args_parser().parse_args(tiny_flags(root, batch_size, invariant))
    dataset = build_dataset("val", args)
    loader = build_loaders(None, dataset, batch_size, 0, distributed=False).val
    with contextlib.redirect_stdout(io.StringIO()):
        stats, evaluator = evaluate(model, criterion, postprocessors, loader, get_coco_api_from_dataset(dataset),
                                    torch.device("cpu"), 1000, batch_invariant=invariant)
    return stats["coco_eval_bbox"], evaluator.results["bbox"]


def test_sizes_really_differ(mixed):
    root, _ = mixed
    dataset = build_dataset("val", cli.get_args_parser().parse_args(tiny_flags(root, 1, False)))
    assert len({tuple(dataset[i][0].shape) for i in range(len(dataset))}) >= 4


def test_numbers_and_detections_do_not_depend_on_the_batch_size(mixed):
    reference_numbers, reference_detections = _evaluate(mixed, 1, invariant=True)
    assert len(reference_numbers) == 12
    assert sum(len(d) for d in reference_detections.values()) == 6 * 10  # every query of every image
    for batch_size in (2, 4):
        numbers, detections = _evaluate(mixed, batch_size, invariant=True)
        assert numbers == reference_numbers  # exactly
        assert detections == reference_detections  # every score and box, exactly
    # per-image evaluation is what batch size 1 computes in the default mode
    assert _evaluate(mixed, 1, invariant=False) == (reference_numbers, reference_detections)


def test_without_it_the_detections_move_with_the_batch_size(mixed):
    """The default (official) mode pads each batch: the same model scores the same images differently."""
    _, at_1 = _evaluate(mixed, 1, invariant=False)
    _, at_4 = _evaluate(mixed, 4, invariant=False)
    assert at_1.keys() == at_4.keys()
    scores_1 = torch.tensor([r["score"] for i in sorted(at_1) for r in at_1[i]])
    scores_4 = torch.tensor([r["score"] for i in sorted(at_4) for r in at_4[i]])
    assert not torch.equal(scores_1, scores_4)
    assert (scores_1 - scores_4).abs().max() > 1e-4  # not a rounding difference
