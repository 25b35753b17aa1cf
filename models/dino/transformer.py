"""DINO's deformable transformer: multi-scale deformable encoder, query selection from the encoder output, and the
anchor-box decoder. Parameter names follow the official ``DeformableTransformer`` of DINO."""
import math
from typing import NamedTuple

import torch
from torch import Tensor, nn

from models.dino.decoder import LOGIT_EPS, MODULES, Decoder, DecoderLayer
from models.fp32_head import head_in_fp32
from models.layers.box_encoding import inverse_sigmoid
from models.layers.deformable_encoder import DeformableTransformerEncoder, DeformableTransformerEncoderLayer
from models.layers.levels import flatten_levels
from models.layers.ms_deform_attn import MSDeformAttn
from models.layers.query_selection import gather_tokens, top_k_tokens
from models.layers.token_positions import encoder_proposals

TWO_STAGE_TYPES = ("standard", "no")


class TransformerOutput(NamedTuple):
    """``hs``: each decoder layer's normalised output ``[B, N, D]`` (N = denoising + matching queries);
    ``references``: the anchors, initial then after each layer, ``[B, N, 4]`` sigmoid boxes; with query selection
    ``hs_enc`` ``[1, B, Q, D]`` and ``ref_enc`` ``[1, B, Q, 4]`` (sigmoid) are the selected tokens' features and
    refined proposals (the encoder's predictions), else None; ``init_box_proposal`` ``[B, Q, 4]``: the selected
    tokens' proposals before refinement (sigmoid)."""

    hs: list[Tensor]
    references: list[Tensor]
    hs_enc: Tensor | None
    ref_enc: Tensor | None
    init_box_proposal: Tensor


class DINOTransformer(nn.Module):
    """Encoder over all levels' tokens, then a decoder of ``num_queries`` anchor-box queries (after any denoising
    queries the model passes in).

    ``two_stage_type``: "standard" selects the anchors from the encoder output (mixed query selection; the model
    sets ``enc_out_class_embed`` / ``enc_out_bbox_embed``, the encoder's heads) with learned content queries
    ``tgt_embed`` when ``embed_init_tgt`` (else the selected tokens' features, detached); "no" learns both the anchors
    (``refpoint_embed``, logit space) and the content queries.
    ``two_stage_learn_wh`` learns the proposals' size (one logit pair ``two_stage_wh_embedding``, 0.05 at start).
    """

    def __init__(self, d_model: int = 256, nhead: int = 8, num_queries: int = 900, num_encoder_layers: int = 6,
                 num_decoder_layers: int = 6, dim_feedforward: int = 2048, dropout: float = 0.0,
                 activation: str = "relu", normalize_before: bool = False, num_feature_levels: int = 4,
                 enc_n_points: int = 4, dec_n_points: int = 4, two_stage_type: str = "standard",
                 two_stage_learn_wh: bool = False, embed_init_tgt: bool = True, random_refpoints_xy: bool = False,
                 decoder_sa_type: str = "sa", module_seq: tuple[str, ...] = MODULES,
                 use_detached_boxes_dec_out: bool = False):
        super().__init__()
        if two_stage_type not in TWO_STAGE_TYPES:
            raise ValueError(f"DINOTransformer: two_stage_type must be one of {TWO_STAGE_TYPES}, "
                             f"got {two_stage_type!r}")
        self.d_model = d_model
        self.nhead = nhead
        self.num_queries = num_queries
        self.num_feature_levels = num_feature_levels
        self.num_encoder_layers = num_encoder_layers
        self.num_decoder_layers = num_decoder_layers
        self.two_stage_type = two_stage_type
        self.two_stage_learn_wh = two_stage_learn_wh
        self.embed_init_tgt = embed_init_tgt

        # module creation order = the official one, so that a seed gives the official initial weights
        encoder_layer = DeformableTransformerEncoderLayer(d_model, dim_feedforward, dropout, activation,
                                                          num_feature_levels, nhead, enc_n_points)
        encoder_norm = nn.LayerNorm(d_model) if normalize_before else None
        self.encoder = DeformableTransformerEncoder(encoder_layer, num_encoder_layers, encoder_norm)
        decoder_layer = DecoderLayer(d_model, dim_feedforward, dropout, activation, num_feature_levels, nhead,
                                     dec_n_points, decoder_sa_type, module_seq)
        self.decoder = Decoder(decoder_layer, num_decoder_layers, nn.LayerNorm(d_model), d_model,
                               use_detached_boxes_dec_out)
        if num_feature_levels > 1 and num_encoder_layers > 0:
            self.level_embed = nn.Parameter(torch.empty(num_feature_levels, d_model))
        else:
            self.level_embed = None
        self.tgt_embed = None
        if two_stage_type == "no" or embed_init_tgt:
            self.tgt_embed = nn.Embedding(num_queries, d_model)
            nn.init.normal_(self.tgt_embed.weight.data)
        self.two_stage_wh_embedding = None
        if two_stage_type == "standard":
            self.enc_output = nn.Linear(d_model, d_model)
            self.enc_output_norm = nn.LayerNorm(d_model)
            if two_stage_learn_wh:
                self.two_stage_wh_embedding = nn.Embedding(1, 2)
        else:
            self.refpoint_embed = nn.Embedding(num_queries, 4)
            if random_refpoints_xy:  # as the official code: drawn, then overwritten below by the xavier init
                self.refpoint_embed.weight.data[:, :2].uniform_(0, 1)
                self.refpoint_embed.weight.data[:, :2] = inverse_sigmoid(self.refpoint_embed.weight.data[:, :2],
                                                                           LOGIT_EPS)
        self.enc_out_class_embed: nn.Module | None = None
        self.enc_out_bbox_embed: nn.Module | None = None
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for m in self.modules():
            if isinstance(m, MSDeformAttn):
                m._reset_parameters()
        if self.level_embed is not None:
            nn.init.normal_(self.level_embed)
        if self.two_stage_wh_embedding is not None:
            nn.init.constant_(self.two_stage_wh_embedding.weight, math.log(0.05 / (1 - 0.05)))

    def forward(self, srcs: list[Tensor], masks: list[Tensor], pos_embeds: list[Tensor],
                dn_anchors: Tensor | None = None, dn_content: Tensor | None = None,
                attn_mask: Tensor | None = None) -> TransformerOutput:
        """srcs, pos_embeds: per level ``[B, D, H_l, W_l]``; masks: per level ``[B, H_l, W_l]`` (True on padding);
        dn_anchors ``[B, P, 4]`` (logit space) and dn_content ``[B, P, D]``: denoising queries placed before the
        matching ones; attn_mask ``[P + Q, P + Q]`` (True: blocked) for the decoder's self-attention."""
        levels = flatten_levels(srcs, masks, pos_embeds, self.level_embed)
        shapes, mask_flatten, ratios = levels.sizes, levels.mask, levels.valid_ratios
        bs = levels.src.shape[0]
        memory = self.encoder(levels.src, levels.pos, shapes, levels.level_start_index, ratios, mask_flatten)

        hs_enc = ref_enc = None
        if self.two_stage_type == "standard":
            learned_wh = self.two_stage_wh_embedding.weight[0] if self.two_stage_wh_embedding is not None else None
            output_memory, output_proposals = encoder_proposals(memory, mask_flatten, shapes, learned_wh)
            output_memory = self.enc_output_norm(self.enc_output(output_memory))
            enc_class = head_in_fp32(self.enc_out_class_embed, output_memory)
            enc_coord_unsig = head_in_fp32(self.enc_out_bbox_embed, output_memory) + output_proposals
            topk = top_k_tokens(enc_class, self.num_queries)
            anchors_undetached = gather_tokens(enc_coord_unsig, topk)
            anchors = anchors_undetached.detach()
            init_box_proposal = gather_tokens(output_proposals, topk).sigmoid()
            tgt_undetached = gather_tokens(output_memory, topk)
            if self.embed_init_tgt:
                content = self.tgt_embed.weight[:, None, :].repeat(1, bs, 1).transpose(0, 1)
            else:
                content = tgt_undetached.detach()
            hs_enc = tgt_undetached.unsqueeze(0)
            ref_enc = anchors_undetached.sigmoid().unsqueeze(0)
        else:
            content = self.tgt_embed.weight[:, None, :].repeat(1, bs, 1).transpose(0, 1)
            anchors = self.refpoint_embed.weight[:, None, :].repeat(1, bs, 1).transpose(0, 1)
            init_box_proposal = anchors.sigmoid()
        if dn_anchors is not None:
            anchors = torch.cat([dn_anchors, anchors], dim=1)
            content = torch.cat([dn_content, content], dim=1)

        hs, references = self.decoder(content.transpose(0, 1), memory.transpose(0, 1), mask_flatten,
                                      anchors.transpose(0, 1), levels.level_start_index, shapes, ratios, attn_mask)
        return TransformerOutput(hs, references, hs_enc, ref_enc, init_box_proposal)
