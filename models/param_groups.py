"""Optimiser parameter groups, decided by module identity, never by parameter name.

Every architecture has the same three kinds of parameters: the backbone (``lr_backbone``), the backbone attention
blocks (``lr_attn``; their scales, norms and biases, the parameters with at most one dimension, get no weight decay)
and the rest (the optimiser's default lr). An architecture may give chosen modules a scaled learning rate
(Deformable DETR's sampling-offset and reference-point projections), and normalisation and bias parameters their
own weight decay (``--weight_decay_norm`` / ``--weight_decay_bias``, as RT-DETRv2's official groups do by name).

The one exception: ``--optimizer_groups`` gives the groups as the official real-time configs do (their
``optimizer.params``: regular expressions over state-dict names, each with its own lr and weight decay), so that an
official recipe, quirks included, is reproduced as written; the attention blocks keep their own groups even then.
"""
import re
from collections.abc import Iterable
from dataclasses import dataclass

from torch import nn

from models.backbone_attention import MaskedAttention

NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


def norm_and_bias_parameters(model: nn.Module) -> tuple[set[int], set[int]]:
    """ids of the parameters of normalisation layers, and of the biases of the other layers (their parameters
    named ``bias`` or ``*_bias``, as attention's ``in_proj_bias``)."""
    norms, biases = set(), set()
    for module in model.modules():
        own = dict(module.named_parameters(recurse=False))
        if isinstance(module, NORM_LAYERS):
            norms |= {id(p) for p in own.values()}
        else:
            biases |= {id(p) for name, p in own.items() if name == "bias" or name.endswith("_bias")}
    return norms, biases - norms


def split_weight_decay(groups: list[dict], model: nn.Module, weight_decay_norm: float | None,
                       weight_decay_bias: float | None) -> list[dict]:
    """Each group split into (its other parameters, its normalisation parameters with ``weight_decay_norm``, its
    biases with ``weight_decay_bias``), the parts whose decay is None left in the first; empty parts kept, so the
    layout is the same for every model."""
    if weight_decay_norm is None and weight_decay_bias is None:
        return groups
    norms, biases = norm_and_bias_parameters(model)
    split = []
    for group in groups:
        options = {k: v for k, v in group.items() if k != "params"}
        in_norms = [p for p in group["params"] if id(p) in norms and weight_decay_norm is not None]
        in_biases = [p for p in group["params"] if id(p) in biases and weight_decay_bias is not None]
        taken = {id(p) for p in in_norms + in_biases}
        split.append({**options, "params": [p for p in group["params"] if id(p) not in taken]})
        if weight_decay_norm is not None:
            split.append({**options, "params": in_norms, "weight_decay": weight_decay_norm})
        if weight_decay_bias is not None:
            split.append({**options, "params": in_biases, "weight_decay": weight_decay_bias})
    return split


def build_param_groups(model: nn.Module, lr_backbone: float, lr_attn: float | None = None, lr: float | None = None,
                       scaled_modules: Iterable[nn.Module] = (), lr_scale: float = 1.0,
                       weight_decay_norm: float | None = None, weight_decay_bias: float | None = None) -> list[dict]:
    """AdamW groups for ``model`` (which has a ``backbone`` attribute), trainable parameters only.

    Groups: everything else (default lr), the backbone, and when present the attention blocks (two groups) and
    ``scaled_modules`` (lr ``lr * lr_scale``; ``lr`` is then required); then, where ``weight_decay_norm`` /
    ``weight_decay_bias`` are given, each split by :func:`split_weight_decay`. Empty groups are kept, so that a
    resumed optimiser state always lines up with the same group layout.
    """
    attn_params = [p for m in model.modules() if isinstance(m, MaskedAttention) for p in m.parameters()
                   if p.requires_grad]
    attn_ids = {id(p) for p in attn_params}
    backbone_ids = {id(p) for p in model.backbone.parameters()} - attn_ids
    scaled_ids = {id(p) for m in scaled_modules for p in m.parameters()} - backbone_ids - attn_ids
    trainable = [p for p in model.parameters() if p.requires_grad]
    grouped = backbone_ids | attn_ids | scaled_ids
    groups = [
        {"params": [p for p in trainable if id(p) not in grouped]},
        {"params": [p for p in trainable if id(p) in backbone_ids], "lr": lr_backbone},
    ]
    if scaled_ids:
        if lr is None:
            raise ValueError("build_param_groups: scaled_modules need the base lr")
        groups.append({"params": [p for p in trainable if id(p) in scaled_ids], "lr": lr * lr_scale})
    if attn_params:
        lr_attn = lr_backbone if lr_attn is None else lr_attn
        groups += [{"params": [p for p in attn_params if p.ndim > 1], "lr": lr_attn},
                   {"params": [p for p in attn_params if p.ndim <= 1], "lr": lr_attn, "weight_decay": 0.0}]
    return split_weight_decay(groups, model, weight_decay_norm, weight_decay_bias)


@dataclass(frozen=True)
class GroupPattern:
    """One ``--optimizer_groups`` entry: the parameters whose state-dict name ``pattern`` finds (``re.search``, as
    the official ``re.findall``), with the options given (``lr``: a rate or ``"lr_backbone"``; ``weight_decay``)."""
    pattern: str
    lr: float | str | None = None
    weight_decay: float | None = None


def parse_group_pattern(text: str) -> GroupPattern:
    """``"REGEX [lr=X|lr=lr_backbone] [weight_decay=Y]"`` -> GroupPattern; ValueError saying what is wrong."""
    pattern, *options = text.split()
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"--optimizer_groups: {pattern!r} is not a regular expression ({exc})") from None
    values = {}
    for option in options:
        key, _, value = option.partition("=")
        if key not in ("lr", "weight_decay") or not value or key in values:
            raise ValueError(f"--optimizer_groups: {text!r}: options are lr=RATE (or lr=lr_backbone) and "
                             f"weight_decay=VALUE, each at most once; got {option!r}")
        if key == "lr" and value == "lr_backbone":
            values[key] = value
            continue
        try:
            values[key] = float(value)
        except ValueError:
            raise ValueError(f"--optimizer_groups: {text!r}: {key}={value!r} is not a number") from None
        if values[key] < 0:
            raise ValueError(f"--optimizer_groups: {text!r}: {key} must not be negative")
    return GroupPattern(pattern, **values)


def pattern_param_groups(model: nn.Module, patterns: Iterable[GroupPattern], lr_backbone: float,
                         lr_attn: float | None = None) -> list[dict]:
    """AdamW groups by name patterns: the attention blocks' two groups (as :func:`build_param_groups`) first, then one
    group per pattern (in order; a parameter two patterns find is an error naming both), then the trainable
    parameters no pattern finds, at the optimiser's defaults. Empty groups are kept."""
    attn_params = [p for m in model.modules() if isinstance(m, MaskedAttention) for p in m.parameters()
                   if p.requires_grad]
    attn_ids = {id(p) for p in attn_params}
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad and id(p) not in attn_ids]
    owner: dict[str, str] = {}
    groups = []
    for spec in patterns:
        params = []
        for name, p in named:
            if re.search(spec.pattern, name):
                if name in owner:
                    raise ValueError(f"--optimizer_groups: parameter {name} is found by both {owner[name]!r} and "
                                     f"{spec.pattern!r}")
                owner[name] = spec.pattern
                params.append(p)
        group = {"params": params}
        if spec.lr is not None:
            group["lr"] = lr_backbone if spec.lr == "lr_backbone" else spec.lr
        if spec.weight_decay is not None:
            group["weight_decay"] = spec.weight_decay
        groups.append(group)
    groups.append({"params": [p for name, p in named if name not in owner]})
    if attn_params:
        lr_attn = lr_backbone if lr_attn is None else lr_attn
        groups = [{"params": [p for p in attn_params if p.ndim > 1], "lr": lr_attn},
                  {"params": [p for p in attn_params if p.ndim <= 1], "lr": lr_attn, "weight_decay": 0.0}, *groups]
    return groups
