"""What the decoders of RT-DETR's descendants (RT-DETRv2's ``RTDETRTransformerv2``, D-FINE's ``DFINETransformer``)
share around their decoder layers: the checks of their common arguments, the memory (the projected levels flattened
into one token sequence), RT-DETR's anchors (stored for the evaluation size), the query-selection modules and their
initial weights, the top-k selection and the contrastive denoising queries.

The subclass builds its modules in the official order, calling :meth:`RealTimeTransformer._query_selection_modules`
after its decoder and :meth:`RealTimeTransformer._reset_query_selection_modules` before initialising its input
projections, so that the same seed draws the official initial weights.
"""
import math
from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from models.layers.denoising import DenoisingQueries, contrastive_denoising_group
from models.layers.ms_deform_attn import SAMPLING_METHODS
from models.layers.query_selection import top_k_tokens
from models.layers.token_positions import rtdetr_anchors
from models.mlp import MLP

QUERY_SELECT_METHODS = ("default", "one2many", "agnostic")
QUERY_POS_METHODS = ("default", "as_reg")
PRIOR_PROB = 0.01  # the score heads' initial probability


def prior_bias() -> float:
    """The score heads' initial bias: the logit of :data:`PRIOR_PROB`."""
    return -math.log((1 - PRIOR_PROB) / PRIOR_PROB)


class RealTimeTransformer(nn.Module):
    """The common part of RT-DETR-style decoders (keyword arguments with the official names).

    feat_channels / feat_strides: the encoder's levels, at most ``num_levels`` (the extra levels' strides double the
    last one). eval_spatial_size: (H, W) of evaluation images; when given, the anchors of that size are stored
    (buffers ``anchors``, ``valid_mask``) and used in evaluation at that size (the official uses them at any size
    and fails at others; here other sizes compute theirs). query_select_method: ``default`` (best class logit of
    each token), ``agnostic`` (one-logit encoder head) or ``one2many`` (the best token-class pairs; a token may be
    chosen more than once). cross_attn_method: ``default`` or ``discrete`` sampling. eps: anchors closer than that
    to the image's border are invalid (their tokens are zeroed).
    """

    # the denoising queries of a batch: contrastive_denoising_group's arguments, returns DenoisingQueries or None
    denoising_group = staticmethod(contrastive_denoising_group)

    def __init__(self, *, num_classes: int, hidden_dim: int, num_queries: int, feat_channels: Sequence[int],
                 feat_strides: Sequence[int], num_levels: int, nhead: int, num_layers: int,
                 eval_spatial_size: Sequence[int] | None, eps: float, aux_loss: bool, cross_attn_method: str,
                 query_select_method: str):
        super().__init__()
        name = type(self).__name__
        if not len(feat_strides) == len(feat_channels) <= num_levels:
            raise ValueError(f"{name}: feat_channels {list(feat_channels)} and feat_strides {list(feat_strides)} "
                             f"must have one entry per input level, at most num_levels ({num_levels})")
        if query_select_method not in QUERY_SELECT_METHODS:
            raise ValueError(f"{name}: query_select_method must be one of {QUERY_SELECT_METHODS}, got "
                             f"{query_select_method!r}")
        if cross_attn_method not in SAMPLING_METHODS:
            raise ValueError(f"{name}: cross_attn_method must be one of {SAMPLING_METHODS}, got "
                             f"{cross_attn_method!r}")
        feat_strides = list(feat_strides)
        for _ in range(num_levels - len(feat_strides)):
            feat_strides.append(feat_strides[-1] * 2)
        self.hidden_dim = hidden_dim
        self.nhead = nhead
        self.feat_strides = feat_strides
        self.num_levels = num_levels
        self.num_classes = num_classes
        self.num_queries = num_queries
        self.eps = eps
        self.num_layers = num_layers
        self.eval_spatial_size = list(eval_spatial_size) if eval_spatial_size else None
        self.aux_loss = aux_loss
        self.cross_attn_method = cross_attn_method
        self.query_select_method = query_select_method
        self._eval_shapes = None
        if self.eval_spatial_size:
            height, width = self.eval_spatial_size
            self._eval_shapes = [[int(height / stride), int(width / stride)] for stride in feat_strides]
            anchors, valid_mask = rtdetr_anchors(self._eval_shapes, eps)
            self.register_buffer("anchors", anchors)
            self.register_buffer("valid_mask", valid_mask)

    def _query_selection_modules(self, num_denoising: int, label_noise_ratio: float, box_noise_scale: float,
                                 learn_query_content: bool, mlp_act: str = "relu",
                                 query_pos_method: str = "default") -> None:
        """In the official order: the denoising class embedding ``denoising_class_embed`` (``[K + 1, D]``, the last
        row the padding), the learned content queries ``tgt_embed`` (with ``learn_query_content``), the query
        position head ``query_pos_head`` (box -> ``D``: two layers through ``2 D``, or with DEIM's ``as_reg``
        three layers of width ``D``), the encoder's output projection ``enc_output`` and its score and box heads
        ``enc_score_head`` (one logit with ``agnostic`` selection) and ``enc_bbox_head``; the MLPs' activation is
        ``mlp_act`` (DEIM's; ReLU in RT-DETRv2 and D-FINE)."""
        if query_pos_method not in QUERY_POS_METHODS:
            raise ValueError(f"{type(self).__name__}: query_pos_method must be one of {QUERY_POS_METHODS}, got "
                             f"{query_pos_method!r}")
        hidden_dim, num_classes = self.hidden_dim, self.num_classes
        self.num_denoising = num_denoising
        self.label_noise_ratio = label_noise_ratio
        self.box_noise_scale = box_noise_scale
        if num_denoising > 0:
            self.denoising_class_embed = nn.Embedding(num_classes + 1, hidden_dim, padding_idx=num_classes)
            nn.init.normal_(self.denoising_class_embed.weight[:-1])
        self.learn_query_content = learn_query_content
        if learn_query_content:
            self.tgt_embed = nn.Embedding(self.num_queries, hidden_dim)
        if query_pos_method == "as_reg":
            self.query_pos_head = MLP(4, hidden_dim, hidden_dim, 3, act=mlp_act)
        else:
            self.query_pos_head = MLP(4, 2 * hidden_dim, hidden_dim, 2, act=mlp_act)
        self.enc_output = nn.Sequential(OrderedDict([("proj", nn.Linear(hidden_dim, hidden_dim)),
                                                     ("norm", nn.LayerNorm(hidden_dim))]))
        self.enc_score_head = nn.Linear(hidden_dim, 1 if self.query_select_method == "agnostic" else num_classes)
        self.enc_bbox_head = MLP(hidden_dim, hidden_dim, 4, 3, act=mlp_act)

    def _reset_query_selection_modules(self) -> None:
        """The official initial weights of the modules of :meth:`_query_selection_modules`: the score head's bias at
        :func:`prior_bias`, the box head's last layer zero, xavier-uniform ``enc_output``, ``tgt_embed`` and
        ``query_pos_head`` weights (drawn in that order)."""
        nn.init.constant_(self.enc_score_head.bias, prior_bias())
        nn.init.constant_(self.enc_bbox_head.layers[-1].weight, 0)
        nn.init.constant_(self.enc_bbox_head.layers[-1].bias, 0)
        nn.init.xavier_uniform_(self.enc_output.proj.weight)
        if self.learn_query_content:
            nn.init.xavier_uniform_(self.tgt_embed.weight)
        nn.init.xavier_uniform_(self.query_pos_head.layers[0].weight)
        nn.init.xavier_uniform_(self.query_pos_head.layers[1].weight)

    def _memory(self, feats: Sequence[Tensor]) -> tuple[Tensor, list[list[int]]]:
        """The levels through ``input_proj`` (the extra levels: the first from the last map, each next one from the
        previous level), flattened row-major and concatenated: ``[B, S, D]``, and (H_l, W_l) per level."""
        levels = [projection(feat) for projection, feat in zip(self.input_proj, feats)]
        for level in range(len(feats), self.num_levels):
            levels.append(self.input_proj[level](feats[-1] if level == len(feats) else levels[-1]))
        shapes = [[level.shape[2], level.shape[3]] for level in levels]
        return torch.cat([level.flatten(2).transpose(1, 2) for level in levels], dim=1), shapes

    def _anchors(self, spatial_shapes: list[list[int]], device: torch.device) -> tuple[Tensor, Tensor]:
        """:func:`~models.layers.token_positions.rtdetr_anchors` of the levels (the stored ones in evaluation at
        the evaluation size)."""
        if not self.training and self._eval_shapes is not None and spatial_shapes == self._eval_shapes:
            return self.anchors, self.valid_mask
        return rtdetr_anchors(spatial_shapes, self.eps, device=device)

    def _select_topk(self, logits: Tensor) -> Tensor:
        """Indices ``[B, num_queries]`` of the selected tokens, from the encoder's logits ``[B, S, K]``."""
        if self.query_select_method == "one2many":
            return torch.topk(logits.flatten(1), self.num_queries, dim=-1).indices // self.num_classes
        return top_k_tokens(logits, self.num_queries)  # agnostic: K = 1, its only logit

    def _denoising(self, targets: list[dict] | None, box_noise_scale: float) -> DenoisingQueries | None:
        """In training with ``num_denoising`` > 0, the batch's denoising queries (:attr:`denoising_group` with
        ``box_noise_scale``); None otherwise."""
        if not (self.training and self.num_denoising > 0):
            return None
        if targets is None:
            raise ValueError(f"{type(self).__name__}: training with denoising needs the targets")
        return self.denoising_group(targets, self.num_classes, self.num_queries, self.denoising_class_embed,
                                    self.num_denoising, self.label_noise_ratio, box_noise_scale)
