"""RT-DETRv2's decoder (Lv et al., "RT-DETRv2: Improved Baseline with Bag-of-Freebies for Real-Time Detection
Transformer", arXiv:2407.17140; RT-DETR: Zhao et al., arXiv:2304.08069): encoder tokens scored per anchor, the
top ``num_queries`` become the queries (content and box), then decoder layers of self-attention, multi-scale
deformable cross-attention (per-level point counts) and a feed-forward network, refining the boxes layer by layer;
contrastive denoising queries in training.

State-dict names, initialisation order (the same seed gives the official initial weights) and numbers are those of
the official ``RTDETRTransformerv2`` (lyuwenyu/RT-DETR, rtdetrv2_pytorch), so its checkpoints load with
strict=True. Every module computes in the dtype of its parameters; as official, the anchors and the denoising boxes
are float32 whatever that dtype. The class and box heads run in fp32 under autocast (models/fp32_head.py), where the
official runs them in half precision.
"""
import math
from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from models.fp32_head import head_in_fp32
from models.layers.box_encoding import inverse_sigmoid
from models.layers.clones import clones
from models.layers.denoising import contrastive_denoising_group
from models.layers.hybrid_encoder import ConvNormAct, activation_layer
from models.layers.ms_deform_attn import MSDeformableAttention
from models.layers.query_selection import gather_tokens, top_k_tokens
from models.mlp import MLP

QUERY_SELECT_METHODS = ("default", "one2many", "agnostic")
CROSS_ATTN_METHODS = ("default", "discrete")
PRIOR_PROB = 0.01  # the score heads' initial probability


def rtdetr_anchors(spatial_shapes: Sequence[Sequence[int]], eps: float = 1e-2, grid_size: float = 0.05,
                   device: torch.device | None = None) -> tuple[Tensor, Tensor]:
    """One anchor box per token of levels (H_l, W_l): the cell's centre ``((x + 0.5) / W_l, (y + 0.5) / H_l)`` and
    size ``grid_size * 2**l`` both ways, tokens row-major, levels one after the other.

    Returns ``anchors`` ``[1, S, 4]`` in logit space (``log(a / (1 - a))``; +inf where not valid) and
    ``valid_mask`` ``[1, S, 1]``: all four coordinates in (eps, 1 - eps). Float32, as official; computed on the
    default device (the CPU, as official, unless a device context says otherwise), then moved to ``device``.
    """
    levels = []
    for level, (height, width) in enumerate(spatial_shapes):
        rows, columns = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
        centres = (torch.stack([columns, rows], dim=-1) + 0.5) / torch.tensor([width, height], dtype=torch.float32)
        sizes = torch.ones_like(centres) * grid_size * (2.0 ** level)
        levels.append(torch.cat([centres, sizes], dim=-1).reshape(1, height * width, 4))
    anchors = torch.cat(levels, dim=1)
    anchors = anchors if device is None else anchors.to(device)
    valid_mask = ((anchors > eps) * (anchors < 1 - eps)).all(-1, keepdim=True)
    anchors = torch.log(anchors / (1 - anchors))
    return torch.where(valid_mask, anchors, torch.inf), valid_mask


class RTDETRv2DecoderLayer(nn.Module):
    """Post-norm decoder layer (official ``TransformerDecoderLayer``): self-attention over the queries (``self_attn``,
    ``norm1``), deformable cross-attention to the memory around each query's box (``cross_attn``, ``norm2``), then
    a feed-forward network (``linear1``, ``linear2``, ``norm3``); queries ``[B, N, d_model]`` in and out."""

    def __init__(self, d_model: int = 256, n_head: int = 8, dim_feedforward: int = 1024, dropout: float = 0.0,
                 activation: str = "relu", n_levels: int = 4, n_points: int | list[int] = 4,
                 cross_attn_method: str = "default"):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, n_head, dropout=dropout, batch_first=True)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.cross_attn = MSDeformableAttention(d_model, n_head, n_levels, n_points, method=cross_attn_method)
        self.dropout2 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.activation = activation_layer(activation)
        self.dropout3 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.dropout4 = nn.Dropout(dropout)
        self.norm3 = nn.LayerNorm(d_model)
        nn.init.xavier_uniform_(self.linear1.weight)
        nn.init.xavier_uniform_(self.linear2.weight)

    def forward(self, target: Tensor, reference_points: Tensor, memory: Tensor,
                memory_spatial_shapes: Sequence[Sequence[int]], attn_mask: Tensor | None = None,
                memory_mask: Tensor | None = None, query_pos_embed: Tensor | None = None) -> Tensor:
        """target: ``[B, N, D]``; reference_points: ``[B, N, 1, 4]`` boxes (cx, cy, w, h) in [0, 1]; memory:
        ``[B, S, D]``; memory_spatial_shapes: (H_l, W_l) per level; attn_mask: ``[N, N]`` bool, True where a query
        (row) may not attend; memory_mask: ``[B, S]`` True on values to keep; query_pos_embed: ``[B, N, D]``."""
        with_pos = target if query_pos_embed is None else target + query_pos_embed
        attended, _ = self.self_attn(with_pos, with_pos, value=target, attn_mask=attn_mask, need_weights=False)
        target = self.norm1(target + self.dropout1(attended))
        with_pos = target if query_pos_embed is None else target + query_pos_embed
        attended = self.cross_attn(with_pos, reference_points, memory, memory_spatial_shapes, memory_mask)
        target = self.norm2(target + self.dropout2(attended))
        forward = self.linear2(self.dropout3(self.activation(self.linear1(target))))
        return self.norm3(target + self.dropout4(forward))


class RTDETRv2Decoder(nn.Module):
    """``num_layers`` copies of one decoder layer (identical initial weights), each refining the boxes in logit
    space with its box head; in evaluation the layers stop after layer ``eval_idx`` (negative: from the end)."""

    def __init__(self, hidden_dim: int, decoder_layer: RTDETRv2DecoderLayer, num_layers: int, eval_idx: int = -1):
        super().__init__()
        if not -num_layers <= eval_idx < num_layers:
            raise ValueError(f"RTDETRv2Decoder: eval_idx {eval_idx} is not a layer of {num_layers}")
        self.layers = clones(decoder_layer, num_layers)
        self.hidden_dim = hidden_dim
        self.num_layers = num_layers
        self.eval_idx = eval_idx if eval_idx >= 0 else num_layers + eval_idx

    def forward(self, target: Tensor, ref_points_unact: Tensor, memory: Tensor,
                memory_spatial_shapes: Sequence[Sequence[int]], bbox_head: nn.ModuleList, score_head: nn.ModuleList,
                query_pos_head: nn.Module, attn_mask: Tensor | None = None, memory_mask: Tensor | None = None
                ) -> tuple[Tensor, Tensor]:
        """target: ``[B, N, D]`` content queries; ref_points_unact: ``[B, N, 4]`` boxes in logit space.

        Returns boxes ``[L', B, N, 4]`` (sigmoid, cxcywh) and logits ``[L', B, N, K]``: every layer in training
        (layer i > 0's boxes refine the previous layer's boxes without detaching them, so the gradient reaches
        that layer's box head), only layer ``eval_idx`` in evaluation.
        """
        boxes, logits = [], []
        ref_points = ref_points_detach = ref_points_unact.sigmoid()
        output = target
        for i, layer in enumerate(self.layers):
            query_pos_embed = query_pos_head(ref_points_detach)
            output = layer(output, ref_points_detach.unsqueeze(2), memory, memory_spatial_shapes, attn_mask,
                           memory_mask, query_pos_embed)
            refined = (head_in_fp32(bbox_head[i], output) + inverse_sigmoid(ref_points_detach)).sigmoid()
            if self.training:
                logits.append(head_in_fp32(score_head[i], output))
                # the box head runs again (as official: the same gradient bits)
                boxes.append(refined if i == 0 else
                             (head_in_fp32(bbox_head[i], output) + inverse_sigmoid(ref_points)).sigmoid())
            elif i == self.eval_idx:
                logits.append(head_in_fp32(score_head[i], output))
                boxes.append(refined)
                break
            ref_points = refined
            ref_points_detach = refined.detach()
        return torch.stack(boxes), torch.stack(logits)


class RTDETRTransformerv2(nn.Module):
    """RT-DETRv2's decoder with its input projections, query selection, denoising and heads (official
    ``RTDETRTransformerv2``; keyword arguments with the official names and defaults).

    feat_channels / feat_strides: the encoder's levels; ``num_levels`` beyond them are made by 3x3 stride-2
    convolutions (the first on the last level). num_points: per head on every level, or a list per level.
    eval_spatial_size: (H, W) of evaluation images; when given, the anchors of that size are stored (buffers
    ``anchors``, ``valid_mask``) and used in evaluation at that size (the official uses them at any size and fails
    at others; here other sizes compute theirs). query_select_method: ``default`` (best class logit of each
    token), ``agnostic`` (one-logit encoder head) or ``one2many`` (the best token-class pairs; a token may be
    chosen more than once). learn_query_content: content queries from ``tgt_embed`` instead of the selected
    tokens. cross_attn_method: ``default`` or ``discrete`` sampling. eps: anchors closer than that to the image's
    border are invalid (their tokens are zeroed).
    """

    def __init__(self, *, num_classes: int = 80, hidden_dim: int = 256, num_queries: int = 300,
                 feat_channels: Sequence[int] = (512, 1024, 2048), feat_strides: Sequence[int] = (8, 16, 32),
                 num_levels: int = 3, num_points: int | Sequence[int] = 4, nhead: int = 8, num_layers: int = 6,
                 dim_feedforward: int = 1024, dropout: float = 0.0, activation: str = "relu",
                 num_denoising: int = 100, label_noise_ratio: float = 0.5, box_noise_scale: float = 1.0,
                 learn_query_content: bool = False, eval_spatial_size: Sequence[int] | None = None, eval_idx: int = -1,
                 eps: float = 1e-2, aux_loss: bool = True, cross_attn_method: str = "default",
                 query_select_method: str = "default"):
        super().__init__()
        if not len(feat_strides) == len(feat_channels) <= num_levels:
            raise ValueError(f"RTDETRTransformerv2: feat_channels {list(feat_channels)} and feat_strides "
                             f"{list(feat_strides)} must have one entry per input level, at most num_levels "
                             f"({num_levels})")
        if query_select_method not in QUERY_SELECT_METHODS:
            raise ValueError(f"RTDETRTransformerv2: query_select_method must be one of {QUERY_SELECT_METHODS}, got "
                             f"{query_select_method!r}")
        if cross_attn_method not in CROSS_ATTN_METHODS:
            raise ValueError(f"RTDETRTransformerv2: cross_attn_method must be one of {CROSS_ATTN_METHODS}, got "
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
        num_points = list(num_points) if isinstance(num_points, Sequence) else num_points

        # the official construction order: the same seed draws the official initial weights
        self.input_proj = self._input_projections(list(feat_channels))
        layer = RTDETRv2DecoderLayer(hidden_dim, nhead, dim_feedforward, dropout, activation, num_levels, num_points,
                                     cross_attn_method=cross_attn_method)
        self.decoder = RTDETRv2Decoder(hidden_dim, layer, num_layers, eval_idx)
        self.num_denoising = num_denoising
        self.label_noise_ratio = label_noise_ratio
        self.box_noise_scale = box_noise_scale
        if num_denoising > 0:
            self.denoising_class_embed = nn.Embedding(num_classes + 1, hidden_dim, padding_idx=num_classes)
            nn.init.normal_(self.denoising_class_embed.weight[:-1])
        self.learn_query_content = learn_query_content
        if learn_query_content:
            self.tgt_embed = nn.Embedding(num_queries, hidden_dim)
        self.query_pos_head = MLP(4, 2 * hidden_dim, hidden_dim, 2)
        self.enc_output = nn.Sequential(OrderedDict([("proj", nn.Linear(hidden_dim, hidden_dim)),
                                                     ("norm", nn.LayerNorm(hidden_dim))]))
        self.enc_score_head = nn.Linear(hidden_dim, 1 if query_select_method == "agnostic" else num_classes)
        self.enc_bbox_head = MLP(hidden_dim, hidden_dim, 4, 3)
        self.dec_score_head = nn.ModuleList([nn.Linear(hidden_dim, num_classes) for _ in range(num_layers)])
        self.dec_bbox_head = nn.ModuleList([MLP(hidden_dim, hidden_dim, 4, 3) for _ in range(num_layers)])
        self._eval_shapes = None
        if self.eval_spatial_size:
            height, width = self.eval_spatial_size
            self._eval_shapes = [[int(height / stride), int(width / stride)] for stride in feat_strides]
            anchors, valid_mask = rtdetr_anchors(self._eval_shapes, eps)
            self.register_buffer("anchors", anchors)
            self.register_buffer("valid_mask", valid_mask)
        self._reset_parameters()

    def _input_projections(self, feat_channels: list[int]) -> nn.ModuleList:
        """Per input level a 1x1 convolution (no bias) + BatchNorm to ``hidden_dim``; extra levels 3x3 stride 2."""
        projections = nn.ModuleList([ConvNormAct(c, self.hidden_dim, 1) for c in feat_channels])
        in_channels = feat_channels[-1]
        for _ in range(self.num_levels - len(feat_channels)):
            projections.append(ConvNormAct(in_channels, self.hidden_dim, 3, 2, padding=1))
            in_channels = self.hidden_dim
        return projections

    def _reset_parameters(self) -> None:
        bias = -math.log((1 - PRIOR_PROB) / PRIOR_PROB)
        nn.init.constant_(self.enc_score_head.bias, bias)
        nn.init.constant_(self.enc_bbox_head.layers[-1].weight, 0)
        nn.init.constant_(self.enc_bbox_head.layers[-1].bias, 0)
        for score_head, bbox_head in zip(self.dec_score_head, self.dec_bbox_head):
            nn.init.constant_(score_head.bias, bias)
            nn.init.constant_(bbox_head.layers[-1].weight, 0)
            nn.init.constant_(bbox_head.layers[-1].bias, 0)
        nn.init.xavier_uniform_(self.enc_output.proj.weight)
        if self.learn_query_content:
            nn.init.xavier_uniform_(self.tgt_embed.weight)
        nn.init.xavier_uniform_(self.query_pos_head.layers[0].weight)
        nn.init.xavier_uniform_(self.query_pos_head.layers[1].weight)
        for projection in self.input_proj:
            nn.init.xavier_uniform_(projection.conv.weight)

    def _memory(self, feats: Sequence[Tensor]) -> tuple[Tensor, list[list[int]]]:
        """Projected levels flattened row-major and concatenated: ``[B, S, D]``, and (H_l, W_l) per level."""
        levels = [projection(feat) for projection, feat in zip(self.input_proj, feats)]
        for level in range(len(feats), self.num_levels):
            levels.append(self.input_proj[level](feats[-1] if level == len(feats) else levels[-1]))
        shapes = [[level.shape[2], level.shape[3]] for level in levels]
        return torch.cat([level.flatten(2).transpose(1, 2) for level in levels], dim=1), shapes

    def _anchors(self, spatial_shapes: list[list[int]], device: torch.device) -> tuple[Tensor, Tensor]:
        if not self.training and self._eval_shapes is not None and spatial_shapes == self._eval_shapes:
            return self.anchors, self.valid_mask
        return rtdetr_anchors(spatial_shapes, self.eps, device=device)

    def _select_topk(self, logits: Tensor) -> Tensor:
        """Indices ``[B, num_queries]`` of the selected tokens, from the encoder's logits ``[B, S, K]``."""
        if self.query_select_method == "one2many":
            index = torch.topk(logits.flatten(1), self.num_queries, dim=-1).indices
            return index // self.num_classes
        return top_k_tokens(logits, self.num_queries)  # agnostic: K = 1, its only logit

    def _queries(self, memory: Tensor, spatial_shapes: list[list[int]]) -> tuple[Tensor, Tensor, dict | None]:
        """Content ``[B, Q, D]`` and boxes in logit space ``[B, Q, 4]`` of the selected tokens (both detached),
        and in training their encoder prediction (``pred_logits``, ``pred_boxes``)."""
        anchors, valid_mask = self._anchors(spatial_shapes, memory.device)
        memory = valid_mask.to(memory.dtype) * memory
        output_memory = self.enc_output(memory)
        enc_logits = head_in_fp32(self.enc_score_head, output_memory)
        enc_boxes_unact = head_in_fp32(self.enc_bbox_head, output_memory) + anchors
        index = self._select_topk(enc_logits)
        boxes_unact = gather_tokens(enc_boxes_unact, index)
        encoder_prediction = None
        if self.training:
            encoder_prediction = {"pred_logits": gather_tokens(enc_logits, index), "pred_boxes": boxes_unact.sigmoid()}
        if self.learn_query_content:
            content = self.tgt_embed.weight.unsqueeze(0).tile([memory.shape[0], 1, 1])
        else:
            content = gather_tokens(output_memory, index).detach()
        return content, boxes_unact.detach(), encoder_prediction

    def forward(self, feats: Sequence[Tensor], targets: list[dict] | None = None) -> dict:
        """feats: the encoder's levels ``[B, C_l, H_l, W_l]``; targets (training with denoising): per image
        ``labels`` ``[T_i]`` and ``boxes`` ``[T_i, 4]`` (normalised cxcywh).

        Returns ``pred_logits`` ``[B, Q, K]`` and ``pred_boxes`` ``[B, Q, 4]`` (sigmoid cxcywh) of the last layer in
        training, of layer ``eval_idx`` in evaluation. Training with ``aux_loss`` adds ``aux_outputs`` (the other
        layers, first to last), ``enc_aux_outputs`` (one entry: the selected tokens' encoder prediction),
        ``enc_meta`` {"class_agnostic": bool}, and with denoising ``dn_aux_outputs`` (every layer's denoising
        queries, ``[B, P, ...]``) and ``dn_meta`` (see :func:`contrastive_denoising_group`).
        """
        memory, spatial_shapes = self._memory(feats)
        dn = None
        if self.training and self.num_denoising > 0:
            if targets is None:
                raise ValueError("RTDETRTransformerv2: training with denoising needs the targets")
            dn = contrastive_denoising_group(targets, self.num_classes, self.num_queries, self.denoising_class_embed,
                                             self.num_denoising, self.label_noise_ratio, self.box_noise_scale)
        content, ref_unact, encoder_prediction = self._queries(memory, spatial_shapes)
        if dn is not None:
            ref_unact = torch.cat([dn.anchors, ref_unact], dim=1)
            content = torch.cat([dn.content, content], dim=1)
        boxes, logits = self.decoder(content, ref_unact, memory, spatial_shapes, self.dec_bbox_head,
                                     self.dec_score_head, self.query_pos_head,
                                     attn_mask=None if dn is None else dn.attn_mask)
        if dn is not None:
            dn_boxes, boxes = torch.split(boxes, dn.meta["dn_num_split"], dim=2)
            dn_logits, logits = torch.split(logits, dn.meta["dn_num_split"], dim=2)
        out = {"pred_logits": logits[-1], "pred_boxes": boxes[-1]}
        if self.training and self.aux_loss:
            out["aux_outputs"] = layer_outputs(logits[:-1], boxes[:-1])
            out["enc_aux_outputs"] = [encoder_prediction]
            out["enc_meta"] = {"class_agnostic": self.query_select_method == "agnostic"}
            if dn is not None:
                out["dn_aux_outputs"] = layer_outputs(dn_logits, dn_boxes)
                out["dn_meta"] = dn.meta
        return out


def layer_outputs(logits: Tensor, boxes: Tensor) -> list[dict]:
    """``[L, B, N, K]`` and ``[L, B, N, 4]`` -> one {``pred_logits``, ``pred_boxes``} per layer."""
    return [{"pred_logits": a, "pred_boxes": b} for a, b in zip(logits, boxes)]
