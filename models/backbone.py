"""ResNet backbone with frozen BatchNorm, optional DC5 dilation, joined with a positional encoding.

Parameter names follow the official DETR (``backbone.0.body.layer1.0.conv1.weight`` ...), so its checkpoints load.
"""
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.ops import FrozenBatchNorm2d

from models.backbone_attention import AttentionPlan, MaskedAttention, make_plan
from models.position_encoding import build_position_encoding
from util.nested_tensor import NestedTensor

RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101")
NORM_LAYERS = {"frozen_bn": FrozenBatchNorm2d, "bn": nn.BatchNorm2d}

__all__ = ["Backbone", "BackboneBase", "FrozenBatchNorm2d", "Joiner", "build_backbone"]


def _stages(body: nn.Module, last_layer: str) -> list[list[nn.Module]]:
    """ResNet stages from the input side up to ``last_layer``: stem (conv1 + bn1), layer1, ..."""
    stages = [[body.conv1, body.bn1], [body.layer1], [body.layer2], [body.layer3], [body.layer4]]
    return stages[: 1 + int(last_layer[-1])]


class BackboneBase(nn.Module):
    """Wraps a torchvision ResNet: freezes all but the last ``trainable_layers`` stages and returns masked features.

    ``last_layer`` is the stage whose output feeds the transformer: ``layer4`` (stride 32, DETR) or ``layer3``
    (stride 16: four times as many tokens for small images, and the last stage is not computed).

    ``attention`` places backbone attention blocks (see models/backbone_attention.py); they are trainable even
    inside frozen stages, and identities at initialisation.

    ``forward`` takes a NestedTensor of images ``[B, 3, H, W]`` and returns an ordered dict name -> NestedTensor
    of features ``[B, C, H/s, W/s]`` with the padding mask resized to each feature map.
    """

    def __init__(self, backbone: nn.Module, trainable_layers: int, num_channels: int, return_interm_layers: bool,
                 last_layer: str = "layer4", attention: AttentionPlan | None = None):
        super().__init__()
        if last_layer not in ("layer3", "layer4"):
            raise ValueError(f"--feature_layer must be layer3 or layer4, got {last_layer!r}")
        stages = _stages(backbone, last_layer)
        if not 0 <= trainable_layers <= len(stages):
            raise ValueError(f"--backbone_trainable_layers must be in 0..{len(stages)} with {last_layer} features, "
                             f"got {trainable_layers}")
        for param in backbone.parameters():
            param.requires_grad_(False)
        for stage in stages[len(stages) - trainable_layers:]:
            for module in stage:
                for param in module.parameters():
                    param.requires_grad_(True)
        # Frozen stages keep their normalisation statistics too (matters only for trainable BatchNorm).
        self._frozen = [m for stage in stages[: len(stages) - trainable_layers] for m in stage]
        if return_interm_layers:  # for the mask head's FPN: layer1 .. last_layer
            return_layers = {f"layer{i}": str(i - 1) for i in range(1, int(last_layer[-1]) + 1)}
        else:
            return_layers = {last_layer: "0"}
        self.body = IntermediateLayerGetter(backbone, return_layers=return_layers)
        self.num_channels = num_channels
        # channels of each returned feature map, input side first (a ResNet stage's last conv sets them)
        self.feature_channels = [num_channels]
        if return_interm_layers:
            self.feature_channels = [[m for m in getattr(backbone, name).modules() if isinstance(m, nn.Conv2d)][-1]
                                     .out_channels for name in return_layers]
        self.attn = MaskedAttention(self.body, attention) if attention is not None else None

    def train(self, mode: bool = True) -> "BackboneBase":
        super().train(mode)
        for module in self._frozen:
            module.eval()
        return self

    def forward(self, tensor_list: NestedTensor) -> dict[str, NestedTensor]:
        mask = tensor_list.mask
        if self.attn is None:
            xs = self.body(tensor_list.tensors)
        else:
            self.attn.set_mask(mask)
            try:
                xs = self.body(tensor_list.tensors)
            finally:
                self.attn.set_mask(None)
        out = {}
        for name, x in xs.items():
            feat_mask = F.interpolate(mask[None].float(), size=x.shape[-2:]).to(torch.bool)[0]
            out[name] = NestedTensor(x, feat_mask)
        return out


class Backbone(BackboneBase):
    """A torchvision ResNet by name.

    ``pretrained`` loads torchvision's ImageNet weights (IMAGENET1K_V1, as the official DETR), through torchvision's
    weights API and download cache; nothing is downloaded otherwise. ``dilation`` replaces the last stage's stride
    by dilation (DC5). ``norm`` is ``"frozen_bn"`` (DETR's) or ``"bn"`` (trainable, for training from scratch).
    """

    def __init__(self, name: str, trainable_layers: int, return_interm_layers: bool, dilation: bool,
                 pretrained: bool = False, norm: str = "frozen_bn", last_layer: str = "layer4",
                 attention: AttentionPlan | None = None):
        if name not in RESNETS:
            raise ValueError(f"--backbone must be one of {RESNETS}, got {name!r}")
        if norm not in NORM_LAYERS:
            raise ValueError(f"--backbone_norm must be one of {tuple(NORM_LAYERS)}, got {norm!r}")
        if dilation and last_layer != "layer4":
            raise ValueError("--dilation dilates layer4, which --feature_layer layer3 does not compute")
        if dilation and name in ("resnet18", "resnet34"):
            raise ValueError(f"--dilation needs a bottleneck ResNet (resnet50/101); {name} has basic blocks")
        weights = torchvision.models.get_model_weights(name).IMAGENET1K_V1 if pretrained else None
        backbone = getattr(torchvision.models, name)(
            weights=weights, replace_stride_with_dilation=[False, False, dilation], norm_layer=NORM_LAYERS[norm])
        num_channels = backbone.fc.in_features if last_layer == "layer4" else backbone.fc.in_features // 2
        super().__init__(backbone, trainable_layers, num_channels, return_interm_layers, last_layer, attention)


class Joiner(nn.Sequential):
    """``Joiner(backbone, position_embedding)``: returns (list of feature NestedTensors, list of encodings)."""

    def __init__(self, backbone: nn.Module, position_embedding: nn.Module):
        super().__init__(backbone, position_embedding)
        self.num_channels = backbone.num_channels
        self.feature_channels = backbone.feature_channels

    def forward(self, tensor_list: NestedTensor) -> tuple[list[NestedTensor], list[torch.Tensor]]:
        xs = self[0](tensor_list)
        out, pos = [], []
        for x in xs.values():
            out.append(x)
            pos.append(self[1](x).to(x.tensors.dtype))
        return out, pos


def wants_imagenet_weights(args) -> bool:
    """ImageNet weights only when training starts from them: never to evaluate, resume or load other weights."""
    loads_weights = args.eval or args.resume or args.finetune_from or args.frozen_weights
    return bool(args.pretrained_backbone and not loads_weights)


def build_backbone(args) -> Joiner:
    position_embedding = build_position_encoding(args)
    trainable_layers = args.backbone_trainable_layers if args.lr_backbone > 0 else 0
    attention = make_plan(args.backbone_attn, args.attn_stages, args.attn_position, int(args.feature_layer[-1]))
    backbone = Backbone(args.backbone, trainable_layers, return_interm_layers=args.masks, dilation=args.dilation,
                        pretrained=wants_imagenet_weights(args), norm=args.backbone_norm,
                        last_layer=args.feature_layer, attention=attention)
    return Joiner(backbone, position_embedding)
