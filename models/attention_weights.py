"""Whether the transformers' ``nn.MultiheadAttention`` layers compute their attention weights.

Without the weights (``need_weights=False``) PyTorch runs the attention through ``scaled_dot_product_attention``:
the same attention up to floating-point rounding, without materialising and head-averaging the ``[B, Q, S]`` weights
that nothing reads. The official code always computes them. Here they are computed:

- where a layer's ``need_weights`` is True: ``--official_paths`` (for speed comparisons), or a tool that sets it
  (tools/analysis/visualize_attention.py);
- where a forward hook is registered on an attention module, as the official DETR notebook reads the maps
  (``model.transformer.decoder.layers[-1].multihead_attn.register_forward_hook(...)``: ``output[1]``);
- in training on the CPU, where the fused path is no faster (measured 0.93-0.97x with DETR's attention dropout,
  which sends CPU attention to the same unfused kernels) and its other rounding, amplified by Adam over a few steps,
  would move a seeded training run away from the official one (tests/test_golden_outputs.py pins such a run).

Inference on any device and training on a GPU use the fused path (on a GPU its attention dropout draws its own random
numbers: the same distribution, not the official code's draws).
"""
import torch
from torch import nn


def computes_weights(need_weights: bool, training: bool, device: torch.device) -> bool:
    """The ``need_weights`` to pass to ``nn.MultiheadAttention`` for a layer with switch ``need_weights``, in
    training mode or not, on ``device`` (see the module docstring)."""
    return need_weights or (training and device.type == "cpu")


def has_forward_hooks(*modules: nn.Module) -> bool:
    """Whether any of ``modules`` has a forward hook (someone reads their outputs, e.g. the attention maps)."""
    return any(module._forward_hooks for module in modules)


def set_need_weights(model: nn.Module, need_weights: bool) -> int:
    """Set ``need_weights`` on every layer of ``model`` that has the switch (DETR's encoder and decoder layers,
    Deformable DETR's and DINO's decoder layers); returns how many layers were set."""
    layers = [m for m in model.modules() if isinstance(getattr(m, "need_weights", None), bool)]
    for layer in layers:
        layer.need_weights = need_weights
    return len(layers)
