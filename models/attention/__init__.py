"""Attention blocks for the ResNet backbone, one paper per file, each the identity at initialisation.

Registry: ``ATTENTION`` maps a name to its block class; ``build_attention(name, channels, **kwargs)`` builds one.

====  =====================================  =======================  ==============================
name  class                                  paper                    positions (default first)
====  =====================================  =======================  ==============================
gc    :class:`gc.GlobalContext`              GCNet, 1904.11492        block, stage
ca    :class:`ca.CoordAttn`                  CA, 2103.02907           block, stage
se    :class:`se.SqueezeExcite`              SENet, 1709.01507        block, stage
eca   :class:`eca.EfficientChannelAttn`      ECA-Net, 1910.03151      block, stage
cbam  :class:`cbam.Cbam`                     CBAM, 1807.06521         block, stage
nl    :class:`nl.NonLocal`                   Non-local, 1711.07971    stage
cc    :class:`cc.RecurrentCrissCross`        CCNet, 1811.11721        stage
da    :class:`da.DualAttention`              DANet, 1809.02983        stage
aa    :class:`aa.AugmentedAttention`         AA-Net, 1904.09925       block (3x3 conv), stage
sasa  :class:`sasa.StandAloneAttention`      SASA, 1906.05909         block (3x3 conv), stage
ran   :class:`ran.ResidualAttention`         RAN, 1704.06904          stage
stn   :class:`stn.SpatialTransformer`        STN, 1506.02025          stage
====  =====================================  =======================  ==============================

Every block is built as ``Block(channels, **paper_defaults)`` (timm-style names ``rd_ratio``, ``rd_channels``,
``act_layer``, ``norm_layer``, ``gate_layer`` where they apply), initialises itself in ``reset_parameters()`` and
runs ``forward(x, mask=None)``: x ``[B, C, H, W]``, mask ``[B, H, W]`` bool, True on padding (None: no padding),
output ``[B, C, H, W]``.

- Identity at initialisation: gate blocks (se, eca, ca, cbam) are ``x + gamma * (gate(x) * x - x)`` with a scalar
  ``gamma`` starting at 0 (:class:`gating.ZeroInitGate`); gc and nl zero their last 1x1 conv; cc and da scale
  their attended values by gammas starting at 0; aa and sasa add their attention through a zero-initialised 1x1
  projection (:class:`conv_augment.ConvAugmentation`); ran scales its mask term ``M(x) * x`` by a gamma starting at
  0; stn starts at the identity transform and outputs ``x + S_theta(x) - S_I(x)``.
- Padding: every pooling and attention over positions uses valid pixels only (:mod:`masked_ops`), and so does every
  change of resolution (:mod:`masked_resample`: aa and sasa on strided convolutions, ran's mask branch) and stn's
  sampling grid (each image's valid region), so an image's output on its valid pixels does not depend on the other
  images of its batch; padded outputs stay finite.
- No BatchNorm inside blocks (2 images per GPU; it also mixes images): gc, ca and ran use LayerNorm, the others none.

Positions (class attributes ``positions`` and ``default_position``; :func:`supported_positions`,
:func:`default_position`, ``SUPPORTED_POSITIONS``): ``block`` = inside every residual block of a stage, on the output
of its last norm before the residual addition, or, for the blocks that augment a convolution (``augments_conv``: aa,
sasa), on its 3x3 convolution, reading the convolution's input and adding to its output; ``stage`` = once on a stage
output. The blocks whose attention is ``[HW, HW]`` or row/column-wise (nl, cc, da), and ran and stn, which resample a
whole stage's map, are stage-only. Default stages (classmethod ``default_stages``): 2..last at ``block``, the last at
``stage``; aa: the last (global attention), sasa: the last two (the paper's later stages), ran: every stage before
the last (the paper's modules), with stage-dependent constructor arguments from ``placement_kwargs(stage)``.

Weight decay: by rule, parameters with ``ndim <= 1`` get none. Every block keeps its gammas 0-dim and its norm
weights/biases 1-D for this (gc's LayerNorm over ``[C/r, 1, 1]`` is written with ``[C/r]`` parameters), so the rule
covers exactly gammas, norm parameters and biases; there is no per-block list to keep in sync. (aa's and sasa's
relative position tables are 2-D and are decayed like the convolution weights; stn's identity-transform bias is 1-D
and is not.)

Not a block: AG-CNN's hard-attention heat map of a stage (``max_k |f^k|``, its thresholded region and box) is a
picture, computed in tools/analysis/hard_attention.py.
"""
from torch import nn

from models.attention.aa import AugmentedAttention
from models.attention.base import AttentionBlock
from models.attention.ca import CoordAttn
from models.attention.cbam import Cbam
from models.attention.cc import RecurrentCrissCross
from models.attention.da import DualAttention
from models.attention.eca import EfficientChannelAttn
from models.attention.gc import GlobalContext
from models.attention.nl import NonLocal
from models.attention.ran import ResidualAttention
from models.attention.sasa import StandAloneAttention
from models.attention.se import SqueezeExcite
from models.attention.stn import SpatialTransformer

ATTENTION: dict[str, type[AttentionBlock]] = {
    "gc": GlobalContext,
    "ca": CoordAttn,
    "se": SqueezeExcite,
    "eca": EfficientChannelAttn,
    "cbam": Cbam,
    "nl": NonLocal,
    "cc": RecurrentCrissCross,
    "da": DualAttention,
    "aa": AugmentedAttention,
    "sasa": StandAloneAttention,
    "ran": ResidualAttention,
    "stn": SpatialTransformer,
}

SUPPORTED_POSITIONS: dict[str, tuple[str, ...]] = {name: cls.positions for name, cls in ATTENTION.items()}


def _lookup(name: str) -> type[AttentionBlock]:
    if name not in ATTENTION:
        raise ValueError(f"unknown attention block {name!r}; choices: {', '.join(ATTENTION)}")
    return ATTENTION[name]


def build_attention(name: str, channels: int, **kwargs) -> nn.Module:
    """The block registered as ``name`` for ``channels`` input channels; ``kwargs`` override the paper's defaults."""
    return _lookup(name)(channels, **kwargs)


def supported_positions(name: str) -> tuple[str, ...]:
    """Where block ``name`` may go: a subset of ("block", "stage")."""
    return _lookup(name).positions


def default_position(name: str) -> str:
    """Where block ``name`` goes unless asked otherwise: "block" for gate blocks, gc, aa, sasa; "stage" for nl, cc,
    da, ran, stn."""
    return _lookup(name).default_position


def default_stages(name: str, position: str, last_stage: int) -> tuple[int, ...]:
    """The stages (among 1..``last_stage``) that get block ``name`` at ``position`` unless asked otherwise."""
    return _lookup(name).default_stages(position, last_stage)


__all__ = ["ATTENTION", "SUPPORTED_POSITIONS", "AttentionBlock", "build_attention", "default_position",
           "default_stages", "supported_positions"]
