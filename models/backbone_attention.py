"""Placing attention blocks (models/attention) into a torchvision ResNet without renaming any of its parameters.

Blocks live in one ``nn.ModuleDict`` beside the network (checkpoint keys ``backbone.0.attn.blocks.<place>.*``) and act
through forward hooks, so an official DETR checkpoint loads with only the block parameters missing:

- position ``block``: inside every residual block of the chosen stages, on the output of its last normalisation
  (``bn2`` of a BasicBlock, ``bn3`` of a Bottleneck), before the residual addition; places ``layer2_0``, ...
  Blocks that augment a convolution (``augments_conv``: aa, sasa) go on the block's 3x3 convolution instead
  (``conv2``: a Bottleneck's only one, a BasicBlock's second), reading its input and adding to its output.
- position ``stage``: once on the output of each chosen stage; places ``layer4``, ...

Stages are numbered as torchvision's ``layer1..layer4`` (the papers' c2..c5); RT-DETRv2's PResNet gives the same
places through ``residual_stage``, each block's ``last_norm`` and ``spatial_conv``. Each block receives the padding mask
downsampled to its feature map, so padded pixels never enter its pooling or attention.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.attention import ATTENTION, build_attention, default_position, default_stages, supported_positions


@dataclass(frozen=True)
class AttentionPlan:
    """Which block goes where: ``name`` from the registry, ``stages`` among 1..4, ``position`` block or stage."""

    name: str
    stages: tuple[int, ...]
    position: str


class PlanError(ValueError):
    """A plan that cannot be made; ``argument`` names the :func:`make_plan` argument at fault."""

    def __init__(self, argument: str, message: str):
        super().__init__(message)
        self.argument = argument


def make_plan(name: str | None, stages: list[int] | None, position: str | None, last_stage: int
              ) -> AttentionPlan | None:
    """Check the block, stages and position and fill defaults: the block's position and its default stages (block
    position on stages 2..last, stage position on the last stage, unless the block says otherwise). None or "none"
    places no block."""
    if name in (None, "", "none"):
        return None
    if name not in ATTENTION:
        raise PlanError("name", f"the attention block must be one of {sorted(ATTENTION)} or none, got {name!r}")
    position = position or default_position(name)
    if position not in supported_positions(name):
        raise PlanError("position", f"position {position!r} is not supported by {name!r} "
                                    f"(supported: {', '.join(supported_positions(name))})")
    if not stages:
        stages = list(default_stages(name, position, last_stage))
    bad = [s for s in stages if not 1 <= s <= last_stage]
    if bad:
        raise PlanError("stages", f"stages {bad} out of range: the backbone computes stages 1..{last_stage}")
    return AttentionPlan(name, tuple(sorted(set(stages))), position)


def residual_stage(body: nn.Module, number: int) -> nn.Module:
    """Stage ``number`` (1..4) of ``body``: torchvision's ``layer{number}``, or what ``body.residual_stage(number)``
    returns (RT-DETRv2's PResNet). Iterating a stage gives its residual blocks."""
    return body.residual_stage(number) if hasattr(body, "residual_stage") else getattr(body, f"layer{number}")


def _last_norm(block: nn.Module) -> nn.Module:
    """The norm whose output the residual addition takes: a block's ``last_norm`` (PResNet names it), else
    torchvision's ``bn3`` (Bottleneck) or ``bn2`` (BasicBlock)."""
    if hasattr(block, "last_norm"):
        return block.last_norm
    return block.bn3 if hasattr(block, "bn3") else block.bn2


def _spatial_conv(block: nn.Module) -> nn.Conv2d:
    """The block's 3x3 convolution: its ``spatial_conv`` (PResNet), else torchvision's ``conv2``."""
    return block.spatial_conv if hasattr(block, "spatial_conv") else block.conv2


def _stage_channels(stage: nn.Sequential) -> int:
    return _last_norm(stage[-1]).weight.shape[0]


class AttentionHook:
    """Forward hook replacing a module's output by ``blocks[place](output, mask at the output's size)``."""

    def __init__(self, host: "MaskedAttention", place: str):
        self.host, self.place = host, place

    def __call__(self, module: nn.Module, inputs, output: torch.Tensor) -> torch.Tensor:
        return self.host.blocks[self.place](output, self.host.mask_at(output.shape[-2:]))


class ConvAugmentHook(AttentionHook):
    """Forward hook of a convolution: ``blocks[place](output, its mask, source=input, source_mask=its mask)``."""

    def __call__(self, module: nn.Module, inputs, output: torch.Tensor) -> torch.Tensor:
        source = inputs[0]
        return self.host.blocks[self.place](output, self.host.mask_at(output.shape[-2:]), source=source,
                                            source_mask=self.host.mask_at(source.shape[-2:]))


class MaskedAttention(nn.Module):
    """The blocks of a plan, hooked into ``body``; call :meth:`set_mask` before each forward of ``body``."""

    def __init__(self, body: nn.Module, plan: AttentionPlan, **block_kwargs):
        super().__init__()
        self.plan = plan
        self.blocks = nn.ModuleDict()
        self._mask: torch.Tensor | None = None
        self._resized: dict[tuple[int, int], torch.Tensor] = {}
        on_conv = ATTENTION[plan.name].augments_conv
        for s in plan.stages:
            stage = residual_stage(body, s)
            kwargs = {**ATTENTION[plan.name].placement_kwargs(s), **block_kwargs}
            if plan.position == "block":
                for i, block in enumerate(stage):
                    if on_conv:
                        conv = _spatial_conv(block)
                        self._add(f"layer{s}_{i}", conv, conv.out_channels, kwargs, ConvAugmentHook)
                    else:
                        norm = _last_norm(block)
                        self._add(f"layer{s}_{i}", norm, norm.weight.shape[0], kwargs)
            else:
                self._add(f"layer{s}", stage, _stage_channels(stage), kwargs)

    def _add(self, place: str, host_module: nn.Module, channels: int, block_kwargs: dict,
             hook: type[AttentionHook] = AttentionHook) -> None:
        self.blocks[place] = build_attention(self.plan.name, channels, **block_kwargs)
        host_module.register_forward_hook(hook(self, place))

    def set_mask(self, mask: torch.Tensor | None) -> None:
        """mask ``[B, H, W]`` at image resolution, True on padding."""
        self._mask, self._resized = mask, {}

    def mask_at(self, size: torch.Size) -> torch.Tensor | None:
        if self._mask is None:
            return None
        key = tuple(size)
        if key not in self._resized:
            self._resized[key] = F.interpolate(self._mask[None].float(), size=key).to(torch.bool)[0]
        return self._resized[key]


def attach_backbone_attention(backbone: nn.Module, args, last_stage: int = 4) -> nn.Module:
    """``backbone`` with the blocks of ``--backbone_attn`` / ``--attn_stages`` / ``--attn_position`` held as ``attn``
    (identities at first; nothing added without a block): for backbones that expose ``residual_stage`` (PResNet,
    HGNetv2). Returns ``backbone``."""
    plan = make_plan(args.backbone_attn, args.attn_stages, args.attn_position, last_stage)
    if plan is not None:
        backbone.attn = MaskedAttention(backbone, plan)
    return backbone
