"""--amp applies to evaluation too: the forward under autocast, losses and post-processing in fp32."""
import contextlib
import io
import math

import pytest
import torch

from datasets import build_dataset, get_coco_api_from_dataset
from datasets.loaders import build_loaders
from engine import evaluate
from models import build_model
from util.amp import Precision

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools")


@pytest.mark.parametrize("amp", ["off", "bf16"])
def test_evaluation_forward_runs_in_the_amp_dtype(tiny_coco, tiny_args, amp):
    torch.manual_seed(0)
    args = tiny_args(tiny_coco, "--num_classes", "12")
    model, criterion, postprocessors = build_model(args)
    dataset = build_dataset("val", args)
    loader = build_loaders(None, dataset, 4, 0, distributed=False).val
    seen, heads = [], []
    model.input_proj.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    model.class_embed.register_forward_hook(lambda module, inputs, output: heads.append(output.dtype))
    with contextlib.redirect_stdout(io.StringIO()):
        stats, _ = evaluate(model, criterion, postprocessors, loader, get_coco_api_from_dataset(dataset),
                            torch.device("cpu"), 1000, precision=Precision(amp, torch.device("cpu")))
    assert set(seen) == {torch.bfloat16 if amp == "bf16" else torch.float32}
    assert set(heads) == {torch.float32}  # the class and box heads run in fp32 under autocast too
    assert math.isfinite(stats["loss"]) and len(stats["coco_eval_bbox"]) == 12
