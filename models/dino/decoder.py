"""DINO's decoder: queries anchored on 4-D boxes, refined layer by layer ("look forward twice").

Tensors here are sequence first, as in the official code: queries ``[Q, B, D]``, memory ``[S, B, D]``.
"""
import torch
from torch import Tensor, nn

from models.activation import activation_fn
from models.attention_weights import computes_weights, has_forward_hooks
from models.fp32_head import head_in_fp32
from models.layers.box_encoding import anchor_sine_embedding, inverse_sigmoid
from models.layers.clones import clones
from models.layers.ms_deform_attn import MSDeformAttn
from models.mlp import MLP

SELF_ATTENTION_TYPES = ("sa", "ca_label", "ca_content")
MODULES = ("sa", "ca", "ffn")
LOGIT_EPS = 1e-3  # the official DINO's inverse_sigmoid clamps to [1e-3, 1 - 1e-3]


class DecoderLayer(nn.Module):
    """Self-attention among the queries, deformable cross-attention to the memory around each query's anchor box,
    and a feed-forward block, each post-norm, run in the order ``module_seq``.

    ``sa_type``: "sa" (self-attention among queries, the paper's), "ca_label" (queries attend to the class
    embeddings ``label_embedding``, which the model sets) or "ca_content" (a second deformable attention to the
    memory in place of self-attention).
    """

    def __init__(self, d_model: int = 256, d_ffn: int = 1024, dropout: float = 0.1, activation: str = "relu",
                 n_levels: int = 4, n_heads: int = 8, n_points: int = 4, sa_type: str = "sa",
                 module_seq: tuple[str, ...] = MODULES):
        super().__init__()
        if sa_type not in SELF_ATTENTION_TYPES:
            raise ValueError(f"DecoderLayer: sa_type must be one of {SELF_ATTENTION_TYPES}, got {sa_type!r}")
        if sorted(module_seq) != sorted(MODULES):
            raise ValueError(f"DecoderLayer: module_seq must order sa, ca and ffn once each, got {list(module_seq)}")
        self.sa_type = sa_type
        self.module_seq = tuple(module_seq)
        self.cross_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.self_attn = nn.MultiheadAttention(d_model, n_heads, dropout=dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.activation = activation_fn(activation)
        self.dropout3 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.dropout4 = nn.Dropout(dropout)
        self.norm3 = nn.LayerNorm(d_model)
        if sa_type == "ca_content":
            self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.label_embedding: nn.Embedding | None = None  # "ca_label": the model's class embeddings
        # True: the self-attention always computes its head-averaged weights, as the official code; else only where
        # models/attention_weights.py says (elsewhere it runs through scaled_dot_product_attention)
        self.need_weights = False

    def forward_sa(self, tgt: Tensor, query_pos: Tensor, reference_points: Tensor, memory: Tensor,
                   memory_padding_mask: Tensor, level_start_index: Tensor, spatial_shapes: Tensor,
                   self_attn_mask: Tensor | None) -> Tensor:
        need_weights = computes_weights(self.need_weights or has_forward_hooks(self.self_attn), self.training,
                                        tgt.device)
        if self.sa_type == "sa":
            q = k = tgt + query_pos
            tgt2 = self.self_attn(q, k, tgt, attn_mask=self_attn_mask, need_weights=need_weights)[0]
        elif self.sa_type == "ca_label":
            k = v = self.label_embedding.weight[:, None, :].repeat(1, tgt.shape[1], 1)
            tgt2 = self.self_attn(tgt, k, v, attn_mask=self_attn_mask, need_weights=need_weights)[0]
        else:
            tgt2 = self.self_attn((tgt + query_pos).transpose(0, 1), reference_points.transpose(0, 1).contiguous(),
                                  memory.transpose(0, 1), spatial_shapes, level_start_index,
                                  memory_padding_mask).transpose(0, 1)
        return self.norm2(tgt + self.dropout2(tgt2))

    def forward_ca(self, tgt: Tensor, query_pos: Tensor, reference_points: Tensor, memory: Tensor,
                   memory_padding_mask: Tensor, level_start_index: Tensor, spatial_shapes: Tensor) -> Tensor:
        tgt2 = self.cross_attn((tgt + query_pos).transpose(0, 1), reference_points.transpose(0, 1).contiguous(),
                               memory.transpose(0, 1), spatial_shapes, level_start_index,
                               memory_padding_mask).transpose(0, 1)
        return self.norm1(tgt + self.dropout1(tgt2))

    def forward_ffn(self, tgt: Tensor) -> Tensor:
        tgt2 = self.linear2(self.dropout3(self.activation(self.linear1(tgt))))
        return self.norm3(tgt + self.dropout4(tgt2))

    def forward(self, tgt: Tensor, query_pos: Tensor, reference_points: Tensor, memory: Tensor,
                memory_padding_mask: Tensor, level_start_index: Tensor, spatial_shapes: Tensor,
                self_attn_mask: Tensor | None = None) -> Tensor:
        """tgt, query_pos: ``[Q, B, D]``; reference_points: ``[Q, B, L, 4]`` anchor boxes per level; memory
        ``[S, B, D]`` with padding mask ``[B, S]``; self_attn_mask ``[Q, Q]`` (True: blocked). Returns
        ``[Q, B, D]``."""
        for name in self.module_seq:
            if name == "sa":
                tgt = self.forward_sa(tgt, query_pos, reference_points, memory, memory_padding_mask,
                                      level_start_index, spatial_shapes, self_attn_mask)
            elif name == "ca":
                tgt = self.forward_ca(tgt, query_pos, reference_points, memory, memory_padding_mask,
                                      level_start_index, spatial_shapes)
            else:
                tgt = self.forward_ffn(tgt)
        return tgt


class Decoder(nn.Module):
    """``num_layers`` copies of ``layer``, a final LayerNorm on every layer's output, and the anchor updates.

    Each layer's queries get the positional part ``ref_point_head(sine(anchor))`` from their current anchor box.
    After layer i, ``bbox_embed[i]`` (set by the model; shared or per layer) predicts an offset in logit space from
    the layer's (un-normalised) output: the refined box is layer i's box prediction's anchor and, detached, layer
    i+1's anchor. Keeping the undetached box for the prediction lets the loss of layer i+1 reach layer i's
    parameters ("look forward twice"); ``use_detached_boxes_dec_out`` returns the detached boxes instead.
    """

    def __init__(self, layer: DecoderLayer, num_layers: int, norm: nn.Module, d_model: int = 256,
                 use_detached_boxes_dec_out: bool = False):
        super().__init__()
        self.layers = clones(layer, num_layers)
        self.num_layers = num_layers
        self.norm = norm
        self.d_model = d_model
        self.use_detached_boxes_dec_out = use_detached_boxes_dec_out
        self.ref_point_head = MLP(2 * d_model, d_model, d_model, 2)
        self.bbox_embed: nn.ModuleList | None = None
        self.class_embed: nn.ModuleList | None = None

    def forward(self, tgt: Tensor, memory: Tensor, memory_padding_mask: Tensor, anchors_unsigmoid: Tensor,
                level_start_index: Tensor, spatial_shapes: Tensor, valid_ratios: Tensor,
                self_attn_mask: Tensor | None = None) -> tuple[list[Tensor], list[Tensor]]:
        """tgt: content queries ``[Q, B, D]``; anchors_unsigmoid: their boxes in logit space ``[Q, B, 4]``; memory
        ``[S, B, D]``, padding mask ``[B, S]``; valid_ratios ``[B, L, 2]``.

        Returns (each layer's normalised output ``[B, Q, D]``, the anchors: the initial ones then each layer's
        refined ones, ``[B, Q, 4]`` sigmoid boxes; one more than layers).
        """
        output = tgt
        intermediate = []
        reference_points = anchors_unsigmoid.sigmoid()
        ref_points = [reference_points]
        for layer_id, layer in enumerate(self.layers):
            reference_points_input = reference_points[:, :, None] * torch.cat([valid_ratios, valid_ratios], -1)[None, :]
            query_sine_embed = anchor_sine_embedding(reference_points_input[:, :, 0, :], self.d_model // 2)
            query_pos = self.ref_point_head(query_sine_embed)
            output = layer(output, query_pos, reference_points_input, memory, memory_padding_mask,
                           level_start_index, spatial_shapes, self_attn_mask)
            if self.bbox_embed is not None:
                delta_unsig = head_in_fp32(self.bbox_embed[layer_id], output)
                new_reference_points = (delta_unsig + inverse_sigmoid(reference_points, LOGIT_EPS)).sigmoid()
                reference_points = new_reference_points.detach()
                ref_points.append(reference_points if self.use_detached_boxes_dec_out else new_reference_points)
            intermediate.append(self.norm(output))
        return [o.transpose(0, 1) for o in intermediate], [r.transpose(0, 1) for r in ref_points]
