"""--optimizer_groups: the official real-time configs' name-pattern groups, their quirks kept."""
import pytest
import torch
from torch import nn

from models.backbone_attention import MaskedAttention, make_plan
from models.param_groups import GroupPattern, parse_group_pattern, pattern_param_groups

# the official D-FINE n/s/m groups (configs/dfine/dfine_hgnetv2_{n,s,m}_coco.yml)
DFINE_SMALL = ["^(?=.*backbone)(?!.*norm|bn).*$ lr=lr_backbone",
               "^(?=.*backbone)(?=.*norm|bn).*$ lr=lr_backbone weight_decay=0",
               "^(?=.*(?:encoder|decoder))(?=.*(?:norm|bn|bias)).*$ weight_decay=0"]


class ConvBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1, bias=False)
        self.bn = nn.BatchNorm2d(4)


class Toy(nn.Module):
    """Parameters named as in the official D-FINE: backbone.stem.stem1.{conv,bn}, encoder.{norm,proj},
    decoder.{head,norm}."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Module()
        self.backbone.stem = nn.Module()
        self.backbone.stem.stem1 = ConvBN()
        self.encoder = nn.Module()
        self.encoder.norm = nn.LayerNorm(4)
        self.encoder.proj = nn.Linear(4, 4)
        self.decoder = nn.Module()
        self.decoder.head = nn.Linear(4, 2)
        self.decoder.norm = nn.LayerNorm(4)


def names_of(model: nn.Module, groups: list[dict]) -> list[set[str]]:
    name = {id(p): n for n, p in model.named_parameters()}
    return [{name[id(p)] for p in group["params"]} for group in groups]


def test_official_dfine_small_groups_with_their_precedence_quirk():
    # `(?!.*norm|bn)` reads as `(?!(.*norm)|(bn))`: "bn" only at the name's start, so the backbone's BatchNorm
    # parameters land in the first group (decayed, at the backbone rate) and the second group is empty
    model = Toy()
    groups = pattern_param_groups(model, [parse_group_pattern(t) for t in DFINE_SMALL], lr_backbone=4e-4)
    assert names_of(model, groups) == [
        {"backbone.stem.stem1.conv.weight", "backbone.stem.stem1.bn.weight", "backbone.stem.stem1.bn.bias"},
        set(),
        {"encoder.norm.weight", "encoder.norm.bias", "encoder.proj.bias", "decoder.head.bias", "decoder.norm.weight",
         "decoder.norm.bias"},
        {"encoder.proj.weight", "decoder.head.weight"}]
    assert [{k: v for k, v in g.items() if k != "params"} for g in groups] == [
        {"lr": 4e-4}, {"lr": 4e-4, "weight_decay": 0.0}, {"weight_decay": 0.0}, {}]
    optimizer = torch.optim.AdamW(groups, lr=8e-4, weight_decay=1e-4)  # every parameter exactly once
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))


def test_frozen_parameters_are_left_out_and_a_parameter_found_twice_is_an_error():
    model = Toy()
    model.backbone.stem.stem1.bn.requires_grad_(False)
    groups = pattern_param_groups(model, [GroupPattern("backbone", lr=1.0)], lr_backbone=0.1)
    assert names_of(model, groups)[0] == {"backbone.stem.stem1.conv.weight"}
    with pytest.raises(ValueError, match=r"encoder.norm.weight is found by both 'norm' and 'encoder'"):
        pattern_param_groups(model, [GroupPattern("norm"), GroupPattern("encoder")], lr_backbone=0.1)


def test_attention_blocks_keep_their_own_groups_first():
    from models.hgnetv2 import HGNetv2
    model = Toy()
    model.backbone = HGNetv2(name="B0", use_lab=False, return_idx=[1, 2, 3], freeze_stem_only=True, freeze_at=-1,
                             freeze_norm=False, pretrained=False)
    model.backbone.attn = MaskedAttention(model.backbone, make_plan("se", None, None, 4))
    groups = pattern_param_groups(model, [parse_group_pattern("^backbone lr=lr_backbone")], lr_backbone=1e-5,
                                  lr_attn=3e-4)
    names = names_of(model, groups)
    attention = {n for n, _ in model.named_parameters() if n.startswith("backbone.attn.")}
    assert attention and names[0] | names[1] == attention
    assert groups[0]["lr"] == groups[1]["lr"] == 3e-4 and groups[1]["weight_decay"] == 0.0
    assert groups[2]["lr"] == 1e-5 and not names[2] & attention
    assert names[2] == {n for n, _ in model.named_parameters() if n.startswith("backbone.")} - attention


@pytest.mark.parametrize("text, message", [
    ("(unclosed lr=1", "is not a regular expression"),
    ("^backbone lr=fast", "lr='fast' is not a number"),
    ("^backbone momentum=0.9", "options are lr=RATE"),
    ("^backbone lr=1 lr=2", "each at most once"),
    ("^backbone weight_decay=-1", "weight_decay must not be negative"),
])
def test_bad_patterns_are_one_line_errors(text, message):
    with pytest.raises(ValueError, match=message):
        parse_group_pattern(text)
