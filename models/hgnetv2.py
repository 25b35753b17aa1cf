"""HGNetv2 (PP-HGNetV2, PaddleClas), the backbone of D-FINE (Peng et al., "D-FINE: Redefine Regression Task of DETRs
as Fine-grained Distribution Refinement", ICLR 2025, arXiv:2410.13842) and of the detectors built on it, in the
variants B0-B6 of Peterande/D-FINE (``src/nn/backbone/hgnetv2.py``).

A stem (a 3x3 stride-2 convolution, then a max-pooling branch beside two 2x2 convolutions, concatenated, then 3x3
stride 2 and 1x1: stride 4), then four stages. A stage is an optional depthwise 3x3 stride-2 convolution
(``downsample``, no activation) and HG blocks: ``layer_num`` convolutions in sequence (3x3, or in the "light"
stages a 1x1 then a depthwise ``kernel_size`` one) whose outputs are concatenated with the block's input and
aggregated by a 1x1 squeeze to half the output width and a 1x1 excitation to the full width; every block after a
stage's first adds its input (a residual). Convolutions have no bias and are followed by BatchNorm and, except the
downsampling ones and the first 1x1 of a light convolution, ReLU and, with ``use_lab``, a learnable affine ``scale
* x + bias`` (two scalars).

State-dict names and shapes are the official ones (``stem.stem1.conv.weight``, ``stages.2.blocks.1.layers.0.conv2.
lab.scale``, ``stages.0.blocks.0.aggregation.1.bn.running_var`` ...), so the official ImageNet weights and D-FINE
checkpoints load with strict=True; the same seed draws the official initial weights (PyTorch's defaults: the
official backbone initialises nothing itself). The network computes in the dtype of its parameters.

It lives beside models/backbone.py, not in one architecture's package: D-FINE and DEIM (Intellindust-AI-Lab/DEIM)
use this exact network, and RT-DETRv2's ``rtdetrv2_hgnetv2_{l,x,h}`` configs use the B4, B5 and B6 widths of the
same network (there with other module names and a Kaiming initialisation).

Backbone attention (models/backbone_attention.py) finds its places through :meth:`HGNetv2.residual_stage` (stage
``n`` = ``stages[n - 1]``, strides 4, 8, 16, 32 as torchvision's ``layer{n}``), whose blocks expose
:attr:`HGBlock.last_norm` and :attr:`HGBlock.spatial_conv`.
"""
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import FrozenBatchNorm2d

from util.checkpoint import downloaded_state_dict

NormLayer = Callable[[int], nn.Module]


class StageSpec(NamedTuple):
    """One stage of a variant, the official ``stage_config`` row."""

    in_channels: int
    mid_channels: int
    out_channels: int
    num_blocks: int
    downsample: bool
    light_block: bool
    kernel_size: int
    layer_num: int


class VariantSpec(NamedTuple):
    stem_channels: tuple[int, int, int]  # (in, mid, out)
    stages: tuple[StageSpec, StageSpec, StageSpec, StageSpec]


VARIANTS = {
    "B0": VariantSpec((3, 16, 16), (StageSpec(16, 16, 64, 1, False, False, 3, 3),
                                    StageSpec(64, 32, 256, 1, True, False, 3, 3),
                                    StageSpec(256, 64, 512, 2, True, True, 5, 3),
                                    StageSpec(512, 128, 1024, 1, True, True, 5, 3))),
    "B1": VariantSpec((3, 24, 32), (StageSpec(32, 32, 64, 1, False, False, 3, 3),
                                    StageSpec(64, 48, 256, 1, True, False, 3, 3),
                                    StageSpec(256, 96, 512, 2, True, True, 5, 3),
                                    StageSpec(512, 192, 1024, 1, True, True, 5, 3))),
    "B2": VariantSpec((3, 24, 32), (StageSpec(32, 32, 96, 1, False, False, 3, 4),
                                    StageSpec(96, 64, 384, 1, True, False, 3, 4),
                                    StageSpec(384, 128, 768, 3, True, True, 5, 4),
                                    StageSpec(768, 256, 1536, 1, True, True, 5, 4))),
    "B3": VariantSpec((3, 24, 32), (StageSpec(32, 32, 128, 1, False, False, 3, 5),
                                    StageSpec(128, 64, 512, 1, True, False, 3, 5),
                                    StageSpec(512, 128, 1024, 3, True, True, 5, 5),
                                    StageSpec(1024, 256, 2048, 1, True, True, 5, 5))),
    "B4": VariantSpec((3, 32, 48), (StageSpec(48, 48, 128, 1, False, False, 3, 6),
                                    StageSpec(128, 96, 512, 1, True, False, 3, 6),
                                    StageSpec(512, 192, 1024, 3, True, True, 5, 6),
                                    StageSpec(1024, 384, 2048, 1, True, True, 5, 6))),
    "B5": VariantSpec((3, 32, 64), (StageSpec(64, 64, 128, 1, False, False, 3, 6),
                                    StageSpec(128, 128, 512, 2, True, False, 3, 6),
                                    StageSpec(512, 256, 1024, 5, True, True, 5, 6),
                                    StageSpec(1024, 512, 2048, 2, True, True, 5, 6))),
    "B6": VariantSpec((3, 48, 96), (StageSpec(96, 96, 192, 2, False, False, 3, 6),
                                    StageSpec(192, 192, 512, 3, True, False, 3, 6),
                                    StageSpec(512, 384, 1024, 6, True, True, 5, 6),
                                    StageSpec(1024, 768, 2048, 3, True, True, 5, 6))),
}
STAGE_STRIDES = (4, 8, 16, 32)

# ImageNet ("stage 1") weights of the D-FINE authors (the official HGNetv2's download URLs)
PRETRAINED_URLS = {name: f"https://github.com/Peterande/storage/releases/download/dfinev1.0/PPHGNetV2_{name}_stage1.pth"
                   for name in VARIANTS}


class LearnableAffineBlock(nn.Module):
    """``scale * x + bias`` with two learned scalars (``[1]`` each), starting at 1 and 0; any shape."""

    def __init__(self, scale_value: float = 1.0, bias_value: float = 0.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([scale_value]))
        self.bias = nn.Parameter(torch.tensor([bias_value]))

    def forward(self, x: Tensor) -> Tensor:
        return self.scale * x + self.bias


class HGConvBNAct(nn.Module):
    """``lab(act(bn(conv(x))))``: ``[B, C_in, H, W] -> [B, C_out, H / stride, W / stride]`` (padding
    ``(k - 1) // 2``, no bias). ``use_act``: ReLU, and with ``use_lab`` a :class:`LearnableAffineBlock`; without
    ``use_act`` both are identities. Names ``conv``, ``bn``, ``act``, ``lab``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1, *,
                 use_act: bool = True, use_lab: bool = False, norm_layer: NormLayer = nn.BatchNorm2d):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding=(kernel_size - 1) // 2,
                              groups=groups, bias=False)
        self.bn = norm_layer(out_channels)
        self.act = nn.ReLU() if use_act else nn.Identity()
        self.lab = LearnableAffineBlock() if use_act and use_lab else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.lab(self.act(self.bn(self.conv(x))))


class HGLightConvBNAct(nn.Module):
    """A 1x1 convolution without activation (``conv1``), then a depthwise ``kernel_size`` one with it (``conv2``):
    ``[B, C_in, H, W] -> [B, C_out, H, W]``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, use_lab: bool, norm_layer: NormLayer):
        super().__init__()
        self.conv1 = HGConvBNAct(in_channels, out_channels, 1, use_act=False, use_lab=use_lab, norm_layer=norm_layer)
        self.conv2 = HGConvBNAct(out_channels, out_channels, kernel_size, groups=out_channels, use_lab=use_lab,
                                 norm_layer=norm_layer)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv2(self.conv1(x))


class HGStem(nn.Module):
    """``[B, C_in, H, W] -> [B, C_out, H / 4, W / 4]`` (sizes rounded up): ``stem1`` (3x3 stride 2), then a 2x2 max
    pooling (stride 1) beside ``stem2a`` -> ``stem2b`` (2x2 convolutions), each on the map zero-padded by one row and
    column at the bottom and right, concatenated (pooling first), then ``stem3`` (3x3 stride 2) and ``stem4``
    (1x1)."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, *, use_lab: bool,
                 norm_layer: NormLayer):
        super().__init__()
        self.stem1 = HGConvBNAct(in_channels, mid_channels, 3, 2, use_lab=use_lab, norm_layer=norm_layer)
        self.stem2a = HGConvBNAct(mid_channels, mid_channels // 2, 2, use_lab=use_lab, norm_layer=norm_layer)
        self.stem2b = HGConvBNAct(mid_channels // 2, mid_channels, 2, use_lab=use_lab, norm_layer=norm_layer)
        self.stem3 = HGConvBNAct(mid_channels * 2, mid_channels, 3, 2, use_lab=use_lab, norm_layer=norm_layer)
        self.stem4 = HGConvBNAct(mid_channels, out_channels, 1, use_lab=use_lab, norm_layer=norm_layer)
        self.pool = nn.MaxPool2d(kernel_size=2, stride=1, ceil_mode=True)

    def forward(self, x: Tensor) -> Tensor:
        x = F.pad(self.stem1(x), (0, 1, 0, 1))
        branch = self.stem2b(F.pad(self.stem2a(x), (0, 1, 0, 1)))
        return self.stem4(self.stem3(torch.cat([self.pool(x), branch], dim=1)))


class HGBlock(nn.Module):
    """``layer_num`` convolutions in sequence (``layers``), the block's input and every layer's output
    concatenated, then ``aggregation``: a 1x1 squeeze to ``out_channels // 2`` and a 1x1 excitation to
    ``out_channels``, both with activation; ``residual`` adds the input. ``[B, C_in, H, W] -> [B, C_out, H, W]``.

    The official module also offers an "ese" aggregation; HGNetv2 never builds it (its stages pass "se").
    """

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, layer_num: int, *, kernel_size: int,
                 residual: bool, light_block: bool, use_lab: bool, norm_layer: NormLayer):
        super().__init__()
        self.residual = residual
        self.layers = nn.ModuleList()
        for i in range(layer_num):
            channels = in_channels if i == 0 else mid_channels
            if light_block:
                self.layers.append(HGLightConvBNAct(channels, mid_channels, kernel_size, use_lab=use_lab,
                                                    norm_layer=norm_layer))
            else:
                self.layers.append(HGConvBNAct(channels, mid_channels, kernel_size, use_lab=use_lab,
                                               norm_layer=norm_layer))
        total_channels = in_channels + layer_num * mid_channels
        self.aggregation = nn.Sequential(
            HGConvBNAct(total_channels, out_channels // 2, 1, use_lab=use_lab, norm_layer=norm_layer),
            HGConvBNAct(out_channels // 2, out_channels, 1, use_lab=use_lab, norm_layer=norm_layer))

    @property
    def last_norm(self) -> nn.Module:
        """The excitation's norm: its output, after ReLU (and the affine block), is what the block adds to its
        input (a stage's first block adds nothing)."""
        return self.aggregation[-1].bn

    @property
    def spatial_conv(self) -> nn.Conv2d:
        """The last layer's ``kernel_size`` convolution (3x3, or a light layer's depthwise 5x5): where a
        convolution-augmenting attention block goes."""
        last = self.layers[-1]
        return last.conv2.conv if isinstance(last, HGLightConvBNAct) else last.conv

    def forward(self, x: Tensor) -> Tensor:
        outputs = [x]
        for layer in self.layers:
            outputs.append(layer(outputs[-1]))
        y = self.aggregation(torch.cat(outputs, dim=1))
        return y + x if self.residual else y


class HGStage(nn.Module):
    """``downsample`` (a depthwise 3x3 stride-2 convolution without activation, or an identity) then ``blocks``
    (:class:`HGBlock`, the first without residual): ``[B, C_in, H, W] -> [B, C_out, H', W']``."""

    def __init__(self, spec: StageSpec, *, use_lab: bool, norm_layer: NormLayer):
        super().__init__()
        if spec.downsample:
            self.downsample = HGConvBNAct(spec.in_channels, spec.in_channels, 3, 2, groups=spec.in_channels,
                                          use_act=False, use_lab=use_lab, norm_layer=norm_layer)
        else:
            self.downsample = nn.Identity()
        self.blocks = nn.Sequential(*(
            HGBlock(spec.in_channels if i == 0 else spec.out_channels, spec.mid_channels, spec.out_channels,
                    spec.layer_num, kernel_size=spec.kernel_size, residual=i > 0, light_block=spec.light_block,
                    use_lab=use_lab, norm_layer=norm_layer)
            for i in range(spec.num_blocks)))

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(self.downsample(x))


class HGNetv2(nn.Module):
    """HGNetv2 variant ``name`` (B0..B6; D-FINE n and s use B0, m B2, l B4, x B5).

    ``forward`` takes images ``[B, 3, H, W]`` and returns the outputs of the stages ``return_idx`` (0-based,
    increasing), ``[B, out_channels[i], H / out_strides[i], W / out_strides[i]]`` (sizes rounded up at each stride-2
    step). The arguments are the official ones, with its defaults except ``pretrained``:

    - ``use_lab``: learnable affine blocks after the activations (D-FINE n, s, m).
    - ``freeze_at >= 0`` stops the gradients of the stem, and, unless ``freeze_stem_only``, of the stages
      ``0..freeze_at`` as well (``freeze_at + 1`` stages, as the official code counts); -1 freezes nothing. As
      official, frozen parameters' BatchNorm statistics still update in training mode unless ``freeze_norm``.
    - ``freeze_norm`` builds every norm as torchvision's ``FrozenBatchNorm2d`` (the official class's buffers,
      eps 1e-5 and arithmetic), else ``nn.BatchNorm2d``.
    - ``pretrained``: False (default; the official default downloads) leaves the random initialisation; True loads
      the official ImageNet weights of ``name`` (:func:`pretrained_state_dict`, downloaded into torch.hub's cache
      on first use); a path loads that state-dict file. Either loads with strict=True.

    Attributes ``return_idx``, ``out_channels`` and ``out_strides`` describe the returned maps (the official
    ``_out_channels`` / ``_out_strides`` list all four stages).
    """

    def __init__(self, *, name: str, use_lab: bool = False, return_idx: Sequence[int] = (1, 2, 3),
                 freeze_stem_only: bool = True, freeze_at: int = 0, freeze_norm: bool = True,
                 pretrained: bool | str = False):
        super().__init__()
        if name not in VARIANTS:
            raise ValueError(f"HGNetv2: name must be one of {sorted(VARIANTS)}, got {name!r}")
        return_idx = list(return_idx)
        if not return_idx or return_idx != sorted(set(return_idx)) or not 0 <= return_idx[0] <= return_idx[-1] <= 3:
            raise ValueError(f"HGNetv2: return_idx must be increasing stage indices among 0..3, got {return_idx}")
        spec = VARIANTS[name]
        norm_layer = FrozenBatchNorm2d if freeze_norm else nn.BatchNorm2d
        self.name = name
        self.use_lab = use_lab
        self.return_idx = return_idx
        self.out_channels = [spec.stages[i].out_channels for i in return_idx]
        self.out_strides = [STAGE_STRIDES[i] for i in return_idx]
        self.stem = HGStem(*spec.stem_channels, use_lab=use_lab, norm_layer=norm_layer)
        self.stages = nn.ModuleList(HGStage(stage, use_lab=use_lab, norm_layer=norm_layer) for stage in spec.stages)
        if freeze_at >= 0:
            self.stem.requires_grad_(False)
            if not freeze_stem_only:
                for stage in self.stages[:freeze_at + 1]:
                    stage.requires_grad_(False)
        if pretrained:
            state = (pretrained_state_dict(name) if pretrained is True else
                     torch.load(pretrained, map_location="cpu", weights_only=True))
            self.load_state_dict(state)

    def residual_stage(self, number: int) -> nn.Sequential:
        """The blocks of stage ``number`` (1..4; strides 4, 8, 16, 32 as torchvision's ``layer{number}``), after
        its downsampling convolution; iterating gives the :class:`HGBlock` s, and the sequence's output is the
        stage's."""
        if not 1 <= number <= len(self.stages):
            raise ValueError(f"HGNetv2: stage {number} is not among the stages 1..{len(self.stages)}")
        return self.stages[number - 1].blocks

    def forward(self, images: Tensor) -> list[Tensor]:
        x = self.stem(images)
        outputs = []
        for index, stage in enumerate(self.stages):
            x = stage(x)
            if index in self.return_idx:
                outputs.append(x)
        return outputs


def pretrained_state_dict(name: str) -> dict[str, Tensor]:
    """The official ImageNet weights of HGNetv2-``name`` (torch.hub's download cache; downloaded if missing).
    Without a network, an error that says which file to put where."""
    return downloaded_state_dict(PRETRAINED_URLS[name], f"the ImageNet weights of HGNetv2-{name}")
