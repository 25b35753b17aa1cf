"""ResNet backbone with frozen BatchNorm (or trainable BatchNorm or GroupNorm), optional DC5 dilation, joined with a
positional encoding.

Parameter names follow the official DETR (``backbone.0.body.layer1.0.conv1.weight`` ...), so its checkpoints load.
"""
from pathlib import Path
from urllib.error import URLError

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
GROUP_NORM_GROUPS = 32  # as Detectron2's GroupNorm ResNets (Wu & He, 2018); every ResNet width is a multiple of it


def group_norm(num_channels: int) -> nn.GroupNorm:
    """GroupNorm over 32 groups of channels: statistics of each image alone, so they hold at any batch size."""
    return nn.GroupNorm(GROUP_NORM_GROUPS, num_channels)


NORM_LAYERS = {"frozen_bn": FrozenBatchNorm2d, "bn": nn.BatchNorm2d, "gn": group_norm}
STAGE_STRIDES = {"layer1": 4, "layer2": 8, "layer3": 16, "layer4": 32}

__all__ = ["Backbone", "BackboneBase", "FrozenBatchNorm2d", "Joiner", "build_backbone"]


def _stages(body: nn.Module, last_layer: str) -> list[list[nn.Module]]:
    """ResNet stages from the input side up to ``last_layer``: stem (conv1 + bn1), layer1, ..."""
    stages = [[body.conv1, body.bn1], [body.layer1], [body.layer2], [body.layer3], [body.layer4]]
    return stages[: 1 + int(last_layer[-1])]


class BackboneBase(nn.Module):
    """Wraps a torchvision ResNet: freezes all but the last ``trainable_layers`` stages and returns masked features.

    ``trainable_layers`` counts stages from ``last_layer`` down to the stem; ``True``/``False`` mean what the
    official DETR's ``train_backbone`` means (layer2 and up trained, or nothing).

    ``last_layer`` is the last stage computed: ``layer4`` (stride 32, DETR), ``layer3`` (stride 16: four times as
    many tokens for small images) or ``layer2`` (stride 8: sixteen times); the stages after it are not computed. The
    returned stages are ``return_layers`` (input side first); without it, ``last_layer`` alone, or
    layer1..``last_layer`` with ``return_interm_layers`` (the mask head's FPN). ``num_channels`` is the channel count
    of ``last_layer``; ``feature_channels`` and ``strides`` (pixels per feature cell; ``dilation`` says layer4 is
    dilated) describe each returned map.

    ``attention`` places backbone attention blocks (see models/backbone_attention.py); they are trainable even
    inside frozen stages, and identities at initialisation.

    ``forward`` takes a NestedTensor of images ``[B, 3, H, W]`` and returns an ordered dict name -> NestedTensor
    of features ``[B, C, H/s, W/s]`` with the padding mask resized to each feature map.
    """

    def __init__(self, backbone: nn.Module, trainable_layers: int | bool, num_channels: int,
                 return_interm_layers: bool, last_layer: str = "layer4", attention: AttentionPlan | None = None,
                 return_layers: tuple[str, ...] | None = None, dilation: bool = False):
        super().__init__()
        if last_layer not in ("layer2", "layer3", "layer4"):
            raise ValueError(f"last_layer must be layer2, layer3 or layer4, got {last_layer!r}")
        stages = _stages(backbone, last_layer)
        if isinstance(trainable_layers, bool):
            trainable_layers = len(stages) - 2 if trainable_layers else 0
        if not 0 <= trainable_layers <= len(stages):
            raise ValueError(f"trainable_layers must be in 0..{len(stages)} with last_layer {last_layer}, "
                             f"got {trainable_layers}")
        for param in backbone.parameters():
            param.requires_grad_(False)
        for stage in stages[len(stages) - trainable_layers:]:
            for module in stage:
                for param in module.parameters():
                    param.requires_grad_(True)
        # Frozen stages keep their normalisation statistics too (matters only for trainable BatchNorm).
        self._frozen = [m for stage in stages[: len(stages) - trainable_layers] for m in stage]
        if return_layers is None:  # with return_interm_layers: the mask head's FPN, layer1 .. last_layer
            first = 1 if return_interm_layers else int(last_layer[-1])
            return_layers = tuple(f"layer{i}" for i in range(first, int(last_layer[-1]) + 1))
        bad = [name for name in return_layers if name not in STAGE_STRIDES or name[-1] > last_layer[-1]]
        if bad or list(return_layers) != sorted(return_layers):
            raise ValueError(f"backbone stages to return must be among layer1..{last_layer} in order, got "
                             f"{list(return_layers)}")
        self.body = IntermediateLayerGetter(backbone, return_layers={name: str(i) for i, name in
                                                                     enumerate(return_layers)})
        self.num_channels = num_channels
        # channels of each returned feature map, input side first (a ResNet stage's last conv sets them)
        self.feature_channels = [num_channels if name == last_layer else
                                 [m for m in getattr(backbone, name).modules() if isinstance(m, nn.Conv2d)][-1]
                                 .out_channels for name in return_layers]
        self.strides = [STAGE_STRIDES[name] // (2 if dilation and name == "layer4" else 1) for name in return_layers]
        self.attn = MaskedAttention(self.body, attention) if attention is not None else None

    def train(self, mode: bool = True) -> "BackboneBase":
        super().train(mode)
        for module in self._frozen:
            module.eval()
        return self

    def forward(self, tensor_list: NestedTensor) -> dict[str, NestedTensor]:
        mask = tensor_list.mask
        assert mask is not None
        if self.attn is not None:
            self.attn.set_mask(mask)  # every forward sets it anew, so a failed pass leaves nothing stale behind
        xs = self.body(tensor_list.tensors)
        out: dict[str, NestedTensor] = {}
        for name, x in xs.items():
            feat_mask = F.interpolate(mask[None].float(), size=x.shape[-2:]).to(torch.bool)[0]
            out[name] = NestedTensor(x, feat_mask)
        return out


class Backbone(BackboneBase):
    """A torchvision ResNet by name.

    ``pretrained`` loads torchvision's ImageNet weights (IMAGENET1K_V1, as the official DETR), through torchvision's
    weights API and download cache; nothing is downloaded otherwise. ``dilation`` replaces the last stage's stride
    by dilation (DC5). ``norm`` is ``"frozen_bn"`` (DETR's), ``"bn"`` (trainable, for training from scratch) or ``"gn"``
    (GroupNorm, from scratch only: torchvision's ImageNet weights are BatchNorm's).
    """

    def __init__(self, name: str, trainable_layers: int | bool, return_interm_layers: bool, dilation: bool,
                 pretrained: bool = False, norm: str = "frozen_bn", last_layer: str = "layer4",
                 attention: AttentionPlan | None = None, return_layers: tuple[str, ...] | None = None):
        if name not in RESNETS:
            raise ValueError(f"unknown ResNet {name!r}; choose from {RESNETS}")
        if norm not in NORM_LAYERS:
            raise ValueError(f"norm must be one of {tuple(NORM_LAYERS)}, got {norm!r}")
        if norm == "gn" and pretrained:
            raise ValueError("GroupNorm has no ImageNet weights (torchvision's ResNets are trained with BatchNorm): "
                             "train it from random weights")
        if dilation and (last_layer != "layer4" or name in ("resnet18", "resnet34")):
            raise ValueError(f"dilation needs layer4 of a bottleneck ResNet (resnet50/101), got {name} up to "
                             f"{last_layer}")
        if pretrained:
            ensure_imagenet_weights(name)
        weights = torchvision.models.get_model_weights(name).IMAGENET1K_V1 if pretrained else None
        backbone = getattr(torchvision.models, name)(
            weights=weights, replace_stride_with_dilation=[False, False, dilation], norm_layer=NORM_LAYERS[norm])
        num_channels = backbone.fc.in_features // 2 ** (4 - int(last_layer[-1]))  # each stage doubles the width
        super().__init__(backbone, trainable_layers, num_channels, return_interm_layers, last_layer, attention,
                         return_layers, dilation)


def imagenet_weights_file(name: str) -> Path:
    """Where torch.hub's cache keeps torchvision's ImageNet weights of ResNet ``name`` (IMAGENET1K_V1)."""
    url = torchvision.models.get_model_weights(name).IMAGENET1K_V1.url
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def ensure_imagenet_weights(name: str) -> Path:
    """The cached ImageNet weights of ``name``, downloaded first if missing; without a network, an error that says
    which file to copy where (or to train without them)."""
    path = imagenet_weights_file(name)
    if path.is_file():
        return path
    url = torchvision.models.get_model_weights(name).IMAGENET1K_V1.url
    hash_prefix = torch.hub.HASH_REGEX.search(path.name)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(path), hash_prefix.group(1) if hash_prefix else None, progress=False)
    except (URLError, OSError) as exc:
        raise FileNotFoundError(f"--backbone {name} starts from ImageNet weights, which are not in torch.hub's cache "
                                f"and cannot be downloaded ({exc}): copy {url.rsplit('/', 1)[-1]} (from {url}) to "
                                f"{path}, or train from random weights with --no_pretrained_backbone") from exc
    return path


class Joiner(nn.Sequential):
    """``Joiner(backbone, position_embedding)``: returns (list of feature NestedTensors, list of encodings), input
    side first."""

    def __init__(self, backbone: nn.Module, position_embedding: nn.Module):
        super().__init__(backbone, position_embedding)
        self.num_channels = backbone.num_channels
        self.feature_channels = backbone.feature_channels
        self.strides = backbone.strides

    def forward(self, tensor_list: NestedTensor) -> tuple[list[NestedTensor], list[torch.Tensor]]:
        xs = self[0](tensor_list)
        out: list[NestedTensor] = []
        pos: list[torch.Tensor] = []
        for x in xs.values():
            out.append(x)
            pos.append(self[1](x).to(x.tensors.dtype))
        return out, pos


def wants_imagenet_weights(args) -> bool:
    """ImageNet weights only when training starts from them: never to evaluate, resume or load other weights."""
    loads_weights = args.eval or args.resume or args.finetune_from or args.frozen_weights
    return bool(args.pretrained_backbone and not loads_weights)


def build_backbone(args, return_layers: tuple[str, ...] | None = None,
                   position_embedding: nn.Module | None = None) -> Joiner:
    """The backbone the flags describe, joined with ``position_embedding`` (default: the flags' DETR encoding).

    ``return_layers``: the stages an architecture reads (default: the last one, plus the mask head's with --masks).
    """
    position_embedding = position_embedding or build_position_encoding(args)
    trainable_layers = args.backbone_trainable_layers if args.lr_backbone > 0 else 0
    attention = make_plan(args.backbone_attn, args.attn_stages, args.attn_position, int(args.feature_layer[-1]))
    backbone = Backbone(args.backbone, trainable_layers, return_interm_layers=args.masks, dilation=args.dilation,
                        pretrained=wants_imagenet_weights(args), norm=args.backbone_norm,
                        last_layer=args.feature_layer, attention=attention, return_layers=return_layers)
    return Joiner(backbone, position_embedding)
