"""Optimiser parameter groups, decided by module identity, never by parameter name.

Every architecture has the same three kinds of parameters: the backbone (``lr_backbone``), the backbone attention
blocks (``lr_attn``; their scales, norms and biases, the parameters with at most one dimension, get no weight decay)
and the rest (the optimiser's default lr). An architecture may give chosen modules a scaled learning rate
(Deformable DETR's sampling-offset and reference-point projections), and normalisation and bias parameters their
own weight decay (``--weight_decay_norm`` / ``--weight_decay_bias``, as RT-DETRv2's official groups do by name).
"""
from collections.abc import Iterable

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
