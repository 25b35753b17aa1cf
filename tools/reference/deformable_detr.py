"""Reference values of the official Deformable DETR, for tests/test_deformable_detr.py.

Run with a clone of https://github.com/fundamentalvision/Deformable-DETR (its CUDA extension need not be built: the
official pure-PyTorch sampling function stands in for it)::

    .venv/bin/python -m tools.reference.deformable_detr --official /path/to/Deformable-DETR

For each case (tiny widths, ResNet-50 at small image sizes, as the official backbone hard-codes ResNet-50 channel
counts) it saves, from the official code: the state-dict names and shapes and the per-entry sums of the seeded
initialisation of ``build(args)`` (COCO, 91 classes), its loss weights, and for a 12-class model whose weights are
set by ``fill_weights``: the eval-mode outputs on a padded batch of two images of different sizes, the matching,
the loss dict, the gradient norms of the weighted loss and the post-processed detections. It checks on the way that
our model loads the official state dict with strict=True and gives the same outputs.

The official code is imported only when the script runs; the tests import this module for the cases, the inputs,
``fill_weights`` and the (un)packing, never the official code.
"""
import argparse
import math
import types
import zlib
from itertools import chain
from pathlib import Path

import torch
from torch import nn

from tools.reference.common import official_packages, pack, stub_cuda_extension, use_pytorch_sampling

REFERENCE_FILE = Path(__file__).resolve().parents[2] / "tests" / "golden" / "deformable_detr_reference.pt"
NUM_CLASSES = 12  # with 10 queries: 120 (query, class) pairs, enough for the official top-100 post-processing

TINY = ["--meta_arch", "deformable_detr", "--backbone", "resnet50", "--no_pretrained_backbone", "--hidden_dim", "32",
        "--nheads", "2", "--enc_layers", "1", "--dec_layers", "2", "--dim_feedforward", "64", "--num_queries", "10",
        "--enc_n_points", "2", "--dec_n_points", "3", "--lr_backbone", "0", "--device", "cpu"]

WIDE = ["--hidden_dim", "256", "--nheads", "8"]  # the official two-stage works with 256 channels only

# case name -> extra flags on top of TINY: the four official variants, and refinement on five levels over a dilated
# backbone (an extra level built from an extra level, a stride-16 layer4)
CASES = {
    "single_scale": ["--num_feature_levels", "1"],
    "multi_scale": [],
    "refine": ["--with_box_refine"],
    "two_stage": ["--with_box_refine", "--two_stage", *WIDE],
    "refine_5_levels_dc5": ["--with_box_refine", "--num_feature_levels", "5", "--dilation"],
}


def parse(flags: list[str]) -> argparse.Namespace:
    from cli import get_args_parser

    return get_args_parser().parse_args(flags)


def make_inputs() -> tuple[list[torch.Tensor], list[dict], torch.Tensor]:
    """Two images of different sizes (padded to 96 x 100 in a batch), their targets (labels < NUM_CLASSES, boxes
    cxcywh) and the original image sizes ``[2, 2]`` (h, w) for post-processing."""
    g = torch.Generator().manual_seed(11)
    images = [torch.randn(3, 96, 80, generator=g), torch.randn(3, 72, 100, generator=g)]
    targets = []
    for n in (3, 2):
        centers = torch.rand(n, 2, generator=g) * 0.6 + 0.2
        sizes = torch.rand(n, 2, generator=g) * 0.3 + 0.05
        targets.append({"labels": torch.randint(0, NUM_CLASSES, (n,), generator=g),
                        "boxes": torch.cat([centers, sizes], 1)})
    sizes = torch.tensor([[192, 160], [144, 200]])
    return images, targets, sizes


@torch.no_grad()
def fill_weights(model: nn.Module) -> None:
    """Overwrite every floating-point parameter and buffer with values drawn from a generator seeded by its name
    (so they do not depend on construction order): matrices ~ N(0, 1/fan_in), embeddings ~ N(0, 1), norm scales
    ~ 1 + N(0, 0.01), running variances in [1, 1.5], other vectors ~ N(0, 0.01)."""
    for name, tensor in chain(model.named_parameters(), model.named_buffers()):
        if not tensor.is_floating_point():
            continue
        g = torch.Generator().manual_seed(zlib.crc32(name.encode()))
        if name.endswith("running_var"):
            value = 1 + 0.5 * torch.rand(tensor.shape, generator=g)
        elif name.endswith(("query_embed.weight", "level_embed")):
            value = torch.randn(tensor.shape, generator=g)
        elif tensor.dim() > 1:
            value = torch.randn(tensor.shape, generator=g) / math.sqrt(tensor[0].numel())
        elif name.endswith("weight"):
            value = 1 + 0.1 * torch.randn(tensor.shape, generator=g)
        else:
            value = 0.1 * torch.randn(tensor.shape, generator=g)
        tensor.copy_(value)


def state_names_and_shapes(model: nn.Module) -> torch.Tensor:
    """The state dict's names and shapes, one ``name:d0,d1,...`` line each, zlib-compressed into a uint8 tensor."""
    text = "\n".join(f"{k}:{','.join(map(str, v.shape))}" for k, v in model.state_dict().items())
    return torch.frombuffer(bytearray(zlib.compress(text.encode(), 9)), dtype=torch.uint8)


def names_and_shapes_text(packed: torch.Tensor) -> list[str]:
    return zlib.decompress(bytes(packed.tolist())).decode().split("\n")


def init_sums(model: nn.Module) -> torch.Tensor:
    """Per state-dict entry outside the backbone (which torchvision initialises) the float64 sum of its values."""
    return torch.stack([v.double().sum() for k, v in model.state_dict().items() if not k.startswith("backbone.")])


def flatten_outputs(prefix: str, outputs: dict) -> dict[str, torch.Tensor]:
    flat = {}
    for key, value in outputs.items():
        if isinstance(value, torch.Tensor):
            flat[f"{prefix}{key}"] = value.detach().clone()
        elif key == "aux_outputs":
            for i, aux in enumerate(value):
                flat.update(flatten_outputs(f"{prefix}aux{i}.", aux))
        elif key == "enc_outputs":
            flat.update(flatten_outputs(f"{prefix}enc.", value))
    return flat


def run_filled(model: nn.Module, criterion: nn.Module, postprocessor: nn.Module) -> dict[str, torch.Tensor]:
    """Eval-mode outputs, matching, losses, gradient norms and detections of a model with filled weights."""
    images, targets, sizes = make_inputs()
    model.eval()
    outputs = model(images)
    result = flatten_outputs("out.", outputs)
    main = {k: v for k, v in outputs.items() if k not in ("aux_outputs", "enc_outputs")}
    for i, (src, tgt) in enumerate(criterion.matcher(main, targets)):
        result[f"match{i}.src"], result[f"match{i}.tgt"] = src, tgt
    losses = criterion(outputs, targets)
    result.update({f"loss.{k}": v.detach().reshape(()) for k, v in losses.items()})
    total = sum(losses[k] * criterion.weight_dict[k] for k in losses if k in criterion.weight_dict)
    model.zero_grad()
    total.backward()
    result["grad_norms"] = torch.stack([p.grad.norm() for _, p in model.named_parameters() if p.grad is not None])
    for i, r in enumerate(postprocessor(outputs, sizes)):
        result.update({f"post{i}.{k}": v for k, v in r.items()})
    return result


# ---------------------------------------------------------------------------------------------------------------
# The official code (run time only)

def import_official(path: Path) -> types.SimpleNamespace:
    """The official modules, with the CUDA sampling replaced by the official pure-PyTorch function and without
    ImageNet weights."""
    import torchvision

    stub_cuda_extension()
    version = torchvision.__version__
    torchvision.__version__ = "1.0"  # util/misc.py parses the version as float(version[:3]), which "0.29" breaks
    try:
        with official_packages(path):
            import models.backbone as backbone
            import models.deformable_detr as deformable_detr
            import models.deformable_transformer as deformable_transformer
            import models.matcher as matcher
            from models.ops.functions import ms_deform_attn_func
    finally:
        torchvision.__version__ = version

    use_pytorch_sampling(ms_deform_attn_func)
    backbone.is_main_process = lambda: False  # no ImageNet weights (the official loads them on the main process)
    return types.SimpleNamespace(backbone=backbone, deformable_detr=deformable_detr,
                                 deformable_transformer=deformable_transformer, matcher=matcher)


def official_case(official: types.SimpleNamespace, name: str) -> dict:
    from models import build_model

    args = parse(TINY + CASES[name])
    result: dict = {}

    # 1. the official build (COCO: 91 classes) and ours from the same seed: names, shapes, initialisation
    torch.manual_seed(0)
    off_model, off_criterion, _ = official.deformable_detr.build(args)
    torch.manual_seed(0)
    our_model, our_criterion, _ = build_model(args)
    off_state, our_state = off_model.state_dict(), our_model.state_dict()
    assert list(off_state) == list(our_state), sorted(set(off_state) ^ set(our_state))
    for key, value in off_state.items():
        assert torch.equal(value, our_state[key]), f"{name}: initial {key} differs"
    assert off_criterion.weight_dict == our_criterion.weight_dict
    result["state"] = state_names_and_shapes(off_model)
    result["init_sums"] = init_sums(off_model)
    result["weight_dict"] = dict(off_criterion.weight_dict)

    # 2. a 12-class official model with filled weights, loaded strictly into ours
    off_model = official.deformable_detr.DeformableDETR(
        official.backbone.build_backbone(args), official.deformable_transformer.build_deforamble_transformer(args),
        num_classes=NUM_CLASSES, num_queries=args.num_queries, num_feature_levels=args.num_feature_levels,
        aux_loss=args.aux_loss, with_box_refine=args.with_box_refine, two_stage=args.two_stage)
    fill_weights(off_model)
    our_args = parse(TINY + CASES[name] + ["--num_classes", str(NUM_CLASSES)])
    our_model, our_criterion, our_post = build_model(our_args)
    our_model.load_state_dict(off_model.state_dict(), strict=True)
    filled = build_model(our_args)[0]
    fill_weights(filled)
    for key, value in filled.state_dict().items():
        assert torch.equal(value, our_model.state_dict()[key]), f"{name}: fill_weights differs on {key}"
    off_criterion = official.deformable_detr.SetCriterion(
        NUM_CLASSES, official.matcher.build_matcher(args), off_criterion.weight_dict,
        ["labels", "boxes", "cardinality"], focal_alpha=args.focal_alpha)
    expected = run_filled(off_model, off_criterion, official.deformable_detr.PostProcess())
    actual = run_filled(our_model, our_criterion, our_post["bbox"])
    assert sorted(actual) == sorted(expected), sorted(set(actual) ^ set(expected))
    worst = max(((a.double() - e.double()).abs().max().item(), k) for k, (a, e) in
                ((k, (actual[k], expected[k])) for k in expected) if e.numel())
    print(f"{name}: ours vs official, largest difference {worst[0]:.3g} ({worst[1]})")
    result.update(expected)
    return result


def check_presets(official: types.SimpleNamespace) -> None:
    """Every configs/deformable_detr*.yaml builds the state-dict names and shapes of the official model that its
    script trains (COCO, ResNet-50): official checkpoints load with strict=True."""
    from cli import get_args_parser
    from models import build_model
    from util.config import parse_args_with_config

    for preset in sorted((REFERENCE_FILE.parents[2] / "configs").glob("deformable_detr*.yaml")):
        args = parse_args_with_config(get_args_parser(), ["--config", str(preset), "--no_pretrained_backbone",
                                                          "--device", "cpu"])
        off_state = official.deformable_detr.build(args)[0].state_dict()
        our_state = build_model(args)[0].state_dict()
        assert [(k, v.shape) for k, v in off_state.items()] == [(k, v.shape) for k, v in our_state.items()], preset
        print(f"{preset.name}: the official state dict's {len(off_state)} names and shapes")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official", required=True, type=Path, help="clone of fundamentalvision/Deformable-DETR")
    parser.add_argument("--output", type=Path, default=REFERENCE_FILE)
    cli_args = parser.parse_args()
    torch.set_num_threads(1)  # as tests/test_deformable_detr.py
    import models  # ours first, so that our packages are the ones restored after the official import

    del models
    official = import_official(cli_args.official.resolve())
    check_presets(official)
    values = {name: pack(official_case(official, name)) for name in CASES}
    cli_args.output.parent.mkdir(parents=True, exist_ok=True)
    torch.save(values, cli_args.output)
    print(f"wrote {cli_args.output} ({cli_args.output.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
