"""What every registered architecture of the family does, tested by iterating the registry (a new architecture is
tested without editing a list; conftest's TINY_ARCHITECTURE_FLAGS makes it small): build -> forward -> loss ->
backward -> post-process -> traced graph; backbone attention blocks (identities at initialisation, official names
kept), parameter groups by module identity, heads in fp32 under autocast, presets that select it, and flags of
other architectures refused."""
import argparse
from pathlib import Path

import pytest
import torch

import cli
from models import ARCHITECTURES, architecture, build_model
from models.backbone_attention import MaskedAttention
from models.postprocess import detections
from tests.conftest import TINY_MODEL_FLAGS, tiny_architecture_flags
from util.checkpoint import load_matching_state_dict
from util.config import parse_args_with_config
from util.nested_tensor import nested_tensor_from_tensor_list

FAMILY = sorted(ARCHITECTURES)
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# per-architecture variants whose extra heads the fp32-heads test must also see
HEAD_VARIANTS = {"deformable_detr": ["--with_box_refine", "--two_stage"]}
# what the class and box heads' module names contain (the official names), where not class_embed / bbox_embed
HEAD_NAMES = {"rtdetrv2": ("score_head", "bbox_head"), "dfine": ("score_head", "bbox_head", "reg_conf")}


def _build(meta_arch: str, *flags):
    torch.manual_seed(0)
    args = cli.get_args_parser().parse_args([*tiny_architecture_flags(meta_arch, TINY_MODEL_FLAGS), "--num_classes",
                                             "6", *flags])
    cli.check_args(args)
    model, criterion, postprocessors = build_model(args)
    return model, criterion, args, postprocessors


def _images():
    g = torch.Generator().manual_seed(1)
    return nested_tensor_from_tensor_list([torch.rand(3, 96, 80, generator=g), torch.rand(3, 64, 96, generator=g)])


def _targets():
    return [{"labels": torch.tensor([1, 3]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.3], [0.3, 0.6, 0.1, 0.1]])},
            {"labels": torch.tensor([2]), "boxes": torch.tensor([[0.4, 0.4, 0.3, 0.2]])}]


def _forward(model, images, targets):
    torch.manual_seed(5)  # the same denoising noise for both models
    return model(images, targets) if getattr(model, "takes_targets", False) else model(images)


@pytest.mark.parametrize("meta_arch", FAMILY)
def test_build_forward_loss_backward_postprocess_and_trace(meta_arch):
    """One training step's pieces and inference end to end, for every registered architecture."""
    model, criterion, args, postprocessors = _build(meta_arch)
    images, targets = _images(), _targets()
    model.train()
    criterion.train()
    outputs = _forward(model, images, targets)
    assert outputs["pred_logits"].shape[:2] == outputs["pred_boxes"].shape[:2] == (2, args.num_queries)
    losses = criterion(outputs, targets)
    weighted = sum(losses[k] * w for k, w in criterion.weight_dict.items() if k in losses)
    assert torch.isfinite(weighted) and weighted.item() > 0
    weighted.backward()
    trained = [p for p in model.parameters() if p.requires_grad]
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in trained)
    reached = {name.split(".")[0] for name, p in model.named_parameters() if p.grad is not None and p.grad.any()}
    parts = {name.split(".")[0] for name, p in model.named_parameters() if p.requires_grad}
    assert reached == parts, parts - reached  # the loss reaches every part of the model

    model.eval()
    sizes = torch.tensor([[96, 80], [64, 96]])
    with torch.no_grad():
        outputs = model(images)
        results = detections(postprocessors["bbox"], outputs, sizes)
    for result, (height, width) in zip(results, sizes.tolist()):
        assert len(result["scores"]) == len(result["labels"]) == len(result["boxes"]) > 0
        assert (result["scores"][:-1] >= result["scores"][1:]).all() or meta_arch == "detr"
        assert (result["labels"] < args.num_classes).all()
        centres = (result["boxes"][:, :2] + result["boxes"][:, 2:]) / 2  # inside the original image
        assert (centres >= 0).all() and (centres[:, 0] <= width).all() and (centres[:, 1] <= height).all()

    class Outputs(torch.nn.Module):
        def __init__(self, detector):
            super().__init__()
            self.detector = detector

        def forward(self, tensors, mask):
            from util.nested_tensor import NestedTensor

            out = self.detector(NestedTensor(tensors, mask))
            return out["pred_logits"], out["pred_boxes"]

    traced = torch.jit.trace(Outputs(model), (images.tensors, images.mask), check_trace=False)
    with torch.no_grad():
        logits, boxes = traced(images.tensors, images.mask)
    torch.testing.assert_close(logits, outputs["pred_logits"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(boxes, outputs["pred_boxes"], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("meta_arch", FAMILY)
@pytest.mark.parametrize("block", ["gc", "nl"])
def test_attention_blocks_are_identities_at_init_in_every_architecture(meta_arch, block):
    plain, _, _, _ = _build(meta_arch)
    with_blocks, _, args, _ = _build(meta_arch, "--backbone_attn", block)
    extra = set(with_blocks.state_dict()) - set(plain.state_dict())
    # the blocks' entries only, under the backbone (DETR's Joiner: backbone.0.attn.blocks., RT-DETRv2's PResNet:
    # backbone.attn.blocks.)
    assert extra and all(k.startswith("backbone.") and ".attn.blocks." in k for k in extra)
    skipped, missing = load_matching_state_dict(with_blocks, plain.state_dict())
    assert skipped == [] and set(missing) == extra  # an official checkpoint loads, only the blocks missing
    images, targets = _images(), _targets()
    for mode in ("train", "eval"):
        getattr(plain, mode)()
        getattr(with_blocks, mode)()
        a, b = _forward(plain, images, targets), _forward(with_blocks, images, targets)
        assert torch.equal(a["pred_boxes"], b["pred_boxes"]) and torch.equal(a["pred_logits"], b["pred_logits"]), mode
    groups = architecture(meta_arch).param_groups(with_blocks, args)
    attn_ids = {id(p) for m in with_blocks.modules() if isinstance(m, MaskedAttention) for p in m.parameters()}
    grouped = [{id(p) for p in g["params"]} for g in groups]
    # the blocks have groups of their own
    assert [g for g in grouped if g & attn_ids] == [g for g in grouped if g <= attn_ids]
    assert set().union(*grouped) == {id(p) for p in with_blocks.parameters() if p.requires_grad}


def _presets() -> dict[str, str]:
    """Every preset in configs/ -> the architecture it selects."""
    def parser():  # a fresh one per preset: a preset becomes the parser's defaults
        return argparse.ArgumentParser(parents=[cli.get_args_parser()])

    return {path.name: parse_args_with_config(parser(), ["--config", str(path)]).meta_arch
            for path in sorted(CONFIGS.glob("*.yaml"))}


def test_every_preset_selects_a_registered_architecture_and_every_architecture_has_presets():
    presets = _presets()
    assert set(presets.values()) <= set(ARCHITECTURES)
    assert set(presets.values()) == set(ARCHITECTURES)
    assert presets["demo_cpu.yaml"] == "detr" and presets["dino_4scale.yaml"] == "dino"


@pytest.mark.parametrize("meta_arch", FAMILY)
def test_heads_compute_in_fp32_under_autocast(meta_arch):
    """Under bf16 autocast every class and box head (decoder layers, box refinement, two-stage proposals) outputs
    fp32, while the rest of the transformer runs in bf16; the outputs are fp32 in training and evaluation."""
    model, _, _, _ = _build(meta_arch, *HEAD_VARIANTS.get(meta_arch, []))
    seen = []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            is_head = any(part in name for part in HEAD_NAMES.get(meta_arch, ("class_embed", "bbox_embed")))
            module.register_forward_hook(lambda m, i, o, is_head=is_head: seen.append((is_head, o.dtype)))
    for mode in ("train", "eval"):
        getattr(model, mode)()
        seen.clear()
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            out = _forward(model, _images(), _targets())
        heads = {dtype for is_head, dtype in seen if is_head}
        others = {dtype for is_head, dtype in seen if not is_head}
        assert heads == {torch.float32}, (mode, heads)
        assert torch.bfloat16 in others, mode  # autocast was on for the rest
        assert out["pred_boxes"].dtype == out["pred_logits"].dtype == torch.float32
        assert all(a["pred_boxes"].dtype == torch.float32 for a in out.get("aux_outputs", []))


def _own_flag_changes() -> dict[str, list[str]]:
    """Per architecture, one of its own flags set to a value other than its default."""
    parser = cli.get_args_parser()
    owners = cli.flag_owners()
    changes = {}
    for action in parser._actions:
        owner = owners.get(action.dest)
        if owner is None or owner in changes or not action.option_strings:
            continue
        if action.nargs == 0:  # a switch: its option sets the other value
            if action.const != action.default:
                changes[owner] = [action.option_strings[0]]
        elif action.choices is not None and action.nargs is None:
            other = next(c for c in action.choices if c != action.default)
            changes[owner] = [action.option_strings[0], str(other)]
        elif action.type in (int, float) and action.nargs is None:
            changes[owner] = [action.option_strings[0], str((action.default or 0) + 3)]
    return changes


@pytest.mark.parametrize("meta_arch", FAMILY)
def test_another_architectures_flag_is_an_error_naming_the_flag_and_its_owner(meta_arch):
    changes = _own_flag_changes()
    assert set(changes) == set(ARCHITECTURES)  # every architecture owns a flag we can set
    for owner, flags in changes.items():
        args = cli.get_args_parser().parse_args([*tiny_architecture_flags(meta_arch, TINY_MODEL_FLAGS), *flags])
        if owner == meta_arch:
            continue
        with pytest.raises(ValueError, match=f"^{flags[0]} is a flag of --meta_arch {owner}; --meta_arch "
                                             f"{meta_arch} does not read it$"):
            cli.check_args(args)


def test_a_shared_flag_an_architecture_does_not_read_is_an_error_naming_who_reads_it():
    args = cli.get_args_parser().parse_args(["--meta_arch", "detr", "--enc_n_points", "8"])
    with pytest.raises(ValueError, match="^--enc_n_points is not read by --meta_arch detr \\(it is read by "):
        cli.check_args(args)
    args = cli.get_args_parser().parse_args(["--meta_arch", "deformable_detr", "--pre_norm"])
    with pytest.raises(ValueError, match="^--pre_norm is not read by --meta_arch deformable_detr"):
        cli.check_args(args)
    # a preset of one architecture run as another: its flags are refused, not silently dropped
    parser = argparse.ArgumentParser(parents=[cli.get_args_parser()])
    args = parse_args_with_config(parser, ["--config", str(CONFIGS / "dino_4scale.yaml"), "--meta_arch", "detr"])
    with pytest.raises(ValueError, match="is a flag of --meta_arch dino; --meta_arch detr does not read it"):
        cli.check_args(args)
    for arch in ARCHITECTURES.values():  # what an architecture declares unused is a shared flag
        assert not set(arch.unused_shared_flags) & set(cli.flag_owners())
        assert set(arch.unused_shared_flags) <= {a.dest for a in cli.get_args_parser()._actions}
