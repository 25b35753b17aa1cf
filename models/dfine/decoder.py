"""D-FINE's decoder (Peng et al., "D-FINE: Redefine Regression Task of DETRs as Fine-grained Distribution Refinement",
ICLR 2025, arXiv:2410.13842): RT-DETR's query selection and deformable decoder layers, with boxes refined as
distributions.

Fine-grained distribution refinement (FDR): the first layer predicts a box the RT-DETR way (``pre_bbox_head``: a
logit-space offset from the selected token's box); that box, detached, is every later box's reference. Each layer's
``dec_bbox_head`` predicts, for each of the four edges, ``reg_max + 1`` logits, added to the previous layer's (the
refinement: residual logits, with gradient through the layers); the softmax over them weights the non-uniform
values W(n) (:func:`models.layers.fdr.fdr_weighting_function`, set by the frozen parameters ``up`` and
``reg_scale``), and the expectation is the edge's distance from the reference box, in units of its size / reg_scale
beyond its half size (:func:`~models.layers.fdr.distance_to_box`). A location-quality estimator
(:class:`LocationQualityEstimator`) adds to the class logits a score computed from the sharpness of the edge
distributions.

State-dict names, initialisation order (the same seed gives the official initial weights) and numbers are those of
the official ``DFINETransformer`` (Peterande/D-FINE ``src/zoo/dfine/dfine_decoder.py``), so its checkpoints load
with strict=True, before and after :meth:`DFINETransformer.convert_to_deploy`. ``up`` and ``reg_scale`` are in the
state dict twice, as official (``up`` and ``decoder.up``: one parameter held by two modules). Every module computes
in the dtype of its parameters; as official, the anchors and the denoising boxes are float32 whatever that dtype.
Under autocast the heads, the quality estimator and the integral run in fp32 (models/fp32_head.py), where the
official runs them in half precision.
"""
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.activation import activation_layer
from models.fp32_head import head_in_fp32
from models.layers.box_encoding import inverse_sigmoid
from models.layers.clones import clones
from models.layers.denoising import dfine_denoising_group
from models.layers.fdr import (
    deployed_weighting_function,
    distance_to_box,
    distribution_integral,
    fdr_weighting_function,
)
from models.layers.hybrid_encoder import ConvNormAct
from models.layers.ms_deform_attn import MSDeformableAttention
from models.layers.query_selection import gather_tokens
from models.layers.real_time_transformer import RealTimeTransformer, prior_bias
from models.mlp import MLP


class FusionGate(nn.Module):
    """``norm(g1 * x1 + g2 * x2)`` with per-channel gates ``(g1, g2) = sigmoid(gate([x1, x2]))`` (official
    ``Gate``); the gate starts at 1/2 for both (zero weight, zero bias). ``[..., D]`` twice -> ``[..., D]``."""

    def __init__(self, d_model: int):
        super().__init__()
        self.gate = nn.Linear(2 * d_model, 2 * d_model)
        nn.init.constant_(self.gate.bias, -math.log((1 - 0.5) / 0.5))
        nn.init.constant_(self.gate.weight, 0)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, x1: Tensor, x2: Tensor) -> Tensor:
        gate1, gate2 = torch.sigmoid(self.gate(torch.cat([x1, x2], dim=-1))).chunk(2, dim=-1)
        return self.norm(gate1 * x1 + gate2 * x2)


class LocationQualityEstimator(nn.Module):
    """D-FINE's LQE (official ``LQE``): the top ``k`` probabilities of each edge's distribution and their mean,
    ``4 (k + 1)`` numbers, through ``reg_conf`` (an MLP to one number, its last layer zero at initialisation),
    added to every class logit. scores ``[B, N, K]``, pred_corners ``[B, N, 4 (reg_max + 1)]`` -> ``[B, N, K]``."""

    def __init__(self, k: int, hidden_dim: int, num_layers: int, reg_max: int, act: str = "relu"):
        super().__init__()
        self.k = k
        self.reg_max = reg_max
        self.reg_conf = MLP(4 * (k + 1), hidden_dim, 1, num_layers, act=act)
        nn.init.constant_(self.reg_conf.layers[-1].bias, 0)
        nn.init.constant_(self.reg_conf.layers[-1].weight, 0)

    def forward(self, scores: Tensor, pred_corners: Tensor) -> Tensor:
        batch, num_queries, _ = pred_corners.shape
        probabilities = F.softmax(pred_corners.reshape(batch, num_queries, 4, self.reg_max + 1), dim=-1)
        top = probabilities.topk(self.k, dim=-1).values
        statistics = torch.cat([top, top.mean(dim=-1, keepdim=True)], dim=-1).reshape(batch, num_queries, -1)
        return scores + head_in_fp32(self.reg_conf, statistics)


class DFINEDecoderLayer(nn.Module):
    """Post-norm decoder layer (official ``TransformerDecoderLayer`` of D-FINE): self-attention (``self_attn``,
    ``norm1``), deformable cross-attention (``cross_attn``) merged into the queries by a :class:`FusionGate`
    (``gateway``, its own norm), then a feed-forward network (``linear1``, ``linear2``, ``norm3``; the sum clamped
    to the float16 range before the norm). ``layer_scale`` widens ``d_model`` and ``dim_feedforward`` (D-FINE's
    "wide" layers after ``eval_idx``)."""

    def __init__(self, d_model: int = 256, n_head: int = 8, dim_feedforward: int = 1024, dropout: float = 0.0,
                 activation: str = "relu", n_levels: int = 4, n_points: int | Sequence[int] = 4,
                 cross_attn_method: str = "default", layer_scale: float | None = None):
        super().__init__()
        if layer_scale is not None:
            dim_feedforward = round(layer_scale * dim_feedforward)
            d_model = round(layer_scale * d_model)
        self.self_attn = nn.MultiheadAttention(d_model, n_head, dropout=dropout, batch_first=True)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.cross_attn = MSDeformableAttention(d_model, n_head, n_levels, n_points, method=cross_attn_method,
                                                projections=False)
        self.dropout2 = nn.Dropout(dropout)
        self.gateway = FusionGate(d_model)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.activation = activation_layer(activation)
        self.dropout3 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.dropout4 = nn.Dropout(dropout)
        self.norm3 = nn.LayerNorm(d_model)
        nn.init.xavier_uniform_(self.linear1.weight)
        nn.init.xavier_uniform_(self.linear2.weight)

    def forward(self, target: Tensor, reference_boxes: Tensor, value: Tensor,
                spatial_shapes: Sequence[Sequence[int]], attn_mask: Tensor | None, query_pos_embed: Tensor) -> Tensor:
        """target, query_pos_embed ``[B, N, D]``; reference_boxes ``[B, N, 1, 4]``; value ``[B, S, heads, D /
        heads]``; attn_mask ``[N, N]`` bool, True where a query (row) may not attend."""
        with_pos = target + query_pos_embed
        # the attention weights are computed (and dropped), as official: its rounding
        attended = self.self_attn(with_pos, with_pos, value=target, attn_mask=attn_mask)[0]
        target = self.norm1(target + self.dropout1(attended))
        attended = self.cross_attn(target + query_pos_embed, reference_boxes, value, spatial_shapes)
        target = self.gateway(target, self.dropout2(attended))
        forward = self.linear2(self.dropout3(self.activation(self.linear1(target))))
        return self.norm3((target + self.dropout4(forward)).clamp(min=-65504, max=65504))


class DFINEDecoder(nn.Module):
    """The layers and their quality estimators (official ``TransformerDecoder`` of D-FINE): layers ``0..eval_idx``
    are copies of ``decoder_layer``, the later ones copies of ``decoder_layer_wide`` (identical initial weights
    within each group), one :class:`LocationQualityEstimator` per layer (k 4, hidden 64, 2 layers, each drawn
    anew). ``up`` and ``reg_scale`` are the transformer's frozen parameters, held here too (as official: they
    appear under both names in the state dict).

    In evaluation the layers stop after layer ``eval_idx``; :meth:`convert_to_deploy` then drops the later layers
    and the quality estimators it never runs, and stores W(n) (attribute ``project``, not in the state dict).
    """

    def __init__(self, hidden_dim: int, decoder_layer: DFINEDecoderLayer, decoder_layer_wide: DFINEDecoderLayer,
                 num_layers: int, num_head: int, reg_max: int, reg_scale: nn.Parameter, up: nn.Parameter,
                 eval_idx: int = -1, layer_scale: float = 2, act: str = "relu"):
        super().__init__()
        if not -num_layers <= eval_idx < num_layers:
            raise ValueError(f"DFINEDecoder: eval_idx {eval_idx} is not a layer of {num_layers}")
        self.hidden_dim = hidden_dim
        self.num_layers = num_layers
        self.layer_scale = layer_scale
        self.num_head = num_head
        self.eval_idx = eval_idx if eval_idx >= 0 else num_layers + eval_idx
        self.up, self.reg_scale, self.reg_max = up, reg_scale, reg_max
        self.layers = nn.ModuleList([*clones(decoder_layer, self.eval_idx + 1),
                                     *clones(decoder_layer_wide, num_layers - self.eval_idx - 1)])
        self.lqe_layers = nn.ModuleList([LocationQualityEstimator(4, 64, 2, reg_max, act)
                                         for _ in range(num_layers)])
        self.project: Tensor | None = None  # W(n), once deployed

    def convert_to_deploy(self) -> None:
        self.project = deployed_weighting_function(self.reg_max, self.up, self.reg_scale)
        self.layers = self.layers[: self.eval_idx + 1]
        self.lqe_layers = nn.ModuleList([nn.Identity()] * self.eval_idx + [self.lqe_layers[self.eval_idx]])

    def _values(self, memory: Tensor, width: int | None = None) -> Tensor:
        """The memory split into heads, ``[B, S, heads, D' / heads]``; with ``width``, first resized (nearest) from
        D to D' channels for the wide layers."""
        value = memory if width is None else F.interpolate(memory, size=width)
        return value.reshape(value.shape[0], value.shape[1], self.num_head, -1)

    def forward(self, target: Tensor, ref_points_unact: Tensor, memory: Tensor, spatial_shapes: list[list[int]],
                bbox_head: nn.ModuleList, score_head: nn.ModuleList, query_pos_head: nn.Module,
                pre_bbox_head: nn.Module, attn_mask: Tensor | None = None) -> tuple[Tensor, ...]:
        """target ``[B, N, D]`` content queries; ref_points_unact ``[B, N, 4]`` boxes in logit space; memory
        ``[B, S, D]``.

        Returns boxes ``[L', B, N, 4]`` (cxcywh), logits ``[L', B, N, K]`` (with the quality score), edge logits
        ``[L', B, N, 4 (reg_max + 1)]`` and reference boxes ``[L', B, N, 4]`` of every layer in training (L' = L),
        of layer ``eval_idx`` in evaluation (L' = 1); then the first layer's RT-DETR box ``[B, N, 4]`` and logits
        ``[B, N, K]``.
        """
        output, output_detach, pred_corners_undetach = target, 0, 0
        value = self._values(memory)
        project = self.project
        if project is None:
            project = fdr_weighting_function(self.reg_max, self.up, self.reg_scale)
        boxes, logits, corners, references = [], [], [], []
        ref_points_detach = F.sigmoid(ref_points_unact)
        for i, layer in enumerate(self.layers):
            query_pos_embed = query_pos_head(ref_points_detach).clamp(min=-10, max=10)
            if i >= self.eval_idx + 1 and self.layer_scale > 1:  # a wide layer: queries and values widened
                query_pos_embed = F.interpolate(query_pos_embed, scale_factor=self.layer_scale)
                value = self._values(memory, query_pos_embed.shape[-1])
                output = F.interpolate(output, size=query_pos_embed.shape[-1])
                output_detach = output.detach()
            output = layer(output, ref_points_detach.unsqueeze(2), value, spatial_shapes, attn_mask, query_pos_embed)
            if i == 0:
                pre_boxes = F.sigmoid(head_in_fp32(pre_bbox_head, output) + inverse_sigmoid(ref_points_detach))
                pre_logits = head_in_fp32(score_head[0], output)
                ref_points_initial = pre_boxes.detach()
            pred_corners = head_in_fp32(bbox_head[i], output + output_detach) + pred_corners_undetach
            distances = head_in_fp32(lambda c: distribution_integral(c, project, self.reg_max), pred_corners)
            inter_ref_bbox = distance_to_box(ref_points_initial, distances, self.reg_scale)
            if self.training or i == self.eval_idx:
                logits.append(self.lqe_layers[i](head_in_fp32(score_head[i], output), pred_corners))
                boxes.append(inter_ref_bbox)
                corners.append(pred_corners)
                references.append(ref_points_initial)
                if not self.training:
                    break
            pred_corners_undetach = pred_corners
            ref_points_detach = inter_ref_bbox.detach()
            output_detach = output.detach()
        return (torch.stack(boxes), torch.stack(logits), torch.stack(corners), torch.stack(references), pre_boxes,
                pre_logits)


class DFINETransformer(RealTimeTransformer):
    """D-FINE's decoder with its input projections, query selection, denoising and heads (official
    ``DFINETransformer``; keyword arguments with the official names and defaults).

    feat_channels / feat_strides: the encoder's levels (a level already ``hidden_dim`` wide is used as it is, as
    official; ``num_levels`` beyond them are made by 3x3 stride-2 convolutions, the first on the last level, or
    are that level itself when it is ``hidden_dim`` wide). num_points: per head on every level, or per level.
    reg_max, reg_scale: the edge distributions' bins and W's curvature (frozen parameters ``reg_scale`` and ``up``
    = 0.5). layer_scale: width factor of the layers after ``eval_idx`` (1 in every official config). eval_idx:
    the layer whose prediction is the output in evaluation (negative: from the end). learn_query_content: content
    queries from ``tgt_embed``. eval_spatial_size, query_select_method, cross_attn_method and eps: see
    :class:`~models.layers.real_time_transformer.RealTimeTransformer`. box_noise_scale is stored but, as official,
    the denoising boxes are always noised with 1 (:func:`dfine_denoising_group`).
    """

    denoising_group = staticmethod(dfine_denoising_group)

    def __init__(self, *, num_classes: int = 80, hidden_dim: int = 256, num_queries: int = 300,
                 feat_channels: Sequence[int] = (512, 1024, 2048), feat_strides: Sequence[int] = (8, 16, 32),
                 num_levels: int = 3, num_points: int | Sequence[int] = 4, nhead: int = 8, num_layers: int = 6,
                 dim_feedforward: int = 1024, dropout: float = 0.0, activation: str = "relu",
                 num_denoising: int = 100, label_noise_ratio: float = 0.5, box_noise_scale: float = 1.0,
                 learn_query_content: bool = False, eval_spatial_size: Sequence[int] | None = None, eval_idx: int = -1,
                 eps: float = 1e-2, aux_loss: bool = True, cross_attn_method: str = "default",
                 query_select_method: str = "default", reg_max: int = 32, reg_scale: float = 4.0,
                 layer_scale: float = 1, mlp_act: str = "relu"):
        super().__init__(num_classes=num_classes, hidden_dim=hidden_dim, num_queries=num_queries,
                         feat_channels=feat_channels, feat_strides=feat_strides, num_levels=num_levels, nhead=nhead,
                         num_layers=num_layers, eval_spatial_size=eval_spatial_size, eps=eps, aux_loss=aux_loss,
                         cross_attn_method=cross_attn_method, query_select_method=query_select_method)
        if reg_max < 4 or reg_max % 2:
            raise ValueError(f"DFINETransformer: reg_max must be an even number of at least 4, got {reg_max}")
        scaled_dim = round(layer_scale * hidden_dim)
        self.reg_max = reg_max

        # the official construction order: the same seed draws the official initial weights
        self.input_proj = self._input_projections(list(feat_channels))
        self.up = nn.Parameter(torch.tensor([0.5]), requires_grad=False)
        self.reg_scale = nn.Parameter(torch.tensor([reg_scale]), requires_grad=False)
        layer = DFINEDecoderLayer(hidden_dim, nhead, dim_feedforward, dropout, activation, num_levels, num_points,
                                  cross_attn_method=cross_attn_method)
        wide_layer = DFINEDecoderLayer(hidden_dim, nhead, dim_feedforward, dropout, activation, num_levels,
                                       num_points, cross_attn_method=cross_attn_method, layer_scale=layer_scale)
        self.decoder = DFINEDecoder(hidden_dim, layer, wide_layer, num_layers, nhead, reg_max, self.reg_scale,
                                    self.up, eval_idx, layer_scale, act=activation)
        self.eval_idx = self.decoder.eval_idx
        self._query_selection_modules(num_denoising, label_noise_ratio, box_noise_scale, learn_query_content,
                                      mlp_act)
        narrow, wide = self.eval_idx + 1, num_layers - self.eval_idx - 1
        self.dec_score_head = nn.ModuleList([nn.Linear(hidden_dim, num_classes) for _ in range(narrow)]
                                            + [nn.Linear(scaled_dim, num_classes) for _ in range(wide)])
        self.pre_bbox_head = MLP(hidden_dim, hidden_dim, 4, 3, act=mlp_act)
        self.dec_bbox_head = nn.ModuleList(
            [MLP(hidden_dim, hidden_dim, 4 * (reg_max + 1), 3, act=mlp_act) for _ in range(narrow)]
            + [MLP(scaled_dim, scaled_dim, 4 * (reg_max + 1), 3, act=mlp_act) for _ in range(wide)])
        self._reset_parameters(list(feat_channels))

    def _input_projections(self, feat_channels: list[int]) -> nn.ModuleList:
        """Per input level a 1x1 convolution (no bias) + BatchNorm to ``hidden_dim``, or an identity for a level of
        that width; extra levels: 3x3 stride 2 (+ BatchNorm), or an identity while the width is ``hidden_dim``."""
        projections = nn.ModuleList([nn.Identity() if c == self.hidden_dim else ConvNormAct(c, self.hidden_dim, 1)
                                     for c in feat_channels])
        in_channels = feat_channels[-1]
        for _ in range(self.num_levels - len(feat_channels)):
            if in_channels == self.hidden_dim:
                projections.append(nn.Identity())
            else:
                projections.append(ConvNormAct(in_channels, self.hidden_dim, 3, 2, padding=1))
                in_channels = self.hidden_dim
        return projections

    def _reset_parameters(self, feat_channels: list[int]) -> None:
        nn.init.constant_(self.pre_bbox_head.layers[-1].weight, 0)
        nn.init.constant_(self.pre_bbox_head.layers[-1].bias, 0)
        for score_head, bbox_head in zip(self.dec_score_head, self.dec_bbox_head):
            nn.init.constant_(score_head.bias, prior_bias())
            nn.init.constant_(bbox_head.layers[-1].weight, 0)
            nn.init.constant_(bbox_head.layers[-1].bias, 0)
        self._reset_query_selection_modules()
        for projection, channels in zip(self.input_proj, feat_channels):
            if channels != self.hidden_dim:
                nn.init.xavier_uniform_(projection.conv.weight)

    def convert_to_deploy(self) -> None:
        """Keep only the heads evaluation runs: score head ``eval_idx`` (the others become identities) and the box
        heads up to ``eval_idx`` (official names after deploy)."""
        self.dec_score_head = nn.ModuleList([nn.Identity()] * self.eval_idx + [self.dec_score_head[self.eval_idx]])
        self.dec_bbox_head = nn.ModuleList([head if i <= self.eval_idx else nn.Identity()
                                            for i, head in enumerate(self.dec_bbox_head)])

    def _queries(self, memory: Tensor, spatial_shapes: list[list[int]]) -> tuple[Tensor, Tensor, dict | None]:
        """Content ``[B, Q, D]`` and boxes in logit space ``[B, Q, 4]`` of the selected tokens (both detached),
        and in training their encoder prediction (``pred_logits``, ``pred_boxes``). The box head runs on the
        selected tokens only, as official."""
        anchors, valid_mask = self._anchors(spatial_shapes, memory.device)
        if memory.shape[0] > 1:
            anchors = anchors.repeat(memory.shape[0], 1, 1)
        output_memory = self.enc_output(valid_mask.to(memory.dtype) * memory)
        enc_logits = head_in_fp32(self.enc_score_head, output_memory)
        index = self._select_topk(enc_logits)
        selected = gather_tokens(output_memory, index)
        boxes_unact = head_in_fp32(self.enc_bbox_head, selected) + gather_tokens(anchors, index)
        encoder_prediction = None
        if self.training:
            encoder_prediction = {"pred_logits": gather_tokens(enc_logits, index),
                                  "pred_boxes": F.sigmoid(boxes_unact)}
        if self.learn_query_content:
            content = self.tgt_embed.weight.unsqueeze(0).tile([memory.shape[0], 1, 1])
        else:
            content = selected.detach()
        return content, boxes_unact.detach(), encoder_prediction

    def forward(self, feats: Sequence[Tensor], targets: list[dict] | None = None) -> dict:
        """feats: the encoder's levels ``[B, C_l, H_l, W_l]``; targets (training with denoising): per image
        ``labels`` ``[T_i]`` and ``boxes`` ``[T_i, 4]`` (normalised cxcywh).

        Returns ``pred_logits`` ``[B, Q, K]`` and ``pred_boxes`` ``[B, Q, 4]`` (cxcywh) of the last layer in training,
        of layer ``eval_idx`` in evaluation. Training adds ``pred_corners`` ``[B, Q, 4 (reg_max + 1)]`` (edge
        logits), ``ref_points`` ``[B, Q, 4]`` (the first layer's box, detached: the FDR reference), ``up`` and
        ``reg_scale`` (the parameters), and with ``aux_loss``: ``aux_outputs`` (the other layers, first to last,
        each with those four keys plus ``teacher_corners`` and ``teacher_logits``, the last layer's),
        ``enc_aux_outputs`` (one entry: the selected tokens' encoder prediction), ``pre_outputs`` (the first
        layer's RT-DETR box and logits), ``enc_meta`` {"class_agnostic"}, and with denoising ``dn_outputs`` (every
        layer's denoising queries, keys as ``aux_outputs``, teacher: the last layer's), ``dn_pre_outputs`` and
        ``dn_meta`` (:func:`dfine_denoising_group`).
        """
        memory, spatial_shapes = self._memory(feats)
        dn = self._denoising(targets, box_noise_scale=1.0)  # as official, whatever box_noise_scale says
        content, ref_unact, encoder_prediction = self._queries(memory, spatial_shapes)
        if dn is not None:
            ref_unact = torch.cat([dn.anchors, ref_unact], dim=1)
            content = torch.cat([dn.content, content], dim=1)
        boxes, logits, corners, refs, pre_boxes, pre_logits = self.decoder(
            content, ref_unact, memory, spatial_shapes, self.dec_bbox_head, self.dec_score_head, self.query_pos_head,
            self.pre_bbox_head, attn_mask=None if dn is None else dn.attn_mask)
        if dn is not None:
            split = dn.meta["dn_num_split"]
            dn_pre_logits, pre_logits = torch.split(pre_logits, split, dim=1)
            dn_pre_boxes, pre_boxes = torch.split(pre_boxes, split, dim=1)
            dn_boxes, boxes = torch.split(boxes, split, dim=2)
            dn_logits, logits = torch.split(logits, split, dim=2)
            dn_corners, corners = torch.split(corners, split, dim=2)
            dn_refs, refs = torch.split(refs, split, dim=2)
        out = {"pred_logits": logits[-1], "pred_boxes": boxes[-1]}
        if not self.training:
            return out
        out.update(pred_corners=corners[-1], ref_points=refs[-1], up=self.up, reg_scale=self.reg_scale)
        if self.aux_loss:
            out["aux_outputs"] = distillation_outputs(logits[:-1], boxes[:-1], corners[:-1], refs[:-1], corners[-1],
                                                      logits[-1])
            out["enc_aux_outputs"] = [encoder_prediction]
            out["pre_outputs"] = {"pred_logits": pre_logits, "pred_boxes": pre_boxes}
            out["enc_meta"] = {"class_agnostic": self.query_select_method == "agnostic"}
            if dn is not None:
                out["dn_outputs"] = distillation_outputs(dn_logits, dn_boxes, dn_corners, dn_refs, dn_corners[-1],
                                                         dn_logits[-1])
                out["dn_pre_outputs"] = {"pred_logits": dn_pre_logits, "pred_boxes": dn_pre_boxes}
                out["dn_meta"] = dn.meta
        return out


def distillation_outputs(logits: Tensor, boxes: Tensor, corners: Tensor, refs: Tensor, teacher_corners: Tensor,
                         teacher_logits: Tensor) -> list[dict]:
    """Per layer {``pred_logits``, ``pred_boxes``, ``pred_corners``, ``ref_points``} from ``[L, B, N, ...]``
    stacks, each with the teacher's (the last layer's) ``teacher_corners`` and ``teacher_logits``."""
    return [{"pred_logits": a, "pred_boxes": b, "pred_corners": c, "ref_points": d,
             "teacher_corners": teacher_corners, "teacher_logits": teacher_logits}
            for a, b, c, d in zip(logits, boxes, corners, refs)]
