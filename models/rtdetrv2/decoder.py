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
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from models.activation import activation_layer
from models.fp32_head import head_in_fp32
from models.layers.box_encoding import inverse_sigmoid
from models.layers.clones import clones
from models.layers.denoising import dfine_denoising_group
from models.layers.hybrid_encoder import ConvNormAct
from models.layers.ms_deform_attn import MSDeformableAttention
from models.layers.query_selection import gather_tokens
from models.layers.real_time_transformer import RealTimeTransformer, prior_bias
from models.mlp import MLP

DENOISING_METHODS = ("rtdetrv2", "dfine")


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


class RTDETRTransformerv2(RealTimeTransformer):
    """RT-DETRv2's decoder with its input projections, query selection, denoising and heads (official
    ``RTDETRTransformerv2``; keyword arguments with the official names and defaults).

    feat_channels / feat_strides: the encoder's levels; ``num_levels`` beyond them are made by 3x3 stride-2
    convolutions (the first on the last level). num_points: per head on every level, or a list per level.
    learn_query_content: content queries from ``tgt_embed`` instead of the selected tokens. eval_spatial_size,
    query_select_method, cross_attn_method and eps: see
    :class:`~models.layers.real_time_transformer.RealTimeTransformer`. DEIM's version of this decoder adds
    ``activation`` / ``mlp_act`` choices (the feed-forward and MLP-head activations), ``query_pos_method``
    ``as_reg`` (a three-layer query position head of width ``hidden_dim``) and draws D-FINE's denoising queries
    (``denoising_method`` ``dfine``: :func:`~models.layers.denoising.dfine_denoising_group`).
    """

    def __init__(self, *, num_classes: int = 80, hidden_dim: int = 256, num_queries: int = 300,
                 feat_channels: Sequence[int] = (512, 1024, 2048), feat_strides: Sequence[int] = (8, 16, 32),
                 num_levels: int = 3, num_points: int | Sequence[int] = 4, nhead: int = 8, num_layers: int = 6,
                 dim_feedforward: int = 1024, dropout: float = 0.0, activation: str = "relu",
                 num_denoising: int = 100, label_noise_ratio: float = 0.5, box_noise_scale: float = 1.0,
                 learn_query_content: bool = False, eval_spatial_size: Sequence[int] | None = None, eval_idx: int = -1,
                 eps: float = 1e-2, aux_loss: bool = True, cross_attn_method: str = "default",
                 query_select_method: str = "default", mlp_act: str = "relu", query_pos_method: str = "default",
                 denoising_method: str = "rtdetrv2"):
        super().__init__(num_classes=num_classes, hidden_dim=hidden_dim, num_queries=num_queries,
                         feat_channels=feat_channels, feat_strides=feat_strides, num_levels=num_levels, nhead=nhead,
                         num_layers=num_layers, eval_spatial_size=eval_spatial_size, eps=eps, aux_loss=aux_loss,
                         cross_attn_method=cross_attn_method, query_select_method=query_select_method)
        num_points = list(num_points) if isinstance(num_points, Sequence) else num_points
        if denoising_method not in DENOISING_METHODS:
            raise ValueError(f"RTDETRTransformerv2: denoising_method must be one of {DENOISING_METHODS}, got "
                             f"{denoising_method!r}")
        if denoising_method == "dfine":
            self.denoising_group = dfine_denoising_group

        # the official construction order: the same seed draws the official initial weights
        self.input_proj = self._input_projections(list(feat_channels))
        layer = RTDETRv2DecoderLayer(hidden_dim, nhead, dim_feedforward, dropout, activation, num_levels, num_points,
                                     cross_attn_method=cross_attn_method)
        self.decoder = RTDETRv2Decoder(hidden_dim, layer, num_layers, eval_idx)
        self._query_selection_modules(num_denoising, label_noise_ratio, box_noise_scale, learn_query_content,
                                      mlp_act, query_pos_method)
        self.dec_score_head = nn.ModuleList([nn.Linear(hidden_dim, num_classes) for _ in range(num_layers)])
        self.dec_bbox_head = nn.ModuleList([MLP(hidden_dim, hidden_dim, 4, 3, act=mlp_act) for _ in range(num_layers)])
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
        for score_head, bbox_head in zip(self.dec_score_head, self.dec_bbox_head):
            nn.init.constant_(score_head.bias, prior_bias())
            nn.init.constant_(bbox_head.layers[-1].weight, 0)
            nn.init.constant_(bbox_head.layers[-1].bias, 0)
        self._reset_query_selection_modules()
        for projection in self.input_proj:
            nn.init.xavier_uniform_(projection.conv.weight)

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
        queries, ``[B, P, ...]``) and ``dn_meta`` (see
        :func:`~models.layers.denoising.contrastive_denoising_group`).
        """
        memory, spatial_shapes = self._memory(feats)
        dn = self._denoising(targets, self.box_noise_scale)
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
