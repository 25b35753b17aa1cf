"""RT-DETR's hybrid encoder (Zhao et al., "DETRs Beat YOLOs on Real-time Object Detection", 2304.08069), as in
RT-DETRv2 (2407.17140): a 1x1 projection of each backbone level, AIFI (a transformer encoder over the tokens of
chosen levels, with a fixed 2-D sin-cos position embedding), then CCFM (top-down, then bottom-up fusion of the levels).

The fusion blocks and the AIFI layer are chosen by the builder: :func:`rtdetrv2_hybrid_encoder` builds RT-DETRv2's
(CSPRepLayer of RepVGG blocks, 3x3 stride-2 downsampling convolutions); :func:`dfine_hybrid_encoder` D-FINE's (the
same skeleton with GELAN fusion blocks and SCDown downsampling).
State-dict names and shapes are the official ones (lyuwenyu/RT-DETR, rtdetrv2_pytorch), so its checkpoints load with
strict=True, before and after :meth:`RepVggBlock.convert_to_deploy`.

Every module computes in the dtype of its parameters; the position table is computed in float32, as the official
one, then cast to the features' dtype (the released weights were trained with exactly these positions).
"""
from collections import OrderedDict
from collections.abc import Callable, Sequence
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.activation import activation_layer
from models.layers.clones import clones


class ConvNormAct(nn.Module):
    """``act(norm(conv(x)))``: ``[B, C_in, H, W] -> [B, C_out, H / stride, W / stride]`` (rounded up).

    Padding defaults to ``(kernel_size - 1) // 2``; ``norm_layer`` is built as ``norm_layer(out_channels)``
    (BatchNorm2d, or torchvision's FrozenBatchNorm2d in a frozen backbone). Names: ``conv``, ``norm``, ``act``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, *,
                 padding: int | None = None, bias: bool = False, act: str | None = None,
                 norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d):
        super().__init__()
        padding = (kernel_size - 1) // 2 if padding is None else padding
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding=padding, bias=bias)
        self.norm = norm_layer(out_channels)
        self.act = activation_layer(act)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.norm(self.conv(x)))


def fused_conv_norm(branch: ConvNormAct) -> tuple[Tensor, Tensor]:
    """The kernel ``[C_out, C_in, k, k]`` and bias ``[C_out]`` of one convolution equal to ``branch.norm(
    branch.conv(x))`` with the norm's running statistics (evaluation mode)."""
    norm = branch.norm
    std = (norm.running_var + norm.eps).sqrt()
    kernel = branch.conv.weight * (norm.weight / std).reshape(-1, 1, 1, 1)
    shift = norm.running_mean if branch.conv.bias is None else norm.running_mean - branch.conv.bias
    return kernel, norm.bias - shift * norm.weight / std  # the official order of operations, bit for bit


class RepVggBlock(nn.Module):
    """RepVGG block (Ding et al., 2101.03697) without identity branch: ``act(bn(conv3x3(x)) + bn(conv1x1(x)))``,
    ``[B, C_in, H, W] -> [B, C_out, H, W]``.

    :meth:`convert_to_deploy` folds both branches into one 3x3 convolution with bias, ``conv``, which the forward
    uses from then on; as in the official code the branches ``conv1`` and ``conv2`` stay in the module (and in its
    state dict), so that deploying again after loading new weights recomputes ``conv``.
    """

    def __init__(self, in_channels: int, out_channels: int, *, act: str | None = "relu"):
        super().__init__()
        self.conv1 = ConvNormAct(in_channels, out_channels, 3, padding=1)
        self.conv2 = ConvNormAct(in_channels, out_channels, 1, padding=0)
        self.act = activation_layer(act)
        self.register_module("conv", None)  # the folded 3x3 convolution, once deployed

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x) if self.conv is not None else self.conv1(x) + self.conv2(x)
        return self.act(y)

    def equivalent_kernel_and_bias(self) -> tuple[Tensor, Tensor]:
        """The 3x3 kernel ``[C_out, C_in, 3, 3]`` and bias ``[C_out]`` of both branches with their norms' running
        statistics: the 1x1 kernel sits at the centre of the 3x3 one."""
        kernel3x3, bias3x3 = fused_conv_norm(self.conv1)
        kernel1x1, bias1x1 = fused_conv_norm(self.conv2)
        return kernel3x3 + F.pad(kernel1x1, [1, 1, 1, 1]), bias3x3 + bias1x1

    @torch.no_grad()
    def convert_to_deploy(self) -> None:
        """Create (or refresh) ``conv``, the single 3x3 convolution the block computes in evaluation mode."""
        kernel, bias = self.equivalent_kernel_and_bias()
        if self.conv is None:
            self.conv = nn.Conv2d(kernel.shape[1], kernel.shape[0], 3, padding=1, device=kernel.device,
                                  dtype=kernel.dtype)
        self.conv.weight.copy_(kernel)
        self.conv.bias.copy_(bias)


class CSPRepLayer(nn.Module):
    """Cross-stage-partial layer of RepVGG blocks: ``conv3(blocks(conv1(x)) + conv2(x))``,
    ``[B, C_in, H, W] -> [B, C_out, H, W]``.

    ``conv1`` and ``conv2`` are 1x1 projections to ``int(out_channels * expansion)`` hidden channels; ``conv3``
    projects back to ``out_channels`` (an identity when the widths are equal).
    """

    def __init__(self, in_channels: int, out_channels: int, *, num_blocks: int = 3, expansion: float = 1.0,
                 act: str | None = "silu"):
        super().__init__()
        hidden_channels = int(out_channels * expansion)
        self.conv1 = ConvNormAct(in_channels, hidden_channels, 1, act=act)
        self.conv2 = ConvNormAct(in_channels, hidden_channels, 1, act=act)
        self.bottlenecks = nn.Sequential(*(RepVggBlock(hidden_channels, hidden_channels, act=act)
                                           for _ in range(num_blocks)))
        self.conv3 = (ConvNormAct(hidden_channels, out_channels, 1, act=act) if hidden_channels != out_channels
                      else nn.Identity())

    def forward(self, x: Tensor) -> Tensor:
        return self.conv3(self.bottlenecks(self.conv1(x)) + self.conv2(x))


def sincos_position_embedding_2d(*, width: int, height: int, dim: int, temperature: float = 10000.0,
                                 dtype: torch.dtype = torch.float32, device: torch.device | None = None) -> Tensor:
    """RT-DETR's fixed 2-D sin-cos position table for a ``height`` x ``width`` feature map: ``[1, width * height,
    dim]``.

    With ``f_i = temperature ** (-i / (dim / 4))`` for ``i < dim / 4``, row ``k`` is ``[sin(a f), cos(a f),
    sin(b f), cos(b f)]`` where ``a = k // height`` and ``b = k % height`` (the official order: the first coordinate
    runs over ``width`` values, slowest). On a square map (the training and released sizes) and the row-major
    token order ``k = y * width + x``, ``a`` is a token's row and ``b`` its column; on a non-square map the official
    table does not follow the token layout, and this one reproduces it unchanged.
    """
    if dim % 4:
        raise ValueError(f"the 2-D sin-cos embedding needs dim divisible by 4, got {dim}")
    quarter = dim // 4
    frequencies = 1.0 / temperature ** (torch.arange(quarter, dtype=dtype, device=device) / quarter)
    slow = torch.arange(width, dtype=dtype, device=device).repeat_interleave(height)[:, None] * frequencies
    fast = torch.arange(height, dtype=dtype, device=device).repeat(width)[:, None] * frequencies
    return torch.cat([slow.sin(), slow.cos(), fast.sin(), fast.cos()], dim=1)[None]


class IntraScaleEncoderLayer(nn.Module):
    """One AIFI layer: post-norm self-attention over a level's tokens (position added to queries and keys), then a
    feed-forward block. ``src``, ``pos``: ``[B, N, dim]`` (``pos`` may be ``[1, N, dim]``) -> ``[B, N, dim]``.

    ``need_weights``: the self-attention also computes its attention weights (and drops them), as D-FINE's calls it:
    PyTorch then takes its explicit softmax path instead of the fused scaled-dot-product kernel, whose rounding
    differs by an ulp (1e-16 in float64). RT-DETRv2's does not.
    """

    def __init__(self, *, dim: int, num_heads: int, dim_feedforward: int, dropout: float, activation: str,
                 need_weights: bool = False):
        super().__init__()
        self.need_weights = need_weights
        self.self_attn = nn.MultiheadAttention(dim, num_heads, dropout, batch_first=True)
        self.linear1 = nn.Linear(dim, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.activation = activation_layer(activation)

    def forward(self, src: Tensor, pos: Tensor) -> Tensor:
        query = src + pos
        attended = self.self_attn(query, query, value=src, need_weights=self.need_weights)[0]
        src = self.norm1(src + self.dropout1(attended))
        update = self.linear2(self.dropout(self.activation(self.linear1(src))))
        return self.norm2(src + self.dropout2(update))


class IntraScaleEncoder(nn.Module):
    """``num_layers`` copies of one :class:`IntraScaleEncoderLayer` (identical initial weights, as the official
    deep copies), applied in turn; ``[B, N, dim] -> [B, N, dim]``."""

    def __init__(self, layer: IntraScaleEncoderLayer, num_layers: int):
        super().__init__()
        self.layers = clones(layer, num_layers)

    def forward(self, src: Tensor, pos: Tensor) -> Tensor:
        for layer in self.layers:
            src = layer(src, pos)
        return src


class HybridEncoder(nn.Module):
    """Projection, AIFI on the levels ``use_encoder_idx``, then CCFM fusion of all levels.

    ``forward`` takes one backbone map ``[B, in_channels[l], H_l, W_l]`` per level, finest first, each level half
    the size of the one before (strides ``feat_strides``), and returns one map ``[B, hidden_dim, H_l, W_l]`` per
    level (``out_channels``, ``out_strides``).

    - ``input_proj[l]``: 1x1 convolution and BatchNorm to ``hidden_dim``.
    - ``encoder[i]``: ``num_encoder_layers`` AIFI layers over the tokens of level ``use_encoder_idx[i]``, with the
      position table of :func:`sincos_position_embedding_2d`. With ``eval_spatial_size`` (image ``(height, width)``
      in pixels) the table of each encoded level is stored as the non-persistent buffer ``pos_embed{level}`` and used
      in evaluation mode on maps of that size; it is computed on the fly otherwise (in training mode always, as the
      official encoder).
    - top-down, from the coarsest level: ``lateral_convs[s]`` on the coarser map, nearest 2x upsampling,
      concatenation with the finer map (coarser first), ``fpn_blocks[s]`` (``2 * hidden_dim -> hidden_dim``);
    - bottom-up, from the finest level: ``downsample_convs[s]`` on the finer output, concatenation with the
      top-down map of the next level (the lateral convolution's output), ``pan_blocks[s]``.

    ``lateral_conv(channels)``, ``fusion_block(in_channels, out_channels)`` and ``downsample_conv(channels)`` build
    those blocks, ``encoder_layer(dim=, num_heads=, dim_feedforward=, dropout=, activation=)`` the AIFI layer that
    each encoder copies (see :func:`rtdetrv2_hybrid_encoder`, :func:`dfine_hybrid_encoder`).
    """

    def __init__(self, *, in_channels: Sequence[int], feat_strides: Sequence[int], hidden_dim: int = 256,
                 num_heads: int = 8, dim_feedforward: int = 1024, dropout: float = 0.0, enc_act: str = "gelu",
                 use_encoder_idx: Sequence[int] = (2,), num_encoder_layers: int = 1, pe_temperature: float = 10000.0,
                 eval_spatial_size: Sequence[int] | None = None, lateral_conv: Callable[[int], nn.Module],
                 fusion_block: Callable[[int, int], nn.Module], downsample_conv: Callable[[int], nn.Module],
                 encoder_layer: Callable[..., nn.Module] = IntraScaleEncoderLayer):
        super().__init__()
        num_levels = len(in_channels)
        if len(feat_strides) != num_levels:
            raise ValueError(f"feat_strides {list(feat_strides)} must give one stride per input level "
                             f"({num_levels})")
        levels_ok = all(0 <= level < num_levels for level in use_encoder_idx)
        if not levels_ok or len(set(use_encoder_idx)) != len(use_encoder_idx):
            raise ValueError(f"use_encoder_idx {list(use_encoder_idx)} must be distinct levels among "
                             f"0..{num_levels - 1}")
        if use_encoder_idx and num_encoder_layers and hidden_dim % 4:
            raise ValueError(f"hidden_dim must be divisible by 4 for the 2-D position embedding, got {hidden_dim}")
        if eval_spatial_size and len(eval_spatial_size) != 2:
            raise ValueError(f"eval_spatial_size is (height, width), got {list(eval_spatial_size)}")
        self.in_channels = list(in_channels)
        self.feat_strides = list(feat_strides)
        self.hidden_dim = hidden_dim
        self.use_encoder_idx = list(use_encoder_idx)
        self.pe_temperature = pe_temperature
        self.eval_spatial_size = list(eval_spatial_size) if eval_spatial_size else None
        self.out_channels = [hidden_dim] * num_levels
        self.out_strides = list(feat_strides)

        self.input_proj = nn.ModuleList(
            nn.Sequential(OrderedDict(conv=nn.Conv2d(channels, hidden_dim, kernel_size=1, bias=False),
                                      norm=nn.BatchNorm2d(hidden_dim)))
            for channels in in_channels)
        layer = encoder_layer(dim=hidden_dim, num_heads=num_heads, dim_feedforward=dim_feedforward, dropout=dropout,
                              activation=enc_act)
        self.encoder = nn.ModuleList(IntraScaleEncoder(layer, num_encoder_layers) for _ in self.use_encoder_idx)
        self.lateral_convs = nn.ModuleList()
        self.fpn_blocks = nn.ModuleList()
        for _ in range(num_levels - 1):
            self.lateral_convs.append(lateral_conv(hidden_dim))
            self.fpn_blocks.append(fusion_block(2 * hidden_dim, hidden_dim))
        self.downsample_convs = nn.ModuleList()
        self.pan_blocks = nn.ModuleList()
        for _ in range(num_levels - 1):
            self.downsample_convs.append(downsample_conv(hidden_dim))
            self.pan_blocks.append(fusion_block(2 * hidden_dim, hidden_dim))

        self._stored_grids: dict[int, tuple[int, int]] = {}
        if self.eval_spatial_size:
            image_height, image_width = self.eval_spatial_size
            for level in self.use_encoder_idx:
                grid = (image_height // self.feat_strides[level], image_width // self.feat_strides[level])
                self._stored_grids[level] = grid
                self.register_buffer(f"pos_embed{level}", self._position_table(*grid), persistent=False)

    def _position_table(self, height: int, width: int, device: torch.device | None = None) -> Tensor:
        return sincos_position_embedding_2d(width=width, height=height, dim=self.hidden_dim,
                                            temperature=self.pe_temperature, device=device)

    def position_embedding(self, level: int, height: int, width: int, like: Tensor) -> Tensor:
        """The position table of ``level`` at ``height`` x ``width``, ``[1, H * W, hidden_dim]`` on ``like``'s
        device and in its dtype: the stored buffer in evaluation mode when it has that size, else computed."""
        if not self.training and self._stored_grids.get(level) == (height, width):
            table = getattr(self, f"pos_embed{level}")
        else:
            table = self._position_table(height, width, device=like.device)
        return table.to(dtype=like.dtype)

    def forward(self, features: Sequence[Tensor]) -> list[Tensor]:
        if len(features) != len(self.input_proj):
            raise ValueError(f"expected {len(self.input_proj)} feature levels, got {len(features)}")
        levels = [proj(feature) for proj, feature in zip(self.input_proj, features)]
        for encoder, level in zip(self.encoder, self.use_encoder_idx):
            batch, channels, height, width = levels[level].shape
            tokens = levels[level].flatten(2).transpose(1, 2)
            memory = encoder(tokens, self.position_embedding(level, height, width, tokens))
            levels[level] = memory.transpose(1, 2).reshape(batch, channels, height, width).contiguous()
        return self._fuse(levels)

    def _fuse(self, levels: list[Tensor]) -> list[Tensor]:
        """CCFM: the top-down pass keeps each coarser level's lateral output for the bottom-up pass."""
        num_levels = len(levels)
        top_down = [None] * num_levels
        coarse = levels[-1]
        for step, level in enumerate(range(num_levels - 1, 0, -1)):
            coarse = self.lateral_convs[step](coarse)
            top_down[level] = coarse
            upsampled = F.interpolate(coarse, scale_factor=2.0, mode="nearest")
            coarse = self.fpn_blocks[step](torch.cat([upsampled, levels[level - 1]], dim=1))
        outputs = [coarse]
        for step in range(num_levels - 1):
            downsampled = self.downsample_convs[step](outputs[-1])
            outputs.append(self.pan_blocks[step](torch.cat([downsampled, top_down[step + 1]], dim=1)))
        return outputs


def rtdetrv2_hybrid_encoder(*, in_channels: Sequence[int], feat_strides: Sequence[int] = (8, 16, 32),
                            hidden_dim: int = 256, num_heads: int = 8, dim_feedforward: int = 1024,
                            dropout: float = 0.0, enc_act: str = "gelu", use_encoder_idx: Sequence[int] = (2,),
                            num_encoder_layers: int = 1, pe_temperature: float = 10000.0, expansion: float = 1.0,
                            depth_mult: float = 1.0, act: str = "silu",
                            eval_spatial_size: Sequence[int] | None = None) -> HybridEncoder:
    """RT-DETRv2's encoder (the official ``HybridEncoder`` arguments, ``nhead`` spelled ``num_heads``): lateral
    1x1 and downsampling 3x3 stride-2 convolutions with ``act``, and ``CSPRepLayer`` fusion blocks of
    ``round(3 * depth_mult)`` RepVGG blocks with ``expansion``."""
    num_blocks = round(3 * depth_mult)
    return HybridEncoder(
        in_channels=in_channels, feat_strides=feat_strides, hidden_dim=hidden_dim, num_heads=num_heads,
        dim_feedforward=dim_feedforward, dropout=dropout, enc_act=enc_act, use_encoder_idx=use_encoder_idx,
        num_encoder_layers=num_encoder_layers, pe_temperature=pe_temperature, eval_spatial_size=eval_spatial_size,
        lateral_conv=lambda channels: ConvNormAct(channels, channels, 1, act=act),
        fusion_block=lambda cin, cout: CSPRepLayer(cin, cout, num_blocks=num_blocks, expansion=expansion, act=act),
        downsample_conv=lambda channels: ConvNormAct(channels, channels, 3, stride=2, act=act))


# ---------------------------------------------------------------------------------------------------------------
# D-FINE's blocks (Peng et al., "D-FINE", ICLR 2025, arXiv:2410.13842; Peterande/D-FINE src/zoo/dfine/
# hybrid_encoder.py): the same skeleton with GELAN fusion blocks (RepNCSPELAN4, from YOLOv9) and SCDown
# downsampling (from YOLOv10). Every convolution + norm folds into one convolution on deploy, and the folded
# modules drop their branches, as the official ones do (so do the deployed state dicts).

class FusableConvNormLayer(nn.Module):
    """``act(norm(conv(x)))`` (official ``ConvNormLayer_fuse``): ``[B, C_in, H, W] -> [B, C_out, H / stride,
    W / stride]``, padding ``(kernel_size - 1) // 2`` by default, ``groups`` as the convolution's, no bias.

    :meth:`convert_to_deploy` replaces ``conv`` and ``norm`` by one convolution with bias, ``conv_bn_fused``,
    built from the norm's running statistics (the official deployed names); calling it again changes nothing.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, *, groups: int = 1,
                 padding: int | None = None, act: str | None = None):
        super().__init__()
        padding = (kernel_size - 1) // 2 if padding is None else padding
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, groups=groups, padding=padding,
                              bias=False)
        self.norm = nn.BatchNorm2d(out_channels)
        self.act = activation_layer(act)
        self.register_module("conv_bn_fused", None)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv_bn_fused(x) if self.conv_bn_fused is not None else self.norm(self.conv(x))
        return self.act(y)

    @torch.no_grad()
    def convert_to_deploy(self) -> None:
        if self.conv_bn_fused is not None:
            return
        kernel, bias = fused_conv_norm(self)
        conv = self.conv
        self.conv_bn_fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                                       padding=conv.padding, groups=conv.groups, device=kernel.device,
                                       dtype=kernel.dtype)
        self.conv_bn_fused.weight.copy_(kernel)
        self.conv_bn_fused.bias.copy_(bias)
        del self.conv, self.norm


class VGGBlock(RepVggBlock):
    """D-FINE's RepVGG block: :class:`RepVggBlock`'s computation, but deploying removes the two branches
    ``conv1`` and ``conv2`` (only the folded ``conv`` stays, in the module and the state dict), as the official
    ``VGGBlock``; calling :meth:`convert_to_deploy` again changes nothing."""

    @torch.no_grad()
    def convert_to_deploy(self) -> None:
        if not hasattr(self, "conv1"):
            return
        super().convert_to_deploy()
        del self.conv1, self.conv2


class CSPLayer(nn.Module):
    """D-FINE's cross-stage-partial layer: ``conv3(bottlenecks(conv1(x)) + conv2(x))`` with foldable 1x1
    convolutions (with ``act``) to ``int(out_channels * expansion)`` hidden channels and ``num_blocks``
    :class:`VGGBlock` s; ``conv3`` is an identity when the widths are equal. ``[B, C_in, H, W] -> [B, C_out, H, W]``.
    """

    def __init__(self, in_channels: int, out_channels: int, num_blocks: int = 3, expansion: float = 1.0, *,
                 act: str | None = "silu"):
        super().__init__()
        hidden_channels = int(out_channels * expansion)
        self.conv1 = FusableConvNormLayer(in_channels, hidden_channels, 1, act=act)
        self.conv2 = FusableConvNormLayer(in_channels, hidden_channels, 1, act=act)
        self.bottlenecks = nn.Sequential(*(VGGBlock(hidden_channels, hidden_channels, act=act)
                                           for _ in range(num_blocks)))
        self.conv3 = (FusableConvNormLayer(hidden_channels, out_channels, 1, act=act)
                      if hidden_channels != out_channels else nn.Identity())

    def forward(self, x: Tensor) -> Tensor:
        return self.conv3(self.bottlenecks(self.conv1(x)) + self.conv2(x))


class RepNCSPELAN4(nn.Module):
    """GELAN block (Wang et al., "YOLOv9", arXiv:2402.13616), as D-FINE's fusion block: ``cv1`` (1x1 to
    ``hidden_channels``) split in two halves; ``cv2`` (a :class:`CSPLayer` of ``num_blocks`` blocks to
    ``branch_channels``, then a 3x3) on the second half, ``cv3`` (the same on ``branch_channels``) on ``cv2``'s
    output; the four maps concatenated and projected by ``cv4`` (1x1). Every convolution has ``act``.
    ``[B, C_in, H, W] -> [B, C_out, H, W]``; official arguments ``(c1, c2, c3, c4, n)`` in that order."""

    def __init__(self, in_channels: int, out_channels: int, hidden_channels: int, branch_channels: int,
                 num_blocks: int = 3, *, act: str | None = "silu"):
        super().__init__()
        self.c = hidden_channels // 2
        self.cv1 = FusableConvNormLayer(in_channels, hidden_channels, 1, act=act)
        self.cv2 = nn.Sequential(CSPLayer(hidden_channels // 2, branch_channels, num_blocks, act=act),
                                 FusableConvNormLayer(branch_channels, branch_channels, 3, act=act))
        self.cv3 = nn.Sequential(CSPLayer(branch_channels, branch_channels, num_blocks, act=act),
                                 FusableConvNormLayer(branch_channels, branch_channels, 3, act=act))
        self.cv4 = FusableConvNormLayer(hidden_channels + 2 * branch_channels, out_channels, 1, act=act)

    def forward(self, x: Tensor) -> Tensor:
        maps = list(self.cv1(x).split((self.c, self.c), dim=1))
        maps.append(self.cv2(maps[-1]))
        maps.append(self.cv3(maps[-1]))
        return self.cv4(torch.cat(maps, dim=1))


class SCDown(nn.Module):
    """Spatial-channel decoupled downsampling (Wang et al., "YOLOv10", arXiv:2405.14458): a 1x1 convolution
    (``cv1``) then a depthwise ``kernel_size`` convolution of ``stride`` (``cv2``), both with norm and without
    activation. ``[B, C_in, H, W] -> [B, C_out, H / stride, W / stride]``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int):
        super().__init__()
        self.cv1 = FusableConvNormLayer(in_channels, out_channels, 1)
        self.cv2 = FusableConvNormLayer(out_channels, out_channels, kernel_size, stride, groups=out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.cv2(self.cv1(x))


def dfine_hybrid_encoder(*, in_channels: Sequence[int], feat_strides: Sequence[int] = (8, 16, 32),
                         hidden_dim: int = 256, num_heads: int = 8, dim_feedforward: int = 1024, dropout: float = 0.0,
                         enc_act: str = "gelu", use_encoder_idx: Sequence[int] = (2,), num_encoder_layers: int = 1,
                         pe_temperature: float = 10000.0, expansion: float = 1.0, depth_mult: float = 1.0,
                         act: str = "silu", eval_spatial_size: Sequence[int] | None = None) -> HybridEncoder:
    """D-FINE's encoder (the official ``HybridEncoder`` arguments, ``nhead`` spelled ``num_heads``): lateral 1x1
    foldable convolutions without activation, :class:`RepNCSPELAN4` fusion blocks ``(2 h, h, 2 h,
    round(expansion * h // 2), round(3 * depth_mult))`` and downsampling ``nn.Sequential(SCDown(h, h, 3, 2))``
    (the official extra level: names ``downsample_convs.{i}.0.cv1...``), with h = ``hidden_dim``.

    ``act`` is the fusion blocks' activation; the official encoder ignores its ``act`` and always uses SiLU (every
    official config says silu). The AIFI layers compute their attention weights (``need_weights``), as D-FINE's. Its
    position tables are plain attributes where ours are non-persistent buffers (``pos_embed{level}``): neither is in
    the state dict, and the values are the same.
    """
    num_blocks = round(3 * depth_mult)
    branch_channels = round(expansion * hidden_dim // 2)
    return HybridEncoder(
        in_channels=in_channels, feat_strides=feat_strides, hidden_dim=hidden_dim, num_heads=num_heads,
        dim_feedforward=dim_feedforward, dropout=dropout, enc_act=enc_act, use_encoder_idx=use_encoder_idx,
        num_encoder_layers=num_encoder_layers, pe_temperature=pe_temperature, eval_spatial_size=eval_spatial_size,
        lateral_conv=lambda channels: FusableConvNormLayer(channels, channels, 1),
        fusion_block=lambda cin, cout: RepNCSPELAN4(cin, cout, cin, branch_channels, num_blocks, act=act),
        downsample_conv=lambda channels: nn.Sequential(SCDown(channels, channels, 3, 2)),
        encoder_layer=partial(IntraScaleEncoderLayer, need_weights=True))
