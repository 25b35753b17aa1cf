"""torch.hub entry points for the official DETR models (COCO, 91 classes).

``pretrained=True`` downloads the official weights into torch.hub's cache; ``pretrained=False`` builds the
architecture with random weights and touches no network (the backbone's ImageNet weights are not fetched).
"""
import torch

from models.backbone import Backbone, Joiner
from models.detr import DETR, PostProcess
from models.position_encoding import PositionEmbeddingSine
from models.transformer import Transformer
from util.checkpoint import load_checkpoint

dependencies = ["torch", "torchvision", "scipy"]

OFFICIAL_URLS = {
    "detr_resnet50": "https://dl.fbaipublicfiles.com/detr/detr-r50-e632da11.pth",
    "detr_resnet50_dc5": "https://dl.fbaipublicfiles.com/detr/detr-r50-dc5-f0fb7ef5.pth",
    "detr_resnet101": "https://dl.fbaipublicfiles.com/detr/detr-r101-2c7b67e5.pth",
    "detr_resnet101_dc5": "https://dl.fbaipublicfiles.com/detr/detr-r101-dc5-a2e86def.pth",
}


def _make_detr(backbone_name: str, dilation: bool = False, num_classes: int = 91) -> DETR:
    """The official architecture: hidden 256, 6+6 layers, 8 heads, 100 queries, sine positions, aux outputs."""
    hidden_dim = 256
    backbone = Backbone(backbone_name, trainable_layers=3, return_interm_layers=False, dilation=dilation)
    joiner = Joiner(backbone, PositionEmbeddingSine(hidden_dim // 2, normalize=True))
    transformer = Transformer(d_model=hidden_dim, return_intermediate_dec=True)
    return DETR(joiner, transformer, num_classes=num_classes, num_queries=100, aux_loss=True)


def _hub_model(name: str, backbone_name: str, dilation: bool, pretrained: bool, num_classes: int,
               return_postprocessor: bool):
    model = _make_detr(backbone_name, dilation, num_classes)
    if pretrained:
        if num_classes != 91:
            raise ValueError(f"{name}: the official weights have 91 classes; num_classes={num_classes} "
                             "needs pretrained=False (or --finetune_from)")
        model.load_state_dict(load_checkpoint(OFFICIAL_URLS[name], flag=name)["model"])
    if return_postprocessor:
        return model, PostProcess()
    return model


def detr_resnet50(pretrained: bool = False, num_classes: int = 91, return_postprocessor: bool = False):
    """DETR R50: 42.0 AP on COCO val2017 (official figure)."""
    return _hub_model("detr_resnet50", "resnet50", False, pretrained, num_classes, return_postprocessor)


def detr_resnet50_dc5(pretrained: bool = False, num_classes: int = 91, return_postprocessor: bool = False):
    """DETR-DC5 R50: 43.3 AP on COCO val2017 (official figure)."""
    return _hub_model("detr_resnet50_dc5", "resnet50", True, pretrained, num_classes, return_postprocessor)


def detr_resnet101(pretrained: bool = False, num_classes: int = 91, return_postprocessor: bool = False):
    """DETR R101: 43.5 AP on COCO val2017 (official figure)."""
    return _hub_model("detr_resnet101", "resnet101", False, pretrained, num_classes, return_postprocessor)


def detr_resnet101_dc5(pretrained: bool = False, num_classes: int = 91, return_postprocessor: bool = False):
    """DETR-DC5 R101: 44.9 AP on COCO val2017 (official figure)."""
    return _hub_model("detr_resnet101_dc5", "resnet101", True, pretrained, num_classes, return_postprocessor)


__all__ = ["detr_resnet50", "detr_resnet50_dc5", "detr_resnet101", "detr_resnet101_dc5", "torch"]
