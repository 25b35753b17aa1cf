"""Attention blocks inside the DETR backbone: placement, identity at initialisation, checkpoint compatibility,
training and parameter groups."""
import copy

import pytest
import torch

import cli
from models import build_model
from models.attention import ATTENTION
from models.param_groups import build_param_groups
from util.checkpoint import load_matching_state_dict
from util.nested_tensor import nested_tensor_from_tensor_list

BLOCKS = sorted(ATTENTION)


def _build(tiny_args, tiny_coco, *flags):
    torch.manual_seed(0)
    args = tiny_args(tiny_coco, "--num_classes", "6", "--backbone_norm", "frozen_bn", "--backbone_trainable_layers",
                     "3", *flags)
    model, criterion, _ = build_model(args)
    return model, criterion, args


def _images():
    g = torch.Generator().manual_seed(1)
    return nested_tensor_from_tensor_list([torch.rand(3, 96, 80, generator=g), torch.rand(3, 64, 96, generator=g)])


@pytest.mark.parametrize("block", BLOCKS)
def test_blocks_are_identities_at_init_and_keep_every_original_name(block, tiny_args, tiny_coco):
    plain, _, _ = _build(tiny_args, tiny_coco)
    with_blocks, _, _ = _build(tiny_args, tiny_coco, "--backbone_attn", block)
    plain_keys, block_keys = set(plain.state_dict()), set(with_blocks.state_dict())
    assert plain_keys <= block_keys
    extra = block_keys - plain_keys
    assert extra and all(k.startswith("backbone.0.attn.blocks.") for k in extra)

    # An official-format state dict (no block entries) loads with only the block entries missing ...
    skipped, missing = load_matching_state_dict(with_blocks, plain.state_dict())
    assert skipped == [] and set(missing) == extra
    # ... and the model then computes exactly what the model without blocks computes, in both modes.
    samples = _images()
    for mode in ("train", "eval"):
        getattr(plain, mode)()
        getattr(with_blocks, mode)()
        feats_plain, _ = plain.backbone(samples)
        feats_block, _ = with_blocks.backbone(samples)
        assert torch.equal(feats_plain[-1].tensors, feats_block[-1].tensors), mode
    plain.eval(), with_blocks.eval()
    out_plain, out_block = plain(samples), with_blocks(samples)
    assert torch.equal(out_plain["pred_boxes"], out_block["pred_boxes"])


@pytest.mark.parametrize("block, position, count", [("gc", "block", 4), ("se", "stage", 2), ("nl", "stage", 2)])
def test_placement_by_stage_and_position(block, position, count, tiny_args, tiny_coco):
    model, _, _ = _build(tiny_args, tiny_coco, "--backbone_attn", block, "--attn_stages", "3", "4",
                         "--attn_position", position)
    places = list(model.backbone[0].attn.blocks)
    assert len(places) == count  # resnet18: 2 residual blocks per stage
    assert places == (["layer3_0", "layer3_1", "layer4_0", "layer4_1"] if position == "block" else ["layer3", "layer4"])


def test_default_positions_and_stages(tiny_args, tiny_coco):
    gc, _, _ = _build(tiny_args, tiny_coco, "--backbone_attn", "gc")
    assert list(gc.backbone[0].attn.blocks) == [f"layer{s}_{i}" for s in (2, 3, 4) for i in (0, 1)]
    nl, _, _ = _build(tiny_args, tiny_coco, "--backbone_attn", "nl", "--feature_layer", "layer3")
    assert list(nl.backbone[0].attn.blocks) == ["layer3"]
    stn, _, _ = _build(tiny_args, tiny_coco, "--backbone_attn", "stn")
    assert list(stn.backbone[0].attn.blocks) == ["layer4"]
    ran, _, _ = _build(tiny_args, tiny_coco, "--backbone_attn", "ran", "--feature_layer", "layer3")
    blocks = ran.backbone[0].attn.blocks  # every stage before the last, pooling down to layer4's resolution
    assert list(blocks) == ["layer1", "layer2"] and [len(b.mask_branch.down) for b in blocks.values()] == [3, 2]
    sasa, _, _ = _build(tiny_args, tiny_coco, "--backbone_attn", "sasa", "--attn_position", "stage")
    assert list(sasa.backbone[0].attn.blocks) == ["layer4"]


@pytest.mark.parametrize("flags, named", [
    (["--backbone_attn", "nope"], "--backbone_attn"),
    (["--backbone_attn", "nl", "--attn_position", "block"], "--attn_position"),
    (["--backbone_attn", "stn", "--attn_position", "block"], "--attn_position"),
    (["--backbone_attn", "gc", "--attn_stages", "4", "--feature_layer", "layer3"], "--attn_stages"),
])
def test_bad_placements_name_the_flag(flags, named, tiny_args, tiny_coco):
    args = tiny_args(tiny_coco, "--backbone_trainable_layers", "3", *flags)
    with pytest.raises(ValueError, match=f"^{named}: "):
        cli.check_args(args)
    with pytest.raises(ValueError) as built:  # the builder itself speaks of its arguments, not of flags
        build_model(args)
    assert "--" not in str(built.value)


def test_blocks_train_inside_frozen_stages_with_their_own_groups(tiny_args, tiny_coco):
    model, criterion, args = _build(tiny_args, tiny_coco, "--backbone_attn", "se", "--lr_backbone", "0",
                                    "--lr_attn", "5e-4")
    attn = list(model.backbone[0].attn.parameters())
    assert all(p.requires_grad for p in attn)
    assert not any(p.requires_grad for p in model.backbone[0].body.parameters())
    groups = build_param_groups(model, args.lr_backbone, args.lr_attn)
    by_id = {id(p): g for g in groups for p in g["params"]}
    for p in attn:
        assert by_id[id(p)].get("lr") == 5e-4
        assert (by_id[id(p)].get("weight_decay") == 0.0) == (p.ndim <= 1)
    assert sum(len(g["params"]) for g in groups) == len({id(p) for p in model.parameters() if p.requires_grad})

    optimizer = torch.optim.AdamW(groups, lr=args.lr)
    before = [p.detach().clone() for p in attn]
    targets = [{"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.3, 0.3]])}] * 2
    model.train()
    loss_dict = criterion(model(_images()), targets)
    loss = sum(loss_dict[k] * criterion.weight_dict[k] for k in loss_dict if k in criterion.weight_dict)
    loss.backward()
    optimizer.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, attn))


@pytest.mark.parametrize("block", BLOCKS)
def test_one_step_inside_detr_reaches_and_moves_every_block(block, tiny_args, tiny_coco):
    """Through the hooks, the detection loss gives every block parameter a gradient (zero where a zero-initialised
    scale or projection still blocks it) and one AdamW step changes the blocks."""
    model, criterion, args = _build(tiny_args, tiny_coco, "--backbone_attn", block, "--lr_attn", "1e-3")
    optimizer = torch.optim.AdamW(build_param_groups(model, args.lr_backbone, args.lr_attn), lr=args.lr)
    attn = dict(model.backbone[0].attn.named_parameters())
    before = {name: p.detach().clone() for name, p in attn.items()}
    g = torch.Generator().manual_seed(2)
    samples = nested_tensor_from_tensor_list([torch.rand(3, 64, 48, generator=g), torch.rand(3, 48, 64, generator=g)])
    targets = [{"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.3, 0.3]])}] * 2
    model.train()
    loss_dict = criterion(model(samples), targets)
    sum(loss_dict[k] * criterion.weight_dict[k] for k in loss_dict if k in criterion.weight_dict).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in attn.values())
    optimizer.step()
    assert any(not torch.equal(before[name], p) for name, p in attn.items())


@pytest.mark.parametrize("block", ["aa", "sasa"])
def test_conv_augmenting_blocks_sit_on_the_3x3_convolutions(block, tiny_args, tiny_coco):
    """aa and sasa hook conv2 of each residual block of their default stages (aa: the last, sasa: the last two) and
    receive the convolution's input; the residual blocks' norms carry no hook."""
    model, _, _ = _build(tiny_args, tiny_coco, "--backbone_attn", block)
    body = model.backbone[0].body
    places = list(model.backbone[0].attn.blocks)
    stages = (4,) if block == "aa" else (3, 4)
    assert places == [f"layer{s}_{i}" for s in stages for i in (0, 1)]
    for s in stages:
        for residual in getattr(body, f"layer{s}"):
            assert len(residual.conv2._forward_hooks) == 1 and not residual.bn2._forward_hooks
    seen = []
    model.backbone[0].attn.blocks["layer4_0"].register_forward_pre_hook(
        lambda m, args, kwargs: seen.append((args[0].shape, kwargs["source"].shape)), with_kwargs=True)
    model.eval()
    model.backbone(_images())
    assert seen == [(torch.Size([2, 512, 3, 3]), torch.Size([2, 512, 3, 3]))]  # resnet18: conv2 is never strided


def test_conv_augmentation_on_strided_bottleneck_convolutions():
    """In a Bottleneck ResNet the first 3x3 convolution of layer4 has stride 2: aa gets its input at twice the
    output's size, pools it, and the backbone is still exactly the one without blocks at initialisation."""
    from models.backbone import Backbone
    from models.backbone_attention import make_plan

    torch.manual_seed(0)
    plain = Backbone("resnet50", 0, False, False)
    with_aa = Backbone("resnet50", 0, False, False, attention=make_plan("aa", None, None, 4))
    with_aa.body.load_state_dict(plain.body.state_dict())
    assert list(with_aa.attn.blocks) == ["layer4_0", "layer4_1", "layer4_2"]
    assert with_aa.attn.blocks["layer4_0"].dk == 104  # F_out = 512: d_k = d_v = 0.2 * 512 in multiples of 8
    seen = []
    with_aa.attn.blocks["layer4_0"].register_forward_pre_hook(
        lambda m, args, kwargs: seen.append((args[0].shape[-2:], kwargs["source"].shape[-2:])), with_kwargs=True)
    samples = nested_tensor_from_tensor_list([torch.rand(3, 96, 64), torch.rand(3, 64, 90)])
    plain.eval(), with_aa.eval()
    assert torch.equal(plain(samples)["0"].tensors, with_aa(samples)["0"].tensors)
    assert seen == [(torch.Size([3, 3]), torch.Size([6, 6]))]


def test_deep_copy_keeps_blocks_attached_to_the_copy(tiny_args, tiny_coco):
    model, _, _ = _build(tiny_args, tiny_coco, "--backbone_attn", "gc")
    model.eval()
    twin = copy.deepcopy(model)
    samples = _images()
    reference = model.backbone(samples)[0][-1].tensors
    with torch.no_grad():
        for block in twin.backbone[0].attn.blocks.values():
            for p in block.parameters():
                p.add_(torch.randn_like(p))
    assert torch.equal(model.backbone(samples)[0][-1].tensors, reference)
    assert not torch.equal(twin.backbone(samples)[0][-1].tensors, reference)


@pytest.mark.parametrize("block", BLOCKS)
def test_attention_maps_for_pictures(block):
    from models.attention import build_attention

    torch.manual_seed(0)
    module = build_attention(block, 16)
    x = torch.randn(2, 16, 6, 5)
    mask = torch.zeros(2, 6, 5, dtype=torch.bool)
    mask[1, 4:] = True  # the second image's last two rows are padding
    maps = module.attention_maps(x, mask, query=(1, 2))
    if block in ("se", "eca"):
        assert maps == {}  # channel attention only: nothing spatial to draw
        return
    assert maps
    for m in maps.values():
        assert m.shape == (2, 6, 5) and torch.isfinite(m).all()
    if block in ("gc", "nl", "da", "cc", "aa", "sasa"):
        weights = next(iter(maps.values()))
        assert torch.allclose(weights.sum(dim=(1, 2)), torch.ones(2), atol=1e-5)  # a distribution over pixels
        assert torch.all(weights[1, 4:] == 0)  # padded pixels get no weight


def test_visualisation_tool_writes_pictures(tiny_coco, tmp_path):
    pytest.importorskip("matplotlib")
    from tools.analysis import visualize_attention

    image = sorted((tiny_coco / "val2017").iterdir())[0]
    written = visualize_attention.main([
        "--backbone", "resnet18", "--no_pretrained_backbone", "--hidden_dim", "32", "--nheads", "2",
        "--enc_layers", "1", "--dec_layers", "1", "--dim_feedforward", "32", "--num_queries", "4",
        "--image_size", "64", "--backbone_attn", "nl", "--attn_stages", "3", "4", "--image", str(image),
        "--out", str(tmp_path), "--threshold", "0"])
    names = sorted(p.name for p in written)
    assert names == ["attn_layer3.png", "attn_layer4.png", "decoder_attention.png", "detections.png",
                     "hard_attention.png"]
    assert all(p.stat().st_size > 1000 for p in written)
