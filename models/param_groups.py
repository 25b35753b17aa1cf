"""Optimiser parameter groups, decided by module identity, never by parameter name.

Every architecture has the same three kinds of parameters: the backbone (``lr_backbone``), the backbone attention
blocks (``lr_attn``; their scales, norms and biases, the parameters with at most one dimension, get no weight decay)
and the rest (the optimiser's default lr). An architecture may give chosen modules a scaled learning rate
(Deformable DETR's sampling-offset and reference-point projections).
"""
from collections.abc import Iterable

from torch import nn

from models.backbone_attention import MaskedAttention


def build_param_groups(model: nn.Module, lr_backbone: float, lr_attn: float | None = None, lr: float | None = None,
                       scaled_modules: Iterable[nn.Module] = (), lr_scale: float = 1.0) -> list[dict]:
    """AdamW groups for ``model`` (which has a ``backbone`` attribute), trainable parameters only.

    Groups: everything else (default lr), the backbone, and when present the attention blocks (two groups) and
    ``scaled_modules`` (lr ``lr * lr_scale``; ``lr`` is then required). Empty groups are kept, so that a resumed
    optimiser state always lines up with the same group layout.
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
    return groups
