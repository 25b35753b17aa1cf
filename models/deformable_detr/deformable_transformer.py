"""Deformable DETR's transformer: a deformable encoder over all feature levels, a decoder whose queries
cross-attend through deformable attention around reference points, and the two-stage proposal generation.

Coordinates are normalised: reference points (x, y) and boxes (cx, cy, w, h) in [0, 1] of the valid (unpadded)
image, except the per-level reference points the attention reads, which are relative to each padded map.
"""
import torch
from torch import Tensor, nn

from models.activation import activation_fn
from models.attention_weights import computes_weights, has_forward_hooks
from models.fp32_head import head_in_fp32
from models.layers.box_encoding import inverse_sigmoid, sine_embedding
from models.layers.clones import clones
from models.layers.deformable_encoder import DeformableTransformerEncoder, DeformableTransformerEncoderLayer
from models.layers.levels import flatten_levels
from models.layers.ms_deform_attn import MSDeformAttn, SpatialShapes
from models.layers.token_positions import encoder_proposals


class DeformableTransformer(nn.Module):
    """Encoder and decoder over flattened multi-level features.

    Without ``two_stage`` the queries are learned (``query_embed`` ``[Q, 2 * d_model]``: position half, content
    half) and ``reference_points`` (a linear layer) maps each query position to its initial reference point. With
    ``two_stage`` every encoder token proposes a box (``enc_output``, ``enc_output_norm``); the model's extra class
    and box heads (``decoder.class_embed[-1]``, ``decoder.bbox_embed[-1]``, set by the model) score and refine them;
    the ``two_stage_num_proposals`` best become the reference boxes and, through ``pos_trans`` / ``pos_trans_norm``
    of their sine embedding, the queries.
    """

    def __init__(self, d_model: int = 256, nhead: int = 8, num_encoder_layers: int = 6, num_decoder_layers: int = 6,
                 dim_feedforward: int = 1024, dropout: float = 0.1, activation: str = "relu",
                 return_intermediate_dec: bool = False, num_feature_levels: int = 4, dec_n_points: int = 4,
                 enc_n_points: int = 4, two_stage: bool = False, two_stage_num_proposals: int = 300):
        super().__init__()
        self.d_model = d_model
        self.nhead = nhead
        self.two_stage = two_stage
        self.two_stage_num_proposals = two_stage_num_proposals
        encoder_layer = DeformableTransformerEncoderLayer(d_model, dim_feedforward, dropout, activation,
                                                          num_feature_levels, nhead, enc_n_points)
        self.encoder = DeformableTransformerEncoder(encoder_layer, num_encoder_layers)
        decoder_layer = DeformableTransformerDecoderLayer(d_model, dim_feedforward, dropout, activation,
                                                          num_feature_levels, nhead, dec_n_points)
        self.decoder = DeformableTransformerDecoder(decoder_layer, num_decoder_layers, return_intermediate_dec)
        self.level_embed = nn.Parameter(torch.empty(num_feature_levels, d_model))
        if two_stage:
            self.enc_output = nn.Linear(d_model, d_model)
            self.enc_output_norm = nn.LayerNorm(d_model)
            self.pos_trans = nn.Linear(d_model * 2, d_model * 2)
            self.pos_trans_norm = nn.LayerNorm(d_model * 2)
        else:
            self.reference_points = nn.Linear(d_model, 2)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for m in self.modules():
            if isinstance(m, MSDeformAttn):
                m._reset_parameters()
        if not self.two_stage:
            nn.init.xavier_uniform_(self.reference_points.weight, gain=1.0)
            nn.init.constant_(self.reference_points.bias, 0.0)
        nn.init.normal_(self.level_embed)

    def get_proposal_pos_embed(self, proposals: Tensor) -> Tensor:
        """Sine embedding of proposal logits ``[B, N, 4]`` (sigmoid first) -> ``[B, N, 2C]``: C/2 features per
        coordinate in the order cx, cy, w, h (models/layers/box_encoding.py). (The official code fixes 128 features,
        so its two-stage model needs C = 256; the numbers are the same there.)"""
        return sine_embedding(proposals.sigmoid(), self.d_model // 2)

    def gen_encoder_output_proposals(self, memory: Tensor, memory_padding_mask: Tensor,
                                     spatial_shapes: SpatialShapes) -> tuple[Tensor, Tensor]:
        """One proposal per encoder token (models/layers/token_positions.py): (``enc_output_norm(enc_output(
        memory))`` with padded and invalid tokens zeroed first ``[B, S, C]``, proposal logits ``[B, S, 4]``, +inf
        where invalid)."""
        output_memory, output_proposals = encoder_proposals(memory, memory_padding_mask, spatial_shapes)
        return self.enc_output_norm(self.enc_output(output_memory)), output_proposals

    def forward(self, srcs: list[Tensor], masks: list[Tensor], pos_embeds: list[Tensor],
                query_embed: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor | None]:
        """srcs, pos_embeds: per level ``[B, C, H_l, W_l]``; masks: per level ``[B, H_l, W_l]`` True on padding;
        query_embed: ``[Q, 2C]`` (position half first) unless two-stage.

        Returns (hs ``[D, B, Q, C]`` every decoder layer's output (``[B, Q, C]`` without intermediate outputs),
        initial reference ``[B, Q, 2]`` points or ``[B, Q, 4]`` boxes, the references after each layer
        ``[D, B, Q, 2 or 4]``, and with two-stage the encoder's class logits ``[B, S, K]`` and box logits
        ``[B, S, 4]`` (None otherwise)).
        """
        if not self.two_stage and query_embed is None:
            raise ValueError("DeformableTransformer: query_embed is required without two_stage")
        levels = flatten_levels(srcs, masks, pos_embeds, self.level_embed)
        shapes, mask_flatten = levels.sizes, levels.mask
        memory = self.encoder(levels.src, levels.pos, shapes, levels.level_start_index, levels.valid_ratios,
                              mask_flatten)

        batch, _, channels = memory.shape
        enc_outputs_class = enc_outputs_coord_unact = None
        if self.two_stage:
            if self.two_stage_num_proposals > memory.shape[1]:
                raise ValueError(f"DeformableTransformer: {self.two_stage_num_proposals} proposals asked of only "
                                 f"{memory.shape[1]} encoder tokens (fewer queries or larger images)")
            output_memory, output_proposals = self.gen_encoder_output_proposals(memory, mask_flatten, shapes)
            # the model's extra heads (after one per decoder layer) score and refine the proposals
            enc_outputs_class = head_in_fp32(self.decoder.class_embed[self.decoder.num_layers], output_memory)
            enc_outputs_coord_unact = (head_in_fp32(self.decoder.bbox_embed[self.decoder.num_layers], output_memory)
                                       + output_proposals)
            topk_proposals = torch.topk(enc_outputs_class[..., 0], self.two_stage_num_proposals, dim=1)[1]
            topk_coords_unact = torch.gather(enc_outputs_coord_unact, 1, topk_proposals.unsqueeze(-1).repeat(1, 1, 4))
            topk_coords_unact = topk_coords_unact.detach()
            reference_points = topk_coords_unact.sigmoid()
            pos_trans_out = self.pos_trans_norm(self.pos_trans(self.get_proposal_pos_embed(topk_coords_unact)))
            query_pos, tgt = torch.split(pos_trans_out, channels, dim=2)
        else:
            query_pos, tgt = torch.split(query_embed, channels, dim=1)
            query_pos = query_pos.unsqueeze(0).expand(batch, -1, -1)
            tgt = tgt.unsqueeze(0).expand(batch, -1, -1)
            reference_points = self.reference_points(query_pos).sigmoid()
        init_reference_out = reference_points

        hs, inter_references = self.decoder(tgt, reference_points, memory, shapes, levels.level_start_index,
                                            levels.valid_ratios, query_pos, mask_flatten)
        return hs, init_reference_out, inter_references, enc_outputs_class, enc_outputs_coord_unact


class DeformableTransformerDecoderLayer(nn.Module):
    """Self-attention among queries, deformable cross-attention into the memory, feed-forward; post-norm.

    The self-attention runs through ``scaled_dot_product_attention`` where its weights are not needed
    (models/attention_weights.py); ``need_weights`` True always computes them, as the official code does.
    """

    def __init__(self, d_model: int = 256, d_ffn: int = 1024, dropout: float = 0.1, activation: str = "relu",
                 n_levels: int = 4, n_heads: int = 8, n_points: int = 4):
        super().__init__()
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
        self.need_weights = False

    @staticmethod
    def with_pos_embed(tensor: Tensor, pos: Tensor | None) -> Tensor:
        return tensor if pos is None else tensor + pos

    def forward_ffn(self, tgt: Tensor) -> Tensor:
        tgt2 = self.linear2(self.dropout3(self.activation(self.linear1(tgt))))
        return self.norm3(tgt + self.dropout4(tgt2))

    def forward(self, tgt: Tensor, query_pos: Tensor | None, reference_points: Tensor, src: Tensor,
                src_spatial_shapes: SpatialShapes, level_start_index: Tensor,
                src_padding_mask: Tensor | None = None) -> Tensor:
        """tgt, query_pos: ``[B, Q, C]``; reference_points: ``[B, Q, L, 2 or 4]``; src: ``[B, S, C]``."""
        q = k = self.with_pos_embed(tgt, query_pos)
        need_weights = computes_weights(self.need_weights or has_forward_hooks(self.self_attn), self.training,
                                        tgt.device)
        tgt2 = self.self_attn(q.transpose(0, 1), k.transpose(0, 1), tgt.transpose(0, 1),
                              need_weights=need_weights)[0].transpose(0, 1)
        tgt = self.norm2(tgt + self.dropout2(tgt2))
        tgt2 = self.cross_attn(self.with_pos_embed(tgt, query_pos), reference_points, src, src_spatial_shapes,
                               level_start_index, src_padding_mask)
        tgt = self.norm1(tgt + self.dropout1(tgt2))
        return self.forward_ffn(tgt)


class DeformableTransformerDecoder(nn.Module):
    """``num_layers`` decoder layers. ``bbox_embed`` (one box head per layer, set by the model for iterative box
    refinement) moves the reference points after each layer; ``class_embed`` is set for two-stage."""

    def __init__(self, decoder_layer: nn.Module, num_layers: int, return_intermediate: bool = False):
        super().__init__()
        self.layers = clones(decoder_layer, num_layers)
        self.num_layers = num_layers
        self.return_intermediate = return_intermediate
        self.bbox_embed: nn.ModuleList | None = None
        self.class_embed: nn.ModuleList | None = None

    def forward(self, tgt: Tensor, reference_points: Tensor, src: Tensor, src_spatial_shapes: SpatialShapes,
                src_level_start_index: Tensor, src_valid_ratios: Tensor, query_pos: Tensor | None = None,
                src_padding_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """tgt, query_pos: ``[B, Q, C]``; reference_points: ``[B, Q, 2]`` points or ``[B, Q, 4]`` boxes relative to
        the valid image; src: ``[B, S, C]``; src_valid_ratios: ``[B, L, 2]``.

        Returns (outputs, reference points after each layer): ``[D, B, Q, C]`` and ``[D, B, Q, 2 or 4]`` with
        ``return_intermediate``, else the last layer's ``[B, Q, C]`` and ``[B, Q, 2 or 4]``.
        """
        output = tgt
        intermediate, intermediate_reference_points = [], []
        for lid, layer in enumerate(self.layers):
            if reference_points.shape[-1] == 4:
                reference_points_input = (reference_points[:, :, None]
                                          * torch.cat([src_valid_ratios, src_valid_ratios], -1)[:, None])
            elif reference_points.shape[-1] == 2:
                reference_points_input = reference_points[:, :, None] * src_valid_ratios[:, None]
            else:
                raise ValueError(f"DeformableTransformerDecoder: reference_points must end in 2 or 4, got "
                                 f"{tuple(reference_points.shape)}")
            output = layer(output, query_pos, reference_points_input, src, src_spatial_shapes, src_level_start_index,
                           src_padding_mask)
            if self.bbox_embed is not None:  # iterative refinement: this layer's box head moves the references
                delta = head_in_fp32(self.bbox_embed[lid], output)
                if reference_points.shape[-1] == 4:
                    new_reference_points = delta + inverse_sigmoid(reference_points)
                else:  # points: the head's first two outputs move the centre, its size outputs are kept
                    new_reference_points = torch.cat([delta[..., :2] + inverse_sigmoid(reference_points),
                                                      delta[..., 2:]], -1)
                reference_points = new_reference_points.sigmoid().detach()
            if self.return_intermediate:
                intermediate.append(output)
                intermediate_reference_points.append(reference_points)
        if self.return_intermediate:
            return torch.stack(intermediate), torch.stack(intermediate_reference_points)
        return output, reference_points
