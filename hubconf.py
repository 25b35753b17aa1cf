"""torch.hub entry points for the official models: DETR detection (COCO, 91 classes) and panoptic segmentation
(COCO panoptic, 250 classes as the official checkpoints; ids 1..90 are things), Deformable DETR and DINO (COCO).

``pretrained=False`` builds the architecture with random weights and touches no network (the backbone's ImageNet
weights are not fetched). DETR: ``pretrained=True`` downloads the official weights into torch.hub's cache.
Deformable DETR and DINO publish their weights on Google Drive only, which torch.hub cannot download: fetch the file
from the page the error message names and pass ``checkpoint=PATH`` (a local file or an https URL).
"""
import argparse
import contextlib
import sys
from pathlib import Path

import torch

REPOSITORY = Path(__file__).resolve().parent
OWN_PACKAGES = ("cli", "datasets", "evaluation", "models", "util")  # the top-level packages this file imports


def _is_ours(module) -> bool:
    """Whether ``module`` was imported from this repository (a namespace package by its search path)."""
    places = [getattr(module, "__file__", None), *getattr(module, "__path__", [])]
    return any(place is not None and Path(place).resolve().is_relative_to(REPOSITORY) for place in places)


@contextlib.contextmanager
def _own_packages_first():
    """Import this repository's packages even where same-named ones were imported first (Hugging Face's
    ``datasets`` in a notebook, say): those are set aside while ours import, then put back, so that the caller's
    ``import datasets`` still finds theirs; our modules keep references to each other."""
    def holds(name: str) -> bool:
        return name.split(".")[0] in OWN_PACKAGES

    foreign = {name: module for name, module in sys.modules.items() if holds(name) and not _is_ours(module)}
    for name in foreign:
        del sys.modules[name]
    sys.path.insert(0, str(REPOSITORY))
    try:
        yield
    finally:
        sys.path.remove(str(REPOSITORY))
        if foreign:
            for name in [name for name in sys.modules if holds(name)]:
                del sys.modules[name]
            sys.modules.update(foreign)


with _own_packages_first():
    import cli  # noqa: E402
    from models import build_model  # noqa: E402
    from models.backbone import Backbone, Joiner  # noqa: E402
    from models.detr import DETR, PostProcess  # noqa: E402
    from models.detr.segmentation import DETRsegm, PostProcessPanoptic, coco_panoptic_is_thing_map  # noqa: E402
    from models.detr.transformer import Transformer  # noqa: E402
    from models.position_encoding import PositionEmbeddingSine  # noqa: E402
    from util.checkpoint import load_checkpoint  # noqa: E402
    from util.config import parse_args_with_config  # noqa: E402
    from util.training_state import model_state  # noqa: E402

dependencies = ["torch", "torchvision", "scipy"]

OFFICIAL_URLS = {
    "detr_resnet50": "https://dl.fbaipublicfiles.com/detr/detr-r50-e632da11.pth",
    "detr_resnet50_dc5": "https://dl.fbaipublicfiles.com/detr/detr-r50-dc5-f0fb7ef5.pth",
    "detr_resnet101": "https://dl.fbaipublicfiles.com/detr/detr-r101-2c7b67e5.pth",
    "detr_resnet101_dc5": "https://dl.fbaipublicfiles.com/detr/detr-r101-dc5-a2e86def.pth",
    "detr_resnet50_panoptic": "https://dl.fbaipublicfiles.com/detr/detr-r50-panoptic-00ce5173.pth",
    "detr_resnet50_dc5_panoptic": "https://dl.fbaipublicfiles.com/detr/detr-r50-dc5-panoptic-da08f1b1.pth",
    "detr_resnet101_panoptic": "https://dl.fbaipublicfiles.com/detr/detr-r101-panoptic-40021d53.pth",
}
PANOPTIC_CLASSES = 250


def _make_detr(backbone_name: str, dilation: bool = False, num_classes: int = 91, mask: bool = False
               ) -> DETR | DETRsegm:
    """The official hub architecture: hidden 256, 6+6 layers, 8 heads, 100 queries, sine positions, no aux outputs
    (as the official entry points); with ``mask`` wrapped in the segmentation head."""
    hidden_dim = 256
    backbone = Backbone(backbone_name, trainable_layers=3, return_interm_layers=mask, dilation=dilation)
    joiner = Joiner(backbone, PositionEmbeddingSine(hidden_dim // 2, normalize=True))
    transformer = Transformer(d_model=hidden_dim, return_intermediate_dec=True)
    detr = DETR(joiner, transformer, num_classes=num_classes, num_queries=100, aux_loss=False)
    return DETRsegm(detr) if mask else detr


def _load_official(model: torch.nn.Module, name: str, num_classes: int, official_classes: int) -> None:
    if num_classes != official_classes:
        raise ValueError(f"{name}: the official weights have {official_classes} classes; num_classes={num_classes} "
                         "needs pretrained=False (or --finetune_from)")
    model.load_state_dict(load_checkpoint(OFFICIAL_URLS[name], flag=name)["model"])


def _hub_model(name: str, backbone_name: str, dilation: bool, pretrained: bool, num_classes: int,
               return_postprocessor: bool):
    model = _make_detr(backbone_name, dilation, num_classes)
    if pretrained:
        _load_official(model, name, num_classes, 91)
    if return_postprocessor:
        return model, PostProcess()
    return model


def _hub_panoptic(name: str, backbone_name: str, dilation: bool, pretrained: bool, num_classes: int,
                  threshold: float, return_postprocessor: bool):
    model = _make_detr(backbone_name, dilation, num_classes, mask=True)
    if pretrained:
        _load_official(model, name, num_classes, PANOPTIC_CLASSES)
    if return_postprocessor:
        return model, PostProcessPanoptic(coco_panoptic_is_thing_map(num_classes), threshold=threshold)
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


def detr_resnet50_panoptic(pretrained: bool = False, num_classes: int = PANOPTIC_CLASSES, threshold: float = 0.85,
                           return_postprocessor: bool = False):
    """DETR R50 panoptic: 43.4 PQ on COCO val2017 (official figure). The post-processor keeps queries whose class
    probability exceeds ``threshold``."""
    return _hub_panoptic("detr_resnet50_panoptic", "resnet50", False, pretrained, num_classes, threshold,
                         return_postprocessor)


def detr_resnet50_dc5_panoptic(pretrained: bool = False, num_classes: int = PANOPTIC_CLASSES,
                               threshold: float = 0.85, return_postprocessor: bool = False):
    """DETR-DC5 R50 panoptic: 44.6 PQ on COCO val2017 (official figure)."""
    return _hub_panoptic("detr_resnet50_dc5_panoptic", "resnet50", True, pretrained, num_classes, threshold,
                         return_postprocessor)


def detr_resnet101_panoptic(pretrained: bool = False, num_classes: int = PANOPTIC_CLASSES, threshold: float = 0.85,
                            return_postprocessor: bool = False):
    """DETR R101 panoptic: 45.1 PQ on COCO val2017 (official figure)."""
    return _hub_panoptic("detr_resnet101_panoptic", "resnet101", False, pretrained, num_classes, threshold,
                         return_postprocessor)


CONFIGS = REPOSITORY / "configs"
# entry -> (preset, official COCO val AP, where the official checkpoint is published)
PRESET_MODELS = {
    "deformable_detr_resnet50": ("deformable_detr.yaml", 44.5,
                                 "https://drive.google.com/file/d/1nDWZWHuRwtwGden77NLM9JoWe-YisJnA/view"),
    "deformable_detr_resnet50_single_scale": (
        "deformable_detr_single_scale.yaml", 39.4,
        "https://drive.google.com/file/d/1WEjQ9_FgfI5sw5OZZ4ix-OKk-IJ_-SDU/view"),
    "deformable_detr_resnet50_single_scale_dc5": (
        "deformable_detr_single_scale_dc5.yaml", 41.5,
        "https://drive.google.com/file/d/1m_TgMjzH7D44fbA-c_jiBZ-xf-odxGdk/view"),
    "deformable_detr_resnet50_refine": ("deformable_detr_refine.yaml", 46.2,
                                        "https://drive.google.com/file/d/1JYKyRYzUH7uo9eVfDaVCiaIGZb5YTCuI/view"),
    "deformable_detr_resnet50_two_stage": ("deformable_detr_two_stage.yaml", 46.9,
                                           "https://drive.google.com/file/d/15I03A7hNTpwuLNdfuEmW9_taZMNVssEp/view"),
    "dino_resnet50_4scale": ("dino_4scale.yaml", 49.0,
                             "https://drive.google.com/drive/folders/1qD5m1NmK0kjE5hh-G17XUX751WsEG-h_ "
                             "(checkpoint0011_4scale.pth)"),
    "dino_resnet50_5scale": ("dino_5scale.yaml", 49.4,
                             "https://drive.google.com/drive/folders/1qD5m1NmK0kjE5hh-G17XUX751WsEG-h_ "
                             "(checkpoint0011_5scale.pth)"),
}


def _preset_model(name: str, pretrained: bool, checkpoint: str | None, num_classes: int,
                  return_postprocessor: bool):
    """The architecture of ``name``'s preset; with ``pretrained``, the official weights from ``checkpoint``."""
    preset, _, page = PRESET_MODELS[name]
    parser = argparse.ArgumentParser(parents=[cli.get_args_parser()])
    args = parse_args_with_config(parser, ["--config", str(CONFIGS / preset), "--no_pretrained_backbone",
                                           "--num_classes", str(num_classes), "--device", "cpu"])
    model, _, postprocessors = build_model(args)
    if pretrained:
        if checkpoint is None:
            raise ValueError(f"{name}: the official weights are published at {page}, which torch.hub cannot "
                             "download; fetch the file and pass checkpoint=PATH")
        model.load_state_dict(load_checkpoint(checkpoint, flag=f"{name}(checkpoint=...)")["model"])
    return (model, postprocessors["bbox"]) if return_postprocessor else model


def deformable_detr_resnet50(pretrained: bool = False, checkpoint: str | None = None, num_classes: int = 91,
                             return_postprocessor: bool = False):
    """Deformable DETR R50 (4 levels): 44.5 AP on COCO val2017 after 50 epochs (official figure)."""
    return _preset_model("deformable_detr_resnet50", pretrained, checkpoint, num_classes, return_postprocessor)


def deformable_detr_resnet50_single_scale(pretrained: bool = False, checkpoint: str | None = None,
                                          num_classes: int = 91, return_postprocessor: bool = False):
    """Deformable DETR R50, single scale: 39.4 AP on COCO val2017 (official figure)."""
    return _preset_model("deformable_detr_resnet50_single_scale", pretrained, checkpoint, num_classes,
                         return_postprocessor)


def deformable_detr_resnet50_single_scale_dc5(pretrained: bool = False, checkpoint: str | None = None,
                                              num_classes: int = 91, return_postprocessor: bool = False):
    """Deformable DETR R50, single scale, DC5: 41.5 AP on COCO val2017 (official figure)."""
    return _preset_model("deformable_detr_resnet50_single_scale_dc5", pretrained, checkpoint, num_classes,
                         return_postprocessor)


def deformable_detr_resnet50_refine(pretrained: bool = False, checkpoint: str | None = None, num_classes: int = 91,
                                    return_postprocessor: bool = False):
    """Deformable DETR R50 + iterative box refinement: 46.2 AP on COCO val2017 (official figure)."""
    return _preset_model("deformable_detr_resnet50_refine", pretrained, checkpoint, num_classes,
                         return_postprocessor)


def deformable_detr_resnet50_two_stage(pretrained: bool = False, checkpoint: str | None = None,
                                       num_classes: int = 91, return_postprocessor: bool = False):
    """Two-stage Deformable DETR R50 with box refinement: 46.9 AP on COCO val2017 (official figure)."""
    return _preset_model("deformable_detr_resnet50_two_stage", pretrained, checkpoint, num_classes,
                         return_postprocessor)


def dino_resnet50_4scale(pretrained: bool = False, checkpoint: str | None = None, num_classes: int = 91,
                         return_postprocessor: bool = False):
    """DINO-4scale R50: 49.0 AP on COCO val2017 after 12 epochs (official figure; 50.4 / 50.9 after 24 / 36)."""
    return _preset_model("dino_resnet50_4scale", pretrained, checkpoint, num_classes, return_postprocessor)


def dino_resnet50_5scale(pretrained: bool = False, checkpoint: str | None = None, num_classes: int = 91,
                         return_postprocessor: bool = False):
    """DINO-5scale R50: 49.4 AP on COCO val2017 after 12 epochs (official figure; 51.3 after 24)."""
    return _preset_model("dino_resnet50_5scale", pretrained, checkpoint, num_classes, return_postprocessor)


# entry -> (preset, official COCO val2017 AP at 640 x 640, the released file: the EMA weights, 80 classes)
RTDETRV2_MODELS = {
    "rtdetrv2_r18vd": ("rtdetrv2_r18vd.yaml", 48.1, "https://github.com/lyuwenyu/storage/releases/download/v0.2/"
                                                    "rtdetrv2_r18vd_120e_coco_rerun_48.1.pth"),
    "rtdetrv2_r34vd": ("rtdetrv2_r34vd.yaml", 49.9, "https://github.com/lyuwenyu/storage/releases/download/v0.1/"
                                                    "rtdetrv2_r34vd_120e_coco_ema.pth"),
    "rtdetrv2_r50vd_m": ("rtdetrv2_r50vd_m.yaml", 51.9, "https://github.com/lyuwenyu/storage/releases/download/v0.1/"
                                                        "rtdetrv2_r50vd_m_7x_coco_ema.pth"),
    "rtdetrv2_r50vd": ("rtdetrv2_r50vd.yaml", 53.4, "https://github.com/lyuwenyu/storage/releases/download/v0.1/"
                                                    "rtdetrv2_r50vd_6x_coco_ema.pth"),
    "rtdetrv2_r101vd": ("rtdetrv2_r101vd.yaml", 54.3, "https://github.com/lyuwenyu/storage/releases/download/v0.1/"
                                                      "rtdetrv2_r101vd_6x_coco_from_paddle.pth"),
}


# entry -> (preset, official COCO val2017 AP at 640 x 640, the released file, 80 classes)
DFINE_MODELS = {
    f"dfine_{size}": (f"dfine_{size}.yaml", ap, f"https://github.com/Peterande/storage/releases/download/dfinev1.0/"
                                                f"dfine_{size}_coco.pth")
    for size, ap in (("n", 42.8), ("s", 48.5), ("m", 52.3), ("l", 54.0), ("x", 55.8))}


def _real_time(name: str, pretrained: bool, num_classes: int, return_postprocessor: bool):
    """RT-DETRv2 or D-FINE of ``name``'s preset; ``pretrained`` downloads the official release (its EMA weights,
    else its model weights) into torch.hub's cache and loads it strictly. The post-processor gives COCO category ids
    (the 80 labels mapped back, as the official ``remap_mscoco_category``); it takes original sizes as (w, h), as the
    official one."""
    preset, _, url = {**RTDETRV2_MODELS, **DFINE_MODELS}[name]
    if pretrained and num_classes != 80:
        raise ValueError(f"{name}: the official weights have 80 classes; num_classes={num_classes} needs "
                         "pretrained=False (or --finetune_from)")
    parser = argparse.ArgumentParser(parents=[cli.get_args_parser()])
    args = parse_args_with_config(parser, ["--config", str(CONFIGS / preset), "--no_pretrained_backbone",
                                           "--num_classes", str(num_classes), "--device", "cpu"])
    if num_classes != 80:  # another label set: labels are the caller's category ids
        args.remap_mscoco_category = False
    model, _, postprocessors = build_model(cli.resolve_data_pipeline(args))
    if pretrained:
        model.load_state_dict(model_state(load_checkpoint(url, flag=name), name))
    return (model, postprocessors["bbox"]) if return_postprocessor else model


def rtdetrv2_r18vd(pretrained: bool = False, num_classes: int = 80, return_postprocessor: bool = False):
    """RT-DETRv2-S (PResNet-18vd): 48.1 AP on COCO val2017 at 640 x 640 (official figure)."""
    return _real_time("rtdetrv2_r18vd", pretrained, num_classes, return_postprocessor)


def rtdetrv2_r34vd(pretrained: bool = False, num_classes: int = 80, return_postprocessor: bool = False):
    """RT-DETRv2-M* (PResNet-34vd): 49.9 AP on COCO val2017 at 640 x 640 (official figure)."""
    return _real_time("rtdetrv2_r34vd", pretrained, num_classes, return_postprocessor)


def rtdetrv2_r50vd_m(pretrained: bool = False, num_classes: int = 80, return_postprocessor: bool = False):
    """RT-DETRv2-M (PResNet-50vd, half-width fusion, third decoder layer): 51.9 AP on COCO val2017 (official)."""
    return _real_time("rtdetrv2_r50vd_m", pretrained, num_classes, return_postprocessor)


def rtdetrv2_r50vd(pretrained: bool = False, num_classes: int = 80, return_postprocessor: bool = False):
    """RT-DETRv2-L (PResNet-50vd): 53.4 AP on COCO val2017 at 640 x 640 (official figure)."""
    return _real_time("rtdetrv2_r50vd", pretrained, num_classes, return_postprocessor)


def rtdetrv2_r101vd(pretrained: bool = False, num_classes: int = 80, return_postprocessor: bool = False):
    """RT-DETRv2-X (PResNet-101vd): 54.3 AP on COCO val2017 at 640 x 640 (official figure)."""
    return _real_time("rtdetrv2_r101vd", pretrained, num_classes, return_postprocessor)


def dfine_n(pretrained: bool = False, num_classes: int = 80, return_postprocessor: bool = False):
    """D-FINE-N (HGNetv2-B0, two levels): 42.8 AP on COCO val2017 at 640 x 640 (official figure)."""
    return _real_time("dfine_n", pretrained, num_classes, return_postprocessor)


def dfine_s(pretrained: bool = False, num_classes: int = 80, return_postprocessor: bool = False):
    """D-FINE-S (HGNetv2-B0): 48.5 AP on COCO val2017 at 640 x 640 (official figure)."""
    return _real_time("dfine_s", pretrained, num_classes, return_postprocessor)


def dfine_m(pretrained: bool = False, num_classes: int = 80, return_postprocessor: bool = False):
    """D-FINE-M (HGNetv2-B2): 52.3 AP on COCO val2017 at 640 x 640 (official figure)."""
    return _real_time("dfine_m", pretrained, num_classes, return_postprocessor)


def dfine_l(pretrained: bool = False, num_classes: int = 80, return_postprocessor: bool = False):
    """D-FINE-L (HGNetv2-B4): 54.0 AP on COCO val2017 at 640 x 640 (official figure)."""
    return _real_time("dfine_l", pretrained, num_classes, return_postprocessor)


def dfine_x(pretrained: bool = False, num_classes: int = 80, return_postprocessor: bool = False):
    """D-FINE-X (HGNetv2-B5): 55.8 AP on COCO val2017 at 640 x 640 (official figure)."""
    return _real_time("dfine_x", pretrained, num_classes, return_postprocessor)


__all__ = ["detr_resnet50", "detr_resnet50_dc5", "detr_resnet101", "detr_resnet101_dc5", "detr_resnet50_panoptic",
           "detr_resnet50_dc5_panoptic", "detr_resnet101_panoptic", *PRESET_MODELS, *RTDETRV2_MODELS,
           *DFINE_MODELS, "torch"]
