"""Reference values of the official RT-DETRv2 (lyuwenyu/RT-DETR, folder rtdetrv2_pytorch), for
tests/test_rtdetrv2_backbone.py, tests/test_hybrid_encoder.py and tests/test_rtdetrv2.py.

Run with a clone of https://github.com/lyuwenyu/RT-DETR (no weights are downloaded)::

    .venv/bin/python -m tools.reference.rtdetrv2 --official /path/to/RT-DETR/rtdetrv2_pytorch

It saves, one function per part of the model, from the official code:

- ``names``: the state-dict names and shapes of the official backbone (``PResNet``), encoder (``HybridEncoder``,
  in training form and after ``convert_to_deploy``) and whole model (``RTDETR``, in training form and after
  ``deploy()``) of the five released presets, with the non-persistent buffers; the preset values below are checked
  against the official config files;
- ``backbone`` and ``encoder``: for each tiny case, built from ``torch.manual_seed(CASE_SEED)`` (our modules draw
  the official initial weights bit for bit), moved off their initial values by :func:`perturb` and run in float64
  on :func:`case_inputs`: probes (:func:`probe`) of the outputs in training mode, in evaluation mode and, for the
  encoder, after deploy conversion, and the norms of the training-mode gradients;
- ``decoder`` (``RTDETRTransformerv2``) and ``model`` (``RTDETR``): for each tiny case, a fingerprint of the initial
  weights, then, perturbed and in float64, the probes of every training output (denoising drawn from
  ``NOISE_SEED``) and ``dn_meta``, the criterion's terms (``RTDETRCriterionv2``) on hand-made targets (one image
  without targets, or none at all), the matcher's indices, the gradient norms of their sum, and the probes of the
  evaluation outputs (and of the deployed model's); the model case adds the post-processor's detections;
- ``postprocessor`` (``RTDETRPostProcessor``): detections of fixed outputs, COCO labels mapped, softmax, deploy.

On the way it checks that our modules load the official state dicts with strict=True and prints the largest
difference between our values and the official ones. The official code is imported only when the script runs; the
tests import this module for the presets, the cases and the ``run_*_case`` functions, never the official code. The
seeds, inputs, probes and runs it shares with tools/reference/dfine.py are in tools/reference/common.py.
"""
import argparse
import copy
import json
import zlib
from pathlib import Path

import torch
from torch import nn

from tools.reference.common import (
    CASE_SEED,
    NAME_LISTS,
    case_inputs,
    case_targets,  # noqa: F401 (the tests read it from this module)
    deploy_modules,
    largest_difference,
    official_src,
    our_encoder_kwargs,
    pack,
    perturb,
    postprocessor_cases,
    run_decoder,
    run_model,
    run_module,
    run_postprocessor,
    same_initial_weights,
    split_name_lists,
    state_names_and_shapes,
    unpack,
)

ROOT = Path(__file__).resolve().parents[2]
REFERENCE_FILE = ROOT / "tests" / "golden" / "rtdetrv2_reference.pt"

OFFICIAL_CONFIGS = {
    "r18vd": "configs/rtdetrv2/rtdetrv2_r18vd_120e_coco.yml",
    "r34vd": "configs/rtdetrv2/rtdetrv2_r34vd_120e_coco.yml",
    "r50vd_m": "configs/rtdetrv2/rtdetrv2_r50vd_m_7x_coco.yml",
    "r50vd": "configs/rtdetrv2/rtdetrv2_r50vd_6x_coco.yml",
    "r101vd": "configs/rtdetrv2/rtdetrv2_r101vd_6x_coco.yml",
}

# The official configs' PResNet and HybridEncoder sections (the encoder's eval_spatial_size is the config's shared
# key), without PResNet's ``pretrained``; keys and names as the official constructors take them.
_BASE_BACKBONE = {"depth": 50, "variant": "d", "freeze_at": 0, "return_idx": [1, 2, 3], "num_stages": 4,
                  "freeze_norm": True}
_BASE_ENCODER = {"in_channels": [512, 1024, 2048], "feat_strides": [8, 16, 32], "hidden_dim": 256,
                 "use_encoder_idx": [2], "num_encoder_layers": 1, "nhead": 8, "dim_feedforward": 1024,
                 "dropout": 0.0, "enc_act": "gelu", "expansion": 1.0, "depth_mult": 1, "act": "silu",
                 "eval_spatial_size": [640, 640]}
_SMALL_RESNET = {"freeze_at": -1, "freeze_norm": False}
_SMALL_ENCODER = {"in_channels": [128, 256, 512], "expansion": 0.5}
BACKBONE_PRESETS = {
    "r18vd": {**_BASE_BACKBONE, "depth": 18, **_SMALL_RESNET},
    "r34vd": {**_BASE_BACKBONE, "depth": 34, **_SMALL_RESNET},
    "r50vd_m": dict(_BASE_BACKBONE),
    "r50vd": dict(_BASE_BACKBONE),
    "r101vd": {**_BASE_BACKBONE, "depth": 101},
}
ENCODER_PRESETS = {
    "r18vd": {**_BASE_ENCODER, **_SMALL_ENCODER},
    "r34vd": {**_BASE_ENCODER, **_SMALL_ENCODER},
    "r50vd_m": {**_BASE_ENCODER, "expansion": 0.5},
    "r50vd": dict(_BASE_ENCODER),
    "r101vd": {**_BASE_ENCODER, "hidden_dim": 384, "dim_feedforward": 2048},
}

# tiny cases: (constructor arguments in the official names, input shape(s) without the batch of 2)
BACKBONE_CASES = {
    "r18vd": (BACKBONE_PRESETS["r18vd"], (3, 64, 48)),  # trainable BatchNorm
    "r50vd": (BACKBONE_PRESETS["r50vd"], (3, 45, 67)),  # frozen norm, frozen stem; sizes that round up
}
ENCODER_CASES = {
    # the r18vd encoder at 16 channels; eval_spatial_size makes evaluation read the stored tables
    "r18vd_tiny": ({**ENCODER_PRESETS["r18vd"], "in_channels": [16, 24, 32], "hidden_dim": 16, "nhead": 2,
                    "dim_feedforward": 32, "eval_spatial_size": [64, 64]},
                   [(16, 8, 8), (24, 4, 4), (32, 2, 2)]),
    # two encoded levels of two layers each, one RepVGG block per fusion, relu; non-square maps, no stored table
    "two_levels_non_square": ({**ENCODER_PRESETS["r50vd"], "in_channels": [8, 16, 24], "hidden_dim": 16, "nhead": 4,
                               "dim_feedforward": 24, "use_encoder_idx": [1, 2], "num_encoder_layers": 2,
                               "depth_mult": 0.34, "act": "relu", "enc_act": "relu", "eval_spatial_size": None},
                              [(8, 12, 8), (16, 6, 4), (24, 3, 2)]),
}


# The official configs' RTDETRTransformerv2 sections with the shared keys num_classes and eval_spatial_size, and
# their criterion, matcher and post-processor sections (the same in every preset).
_BASE_DECODER = {"feat_channels": [256, 256, 256], "feat_strides": [8, 16, 32], "hidden_dim": 256, "num_levels": 3,
                 "num_layers": 6, "num_queries": 300, "num_denoising": 100, "label_noise_ratio": 0.5,
                 "box_noise_scale": 1.0, "eval_idx": -1, "num_points": [4, 4, 4], "cross_attn_method": "default",
                 "query_select_method": "default", "num_classes": 80, "eval_spatial_size": [640, 640]}
DECODER_PRESETS = {
    "r18vd": {**_BASE_DECODER, "num_layers": 3},
    "r34vd": {**_BASE_DECODER, "num_layers": 4},
    "r50vd_m": {**_BASE_DECODER, "eval_idx": 2},
    "r50vd": dict(_BASE_DECODER),
    "r101vd": {**_BASE_DECODER, "feat_channels": [384, 384, 384]},
}
CRITERION_PRESET = {"weight_dict": {"loss_vfl": 1, "loss_bbox": 5, "loss_giou": 2}, "losses": ["vfl", "boxes"],
                    "alpha": 0.75, "gamma": 2.0}
MATCHER_PRESET = {"weight_dict": {"cost_class": 2, "cost_bbox": 5, "cost_giou": 2}, "alpha": 0.25, "gamma": 2.0}
POSTPROCESSOR_PRESET = {"num_top_queries": 300}

# tiny decoder cases: (official constructor arguments, encoder maps (C, H, W) without the batch of 2, targets)
_TINY_DECODER = {"num_classes": 5, "hidden_dim": 16, "num_queries": 6, "feat_channels": [8, 12, 16],
                 "feat_strides": [8, 16, 32], "num_levels": 3, "num_points": [2, 3, 1], "nhead": 2, "num_layers": 3,
                 "dim_feedforward": 24, "num_denoising": 8, "eval_spatial_size": [64, 64]}
_SQUARE_MAPS = [(8, 8, 8), (12, 4, 4), (16, 2, 2)]
DECODER_CASES = {
    # denoising over 2 groups of 3 + 3 queries; evaluation reads the stored anchors
    "denoising_points_list": (_TINY_DECODER, _SQUARE_MAPS, "mixed"),
    # anchors computed in evaluation too, non-square maps
    "no_eval_size_non_square": ({**_TINY_DECODER, "eval_spatial_size": None}, [(8, 8, 6), (12, 4, 3), (16, 2, 2)],
                                "mixed"),
    "eval_idx": ({**_TINY_DECODER, "eval_idx": 1}, _SQUARE_MAPS, "mixed"),
    # a one-logit encoder head (the official criterion matches it with the real classes: all 0 here)
    "agnostic": ({**_TINY_DECODER, "query_select_method": "agnostic"}, _SQUARE_MAPS, "class_0"),
    "one2many": ({**_TINY_DECODER, "query_select_method": "one2many"}, _SQUARE_MAPS, "mixed"),
    "discrete": ({**_TINY_DECODER, "cross_attn_method": "discrete", "num_points": 2}, _SQUARE_MAPS, "mixed"),
    # a batch without any target: the official dummy denoising group
    "empty_batch": (_TINY_DECODER, _SQUARE_MAPS, "empty"),
    # a fourth level made from the last map, learned content queries, dropout (drawn after the noise)
    "extra_level_learned_content_dropout": ({**_TINY_DECODER, "num_levels": 4, "num_points": [1, 2, 3, 2],
                                             "learn_query_content": True, "dropout": 0.1,
                                             "eval_spatial_size": [64, 128]},
                                            [(8, 8, 16), (12, 4, 8), (16, 2, 4)], "mixed"),
}
# the whole model at tiny widths: a three-stage ResNet-18-vd (strides 4, 8, 16) on 32 x 32 images
MODEL_CASES = {
    "r18vd_tiny": ({"backbone": {**BACKBONE_PRESETS["r18vd"], "num_stages": 3, "return_idx": [0, 1, 2]},
                    "encoder": {**ENCODER_PRESETS["r18vd"], "in_channels": [64, 128, 256], "feat_strides": [4, 8, 16],
                                "hidden_dim": 16, "nhead": 2, "dim_feedforward": 32, "eval_spatial_size": [32, 32]},
                    "decoder": {**_TINY_DECODER, "feat_channels": [16, 16, 16], "feat_strides": [4, 8, 16],
                                "num_points": [2, 2, 2], "num_layers": 2, "num_denoising": 10,
                                "eval_spatial_size": [32, 32]},
                    "num_top_queries": 10},
                   (3, 32, 32), "mixed"),
}
# post-processor cases: (official arguments, logits shape [B, Q, K(+1)], COCO label mapping)
POSTPROCESSOR_CASES = {
    "coco_focal": ({"num_classes": 80, "use_focal_loss": True, "num_top_queries": 20}, (2, 7, 80), True),
    "softmax": ({"num_classes": 5, "use_focal_loss": False, "num_top_queries": 4}, (2, 7, 6), False),
}


# ---------------------------------------------------------------------------------------------------------------
# What the tests share with the generator

def compress(names: dict[str, list[str]]) -> torch.Tensor:
    """Name lists by key as zlib-compressed JSON in a uint8 tensor (one stream: the lists repeat each other)."""
    return torch.frombuffer(bytearray(zlib.compress(json.dumps(names).encode(), 9)), dtype=torch.uint8)


def decompress(packed: torch.Tensor) -> dict[str, list[str]]:
    return json.loads(zlib.decompress(bytes(packed.tolist())).decode())


def run_backbone_case(backbone: nn.Module, name: str) -> dict[str, torch.Tensor]:
    """A perturbed backbone (official or ours, built from ``CASE_SEED``) on the case's images."""
    perturb(backbone)
    return run_module(backbone, case_inputs([BACKBONE_CASES[name][1]]), lambda m, x: m(x[0]), deploy=False)


def run_encoder_case(encoder: nn.Module, name: str) -> dict[str, torch.Tensor]:
    """A perturbed encoder (official or ours, built from ``CASE_SEED``) on the case's feature maps."""
    perturb(encoder)
    return run_module(encoder, case_inputs(ENCODER_CASES[name][1]), lambda m, x: m(x), deploy=True)


def run_decoder_case(decoder: nn.Module, criterion: nn.Module, name: str) -> dict:
    """A decoder (official or ours, built from ``CASE_SEED``): its initial fingerprint, then perturbed, a training
    step and an evaluation on the case's maps (float64; :func:`~tools.reference.common.run_decoder`)."""
    _, shapes, kind = DECODER_CASES[name]
    return run_decoder(decoder, criterion, shapes, kind)


def run_model_case(model: nn.Module, criterion: nn.Module, postprocessor: nn.Module, name: str) -> dict:
    """A whole model (official or ours, built from ``CASE_SEED`` in the order backbone, encoder, decoder): as
    :func:`run_decoder_case` on the case's images, plus the post-processor's detections in evaluation (sizes
    ``ORIG_SIZES_WH``) and the outputs after ``deploy()`` (:func:`~tools.reference.common.run_model`)."""
    _, shape, kind = MODEL_CASES[name]
    return run_model(model, criterion, postprocessor, shape, kind)


def run_postprocessor_case(postprocessor: nn.Module, name: str) -> dict[str, torch.Tensor]:
    """Detections of the case's outputs at sizes ``ORIG_SIZES_WH`` (w, h), then of the deployed post-processor."""
    return run_postprocessor(postprocessor, POSTPROCESSOR_CASES[name][1])


def our_criterion(num_classes: int, num_layers: int) -> nn.Module:
    """Our VarifocalSetCriterion and FocalHungarianMatcher with the official configs' values."""
    from models.criterion import VarifocalSetCriterion
    from models.matcher import FocalHungarianMatcher

    costs = MATCHER_PRESET["weight_dict"]
    matcher = FocalHungarianMatcher(cost_class=costs["cost_class"], cost_bbox=costs["cost_bbox"],
                                    cost_giou=costs["cost_giou"], alpha=MATCHER_PRESET["alpha"],
                                    gamma=MATCHER_PRESET["gamma"])
    return VarifocalSetCriterion(matcher, CRITERION_PRESET["weight_dict"], CRITERION_PRESET["losses"],
                                 alpha=CRITERION_PRESET["alpha"], gamma=CRITERION_PRESET["gamma"],
                                 num_classes=num_classes, num_decoder_layers=num_layers)


def our_model(backbone_kwargs: dict, encoder_kwargs: dict, decoder_kwargs: dict) -> nn.Module:
    """Our RTDETR from official constructor arguments, parts built in the official order (backbone, encoder,
    decoder)."""
    from models.layers.hybrid_encoder import rtdetrv2_hybrid_encoder
    from models.rtdetrv2.decoder import RTDETRTransformerv2
    from models.rtdetrv2.presnet import PResNet
    from models.rtdetrv2.rtdetrv2 import RTDETR

    backbone = PResNet(**backbone_kwargs)
    encoder = rtdetrv2_hybrid_encoder(**our_encoder_kwargs(encoder_kwargs))
    return RTDETR(backbone, encoder, RTDETRTransformerv2(**decoder_kwargs))


def load_reference() -> dict:
    """The saved values: ``names`` (part/preset -> lines); ``backbone``, ``encoder``, ``decoder``, ``model`` and
    ``postprocessor`` (case -> values)."""
    saved = torch.load(REFERENCE_FILE, weights_only=True)
    names = decompress(saved["names"])
    parts = {part: {case: unpack(values) for case, values in saved[part].items()}
             for part in ("backbone", "encoder", "decoder", "model", "postprocessor")}
    for part, cases in parts.items():
        for case, values in cases.items():
            values.update({key: names[f"{part}/{case}/{key}"] for key in NAME_LISTS
                           if f"{part}/{case}/{key}" in names})
    return {"names": names, **parts}


# ---------------------------------------------------------------------------------------------------------------
# The official code (run time only)

def check_presets(path: Path) -> None:
    """Our preset values are the official configs' (with their includes)."""
    with official_src(path):
        from src.core import YAMLConfig

        for preset, file in OFFICIAL_CONFIGS.items():
            config = YAMLConfig(str(path / file)).yaml_cfg
            backbone = {k: v for k, v in config["PResNet"].items() if k != "pretrained"}
            encoder = {**config["HybridEncoder"], "eval_spatial_size": config["eval_spatial_size"]}
            assert backbone == BACKBONE_PRESETS[preset], (preset, backbone)
            assert encoder == ENCODER_PRESETS[preset], (preset, encoder)
            decoder = {**config["RTDETRTransformerv2"], "num_classes": config["num_classes"],
                       "eval_spatial_size": config["eval_spatial_size"]}
            assert decoder == DECODER_PRESETS[preset], (preset, decoder)
            criterion = dict(config["RTDETRCriterionv2"])
            matcher = criterion.pop("matcher")
            assert criterion == CRITERION_PRESET, (preset, criterion)
            assert matcher == {"type": "HungarianMatcher", **MATCHER_PRESET}, (preset, matcher)
            assert config["use_focal_loss"] and config["remap_mscoco_category"], preset
            assert config["RTDETRPostProcessor"] == POSTPROCESSOR_PRESET, preset
            assert config["RTDETR"] == {"backbone": "PResNet", "encoder": "HybridEncoder",
                                        "decoder": "RTDETRTransformerv2"}, preset


def _same_names(ours: nn.Module, official: nn.Module, what: str) -> list[str]:
    lines = state_names_and_shapes(official)
    assert state_names_and_shapes(ours) == lines, (what, sorted(set(lines) ^ set(state_names_and_shapes(ours))))
    return lines


def official_names(path: Path) -> dict[str, list[str]]:
    """The five presets' backbone, encoder, deployed-encoder, model and deployed-model names, each checked against
    ours (whole models on the meta device)."""
    from models.layers.hybrid_encoder import rtdetrv2_hybrid_encoder
    from models.rtdetrv2.presnet import PResNet

    with official_src(path):
        from src.nn.backbone.presnet import PResNet as OfficialPResNet
        from src.zoo.rtdetr.hybrid_encoder import HybridEncoder as OfficialHybridEncoder
        from src.zoo.rtdetr.rtdetr import RTDETR as OfficialRTDETR
        from src.zoo.rtdetr.rtdetrv2_decoder import RTDETRTransformerv2 as OfficialRTDETRTransformerv2
    result = {}
    for preset in OFFICIAL_CONFIGS:
        with torch.device("meta"):
            official_backbone = OfficialPResNet(**BACKBONE_PRESETS[preset])
            ours = PResNet(**BACKBONE_PRESETS[preset])
        result[f"backbone/{preset}"] = _same_names(ours, official_backbone, preset)
        official = OfficialHybridEncoder(**ENCODER_PRESETS[preset])  # on the CPU: the stored tables are compared
        ours = rtdetrv2_hybrid_encoder(**our_encoder_kwargs(ENCODER_PRESETS[preset]))
        ours.load_state_dict(official.state_dict(), strict=True)
        for name, table in official.named_buffers():
            if name.startswith("pos_embed"):
                assert torch.equal(table, ours.get_buffer(name)), (preset, name)
        result[f"encoder/{preset}"] = _same_names(ours, official, preset)
        for module in (official, ours):
            deploy_modules(module)
        result[f"encoder_deploy/{preset}"] = _same_names(ours, official, f"{preset} deployed")
        ours.load_state_dict(official.state_dict(), strict=True)
        official_decoder = OfficialRTDETRTransformerv2(**copy.deepcopy(DECODER_PRESETS[preset]))  # moves to the CPU
        with torch.device("meta"):
            official = OfficialRTDETR(OfficialPResNet(**BACKBONE_PRESETS[preset]),
                                      OfficialHybridEncoder(**ENCODER_PRESETS[preset]), official_decoder)
            ours = our_model(BACKBONE_PRESETS[preset], ENCODER_PRESETS[preset], DECODER_PRESETS[preset])
            result[f"model/{preset}"] = _same_names(ours, official, f"{preset} model")
            result[f"model_deploy/{preset}"] = _same_names(ours.deploy(), official.deploy(), f"{preset} deployed")
        print(f"{preset}: backbone, encoder and model names identical, strict loads ok")
    return result


def official_backbone_cases(path: Path) -> dict[str, dict]:
    from models.rtdetrv2.presnet import PResNet

    with official_src(path):
        from src.nn.backbone.presnet import PResNet as OfficialPResNet
    result = {}
    for name, (kwargs, _) in BACKBONE_CASES.items():
        torch.manual_seed(CASE_SEED)
        official = OfficialPResNet(**kwargs)
        torch.manual_seed(CASE_SEED)
        ours = PResNet(**kwargs)
        assert all(torch.equal(v, ours.state_dict()[k]) for k, v in official.state_dict().items()), name
        expected = run_backbone_case(official, name)
        actual = run_backbone_case(ours, name)
        print(f"backbone {name}: ours vs official, largest difference {largest_difference(actual, expected):.3g}")
        result[name] = pack(expected)
    return result


def official_encoder_cases(path: Path) -> dict[str, dict]:
    from models.layers.hybrid_encoder import rtdetrv2_hybrid_encoder

    with official_src(path):
        from src.zoo.rtdetr.hybrid_encoder import HybridEncoder as OfficialHybridEncoder
    result = {}
    for name, (kwargs, _) in ENCODER_CASES.items():
        torch.manual_seed(CASE_SEED)
        expected = run_encoder_case(OfficialHybridEncoder(**kwargs), name)
        torch.manual_seed(CASE_SEED)
        actual = run_encoder_case(rtdetrv2_hybrid_encoder(**our_encoder_kwargs(kwargs)), name)
        print(f"encoder {name}: ours vs official, largest difference {largest_difference(actual, expected):.3g}")
        result[name] = pack(expected)
    return result


def _official_criterion(classes: dict, num_classes: int) -> nn.Module:
    costs = MATCHER_PRESET["weight_dict"]
    matcher = classes["HungarianMatcher"](weight_dict=dict(costs), use_focal_loss=True, alpha=MATCHER_PRESET["alpha"],
                                          gamma=MATCHER_PRESET["gamma"])
    return classes["RTDETRCriterionv2"](matcher, weight_dict=dict(CRITERION_PRESET["weight_dict"]),
                                        losses=list(CRITERION_PRESET["losses"]), alpha=CRITERION_PRESET["alpha"],
                                        gamma=CRITERION_PRESET["gamma"], num_classes=num_classes)


def _official_classes(path: Path) -> dict:
    with official_src(path):
        from src.data.dataset import mscoco_label2category
        from src.nn.backbone.presnet import PResNet
        from src.zoo.rtdetr.hybrid_encoder import HybridEncoder
        from src.zoo.rtdetr.matcher import HungarianMatcher
        from src.zoo.rtdetr.rtdetr import RTDETR
        from src.zoo.rtdetr.rtdetr_postprocessor import RTDETRPostProcessor
        from src.zoo.rtdetr.rtdetrv2_criterion import RTDETRCriterionv2
        from src.zoo.rtdetr.rtdetrv2_decoder import RTDETRTransformerv2
    return {"PResNet": PResNet, "HybridEncoder": HybridEncoder, "HungarianMatcher": HungarianMatcher,
            "RTDETR": RTDETR, "RTDETRPostProcessor": RTDETRPostProcessor, "RTDETRCriterionv2": RTDETRCriterionv2,
            "RTDETRTransformerv2": RTDETRTransformerv2, "mscoco_label2category": mscoco_label2category}


def official_decoder_cases(classes: dict) -> dict[str, dict]:
    from models.rtdetrv2.decoder import RTDETRTransformerv2

    result = {}
    for name, (kwargs, _, _) in DECODER_CASES.items():
        criterion = _official_criterion(classes, kwargs["num_classes"])
        torch.manual_seed(CASE_SEED)
        official = classes["RTDETRTransformerv2"](**copy.deepcopy(kwargs))
        torch.manual_seed(CASE_SEED)
        ours = RTDETRTransformerv2(**kwargs)
        same_initial_weights(ours, official, name, state_names_and_shapes)
        expected = run_decoder_case(official, criterion, name)
        actual = run_decoder_case(ours, our_criterion(kwargs["num_classes"], kwargs["num_layers"]), name)
        print(f"decoder {name}: ours vs official, largest difference {largest_difference(actual, expected):.3g}")
        result[name] = expected
    return result


def official_model_cases(classes: dict) -> dict[str, dict]:
    from models.postprocess import RTDETRPostProcessor

    result = {}
    for name, (kwargs, _, _) in MODEL_CASES.items():
        decoder_kwargs = kwargs["decoder"]
        criterion = _official_criterion(classes, decoder_kwargs["num_classes"])
        postprocessor = classes["RTDETRPostProcessor"](num_classes=decoder_kwargs["num_classes"],
                                                       num_top_queries=kwargs["num_top_queries"])
        torch.manual_seed(CASE_SEED)
        official = classes["RTDETR"](classes["PResNet"](**kwargs["backbone"]),
                                     classes["HybridEncoder"](**copy.deepcopy(kwargs["encoder"])),
                                     classes["RTDETRTransformerv2"](**copy.deepcopy(decoder_kwargs)))
        torch.manual_seed(CASE_SEED)
        ours = our_model(kwargs["backbone"], kwargs["encoder"], decoder_kwargs)
        same_initial_weights(ours, official, name, state_names_and_shapes)
        expected = run_model_case(official, criterion, postprocessor, name)
        actual = run_model_case(ours, our_criterion(decoder_kwargs["num_classes"], decoder_kwargs["num_layers"]),
                                RTDETRPostProcessor(num_classes=decoder_kwargs["num_classes"],
                                                    num_top_queries=kwargs["num_top_queries"]), name)
        print(f"model {name}: ours vs official, largest difference {largest_difference(actual, expected):.3g}")
        result[name] = expected
    return result


def official_postprocessor_cases(classes: dict, path: Path) -> dict[str, dict]:
    coco_ids = [classes["mscoco_label2category"][label] for label in range(80)]
    cases = postprocessor_cases(POSTPROCESSOR_CASES, classes["RTDETRPostProcessor"], lambda: official_src(path),
                                coco_ids)
    return {name: pack(values) for name, values in cases.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official", required=True, type=Path, help="rtdetrv2_pytorch folder of lyuwenyu/RT-DETR")
    parser.add_argument("--output", type=Path, default=REFERENCE_FILE)
    cli_args = parser.parse_args()
    torch.set_num_threads(1)
    path = cli_args.official.resolve()
    check_presets(path)
    classes = _official_classes(path)
    names = official_names(path)
    decoder, model = official_decoder_cases(classes), official_model_cases(classes)
    names.update({**split_name_lists("decoder", decoder), **split_name_lists("model", model)})
    values = {"names": compress(names), "backbone": official_backbone_cases(path),
              "encoder": official_encoder_cases(path),
              "decoder": {case: pack(case_values) for case, case_values in decoder.items()},
              "model": {case: pack(case_values) for case, case_values in model.items()},
              "postprocessor": official_postprocessor_cases(classes, path)}
    cli_args.output.parent.mkdir(parents=True, exist_ok=True)
    torch.save(values, cli_args.output)
    print(f"wrote {cli_args.output} ({cli_args.output.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
