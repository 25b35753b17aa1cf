"""Reference values of the official DEIM (Intellindust-AI-Lab/DEIM) for tests/test_deim.py.

Run with a clone of https://github.com/Intellindust-AI-Lab/DEIM (no weights are downloaded)::

    .venv/bin/python -m tools.reference.deim --official /path/to/DEIM

It saves to ``tests/golden/deim_reference.pt``:

- ``criterion``: for each case of ``CRITERION_CASES``, the terms of the official ``DEIMCriterion`` (with the official
  ``HungarianMatcher``, as DEIM's RT-DETRv2 configs set them: ``use_uni_set`` False) on the float64 outputs and
  targets of :func:`criterion_inputs` (RT-DETRv2-shaped: last layer, earlier layers, denoising, encoder), and the
  gradients of their sum with respect to the last layer's logits and boxes;
- ``decoder``: for each case of ``DECODER_CASES``, DEIM's own decoders (its ``DFINETransformer`` and
  ``RTDETRTransformerv2`` with the options only DEIM has: ``activation`` and ``mlp_act`` SiLU, ``query_pos_method``
  ``as_reg``) built from the official seed, perturbed, through a float64 training step with DEIM's criterion
  (``DEIMCriterion`` as DEIM's D-FINE and RT-DETRv2 configs set it), an evaluation and, for D-FINE, the deployed
  decoder (:func:`tools.reference.common.run_decoder`);
- ``lr``: for each case of ``LR_CASES``, the learning rates each optimiser step of the official training loop
  trains at (``FlatCosineLRScheduler`` stepped after each iteration, created after the ``LinearWarmup`` of the
  official configs, as ``engine/solver`` does), per parameter group.

On the way it checks our ``MatchabilityAwareSetCriterion`` and ``FlatCosineSchedule`` against those values, our
``paste_mosaic`` and ``mix_batch`` against the official ``Mosaic`` (without its random affine part) and
``BatchImageCollateFunction`` MixUp, and the values of ``OFFICIAL_CONFIGS`` against the official config files, and
prints the largest differences. The official code is imported only when the script runs; the tests import this
module for the cases and inputs, never the official code.
"""
import argparse
import contextlib
import copy
import io
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from tools.reference import dfine as dfine_reference
from tools.reference import rtdetrv2 as rtdetrv2_reference
from tools.reference.common import (
    CASE_SEED,
    calflops_stand_in,
    largest_difference,
    last_layer_matches,
    official_packages,
    pack,
    run_decoder,
    same_initial_weights,
    unpack,
)

ROOT = Path(__file__).resolve().parents[2]
REFERENCE_FILE = ROOT / "tests" / "golden" / "deim_reference.pt"
INPUT_SEED = 7
NUM_CLASSES = 5
NUM_QUERIES = 6
NUM_LAYERS = 3
DN_GROUPS = 2

MATCHER_PRESET = {"weight_dict": {"cost_class": 2, "cost_bbox": 5, "cost_giou": 2}, "alpha": 0.25, "gamma": 2.0}
# name -> (official DEIMCriterion arguments but the matcher, targets kind); DEIM's RT-DETRv2 configs: the first.
CRITERION_CASES = {
    "mal": ({"weight_dict": {"loss_mal": 1, "loss_bbox": 5, "loss_giou": 2}, "losses": ["mal", "boxes"],
             "alpha": 0.75, "gamma": 1.5, "use_uni_set": False}, "mixed"),
    "mal_alpha": ({"weight_dict": {"loss_mal": 1, "loss_bbox": 5, "loss_giou": 2}, "losses": ["mal", "boxes"],
                   "alpha": 0.75, "gamma": 2.0, "mal_alpha": 0.5, "use_uni_set": False}, "mixed"),
    "mal_no_targets": ({"weight_dict": {"loss_mal": 1, "loss_bbox": 5, "loss_giou": 2}, "losses": ["mal", "boxes"],
                        "alpha": 0.75, "gamma": 1.5, "use_uni_set": False}, "empty"),
}
# DEIM's decoders: name -> (architecture, official constructor arguments, encoder maps (C, H, W), targets), the
# tiny decoders of tools/reference/dfine.py and rtdetrv2.py with the options that only DEIM's decoders have. (On a
# batch without any target DEIM's D-FINE decoder returns no denoising outputs where D-FINE's, and ours, return an
# empty group; the loss is the same, its terms are zero: not compared.)
_DFINE_DECODER, _DFINE_MAPS, _ = dfine_reference.DECODER_CASES["denoising"]
_RTDETRV2_DECODER, _RTDETRV2_MAPS, _ = rtdetrv2_reference.DECODER_CASES["denoising_points_list"]
_SILU = {"activation": "silu", "mlp_act": "silu"}
DECODER_CASES = {
    "dfine_silu": ("dfine", {**_DFINE_DECODER, **_SILU}, _DFINE_MAPS, "mixed"),
    "rtdetrv2_as_reg_silu": ("rtdetrv2", {**_RTDETRV2_DECODER, **_SILU, "query_pos_method": "as_reg"},
                             _RTDETRV2_MAPS, "mixed"),
}
# our arguments beyond the official ones: DEIM's RT-DETRv2 decoder draws D-FINE's denoising queries
OUR_DECODER_ARGUMENTS = {"rtdetrv2_as_reg_silu": {"denoising_method": "dfine"}
}
# DEIMCriterion as DEIM's configs set it (configs/base/deim.yml, rt_deim.yml; alpha from the D-FINE / RT-DETRv2
# bases), the matcher as MATCHER_PRESET
DECODER_CRITERIA = {
    "dfine": {"weight_dict": {"loss_mal": 1, "loss_bbox": 5, "loss_giou": 2, "loss_fgl": 0.15, "loss_ddf": 1.5},
              "losses": ["mal", "boxes", "local"], "alpha": 0.75, "gamma": 1.5, "use_uni_set": True},
    "rtdetrv2": {"weight_dict": {"loss_mal": 1, "loss_bbox": 5, "loss_giou": 2}, "losses": ["mal", "boxes"],
                 "alpha": 0.75, "gamma": 1.5, "use_uni_set": False},
}
# name -> FlatCosineSchedule arguments (the official: iter_per_epoch, epoches, warmup_iter, flat_epoch, no_aug_epoch,
# lr_gamma; its LinearWarmup as long as warmup_iter, as in DEIM's RT-DETRv2 configs) and the groups' rates.
LR_CASES = {
    "decay": ({"iters_per_epoch": 5, "epochs": 12, "warmup_iters": 7, "flat_epoch": 5, "no_aug_epoch": 2,
               "lr_gamma": 0.5}, (2e-4, 2e-5)),
    "no_decay": ({"iters_per_epoch": 4, "epochs": 6, "warmup_iters": 5, "flat_epoch": 100, "no_aug_epoch": 1,
                  "lr_gamma": 1.0}, (8e-4, 4e-4)),
}

# The official DEIM configs in this repository's flags (values read from the config files with their includes;
# checked by this script). lr_backbone: the backbone group's rate (the base rate where the config has no backbone
# group); multiscale_repeat: the official base_size_repeat (640 repeated that many times among 480..800; None: no
# multi-scale batches); ema_warmups: the official ema.warmups; mal_gamma: DEIMCriterion's gamma (mal_alpha None in
# every config); batch_size: the total over processes.
_RTDETRV2 = {"lr": 2e-4, "weight_decay": 1e-4, "lr_gamma": 0.5, "warmup_iters": 2000, "mosaic_prob": 0.5,
             "mixup_prob": 0.5, "multiscale_repeat": 3, "ema": 0.9999, "ema_warmups": 2000, "ema_restart_decay": 0.9999,
             "batch_size": 16, "mal_gamma": 1.5, "use_uni_set": False}
_DFINE = {"weight_decay": 1e-4, "lr_gamma": 0.5, "warmup_iters": 2000, "mosaic_prob": 0.5, "mixup_prob": 0.5,
          "ema": 0.9999, "ema_warmups": 1000, "ema_restart_decay": 0.9999, "batch_size": 32, "mal_gamma": 1.5,
          "use_uni_set": True}
OFFICIAL_CONFIGS = {
    "deim_rtdetrv2/deim_r18vd_120e_coco.yml": {
        **_RTDETRV2, "epochs": 120, "lr_backbone": 2e-4, "flat_epoch": 64, "no_aug_epoch": 3,
        "policy_epoch": [4, 64, 117], "mixup_epochs": [4, 64], "stop_epoch": 117},
    "deim_rtdetrv2/deim_r34vd_120e_coco.yml": {
        **_RTDETRV2, "epochs": 120, "lr_backbone": 1e-4, "flat_epoch": 64, "no_aug_epoch": 3,
        "policy_epoch": [4, 64, 117], "mixup_epochs": [4, 64], "stop_epoch": 117},
    "deim_rtdetrv2/deim_r50vd_m_60e_coco.yml": {
        **_RTDETRV2, "epochs": 60, "lr_backbone": 2e-5, "flat_epoch": 34, "no_aug_epoch": 2,
        "policy_epoch": [4, 34, 58], "mixup_epochs": [4, 34], "stop_epoch": 58},
    "deim_rtdetrv2/deim_r50vd_60e_coco.yml": {
        **_RTDETRV2, "epochs": 60, "lr_backbone": 2e-5, "flat_epoch": 34, "no_aug_epoch": 2,
        "policy_epoch": [4, 34, 58], "mixup_epochs": [4, 34], "stop_epoch": 58},
    "deim_rtdetrv2/deim_r101vd_60e_coco.yml": {
        **_RTDETRV2, "epochs": 60, "lr_backbone": 2e-6, "flat_epoch": 34, "no_aug_epoch": 2,
        "policy_epoch": [4, 34, 58], "mixup_epochs": [4, 34], "stop_epoch": 58},
    "deim_dfine/deim_hgnetv2_n_coco.yml": {
        **_DFINE, "epochs": 160, "lr": 8e-4, "lr_backbone": 4e-4, "flat_epoch": 7800, "no_aug_epoch": 12,
        "lr_gamma": 1.0, "policy_epoch": [4, 78, 148], "mixup_epochs": [4, 78], "stop_epoch": 148,
        "multiscale_repeat": None, "batch_size": 128},
    "deim_dfine/deim_hgnetv2_s_coco.yml": {
        **_DFINE, "epochs": 132, "lr": 4e-4, "lr_backbone": 2e-4, "flat_epoch": 64, "no_aug_epoch": 12,
        "policy_epoch": [4, 64, 120], "mixup_epochs": [4, 64], "stop_epoch": 120, "multiscale_repeat": 20},
    "deim_dfine/deim_hgnetv2_m_coco.yml": {
        **_DFINE, "epochs": 102, "lr": 4e-4, "lr_backbone": 4e-5, "flat_epoch": 49, "no_aug_epoch": 12,
        "policy_epoch": [4, 49, 90], "mixup_epochs": [4, 49], "stop_epoch": 90, "multiscale_repeat": 6},
    "deim_dfine/deim_hgnetv2_l_coco.yml": {
        **_DFINE, "epochs": 58, "lr": 5e-4, "lr_backbone": 2.5e-5, "weight_decay": 1.25e-4, "flat_epoch": 29,
        "no_aug_epoch": 8, "policy_epoch": [4, 29, 50], "mixup_epochs": [4, 29], "stop_epoch": 50,
        "multiscale_repeat": 4},
    "deim_dfine/deim_hgnetv2_x_coco.yml": {
        **_DFINE, "epochs": 58, "lr": 5e-4, "lr_backbone": 5e-6, "weight_decay": 1.25e-4, "flat_epoch": 29,
        "no_aug_epoch": 8, "policy_epoch": [4, 29, 50], "mixup_epochs": [4, 29], "stop_epoch": 50,
        "multiscale_repeat": 3, "ema_restart_decay": 0.9998},
    "deim_dfine/object365/deim_hgnetv2_x_obj2coco_24e.yml": {
        **_DFINE, "epochs": 24, "lr": 2.5e-4, "lr_backbone": 2.5e-6, "weight_decay": 1.25e-4, "flat_epoch": 12000,
        "no_aug_epoch": 4, "lr_gamma": 1.0, "warmup_iters": 0, "policy_epoch": [2, 12, 20], "mixup_epochs": [2, 12],
        "stop_epoch": 20, "multiscale_repeat": 3, "ema_warmups": 0},
}


def case_targets(kind: str) -> list[dict]:
    """Float64 targets of a batch of two images (classes < ``NUM_CLASSES``): ``mixed``: three boxes of classes 1, 4,
    0, then an image without targets; ``empty``: no targets at all."""
    boxes = torch.tensor([[0.5, 0.5, 0.2, 0.3], [0.3, 0.6, 0.1, 0.1], [0.7, 0.25, 0.4, 0.3]], dtype=torch.float64)
    labels = {"mixed": [1, 4, 0], "empty": []}[kind]
    first = {"labels": torch.tensor(labels, dtype=torch.int64), "boxes": boxes[:len(labels)]}
    return [first, {"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4, dtype=torch.float64)}]


def _prediction(generator: torch.Generator, queries: int) -> dict[str, torch.Tensor]:
    logits = torch.randn(2, queries, NUM_CLASSES, generator=generator, dtype=torch.float64) * 2
    centres = 0.2 + 0.6 * torch.rand(2, queries, 2, generator=generator, dtype=torch.float64)
    sizes = 0.05 + 0.35 * torch.rand(2, queries, 2, generator=generator, dtype=torch.float64)
    return {"pred_logits": logits.requires_grad_(), "pred_boxes": torch.cat([centres, sizes], -1).requires_grad_()}


def criterion_inputs(kind: str) -> tuple[dict, list[dict]]:
    """RT-DETRv2-shaped float64 outputs in this repository's form (``dn_aux_outputs``; the official calls them
    ``dn_outputs``), drawn from ``INPUT_SEED``, and the targets of ``kind``: the last of ``NUM_LAYERS`` decoder
    layers, the earlier ones (``aux_outputs``), the encoder's selection (``enc_aux_outputs``, not class-agnostic)
    and, when there are targets, ``DN_GROUPS`` groups of denoising queries per layer. The prediction tensors require
    gradients."""
    generator = torch.Generator().manual_seed(INPUT_SEED)
    targets = case_targets(kind)
    outputs = _prediction(generator, NUM_QUERIES)
    outputs["aux_outputs"] = [_prediction(generator, NUM_QUERIES) for _ in range(NUM_LAYERS - 1)]
    outputs["enc_aux_outputs"] = [_prediction(generator, NUM_QUERIES)]
    outputs["enc_meta"] = {"class_agnostic": False}
    max_targets = max(len(t["labels"]) for t in targets)
    if max_targets:
        per_group = 2 * max_targets  # positive then negative queries of every target slot
        outputs["dn_aux_outputs"] = [_prediction(generator, per_group * DN_GROUPS) for _ in range(NUM_LAYERS)]
        positive = [torch.cat([g * per_group + torch.arange(len(t["labels"])) for g in range(DN_GROUPS)])
                    for t in targets]
        outputs["dn_meta"] = {"dn_positive_idx": positive, "dn_num_group": DN_GROUPS,
                              "dn_num_split": [per_group * DN_GROUPS, NUM_QUERIES]}
    return outputs, targets


def official_outputs(outputs: dict) -> dict:
    """Our outputs under the official names (``dn_outputs``)."""
    renamed = dict(outputs)
    if "dn_aux_outputs" in renamed:
        renamed["dn_outputs"] = renamed.pop("dn_aux_outputs")
    return renamed


def run_criterion_case(criterion: nn.Module, name: str, official: bool = False) -> dict[str, torch.Tensor]:
    """The criterion's terms on the case's inputs, and the gradients of their sum with respect to the last layer's
    ``pred_logits`` and ``pred_boxes``."""
    outputs, targets = criterion_inputs(CRITERION_CASES[name][1])
    losses = criterion(official_outputs(outputs) if official else outputs, targets)
    sum(losses.values()).backward()
    values = {f"loss/{k}": v.detach() for k, v in losses.items()}
    values["grad/pred_logits"] = outputs["pred_logits"].grad
    values["grad/pred_boxes"] = outputs["pred_boxes"].grad
    return values


def our_criterion(name: str) -> nn.Module:
    """Our MatchabilityAwareSetCriterion and FocalHungarianMatcher with the case's official arguments."""
    from models.criterion import MatchabilityAwareSetCriterion
    from models.matcher import FocalHungarianMatcher

    kwargs = CRITERION_CASES[name][0]
    costs = MATCHER_PRESET["weight_dict"]
    matcher = FocalHungarianMatcher(cost_class=costs["cost_class"], cost_bbox=costs["cost_bbox"],
                                    cost_giou=costs["cost_giou"], alpha=MATCHER_PRESET["alpha"],
                                    gamma=MATCHER_PRESET["gamma"])
    return MatchabilityAwareSetCriterion(matcher, kwargs["weight_dict"], kwargs["losses"], alpha=kwargs["alpha"],
                                         gamma=kwargs["gamma"], num_classes=NUM_CLASSES,
                                         mal_alpha=kwargs.get("mal_alpha"), num_decoder_layers=NUM_LAYERS)


def our_decoder(name: str) -> nn.Module:
    """Our decoder of the case, built from ``CASE_SEED``."""
    from models.dfine.decoder import DFINETransformer
    from models.rtdetrv2.decoder import RTDETRTransformerv2

    architecture, kwargs, _, _ = DECODER_CASES[name]
    torch.manual_seed(CASE_SEED)
    return (DFINETransformer if architecture == "dfine" else RTDETRTransformerv2)(
        **kwargs, **OUR_DECODER_ARGUMENTS.get(name, {}))


def our_decoder_criterion(name: str) -> nn.Module:
    """Our criterion of the case's architecture with DEIM's arguments: D-FINE's with MAL (its box and local terms
    on the union of matches, as ``use_uni_set``), RT-DETRv2's MatchabilityAwareSetCriterion."""
    from models.criterion import DFINECriterion, MatchabilityAwareSetCriterion
    from models.matcher import DFINEHungarianMatcher, FocalHungarianMatcher

    architecture, kwargs, _, _ = DECODER_CASES[name]
    official = DECODER_CRITERIA[architecture]
    costs = MATCHER_PRESET["weight_dict"]
    matcher = (DFINEHungarianMatcher if architecture == "dfine" else FocalHungarianMatcher)(
        cost_class=costs["cost_class"], cost_bbox=costs["cost_bbox"], cost_giou=costs["cost_giou"],
        alpha=MATCHER_PRESET["alpha"], gamma=MATCHER_PRESET["gamma"])
    common = {"alpha": official["alpha"], "gamma": official["gamma"], "num_classes": kwargs["num_classes"],
              "num_decoder_layers": kwargs["num_layers"], "num_denoising": kwargs["num_denoising"]}
    if architecture == "dfine":
        return DFINECriterion(matcher, official["weight_dict"], official["losses"], reg_max=kwargs["reg_max"],
                              teacher_self_term=False, **common)
    return MatchabilityAwareSetCriterion(matcher, official["weight_dict"], official["losses"], **common)


def run_decoder_case(decoder: nn.Module, criterion: nn.Module, name: str) -> dict:
    """A decoder (DEIM's or ours, built from ``CASE_SEED``): its initial fingerprint, then perturbed, a training step
    with the criterion, an evaluation and (D-FINE) the deployed decoder's evaluation, float64."""
    architecture, _, shapes, kind = DECODER_CASES[name]
    if architecture == "dfine":
        return run_decoder(decoder, criterion, shapes, kind, dfine_reference.dfine_matches, deploy=True)
    return run_decoder(decoder, criterion, shapes, kind, last_layer_matches)


def our_rates(name: str) -> torch.Tensor:
    """``[steps, groups]``: the rates our FlatCosineSchedule gives each optimiser step of the case."""
    from util.optimizer import FlatCosineSchedule

    kwargs, lrs = LR_CASES[name]
    optimizer = _optimizer(lrs)
    schedule = FlatCosineSchedule(optimizer, **kwargs)
    rates = []
    for step in range(kwargs["iters_per_epoch"] * kwargs["epochs"]):
        schedule(step)
        rates.append([group["lr"] for group in optimizer.param_groups])
    return torch.tensor(rates, dtype=torch.float64)


def _optimizer(lrs: tuple[float, ...]) -> torch.optim.Optimizer:
    params = [nn.Parameter(torch.zeros(1)) for _ in lrs]
    return torch.optim.AdamW([{"params": [p], "lr": lr} for p, lr in zip(params, lrs)], lr=lrs[0])


def load_reference() -> dict:
    """The saved values: ``criterion``, ``decoder`` and ``lr`` (case -> values)."""
    saved = torch.load(REFERENCE_FILE, weights_only=True)
    return {part: {case: unpack(values) for case, values in saved[part].items()}
            for part in ("criterion", "decoder", "lr")}


# ---------------------------------------------------------------------------------------------------------------
# The official code (run time only)

@contextlib.contextmanager
def official_engine(path: Path) -> Iterator[None]:
    """Inside, ``import engine...`` imports the official package from ``path`` (this repository's ``engine`` module
    is set aside and put back on exit), ``calflops`` stood in for."""
    with calflops_stand_in(), official_packages(path, ("engine",)):
        yield


def _official_classes(path: Path) -> dict:
    with official_engine(path), contextlib.redirect_stdout(io.StringIO()):
        import engine.deim.dfine_utils as fdr_utils
        from engine.core.yaml_utils import load_config
        from engine.data.dataloader import BatchImageCollateFunction
        from engine.data.transforms import Mosaic
        from engine.deim import DEIMCriterion, DFINETransformer, HungarianMatcher, RTDETRTransformerv2
        from engine.optim.lr_scheduler import FlatCosineLRScheduler
        from engine.optim.warmup import LinearWarmup
    fdr_utils.translate_gt = dfine_reference.distances_in_their_dtype(fdr_utils.translate_gt)  # float64 targets
    return {"DEIMCriterion": DEIMCriterion, "HungarianMatcher": HungarianMatcher, "load_config": load_config,
            "FlatCosineLRScheduler": FlatCosineLRScheduler, "LinearWarmup": LinearWarmup, "Mosaic": Mosaic,
            "BatchImageCollateFunction": BatchImageCollateFunction, "DFINETransformer": DFINETransformer,
            "RTDETRTransformerv2": RTDETRTransformerv2}


def _largest_difference(ours: dict, official: dict) -> float:
    assert set(ours) == set(official), sorted(set(ours) ^ set(official))
    return max((ours[k].double() - official[k].double()).abs().max().item() for k in official)


def official_criterion_cases(classes: dict) -> dict[str, dict]:
    result = {}
    for name, (kwargs, _) in CRITERION_CASES.items():
        matcher = classes["HungarianMatcher"](weight_dict=dict(MATCHER_PRESET["weight_dict"]), use_focal_loss=True,
                                              alpha=MATCHER_PRESET["alpha"], gamma=MATCHER_PRESET["gamma"])
        criterion = classes["DEIMCriterion"](matcher, num_classes=NUM_CLASSES, **copy.deepcopy(kwargs))
        expected = run_criterion_case(criterion, name, official=True)
        actual = run_criterion_case(our_criterion(name), name)
        print(f"criterion {name}: ours vs official, largest difference {_largest_difference(actual, expected):.3g}")
        result[name] = pack(expected)
    return result


def _official_decoder_and_criterion(classes: dict, name: str) -> tuple[nn.Module, nn.Module]:
    """DEIM's decoder of the case (built from ``CASE_SEED``) and DEIMCriterion. DEIM's RT-DETRv2 decoder names its
    denoising outputs ``dn_outputs`` (ours, as RT-DETRv2's, ``dn_aux_outputs``): here the decoder's outputs are
    renamed to ours and the criterion reads them back under DEIM's name."""
    architecture, kwargs, _, _ = DECODER_CASES[name]
    official = dict(DECODER_CRITERIA[architecture])
    matcher = classes["HungarianMatcher"](weight_dict=dict(MATCHER_PRESET["weight_dict"]), use_focal_loss=True,
                                          alpha=MATCHER_PRESET["alpha"], gamma=MATCHER_PRESET["gamma"])
    criterion_class = classes["DEIMCriterion"]
    decoder_class = classes["DFINETransformer" if architecture == "dfine" else "RTDETRTransformerv2"]
    if architecture == "rtdetrv2":
        class RenamedDecoder(decoder_class):
            def forward(self, *args, **kwargs):
                outputs = super().forward(*args, **kwargs)
                if "dn_outputs" in outputs:
                    outputs["dn_aux_outputs"] = outputs.pop("dn_outputs")
                return outputs

        class RenamedCriterion(criterion_class):
            def forward(self, outputs, targets, **kwargs):
                return super().forward(official_outputs(outputs), targets, **kwargs)

        decoder_class, criterion_class = RenamedDecoder, RenamedCriterion
    criterion = criterion_class(matcher, num_classes=kwargs["num_classes"], reg_max=kwargs.get("reg_max", 32),
                                weight_dict=dict(official.pop("weight_dict")), losses=list(official.pop("losses")),
                                **official)
    torch.manual_seed(CASE_SEED)
    with contextlib.redirect_stdout(io.StringIO()):  # as_reg prints a banner
        decoder = decoder_class(**copy.deepcopy(kwargs))
    return decoder, criterion


def official_decoder_cases(classes: dict) -> dict[str, dict]:
    result = {}
    for name in DECODER_CASES:
        official, criterion = _official_decoder_and_criterion(classes, name)
        ours = our_decoder(name)
        same_initial_weights(ours, official, name)
        expected = run_decoder_case(official, criterion, name)
        actual = run_decoder_case(ours, our_decoder_criterion(name), name)
        print(f"decoder {name}: ours vs official, largest difference {largest_difference(actual, expected):.3g}")
        result[name] = pack(expected)
    return result


def official_rates(classes: dict, name: str) -> torch.Tensor:
    """The rates of the official loop: the optimiser, its MultiStepLR and LinearWarmup (which sets the first
    iteration's rates), then FlatCosineLRScheduler, stepped after every iteration."""
    kwargs, lrs = LR_CASES[name]
    optimizer = _optimizer(lrs)
    epoch_scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[1000], gamma=0.1)
    with contextlib.redirect_stdout(io.StringIO()):
        classes["LinearWarmup"](epoch_scheduler, warmup_duration=kwargs["warmup_iters"])
        scheduler = classes["FlatCosineLRScheduler"](
            optimizer, kwargs["lr_gamma"], kwargs["iters_per_epoch"], total_epochs=kwargs["epochs"],
            warmup_iter=kwargs["warmup_iters"], flat_epochs=kwargs["flat_epoch"],
            no_aug_epochs=kwargs["no_aug_epoch"])
    rates = []
    for epoch in range(kwargs["epochs"]):
        for i in range(kwargs["iters_per_epoch"]):
            rates.append([group["lr"] for group in optimizer.param_groups])
            scheduler.step(epoch * kwargs["iters_per_epoch"] + i, optimizer)
    return torch.tensor(rates, dtype=torch.float64)


def official_lr_cases(classes: dict) -> dict[str, dict]:
    result = {}
    for name in LR_CASES:
        expected = official_rates(classes, name)
        print(f"lr {name}: ours vs official, largest difference "
              f"{(our_rates(name) - expected).abs().max().item():.3g}")
        result[name] = pack({"rates": expected})
    return result


def check_mosaic(classes: dict) -> None:
    """The official Mosaic without its random part (a one-item dataset, identity affine) against our paste."""
    import numpy as np
    import PIL.Image
    from torchvision import tv_tensors

    from datasets.deim_transforms import Mosaic, paste_mosaic
    from datasets.rtdetr_transforms import to_tv_target

    generator = torch.Generator().manual_seed(INPUT_SEED)

    def item(height: int, width: int, boxes: list[list[float]]):
        pixels = torch.randint(0, 256, (height, width, 3), generator=generator, dtype=torch.uint8)
        image = PIL.Image.fromarray(pixels.numpy())
        boxes_t = torch.tensor(boxes, dtype=torch.float32)
        return image, {"boxes": boxes_t, "labels": torch.arange(len(boxes)),
                       "iscrowd": torch.zeros(len(boxes), dtype=torch.int64),
                       "area": (boxes_t[:, 2] - boxes_t[:, 0]) * (boxes_t[:, 3] - boxes_t[:, 1])}

    main, other = item(90, 150, [[10, 5, 60, 50], [80, 20, 140, 85]]), item(120, 70, [[5, 10, 40, 100]])

    class OneItem:
        def __len__(self):
            return 1

        def load_item(self, index):
            image, target = other
            return image, {**target, "boxes": tv_tensors.BoundingBoxes(target["boxes"], format="XYXY",
                                                                        canvas_size=(image.height, image.width))}

    official = classes["Mosaic"](output_size=320, rotation_range=0, translation_range=(0, 0), scaling_range=(1, 1),
                                 probability=1.0, fill_value=0, use_cache=False)
    image, target = main
    tv_boxes = tv_tensors.BoundingBoxes(target["boxes"], format="XYXY", canvas_size=(image.height, image.width))
    official_image, official_target, _ = official(image, {**target, "boxes": tv_boxes}, OneItem())
    ours = Mosaic()
    pieces = [ours.resize(image, to_tv_target(target, image.height, image.width))]
    pieces += [ours.resize(other[0], to_tv_target(other[1], other[0].height, other[0].width))] * 3
    our_image, our_target = paste_mosaic(pieces)
    same_image = torch.equal(torch.as_tensor(np.asarray(our_image)), torch.as_tensor(np.asarray(official_image)))
    box_difference = (our_target["boxes"] - official_target["boxes"]).abs().max().item()
    print(f"mosaic (identity affine): canvas {our_image.size} vs {official_image.size}, same pixels {same_image}, "
          f"largest box difference {box_difference:.3g}, labels equal "
          f"{torch.equal(our_target['labels'], official_target['labels'])}")


def check_mixup(classes: dict) -> None:
    """The official collate's MixUp (probability 1) against ours at the weight it drew."""
    from datasets.deim_transforms import mix_batch
    from util.nested_tensor import NestedTensor

    generator = torch.Generator().manual_seed(INPUT_SEED)
    items = []
    for count in (2, 0, 3):
        boxes = 0.1 + 0.5 * torch.rand(count, 4, generator=generator)
        items.append((torch.rand(3, 16, 16, generator=generator),
                      {"boxes": boxes, "labels": torch.arange(count), "area": torch.rand(count, generator=generator),
                       "iscrowd": torch.zeros(count, dtype=torch.int64), "size": torch.tensor([16, 16])}))
    with contextlib.redirect_stdout(io.StringIO()):
        collate = classes["BatchImageCollateFunction"](mixup_prob=1.0, mixup_epochs=[0, 2])
    collate.set_epoch(1)
    images, targets = collate(copy.deepcopy(items))
    beta = targets[0]["mixup"][0].item() if len(targets[0]["labels"]) else 1 - targets[0]["mixup"][-1].item()
    beta = round(beta, 6)
    samples = NestedTensor(torch.stack([image for image, _ in items]), None)
    mixed, ours = mix_batch(samples, [t for _, t in items], beta)
    same = torch.equal(mixed.tensors, images) and all(
        torch.equal(a[k], b[k]) for a, b in zip(ours, targets) for k in ("boxes", "labels", "area", "mixup"))
    print(f"mixup (beta {beta}): images and boxes, labels, area, mixup weights equal to the official: {same}")


def check_configs(classes: dict, path: Path) -> None:
    """OFFICIAL_CONFIGS are the official config files' values."""
    for name, expected in OFFICIAL_CONFIGS.items():
        with contextlib.redirect_stdout(io.StringIO()):  # a fresh dict: the official default one collects configs
            config = classes["load_config"](str(path / "configs" / name), {})
        loader = config["train_dataloader"]
        policy, collate = loader["dataset"]["transforms"]["policy"], loader["collate_fn"]
        mosaic = [op for op in loader["dataset"]["transforms"]["ops"] if op["type"] == "Mosaic"][0]
        backbone = [g for g in config["optimizer"]["params"] if g["params"].startswith("^(?=.*backbone)")]
        criterion = config["DEIMCriterion"]
        actual = {
            "epochs": config["epoches"], "lr": config["optimizer"]["lr"],
            "lr_backbone": backbone[0].get("lr", config["optimizer"]["lr"]) if backbone else config["optimizer"]["lr"],
            "weight_decay": config["optimizer"]["weight_decay"], "flat_epoch": config["flat_epoch"],
            "no_aug_epoch": config["no_aug_epoch"], "lr_gamma": config["lr_gamma"],
            "warmup_iters": config["warmup_iter"], "policy_epoch": policy["epoch"],
            "mosaic_prob": loader["dataset"]["transforms"]["mosaic_prob"], "mixup_prob": collate["mixup_prob"],
            "mixup_epochs": collate["mixup_epochs"], "stop_epoch": collate["stop_epoch"],
            "multiscale_repeat": collate.get("base_size_repeat"), "ema": config["ema"]["decay"],
            "ema_warmups": config["ema"]["warmups"], "ema_restart_decay": collate.get("ema_restart_decay", 0.9999),
            "batch_size": loader["total_batch_size"], "mal_gamma": criterion["gamma"],
            "use_uni_set": criterion.get("use_uni_set", True)}
        assert actual == expected, (name, {k: (v, expected.get(k)) for k, v in actual.items() if v != expected.get(k)})
        assert criterion["losses"][0] == "mal" and criterion.get("mal_alpha") is None, name
        assert mosaic == {"type": "Mosaic", "output_size": 320, "rotation_range": 10, "translation_range": [0.1, 0.1],
                          "scaling_range": [0.5, 1.5], "probability": 1.0, "fill_value": 0, "use_cache": False,
                          "max_cached_images": 50, "random_pop": True}, name
    print(f"configs: the {len(OFFICIAL_CONFIGS)} DEIM configs' values are OFFICIAL_CONFIGS'")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official", type=Path, required=True, help="a clone of Intellindust-AI-Lab/DEIM")
    parser.add_argument("--output", type=Path, default=REFERENCE_FILE)
    args = parser.parse_args()
    classes = _official_classes(args.official)
    check_configs(classes, args.official)
    check_mosaic(classes)
    check_mixup(classes)
    reference = {"criterion": official_criterion_cases(classes), "decoder": official_decoder_cases(classes),
                 "lr": official_lr_cases(classes)}
    torch.save(reference, args.output)
    print(f"wrote {args.output} ({args.output.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
