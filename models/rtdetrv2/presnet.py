"""RT-DETR's ResNet backbone, PResNet: ResNet-vd (He et al., "Bag of Tricks for Image Classification", 1812.01187),
as ported from PaddleDetection by lyuwenyu/RT-DETR (rtdetrv2_pytorch/src/nn/backbone/presnet.py).

Variant ``d`` (RT-DETR's): a stem of three 3x3 convolutions (3 -> 32 stride 2, 32 -> 32, 32 -> 64), 3x3 max
pooling, and in each downsampling block a shortcut that average-pools 2x2 before its 1x1 convolution; the stride of a
bottleneck sits on its 3x3 convolution. Variants ``a`` (stride on the bottleneck's first 1x1), ``b`` (a 7x7 stem) and
``c`` (the 3-convolution stem, strided shortcut convolution) are the official code's other choices.

State-dict names and shapes are the official ones (``conv1.conv1_1.conv.weight``,
``res_layers.0.blocks.0.branch2a.norm.running_mean``, ``...short.conv.conv.weight`` ...), so the official backbone
weights and RT-DETRv2 checkpoints load with strict=True. The network computes in the dtype of its parameters.

Backbone attention (models/backbone_attention.py) finds its places through :meth:`PResNet.residual_stage` (stage
``n`` is torchvision's ``layer{n}``) and each residual block's :attr:`last_norm` (the output before the residual
addition) and :attr:`spatial_conv` (the 3x3 convolution that a conv-augmenting block goes on).
"""
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import FrozenBatchNorm2d

from models.activation import activation_layer
from models.layers.hybrid_encoder import ConvNormAct
from util.checkpoint import downloaded_state_dict

BLOCKS_PER_STAGE = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
STAGE_WIDTHS = (64, 128, 256, 512)  # a stage's inner width; bottleneck stages output 4x as many channels
STAGE_STRIDES = (4, 8, 16, 32)  # pixels per feature cell at the output of each stage
VARIANTS = ("a", "b", "c", "d")

# ImageNet weights converted from PaddleClas by the RT-DETR authors (the official PResNet's download URLs)
PRETRAINED_URLS = {
    18: "https://github.com/lyuwenyu/storage/releases/download/v0.1/ResNet18_vd_pretrained_from_paddle.pth",
    34: "https://github.com/lyuwenyu/storage/releases/download/v0.1/ResNet34_vd_pretrained_from_paddle.pth",
    50: "https://github.com/lyuwenyu/storage/releases/download/v0.1/ResNet50_vd_ssld_v2_pretrained_from_paddle.pth",
    101: "https://github.com/lyuwenyu/storage/releases/download/v0.1/ResNet101_vd_ssld_pretrained_from_paddle.pth",
}

NormLayer = Callable[[int], nn.Module]


def projection_shortcut(in_channels: int, out_channels: int, *, stride: int, variant: str,
                        norm_layer: NormLayer) -> nn.Module:
    """The shortcut of a block whose input and output differ: variant ``d`` downsamples by 2x2 average pooling
    (ceil mode) before a 1x1 convolution (names ``pool``, ``conv``); otherwise a strided 1x1 convolution."""
    if variant == "d" and stride == 2:
        return nn.Sequential(OrderedDict(
            pool=nn.AvgPool2d(2, 2, 0, ceil_mode=True),
            conv=ConvNormAct(in_channels, out_channels, 1, norm_layer=norm_layer)))
    return ConvNormAct(in_channels, out_channels, 1, stride, norm_layer=norm_layer)


class PResNetBasicBlock(nn.Module):
    """Two 3x3 convolutions (``branch2a`` strided, ``branch2b`` without activation) plus the shortcut, then
    ``act``: ``[B, C_in, H, W] -> [B, width, H / stride, W / stride]``."""

    expansion = 1

    def __init__(self, in_channels: int, width: int, *, stride: int, projection: bool, act: str | None,
                 variant: str, norm_layer: NormLayer):
        super().__init__()
        self.short = (projection_shortcut(in_channels, width, stride=stride, variant=variant, norm_layer=norm_layer)
                      if projection else None)
        self.branch2a = ConvNormAct(in_channels, width, 3, stride, act=act, norm_layer=norm_layer)
        self.branch2b = ConvNormAct(width, width, 3, 1, norm_layer=norm_layer)
        self.act = activation_layer(act)

    @property
    def last_norm(self) -> nn.Module:
        """The norm whose output is added to the shortcut."""
        return self.branch2b.norm

    @property
    def spatial_conv(self) -> nn.Conv2d:
        """The second 3x3 convolution (torchvision's ``conv2`` of a BasicBlock)."""
        return self.branch2b.conv

    def forward(self, x: Tensor) -> Tensor:
        residual = self.branch2b(self.branch2a(x))
        return self.act(residual + (x if self.short is None else self.short(x)))


class PResNetBottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 convolutions (``branch2a/b/c``; the last to ``4 * width`` channels, without activation)
    plus the shortcut, then ``act``: ``[B, C_in, H, W] -> [B, 4 * width, H / stride, W / stride]``. The stride sits
    on the 3x3 convolution, or on the first 1x1 in variant ``a``."""

    expansion = 4

    def __init__(self, in_channels: int, width: int, *, stride: int, projection: bool, act: str | None,
                 variant: str, norm_layer: NormLayer):
        super().__init__()
        stride_1x1, stride_3x3 = (stride, 1) if variant == "a" else (1, stride)
        out_channels = width * self.expansion
        self.branch2a = ConvNormAct(in_channels, width, 1, stride_1x1, act=act, norm_layer=norm_layer)
        self.branch2b = ConvNormAct(width, width, 3, stride_3x3, act=act, norm_layer=norm_layer)
        self.branch2c = ConvNormAct(width, out_channels, 1, 1, norm_layer=norm_layer)
        self.short = (projection_shortcut(in_channels, out_channels, stride=stride, variant=variant,
                                          norm_layer=norm_layer) if projection else None)
        self.act = activation_layer(act)

    @property
    def last_norm(self) -> nn.Module:
        """The norm whose output is added to the shortcut."""
        return self.branch2c.norm

    @property
    def spatial_conv(self) -> nn.Conv2d:
        """The 3x3 convolution (torchvision's ``conv2`` of a Bottleneck)."""
        return self.branch2b.conv

    def forward(self, x: Tensor) -> Tensor:
        residual = self.branch2c(self.branch2b(self.branch2a(x)))
        return self.act(residual + (x if self.short is None else self.short(x)))


ResidualBlock = PResNetBasicBlock | PResNetBottleneck


class PResNetStage(nn.Module):
    """``blocks``: residual blocks in sequence; the first has a projection shortcut and, except in the first
    stage, stride 2. Iterating or indexing the stage gives its blocks."""

    def __init__(self, block: type[ResidualBlock], in_channels: int, width: int, *, num_blocks: int,
                 first_stage: bool, act: str | None, variant: str, norm_layer: NormLayer):
        super().__init__()
        self.blocks = nn.ModuleList()
        for i in range(num_blocks):
            self.blocks.append(block(in_channels, width, stride=2 if i == 0 and not first_stage else 1,
                                     projection=i == 0, act=act, variant=variant, norm_layer=norm_layer))
            in_channels = width * block.expansion

    def __iter__(self) -> Iterator[ResidualBlock]:
        return iter(self.blocks)

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, index: int) -> ResidualBlock:
        return self.blocks[index]

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x)
        return x


class PResNet(nn.Module):
    """ResNet-vd of ``depth`` 18, 34 (basic blocks), 50 or 101 (bottlenecks).

    ``forward`` takes images ``[B, 3, H, W]`` and returns the outputs of the stages ``return_idx`` (0-based among
    the ``num_stages`` computed, increasing), ``[B, out_channels[i], H / out_strides[i], W / out_strides[i]]``
    (sizes rounded up at each stride-2 step).

    - ``freeze_at >= 0`` stops the gradients of the stem and of the first ``freeze_at`` stages (as the official
      code, their BatchNorm statistics still update in training mode unless ``freeze_norm``); -1 freezes nothing.
    - ``freeze_norm`` builds every norm as torchvision's ``FrozenBatchNorm2d`` (the official class's buffers,
      eps 1e-5 and arithmetic), else ``nn.BatchNorm2d``.
    - ``pretrained``: False (default) leaves the random initialisation; True loads the official ImageNet weights
      of ``depth`` (:func:`pretrained_state_dict`, downloaded into torch.hub's cache on first use); a path loads
      that state-dict file. Either loads with strict=True.
    """

    def __init__(self, *, depth: int, variant: str = "d", num_stages: int = 4,
                 return_idx: Sequence[int] = (0, 1, 2, 3), act: str | None = "relu", freeze_at: int = -1,
                 freeze_norm: bool = True, pretrained: bool | str = False):
        super().__init__()
        if depth not in BLOCKS_PER_STAGE:
            raise ValueError(f"depth must be one of {sorted(BLOCKS_PER_STAGE)}, got {depth}")
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        if not 1 <= num_stages <= 4:
            raise ValueError(f"num_stages must be in 1..4, got {num_stages}")
        return_idx = list(return_idx)
        if not return_idx or return_idx != sorted(set(return_idx)) or not 0 <= return_idx[0] <= return_idx[-1] < \
                num_stages:
            raise ValueError(f"return_idx must be increasing stage indices among 0..{num_stages - 1}, got "
                             f"{return_idx}")
        norm_layer = FrozenBatchNorm2d if freeze_norm else nn.BatchNorm2d
        self.depth = depth
        stem = ([(3, 32, 3, 2), (32, 32, 3, 1), (32, 64, 3, 1)] if variant in ("c", "d") else [(3, 64, 7, 2)])
        self.conv1 = nn.Sequential(OrderedDict(
            (f"conv1_{i + 1}", ConvNormAct(cin, cout, kernel, stride, act=act, norm_layer=norm_layer))
            for i, (cin, cout, kernel, stride) in enumerate(stem)))
        block = PResNetBottleneck if depth >= 50 else PResNetBasicBlock
        stage_channels = [width * block.expansion for width in STAGE_WIDTHS]
        self.res_layers = nn.ModuleList()
        in_channels = 64
        for i in range(num_stages):
            self.res_layers.append(PResNetStage(block, in_channels, STAGE_WIDTHS[i],
                                                num_blocks=BLOCKS_PER_STAGE[depth][i], first_stage=i == 0, act=act,
                                                variant=variant, norm_layer=norm_layer))
            in_channels = stage_channels[i]
        self.return_idx = return_idx
        self.out_channels = [stage_channels[i] for i in return_idx]
        self.out_strides = [STAGE_STRIDES[i] for i in return_idx]

        if freeze_at >= 0:
            for module in [self.conv1, *self.res_layers[:freeze_at]]:
                module.requires_grad_(False)
        if pretrained:
            state = (pretrained_state_dict(depth) if pretrained is True else
                     torch.load(pretrained, map_location="cpu", weights_only=True))
            self.load_state_dict(state)

    def residual_stage(self, number: int) -> PResNetStage:
        """Stage ``number`` (1..``num_stages``), torchvision's ``layer{number}``, the papers' ``c{number + 1}``."""
        if not 1 <= number <= len(self.res_layers):
            raise ValueError(f"stage {number} is not among the computed stages 1..{len(self.res_layers)}")
        return self.res_layers[number - 1]

    def forward(self, images: Tensor) -> list[Tensor]:
        x = F.max_pool2d(self.conv1(images), kernel_size=3, stride=2, padding=1)
        outputs = []
        for index, stage in enumerate(self.res_layers):
            x = stage(x)
            if index in self.return_idx:
                outputs.append(x)
        return outputs


def pretrained_state_dict(depth: int) -> dict[str, Tensor]:
    """The official ImageNet weights of PResNet-``depth`` (torch.hub's download cache; downloaded if missing). Without
    a network, an error that says which file to put where."""
    return downloaded_state_dict(PRETRAINED_URLS[depth], f"the ImageNet weights of PResNet-{depth}")
