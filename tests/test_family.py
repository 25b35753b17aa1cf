"""What every architecture of the family shares: backbone attention blocks (identities at initialisation, official
names kept), parameter groups by module identity, and the flags a preset needs to select it."""
import pytest
import torch

import cli
from models import ARCHITECTURES, architecture, build_model
from models.backbone_attention import MaskedAttention
from util.checkpoint import load_matching_state_dict
from util.config import parse_args_with_config
from util.nested_tensor import nested_tensor_from_tensor_list

TINY = ["--backbone", "resnet18", "--no_pretrained_backbone", "--hidden_dim", "32", "--nheads", "2", "--enc_layers",
        "1", "--dec_layers", "2", "--dim_feedforward", "64", "--num_queries", "8", "--dropout", "0", "--num_classes",
        "6", "--device", "cpu"]
FAMILY = {"detr": [], "deformable_detr": ["--enc_n_points", "2", "--dec_n_points", "2"],
          "dino": ["--enc_n_points", "2", "--dec_n_points", "2", "--num_select", "20", "--dn_number", "4"]}


def _build(meta_arch: str, *flags):
    torch.manual_seed(0)
    args = cli.get_args_parser().parse_args([*TINY, "--meta_arch", meta_arch, *FAMILY[meta_arch], *flags])
    cli.check_args(args)
    model, criterion, _ = build_model(args)
    return model, criterion, args


def _images():
    g = torch.Generator().manual_seed(1)
    return nested_tensor_from_tensor_list([torch.rand(3, 96, 80, generator=g), torch.rand(3, 64, 96, generator=g)])


def _forward(model, images, targets):
    torch.manual_seed(5)  # the same denoising noise for both models
    return model(images, targets) if getattr(model, "takes_targets", False) else model(images)


def test_every_architecture_is_registered():
    assert sorted(ARCHITECTURES) == sorted(FAMILY)


@pytest.mark.parametrize("meta_arch", sorted(FAMILY))
@pytest.mark.parametrize("block", ["gc", "nl"])
def test_attention_blocks_are_identities_at_init_in_every_architecture(meta_arch, block):
    plain, _, _ = _build(meta_arch)
    with_blocks, _, args = _build(meta_arch, "--backbone_attn", block)
    extra = set(with_blocks.state_dict()) - set(plain.state_dict())
    assert extra and all(k.startswith("backbone.0.attn.blocks.") for k in extra)
    skipped, missing = load_matching_state_dict(with_blocks, plain.state_dict())
    assert skipped == [] and set(missing) == extra  # an official checkpoint loads, only the blocks missing
    images = _images()
    targets = [{"labels": torch.tensor([1, 3]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.3], [0.3, 0.6, 0.1, 0.1]])},
               {"labels": torch.tensor([2]), "boxes": torch.tensor([[0.4, 0.4, 0.3, 0.2]])}]
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


@pytest.mark.parametrize("preset, meta_arch", [("configs/demo_cpu.yaml", "detr"),
                                               ("configs/deformable_detr.yaml", "deformable_detr"),
                                               ("configs/dino_4scale.yaml", "dino")])
def test_a_preset_alone_selects_its_architecture(preset, meta_arch):
    import argparse

    parser = argparse.ArgumentParser(parents=[cli.get_args_parser()])
    args = parse_args_with_config(parser, ["--config", preset])
    assert args.meta_arch == meta_arch


HEAD_VARIANTS = {"detr": [], "deformable_detr": ["--with_box_refine", "--two_stage"], "dino": []}


@pytest.mark.parametrize("meta_arch", sorted(FAMILY))
def test_heads_compute_in_fp32_under_autocast(meta_arch):
    """Under bf16 autocast every class and box head (decoder layers, box refinement, two-stage proposals) outputs
    fp32, while the rest of the transformer runs in bf16; the outputs are fp32 in training and evaluation."""
    model, _, _ = _build(meta_arch, *HEAD_VARIANTS[meta_arch])
    seen = []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            is_head = "class_embed" in name or "bbox_embed" in name
            module.register_forward_hook(lambda m, i, o, is_head=is_head: seen.append((is_head, o.dtype)))
    targets = [{"labels": torch.tensor([1, 3]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.3], [0.3, 0.6, 0.1, 0.1]])},
               {"labels": torch.tensor([2]), "boxes": torch.tensor([[0.4, 0.4, 0.3, 0.2]])}]
    for mode in ("train", "eval"):
        getattr(model, mode)()
        seen.clear()
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            out = _forward(model, _images(), targets)
        heads = {dtype for is_head, dtype in seen if is_head}
        others = {dtype for is_head, dtype in seen if not is_head}
        assert heads == {torch.float32}, (mode, heads)
        assert torch.bfloat16 in others, mode  # autocast was on for the rest
        assert out["pred_boxes"].dtype == out["pred_logits"].dtype == torch.float32
        assert all(a["pred_boxes"].dtype == torch.float32 for a in out["aux_outputs"])
