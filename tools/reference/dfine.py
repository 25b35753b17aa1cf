"""Reference values of the official D-FINE (Peterande/D-FINE), for tests/test_dfine.py.

Run with a clone of https://github.com/Peterande/D-FINE (no weights are downloaded)::

    .venv/bin/python -m tools.reference.dfine --official /path/to/D-FINE

It saves, one function per part of the model, from the official code:

- ``names``: the state-dict names and shapes of the official backbone (``HGNetv2``) and whole model (``DFINE``, in
  training form and after ``deploy()``) of the five released configs (n, s, m, l, x); the preset values below are
  checked against the official config files (each read in a fresh interpreter: the official loader carries values
  from one config file into the next);
- ``backbone`` and ``encoder``: for each tiny case, built from ``torch.manual_seed(CASE_SEED)`` (our modules draw the
  official initial weights bit for bit), moved off their initial values by ``perturb`` and run in float64: probes of
  the outputs in training mode (dropout drawn from ``NOISE_SEED``), in evaluation mode and, for the encoder, after
  deploy conversion, and the norms of the training-mode gradients;
- ``decoder`` (``DFINETransformer``) and ``model`` (``DFINE``): for each tiny case, a fingerprint of the initial
  weights, then, perturbed and in float64, the probes of every training output (denoising drawn from
  ``NOISE_SEED``) and ``dn_meta``, the criterion's terms (``DFINECriterion``) on hand-made targets (one image without
  targets, or none at all), the matcher's indices and the union of the matches across layers, the gradient norms of
  their sum, the probes of the evaluation outputs and of the deployed decoder's; the model case adds the
  post-processor's detections;
- ``postprocessor`` (``DFINEPostProcessor``): detections of fixed outputs, COCO labels mapped, and deployed.

On the way it checks that our modules load the official state dicts with strict=True and prints the largest
difference between our values and the official ones. The official code is imported only when the script runs; the
tests import this module for the presets, the cases and the ``run_*_case`` functions, never the official code. The
seeds, inputs, probes and runs it shares with tools/reference/rtdetrv2.py are in tools/reference/common.py.
"""
import argparse
import contextlib
import copy
import json
import lzma
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn

from tools.reference.common import (
    CASE_SEED,
    NAME_LISTS,
    NOISE_SEED,
    calflops_stand_in,
    case_inputs,
    deploy_modules,
    index_values,
    largest_difference,
    matched_indices,
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
    state_names,
    unpack,
)

ROOT = Path(__file__).resolve().parents[2]
REFERENCE_FILE = ROOT / "tests" / "golden" / "dfine_reference.pt"

OFFICIAL_CONFIGS = {size: f"configs/dfine/dfine_hgnetv2_{size}_coco.yml" for size in "nsmlx"}

# The official configs' HGNetv2, HybridEncoder and DFINETransformer sections (with the shared keys eval_spatial_size
# and num_classes), without HGNetv2's ``pretrained`` (True) and ``local_model_dir``; official keys and names.
_LARGE_BACKBONE = {"return_idx": [1, 2, 3], "freeze_stem_only": True, "freeze_at": 0, "freeze_norm": True}
_SMALL_BACKBONE = {"return_idx": [1, 2, 3], "freeze_at": -1, "freeze_norm": False, "use_lab": True}
BACKBONE_PRESETS = {
    "n": {"name": "B0", **_SMALL_BACKBONE, "return_idx": [2, 3]},
    "s": {"name": "B0", **_SMALL_BACKBONE},
    "m": {"name": "B2", **_SMALL_BACKBONE},
    "l": {"name": "B4", **_LARGE_BACKBONE},
    "x": {"name": "B5", **_LARGE_BACKBONE},
}
_BASE_ENCODER = {"in_channels": [512, 1024, 2048], "feat_strides": [8, 16, 32], "hidden_dim": 256,
                 "use_encoder_idx": [2], "num_encoder_layers": 1, "nhead": 8, "dim_feedforward": 1024,
                 "dropout": 0.0, "enc_act": "gelu", "expansion": 1.0, "depth_mult": 1, "act": "silu",
                 "eval_spatial_size": [640, 640]}
ENCODER_PRESETS = {
    "n": {**_BASE_ENCODER, "in_channels": [512, 1024], "feat_strides": [16, 32], "hidden_dim": 128,
          "use_encoder_idx": [1], "dim_feedforward": 512, "expansion": 0.34, "depth_mult": 0.5},
    "s": {**_BASE_ENCODER, "in_channels": [256, 512, 1024], "expansion": 0.5, "depth_mult": 0.34},
    "m": {**_BASE_ENCODER, "in_channels": [384, 768, 1536], "depth_mult": 0.67},
    "l": dict(_BASE_ENCODER),
    "x": {**_BASE_ENCODER, "hidden_dim": 384, "dim_feedforward": 2048},
}
_BASE_DECODER = {"feat_channels": [256, 256, 256], "feat_strides": [8, 16, 32], "hidden_dim": 256, "num_levels": 3,
                 "num_layers": 6, "eval_idx": -1, "num_queries": 300, "num_denoising": 100, "label_noise_ratio": 0.5,
                 "box_noise_scale": 1.0, "reg_max": 32, "reg_scale": 4, "layer_scale": 1, "num_points": [3, 6, 3],
                 "cross_attn_method": "default", "query_select_method": "default", "num_classes": 80,
                 "eval_spatial_size": [640, 640]}
DECODER_PRESETS = {
    "n": {**_BASE_DECODER, "feat_channels": [128, 128], "feat_strides": [16, 32], "hidden_dim": 128,
          "dim_feedforward": 512, "num_levels": 2, "num_layers": 3, "num_points": [6, 6]},
    "s": {**_BASE_DECODER, "num_layers": 3},
    "m": {**_BASE_DECODER, "num_layers": 4},
    "l": dict(_BASE_DECODER),
    "x": {**_BASE_DECODER, "feat_channels": [384, 384, 384], "reg_scale": 8},
}
CRITERION_PRESET = {"weight_dict": {"loss_vfl": 1, "loss_bbox": 5, "loss_giou": 2, "loss_fgl": 0.15, "loss_ddf": 1.5},
                    "losses": ["vfl", "boxes", "local"], "alpha": 0.75, "gamma": 2.0, "reg_max": 32}
MATCHER_PRESET = {"weight_dict": {"cost_class": 2, "cost_bbox": 5, "cost_giou": 2}, "alpha": 0.25, "gamma": 2.0}
POSTPROCESSOR_PRESET = {"num_top_queries": 300}

# The official training recipe of each config (configs/dfine/include/*.yml, runtime.yml and the config's own lines):
# AdamW groups as the official regexes on parameter names (the groups' lr / weight_decay override the base ones).
_GROUPS_SMALL = [  # n, s, m: backbone (norms included) at the backbone lr, no decay on norms and biases
    {"params": "^(?=.*backbone)(?!.*norm|bn).*$", "lr": "lr_backbone"},
    {"params": "^(?=.*backbone)(?=.*norm|bn).*$", "lr": "lr_backbone", "weight_decay": 0.0},
    {"params": "^(?=.*(?:encoder|decoder))(?=.*(?:norm|bn|bias)).*$", "weight_decay": 0.0}]
_GROUPS_LARGE = [  # l, x: frozen norms in the backbone; no decay on the encoder's and decoder's norms
    {"params": "^(?=.*backbone)(?!.*norm|bn).*$", "lr": "lr_backbone"},
    {"params": "^(?=.*(?:encoder|decoder))(?=.*(?:norm|bn)).*$", "weight_decay": 0.0}]
_BASE_TRAINING = {"lr": 0.00025, "betas": [0.9, 0.999], "weight_decay": 0.000125, "lr_milestones": [500],
                  "lr_gamma": 0.1, "warmup_duration": 500, "ema_decay": 0.9999, "ema_warmups": 1000, "ema_start": 0,
                  "clip_max_norm": 0.1, "use_amp": True, "use_ema": True, "sync_bn": True, "total_batch_size": 32,
                  "val_total_batch_size": 64, "base_size": 640, "checkpoint_freq": 12}
TRAINING_PRESETS = {
    "n": {**_BASE_TRAINING, "groups": _GROUPS_SMALL, "lr_backbone": 0.0004, "lr": 0.0008, "weight_decay": 0.0001,
          "epochs": 160, "stop_epoch": 148, "base_size_repeat": None, "ema_restart_decay": 0.9999,
          "total_batch_size": 128, "val_total_batch_size": 256},
    "s": {**_BASE_TRAINING, "groups": _GROUPS_SMALL, "lr_backbone": 0.0001, "lr": 0.0002, "weight_decay": 0.0001,
          "epochs": 132, "stop_epoch": 120, "base_size_repeat": 20, "ema_restart_decay": 0.9999},
    "m": {**_BASE_TRAINING, "groups": _GROUPS_SMALL, "lr_backbone": 0.00002, "lr": 0.0002, "weight_decay": 0.0001,
          "epochs": 132, "stop_epoch": 120, "base_size_repeat": 6, "ema_restart_decay": 0.9999},
    "l": {**_BASE_TRAINING, "groups": _GROUPS_LARGE, "lr_backbone": 0.0000125, "epochs": 80, "stop_epoch": 72,
          "base_size_repeat": 4, "ema_restart_decay": 0.9999},
    "x": {**_BASE_TRAINING, "groups": _GROUPS_LARGE, "lr_backbone": 0.0000025, "epochs": 80, "stop_epoch": 72,
          "base_size_repeat": 3, "ema_restart_decay": 0.9998},
}

# tiny cases: (official constructor arguments, input shape(s) without the batch of 2)
BACKBONE_CASES = {
    "b0_lab": (BACKBONE_PRESETS["s"], (3, 64, 48)),  # n/s/m style: trainable BatchNorm, learnable affine blocks
    # l/x style with every stage returned, frozen norms, the stem and the first two stages frozen; odd sizes
    "b0_frozen": ({"name": "B0", "return_idx": [0, 1, 2, 3], "freeze_stem_only": False, "freeze_at": 1,
                   "freeze_norm": True}, (3, 45, 67)),
}
_TINY_ENCODER = {"hidden_dim": 16, "nhead": 2, "dim_feedforward": 32, "eval_spatial_size": [64, 64]}
ENCODER_CASES = {
    # the s encoder at 16 channels: one RepVGG block per CSP layer, branches of 4 channels; stored tables in eval
    "s_tiny": ({**ENCODER_PRESETS["s"], **_TINY_ENCODER, "in_channels": [16, 24, 32]},
               [(16, 8, 8), (24, 4, 4), (32, 2, 2)]),
    "n_tiny": ({**ENCODER_PRESETS["n"], **_TINY_ENCODER, "in_channels": [16, 32]}, [(16, 4, 4), (32, 2, 2)]),
    # two encoded levels of two layers, dropout, relu; non-square maps, no stored table
    "two_levels_non_square": ({**ENCODER_PRESETS["l"], **_TINY_ENCODER, "in_channels": [8, 16, 24], "nhead": 4,
                               "use_encoder_idx": [1, 2], "num_encoder_layers": 2, "dropout": 0.1,
                               "depth_mult": 0.67, "enc_act": "relu", "eval_spatial_size": None},
                              [(8, 12, 8), (16, 6, 4), (24, 3, 2)]),
}


def _tiny_decoder(**overrides) -> dict:
    return {"num_classes": 5, "hidden_dim": 16, "num_queries": 6, "feat_channels": [16, 16, 16],
            "feat_strides": [8, 16, 32], "num_levels": 3, "num_points": [3, 6, 3], "nhead": 2, "num_layers": 3,
            "dim_feedforward": 24, "num_denoising": 8, "eval_spatial_size": [64, 64], "reg_max": 8, "reg_scale": 4.0,
            **overrides}


_SQUARE_MAPS = [(16, 8, 8), (16, 4, 4), (16, 2, 2)]
# tiny decoder cases: (official constructor arguments, encoder maps (C, H, W) without the batch of 2, targets)
DECODER_CASES = {
    # 2 denoising groups of 3 + 3 queries; projections are identities (maps as wide as the decoder, as official)
    "denoising": (_tiny_decoder(), _SQUARE_MAPS, "mixed"),
    # a batch without any target: no denoising query, empty denoising outputs, NaN terms replaced by 0
    "empty_batch": (_tiny_decoder(), _SQUARE_MAPS, "empty"),
    # evaluation at layer 1; the last layer is a copy of the other ("wide") layer
    "eval_idx": (_tiny_decoder(eval_idx=1), _SQUARE_MAPS, "mixed"),
    # projected maps, a fourth level from a 3x3 stride-2 convolution, learned content, dropout, stored anchors
    "projections_extra_level": (_tiny_decoder(feat_channels=[8, 12, 20], num_levels=4, num_points=[1, 2, 3, 2],
                                              learn_query_content=True, dropout=0.1, eval_spatial_size=[64, 128]),
                                [(8, 8, 16), (12, 4, 8), (20, 2, 4)], "mixed"),
    # a fourth level that is the last map itself (as wide as the decoder), non-square maps, computed anchors
    "identity_extra_level": (_tiny_decoder(num_levels=4, num_points=2, eval_spatial_size=None),
                             [(16, 8, 6), (16, 4, 3), (16, 2, 2)], "mixed"),
    # wide layers after eval_idx 0 (layer_scale 2), the configs' reg_max 32 and the x config's reg_scale 8
    "layer_scale": (_tiny_decoder(layer_scale=2, eval_idx=0, reg_max=32, reg_scale=8.0), _SQUARE_MAPS, "mixed"),
    # a one-logit encoder head (the official criterion matches it with the real classes: all 0 here)
    "agnostic": (_tiny_decoder(query_select_method="agnostic"), _SQUARE_MAPS, "class_0"),
    "one2many_discrete": (_tiny_decoder(query_select_method="one2many", cross_attn_method="discrete", num_points=2),
                          _SQUARE_MAPS, "mixed"),
    # one layer: no intermediate layer, the denoising layer is its own teacher
    "single_layer": (_tiny_decoder(num_layers=1), _SQUARE_MAPS, "mixed"),
}
# the whole model: HGNetv2-B0 as in the s config (its real widths), encoder and decoder 16 wide, 64 x 64 images
MODEL_CASES = {
    "b0_tiny": ({"backbone": BACKBONE_PRESETS["s"],
                 "encoder": {**ENCODER_PRESETS["s"], **_TINY_ENCODER, "in_channels": [256, 512, 1024]},
                 "decoder": _tiny_decoder(num_denoising=10), "num_top_queries": 10},
                (3, 64, 64), "mixed"),
}
# post-processor cases: (official arguments, logits shape [B, Q, K], COCO label mapping). The official softmax
# branch (use_focal_loss False, in no D-FINE config) normalises over the batch and returns unscaled boxes: not
# reproduced, not compared.
POSTPROCESSOR_CASES = {
    "coco_focal": ({"num_classes": 80, "use_focal_loss": True, "num_top_queries": 20}, (2, 7, 80), True),
    "few_pairs": ({"num_classes": 3, "use_focal_loss": True, "num_top_queries": 21}, (2, 7, 3), False),
}


# ---------------------------------------------------------------------------------------------------------------
# What the tests share with the generator

_deploy = deploy_modules  # evaluation mode, then convert_to_deploy everywhere (the official DFINE.deploy)


def run_backbone_case(backbone: nn.Module, name: str) -> dict[str, torch.Tensor]:
    """A perturbed backbone (official or ours, built from ``CASE_SEED``) on the case's images."""
    perturb(backbone)
    return run_module(backbone, case_inputs([BACKBONE_CASES[name][1]]), lambda m, x: m(x[0]), deploy=False,
                      noise_seed=NOISE_SEED)


def run_encoder_case(encoder: nn.Module, name: str) -> dict[str, torch.Tensor]:
    """A perturbed encoder (official or ours, built from ``CASE_SEED``) on the case's feature maps (dropout from
    ``NOISE_SEED``)."""
    perturb(encoder)
    return run_module(encoder, case_inputs(ENCODER_CASES[name][1]), lambda m, x: m(x), deploy=True,
                      noise_seed=NOISE_SEED)


def dfine_matches(criterion: nn.Module, outputs: dict, targets: list[dict]) -> dict[str, torch.Tensor]:
    """The matcher's indices on the last layer, and the union of the matches of every layer, the first layer's box
    and the encoder's selection (official ``_get_go_indices`` or ours)."""
    from models.criterion import union_of_matches

    matcher = criterion.matcher
    indices = matched_indices(matcher(outputs, targets))
    others = [matched_indices(matcher(layer, targets)) for layer in [*outputs["aux_outputs"], outputs["pre_outputs"]]]
    others += [matched_indices(matcher(enc, targets)) for enc in outputs["enc_aux_outputs"]]
    union = (criterion._get_go_indices(indices, others) if hasattr(criterion, "_get_go_indices")
             else union_of_matches(indices, others))
    return {**index_values(indices, "indices"), **index_values(union, "go_indices")}


def run_decoder_case(decoder: nn.Module, criterion: nn.Module, name: str) -> dict:
    """A decoder (official or ours, built from ``CASE_SEED``): its initial fingerprint, then perturbed, a training
    step, an evaluation and the deployed decoder's evaluation on the case's maps (float64;
    :func:`~tools.reference.common.run_decoder`)."""
    _, shapes, kind = DECODER_CASES[name]
    return run_decoder(decoder, criterion, shapes, kind, dfine_matches, deploy=True)


def run_model_case(model: nn.Module, criterion: nn.Module, postprocessor: nn.Module, name: str) -> dict:
    """A whole model (official or ours, built from ``CASE_SEED`` in the order backbone, encoder, decoder): as
    :func:`run_decoder_case` on the case's images (without the decoder's deploy), plus the post-processor's
    detections in evaluation (sizes ``ORIG_SIZES_WH``) and the outputs after ``deploy()``."""
    _, shape, kind = MODEL_CASES[name]
    return run_model(model, criterion, postprocessor, shape, kind, dfine_matches)


def run_postprocessor_case(postprocessor: nn.Module, name: str) -> dict[str, torch.Tensor]:
    """Detections of the case's outputs at sizes ``ORIG_SIZES_WH`` (w, h), then of the deployed post-processor."""
    return run_postprocessor(postprocessor, POSTPROCESSOR_CASES[name][1])


def our_criterion(num_classes: int, num_layers: int, reg_max: int) -> nn.Module:
    """Our DFINECriterion and DFINEHungarianMatcher with the official configs' values."""
    from models.criterion import DFINECriterion
    from models.matcher import DFINEHungarianMatcher

    costs = MATCHER_PRESET["weight_dict"]
    matcher = DFINEHungarianMatcher(cost_class=costs["cost_class"], cost_bbox=costs["cost_bbox"],
                                    cost_giou=costs["cost_giou"], alpha=MATCHER_PRESET["alpha"],
                                    gamma=MATCHER_PRESET["gamma"])
    return DFINECriterion(matcher, CRITERION_PRESET["weight_dict"], CRITERION_PRESET["losses"],
                          alpha=CRITERION_PRESET["alpha"], gamma=CRITERION_PRESET["gamma"], num_classes=num_classes,
                          reg_max=reg_max, num_decoder_layers=num_layers)


def our_model(backbone_kwargs: dict, encoder_kwargs: dict, decoder_kwargs: dict) -> nn.Module:
    """Our DFINE from official constructor arguments, parts built in the official order (backbone, encoder,
    decoder)."""
    from models.dfine.decoder import DFINETransformer
    from models.dfine.dfine import DFINE
    from models.hgnetv2 import HGNetv2
    from models.layers.hybrid_encoder import dfine_hybrid_encoder

    backbone = HGNetv2(**backbone_kwargs)
    encoder = dfine_hybrid_encoder(**our_encoder_kwargs(encoder_kwargs))
    return DFINE(backbone, encoder, DFINETransformer(**decoder_kwargs))


PARTS = ("backbone", "encoder", "decoder", "model", "postprocessor")


def compress_json(value) -> torch.Tensor:
    """``value`` as xz-compressed JSON in a uint8 tensor (the name lists repeat each other across long spans, which
    xz finds and zlib does not)."""
    data = lzma.compress(json.dumps(value).encode(), preset=9 | lzma.PRESET_EXTREME)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def decompress_json(packed: torch.Tensor):
    return json.loads(lzma.decompress(bytes(packed.tolist())).decode())


def save_reference(names: dict[str, list[str]], parts: dict[str, dict[str, dict]], path: Path) -> None:
    """One file: the name lists and every case's keys, dtypes, shapes and plain values as compressed JSON, and its
    tensors in one flat tensor per dtype (a saved tensor costs about a kilobyte of file)."""
    index, flats, sizes = {}, {}, {}
    for part, cases in parts.items():
        for case, values in cases.items():
            packed = pack(values)
            starts = {dtype: sizes.get(dtype, 0) for dtype in packed["flat"]}
            for dtype, flat in packed["flat"].items():
                flats.setdefault(dtype, []).append(flat)
                sizes[dtype] = starts[dtype] + flat.numel()
            index[f"{part}/{case}"] = {"meta": packed["meta"], "plain": packed["plain"], "starts": starts}
    torch.save({"names": compress_json(names), "index": compress_json(index),
                "flat": {dtype: torch.cat(chunks) for dtype, chunks in flats.items()}}, path)


def load_reference() -> dict:
    """The saved values: ``names`` (part/preset -> lines); ``backbone``, ``encoder``, ``decoder``, ``model`` and
    ``postprocessor`` (case -> values)."""
    saved = torch.load(REFERENCE_FILE, weights_only=True)
    names = decompress_json(saved["names"])
    parts = {part: {} for part in PARTS}
    for key, entry in decompress_json(saved["index"]).items():
        part, case = key.split("/", 1)
        flat = {dtype: saved["flat"][dtype][start:] for dtype, start in entry["starts"].items()}
        values = unpack({"meta": entry["meta"], "plain": entry["plain"], "flat": flat})
        values.update({name: names[f"{key}/{name}"] for name in NAME_LISTS if f"{key}/{name}" in names})
        parts[part][case] = values
    return {"names": names, **parts}


# ---------------------------------------------------------------------------------------------------------------
# The official code (run time only)

@contextlib.contextmanager
def official_dfine(path: Path) -> Iterator[None]:
    """:func:`~tools.reference.common.official_src` with the official package's one import this environment lacks
    (``calflops``, a FLOP counter for its benchmark tools) stood in for."""
    with calflops_stand_in(), official_src(path):
        yield


_READ_CONFIG = """
import json, sys, types
sys.modules.setdefault("calflops", types.SimpleNamespace(calculate_flops=None))
sys.path.insert(0, sys.argv[1])
from src.core import YAMLConfig
print(json.dumps(YAMLConfig(sys.argv[2]).yaml_cfg, default=str))
"""


def official_config(path: Path, file: str) -> dict:
    """The official config ``file`` with its includes, read in a fresh interpreter (the official loader keeps
    values of a config for the next one it reads: read in one process, s, m, l and x get n's decoder width)."""
    result = subprocess.run([sys.executable, "-c", _READ_CONFIG, str(path), str(path / file)], check=True,
                            capture_output=True, text=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def check_presets(path: Path) -> None:
    """Our preset values are the official configs' (with their includes)."""
    for preset, file in OFFICIAL_CONFIGS.items():
        config = official_config(path, file)
        backbone = {k: v for k, v in config["HGNetv2"].items() if k not in ("pretrained", "local_model_dir")}
        assert config["HGNetv2"]["pretrained"] is True, preset
        assert backbone == BACKBONE_PRESETS[preset], (preset, backbone)
        encoder = {**config["HybridEncoder"], "eval_spatial_size": config["eval_spatial_size"]}
        assert encoder == ENCODER_PRESETS[preset], (preset, encoder)
        decoder = {**config["DFINETransformer"], "num_classes": config["num_classes"],
                   "eval_spatial_size": config["eval_spatial_size"]}
        assert decoder == DECODER_PRESETS[preset], (preset, decoder)
        criterion = dict(config["DFINECriterion"])
        assert criterion.pop("matcher") == {"type": "HungarianMatcher", **MATCHER_PRESET}, preset
        assert criterion == CRITERION_PRESET, (preset, criterion)
        assert config["use_focal_loss"] and config["remap_mscoco_category"], preset
        assert config["DFINEPostProcessor"] == POSTPROCESSOR_PRESET, preset
        assert config["DFINE"] == {"backbone": "HGNetv2", "encoder": "HybridEncoder", "decoder": "DFINETransformer"}
        assert _official_training(config) == TRAINING_PRESETS[preset], (preset, _official_training(config))
        print(f"{preset}: preset values are the official config's")


def _official_training(config: dict) -> dict:
    """The training values of an official config, in the form of :data:`TRAINING_PRESETS`."""
    optimizer, train = config["optimizer"], config["train_dataloader"]
    collate = train["collate_fn"]
    backbone_lr = optimizer["params"][0]["lr"]
    groups = [{**group, "lr": "lr_backbone"} if group.get("lr") == backbone_lr else group
              for group in optimizer["params"]]
    assert config["lr_scheduler"]["type"] == "MultiStepLR" and config["lr_warmup_scheduler"]["type"] == "LinearWarmup"
    assert collate["stop_epoch"] == train["dataset"]["transforms"]["policy"]["epoch"]
    return {"lr": optimizer["lr"], "betas": optimizer["betas"], "weight_decay": optimizer["weight_decay"],
            "lr_milestones": config["lr_scheduler"]["milestones"], "lr_gamma": config["lr_scheduler"]["gamma"],
            "warmup_duration": config["lr_warmup_scheduler"]["warmup_duration"],
            "ema_decay": config["ema"]["decay"], "ema_warmups": config["ema"]["warmups"],
            "ema_start": config["ema"]["start"], "clip_max_norm": config["clip_max_norm"],
            "use_amp": config["use_amp"], "use_ema": config["use_ema"], "sync_bn": config["sync_bn"],
            "total_batch_size": train["total_batch_size"],
            "val_total_batch_size": config["val_dataloader"]["total_batch_size"], "base_size": collate["base_size"],
            "checkpoint_freq": config["checkpoint_freq"], "groups": groups, "lr_backbone": backbone_lr,
            "epochs": config["epochs"], "stop_epoch": collate["stop_epoch"],
            "base_size_repeat": collate["base_size_repeat"], "ema_restart_decay": collate["ema_restart_decay"]}


def distances_in_their_dtype(translate_gt: Callable) -> Callable:
    """The official ``translate_gt`` with its bin index (and so its interpolation weights) in the distances' dtype
    instead of float32: the official fails on float64 distances (it writes float64 weights into float32 tensors);
    for float32 distances, the official function unchanged."""
    def translate(gt: torch.Tensor, *args):
        to_float = torch.Tensor.float
        torch.Tensor.float = lambda tensor, *a, **k: tensor.to(gt.dtype)  # its only call: the bin index
        try:
            return translate_gt(gt, *args)
        finally:
            torch.Tensor.float = to_float

    return translate


def _official_classes(path: Path) -> dict:
    with official_dfine(path):
        import src.zoo.dfine.dfine_utils as fdr_utils
        from src.data.dataset import mscoco_label2category
        from src.nn.backbone.hgnetv2 import HGNetv2
        from src.zoo.dfine.dfine import DFINE
        from src.zoo.dfine.dfine_criterion import DFINECriterion
        from src.zoo.dfine.dfine_decoder import DFINETransformer
        from src.zoo.dfine.hybrid_encoder import HybridEncoder
        from src.zoo.dfine.matcher import HungarianMatcher
        from src.zoo.dfine.postprocessor import DFINEPostProcessor
    fdr_utils.translate_gt = distances_in_their_dtype(fdr_utils.translate_gt)
    return {"HGNetv2": HGNetv2, "DFINE": DFINE, "DFINECriterion": DFINECriterion,
            "DFINETransformer": DFINETransformer, "HybridEncoder": HybridEncoder, "HungarianMatcher": HungarianMatcher,
            "DFINEPostProcessor": DFINEPostProcessor, "mscoco_label2category": mscoco_label2category}


def _official_backbone(classes: dict, kwargs: dict) -> nn.Module:
    return classes["HGNetv2"](**kwargs, pretrained=False)  # the official default downloads


def _official_model(classes: dict, backbone: dict, encoder: dict, decoder: dict) -> nn.Module:
    return classes["DFINE"](_official_backbone(classes, backbone), classes["HybridEncoder"](**copy.deepcopy(encoder)),
                            classes["DFINETransformer"](**copy.deepcopy(decoder)))


def _official_criterion(classes: dict, num_classes: int, reg_max: int) -> nn.Module:
    matcher = classes["HungarianMatcher"](weight_dict=dict(MATCHER_PRESET["weight_dict"]), use_focal_loss=True,
                                          alpha=MATCHER_PRESET["alpha"], gamma=MATCHER_PRESET["gamma"])
    return classes["DFINECriterion"](matcher, weight_dict=dict(CRITERION_PRESET["weight_dict"]),
                                     losses=list(CRITERION_PRESET["losses"]), alpha=CRITERION_PRESET["alpha"],
                                     gamma=CRITERION_PRESET["gamma"], num_classes=num_classes, reg_max=reg_max)


def official_names(classes: dict) -> dict[str, list[str]]:
    """The five presets' backbone, model and deployed-model names, each checked against ours (ours on the meta
    device; the official model on the CPU: its anchors and deployed W(n) need values)."""
    from models.hgnetv2 import HGNetv2

    result = {}
    for preset in OFFICIAL_CONFIGS:
        with torch.device("meta"):
            official = _official_backbone(classes, BACKBONE_PRESETS[preset])
            ours = HGNetv2(**BACKBONE_PRESETS[preset])
        assert state_names(ours) == state_names(official), preset
        result[f"backbone/{preset}"] = state_names(official)
        official = _official_model(classes, BACKBONE_PRESETS[preset], ENCODER_PRESETS[preset],
                                   DECODER_PRESETS[preset])
        with torch.device("meta"):
            ours = our_model(BACKBONE_PRESETS[preset], ENCODER_PRESETS[preset], DECODER_PRESETS[preset])
        assert state_names(ours) == state_names(official), (preset, set(state_names(ours)) ^ set(state_names(official)))
        result[f"model/{preset}"] = state_names(official)
        ours.deploy()
        official.deploy()
        assert state_names(ours) == state_names(official), (preset, set(state_names(ours)) ^ set(state_names(official)))
        result[f"model_deploy/{preset}"] = state_names(official)
        print(f"{preset}: backbone, model and deployed-model names identical "
              f"({sum(p.numel() for p in official.parameters()) / 1e6:.2f} M parameters deployed)")
    return result


def official_backbone_cases(classes: dict) -> dict[str, dict]:
    from models.hgnetv2 import HGNetv2

    result = {}
    for name, (kwargs, _) in BACKBONE_CASES.items():
        torch.manual_seed(CASE_SEED)
        official = _official_backbone(classes, kwargs)
        torch.manual_seed(CASE_SEED)
        ours = HGNetv2(**kwargs)
        same_initial_weights(ours, official, name)
        expected = run_backbone_case(official, name)
        actual = run_backbone_case(ours, name)
        print(f"backbone {name}: ours vs official, largest difference {largest_difference(actual, expected):.3g}")
        result[name] = expected
    return result


def official_encoder_cases(classes: dict) -> dict[str, dict]:
    from models.layers.hybrid_encoder import dfine_hybrid_encoder

    result = {}
    for name, (kwargs, _) in ENCODER_CASES.items():
        torch.manual_seed(CASE_SEED)
        official = classes["HybridEncoder"](**copy.deepcopy(kwargs))
        torch.manual_seed(CASE_SEED)
        ours = dfine_hybrid_encoder(**our_encoder_kwargs(kwargs))
        same_initial_weights(ours, official, name)
        expected = run_encoder_case(official, name)
        actual = run_encoder_case(ours, name)
        print(f"encoder {name}: ours vs official, largest difference {largest_difference(actual, expected):.3g}")
        result[name] = expected
    return result


def official_decoder_cases(classes: dict) -> dict[str, dict]:
    from models.dfine.decoder import DFINETransformer

    result = {}
    for name, (kwargs, _, _) in DECODER_CASES.items():
        criterion = _official_criterion(classes, kwargs["num_classes"], kwargs["reg_max"])
        torch.manual_seed(CASE_SEED)
        official = classes["DFINETransformer"](**copy.deepcopy(kwargs))
        torch.manual_seed(CASE_SEED)
        ours = DFINETransformer(**kwargs)
        same_initial_weights(ours, official, name)
        expected = run_decoder_case(official, criterion, name)
        actual = run_decoder_case(ours, our_criterion(kwargs["num_classes"], kwargs["num_layers"], kwargs["reg_max"]),
                                  name)
        print(f"decoder {name}: ours vs official, largest difference {largest_difference(actual, expected):.3g}")
        result[name] = expected
    return result


def official_model_cases(classes: dict) -> dict[str, dict]:
    from models.postprocess import RTDETRPostProcessor

    result = {}
    for name, (kwargs, _, _) in MODEL_CASES.items():
        decoder_kwargs = kwargs["decoder"]
        num_classes, top = decoder_kwargs["num_classes"], kwargs["num_top_queries"]
        criterion = _official_criterion(classes, num_classes, decoder_kwargs["reg_max"])
        torch.manual_seed(CASE_SEED)
        official = _official_model(classes, kwargs["backbone"], kwargs["encoder"], decoder_kwargs)
        torch.manual_seed(CASE_SEED)
        ours = our_model(kwargs["backbone"], kwargs["encoder"], decoder_kwargs)
        same_initial_weights(ours, official, name)
        expected = run_model_case(official, criterion,
                                  classes["DFINEPostProcessor"](num_classes=num_classes, num_top_queries=top), name)
        actual = run_model_case(ours, our_criterion(num_classes, decoder_kwargs["num_layers"],
                                                    decoder_kwargs["reg_max"]),
                                RTDETRPostProcessor(num_classes=num_classes, num_top_queries=top), name)
        print(f"model {name}: ours vs official, largest difference {largest_difference(actual, expected):.3g}")
        result[name] = expected
    return result


def official_postprocessor_cases(classes: dict, path: Path) -> dict[str, dict]:
    coco_ids = [classes["mscoco_label2category"][label] for label in range(80)]
    return postprocessor_cases(POSTPROCESSOR_CASES, classes["DFINEPostProcessor"], lambda: official_dfine(path),
                               coco_ids)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official", required=True, type=Path, help="a clone of Peterande/D-FINE")
    parser.add_argument("--output", type=Path, default=REFERENCE_FILE)
    cli_args = parser.parse_args()
    torch.set_num_threads(1)
    path = cli_args.official.resolve()
    check_presets(path)
    classes = _official_classes(path)
    names = official_names(classes)
    decoder, model = official_decoder_cases(classes), official_model_cases(classes)
    names.update({**split_name_lists("decoder", decoder), **split_name_lists("model", model)})
    parts = {"backbone": official_backbone_cases(classes), "encoder": official_encoder_cases(classes),
             "decoder": decoder, "model": model, "postprocessor": official_postprocessor_cases(classes, path)}
    cli_args.output.parent.mkdir(parents=True, exist_ok=True)
    save_reference(names, parts, cli_args.output)
    print(f"wrote {cli_args.output} ({cli_args.output.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
