"""RT-DETR's hybrid encoder (Zhao et al., "DETRs Beat YOLOs on Real-time Object Detection", 2304.08069), as in
RT-DETRv2 (2407.17140): a 1x1 projection of each backbone level, AIFI (a transformer encoder over the tokens of
chosen levels, with a fixed 2-D sin-cos position embedding), then CCFM (top-down, then bottom-up fusion of the levels).

The fusion blocks are chosen by the builder: :func:`rtdetrv2_hybrid_encoder` builds RT-DETRv2's (CSPRepLayer of
RepVGG blocks, 3x3 stride-2 downsampling convolutions); D-FINE's encoder is the same skeleton with other blocks.
State-dict names and shapes are the official ones (lyuwenyu/RT-DETR, rtdetrv2_pytorch), so its checkpoints load with
strict=True, before and after :meth:`RepVggBlock.convert_to_deploy`.

Every module computes in the dtype of its parameters; the position table is computed in float32, as the official
one, then cast to the features' dtype (the released weights were trained with exactly these positions).
"""
from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.layers.clones import clones

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": lambda: nn.ReLU(inplace=True),
    "silu": lambda: nn.SiLU(inplace=True),
    "swish": lambda: nn.SiLU(inplace=True),
    "leaky_relu": lambda: nn.LeakyReLU(inplace=True),
    "gelu": nn.GELU,
    "hardsigmoid": lambda: nn.Hardsigmoid(inplace=True),
}


def activation_layer(name: str | None) -> nn.Module:
    """A fresh activation module by name (the official choices, in place where possible); None: identity."""
    if name is None:
        return nn.Identity()
    if name.lower() not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)} or None, got {name!r}")
    return ACTIVATIONS[name.lower()]()


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
    feed-forward block. ``src``, ``pos``: ``[B, N, dim]`` (``pos`` may be ``[1, N, dim]``) -> ``[B, N, dim]``."""

    def __init__(self, *, dim: int, num_heads: int, dim_feedforward: int, dropout: float, activation: str):
        super().__init__()
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
        attended = self.self_attn(query, query, value=src, need_weights=False)[0]
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
    those blocks (see :func:`rtdetrv2_hybrid_encoder`).
    """

    def __init__(self, *, in_channels: Sequence[int], feat_strides: Sequence[int], hidden_dim: int = 256,
                 num_heads: int = 8, dim_feedforward: int = 1024, dropout: float = 0.0, enc_act: str = "gelu",
                 use_encoder_idx: Sequence[int] = (2,), num_encoder_layers: int = 1, pe_temperature: float = 10000.0,
                 eval_spatial_size: Sequence[int] | None = None, lateral_conv: Callable[[int], nn.Module],
                 fusion_block: Callable[[int, int], nn.Module], downsample_conv: Callable[[int], nn.Module]):
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
        layer = IntraScaleEncoderLayer(dim=hidden_dim, num_heads=num_heads, dim_feedforward=dim_feedforward,
                                       dropout=dropout, activation=enc_act)
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
