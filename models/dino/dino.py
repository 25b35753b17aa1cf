"""DINO (Zhang et al., "DINO: DETR with Improved DeNoising Anchor Boxes for End-to-End Object Detection", ICLR 2023,
arXiv:2203.03605): multi-scale backbone features, a deformable transformer with mixed query selection, anchor-box
queries refined layer by layer, and contrastive denoising queries in training. Parameter names follow the official
``DINO`` model, so its checkpoints load with strict=True."""
import copy
import math

import torch
from torch import Tensor, nn

from models.dino.decoder import LOGIT_EPS
from models.dino.transformer import DINOTransformer
from models.fp32_head import head_in_fp32
from models.layers.box_encoding import inverse_sigmoid
from models.layers.denoising import prepare_denoising, split_denoising_outputs
from models.layers.input_projections import init_projections, level_projections, project_levels
from models.mlp import MLP
from util.nested_tensor import NestedTensor, nested_tensor_from_tensor_list


class DINO(nn.Module):
    """Backbone (a Joiner: features of several stages and their positional encodings) + deformable transformer +
    class and box heads per decoder layer.

    num_classes: largest class id + 1, one sigmoid per class (no "no object" class); dn_labelbook_size + 1: rows
    of ``label_enc``, the class embedding of the denoising queries. ``num_feature_levels`` beyond the backbone's
    stages are made by stride-2 3x3 convolutions on the last stage. Heads: one class head (Linear) and one box head
    (3-layer MLP predicting an offset of the anchor in logit space) per decoder layer, all layers sharing one
    module when ``dec_pred_*_embed_share``; the encoder's heads (query selection) are copies, or the same modules
    with ``two_stage_*_embed_share``. Denoising (``dn_number`` > 0) runs in training only and needs the targets.
    """

    takes_targets = True  # forward(samples, targets): the training loop passes the targets (denoising queries)

    def __init__(self, backbone: nn.Module, transformer: DINOTransformer, num_classes: int, num_queries: int,
                 aux_loss: bool = True, num_feature_levels: int = 4, two_stage_type: str = "standard",
                 dec_pred_class_embed_share: bool = True, dec_pred_bbox_embed_share: bool = True,
                 two_stage_class_embed_share: bool = False, two_stage_bbox_embed_share: bool = False,
                 decoder_sa_type: str = "sa", dn_number: int = 100, dn_box_noise_scale: float = 0.4,
                 dn_label_noise_ratio: float = 0.5, dn_labelbook_size: int = 100):
        super().__init__()
        if num_classes > dn_labelbook_size + 1:
            raise ValueError(f"DINO: dn_labelbook_size ({dn_labelbook_size}) must be at least num_classes - 1 "
                             f"({num_classes - 1}): the denoising labels index its embedding")
        if num_feature_levels == 1 and two_stage_type != "no":
            raise ValueError("DINO: one feature level needs two_stage_type 'no' (as the official code)")
        if (two_stage_class_embed_share or two_stage_bbox_embed_share) and not (
                dec_pred_class_embed_share and dec_pred_bbox_embed_share):
            raise ValueError("DINO: sharing the encoder's heads with the decoder (two_stage_*_embed_share) needs the "
                             "decoder heads shared (dec_pred_class_embed_share and dec_pred_bbox_embed_share)")
        self.num_queries = num_queries
        self.transformer = transformer
        self.num_classes = num_classes
        self.hidden_dim = hidden_dim = transformer.d_model
        self.num_feature_levels = num_feature_levels
        self.label_enc = nn.Embedding(dn_labelbook_size + 1, hidden_dim)
        self.dn_number = dn_number
        self.dn_box_noise_scale = dn_box_noise_scale
        self.dn_label_noise_ratio = dn_label_noise_ratio
        self.dn_labelbook_size = dn_labelbook_size

        self.input_proj = level_projections(list(backbone.feature_channels), hidden_dim, num_feature_levels)
        self.backbone = backbone
        self.aux_loss = aux_loss

        class_embed = nn.Linear(hidden_dim, num_classes)
        bbox_embed = MLP(hidden_dim, hidden_dim, 4, 3)
        prior_prob = 0.01
        class_embed.bias.data = torch.ones(num_classes) * -math.log((1 - prior_prob) / prior_prob)
        nn.init.constant_(bbox_embed.layers[-1].weight.data, 0)
        nn.init.constant_(bbox_embed.layers[-1].bias.data, 0)
        num_layers = transformer.num_decoder_layers
        self.bbox_embed = nn.ModuleList(
            [bbox_embed if dec_pred_bbox_embed_share else copy.deepcopy(bbox_embed) for _ in range(num_layers)])
        self.class_embed = nn.ModuleList(
            [class_embed if dec_pred_class_embed_share else copy.deepcopy(class_embed) for _ in range(num_layers)])
        transformer.decoder.bbox_embed = self.bbox_embed
        transformer.decoder.class_embed = self.class_embed

        self.two_stage_type = two_stage_type
        if two_stage_type != "no":
            transformer.enc_out_bbox_embed = bbox_embed if two_stage_bbox_embed_share else copy.deepcopy(bbox_embed)
            transformer.enc_out_class_embed = (class_embed if two_stage_class_embed_share
                                               else copy.deepcopy(class_embed))

        self.decoder_sa_type = decoder_sa_type
        self.label_embedding = None
        if decoder_sa_type == "ca_label":
            self.label_embedding = nn.Embedding(num_classes, hidden_dim)
            for layer in transformer.decoder.layers:
                layer.label_embedding = self.label_embedding
        init_projections(self.input_proj)

    def forward(self, samples: NestedTensor, targets: list[dict] | None = None) -> dict:
        """samples: a NestedTensor (images ``[B, 3, H, W]``, mask ``[B, H, W]`` True on padding), a list of
        ``[3, H_i, W_i]`` images or a ``[B, 3, H, W]`` tensor; targets (training with denoising): per image
        ``labels`` ``[T_i]`` and ``boxes`` ``[T_i, 4]`` (normalised cxcywh).

        Returns ``pred_logits`` ``[B, Q, K]`` (sigmoid logits), ``pred_boxes`` ``[B, Q, 4]`` (cx, cy, w, h in [0, 1]
        of the unpadded image), ``aux_outputs`` (earlier decoder layers, with aux loss), and with query selection
        ``interm_outputs`` (the encoder's selected predictions, refined boxes) and
        ``interm_outputs_for_matching_pre`` (same logits, unrefined proposals). Training with denoising adds
        ``dn_meta``: ``pad_size`` P, ``num_dn_group``, and (when P > 0) ``output_known_lbs_bboxes``: the P denoising
        queries' ``pred_logits`` / ``pred_boxes`` / ``aux_outputs``.
        """
        if isinstance(samples, (list, torch.Tensor)):
            samples = nested_tensor_from_tensor_list(samples)
        features, poss = self.backbone(samples)
        srcs, masks, poss = project_levels(self.input_proj, features, samples.mask, self.backbone[1], poss)

        dn = None
        if self.training and self.dn_number > 0:
            if targets is None:
                raise ValueError("DINO: training with denoising needs the targets: call model(samples, targets)")
            dn = prepare_denoising(targets, self.dn_number, self.dn_label_noise_ratio, self.dn_box_noise_scale,
                                   self.num_queries, self.num_classes, self.label_enc, LOGIT_EPS)
        result = self.transformer(srcs, masks, poss, *((dn.anchors, dn.content, dn.attn_mask) if dn else ()))
        hs = list(result.hs)
        hs[0] = hs[0] + self.label_enc.weight[0, 0] * 0.0  # label_enc takes part in every graph (as official)

        outputs_coord = torch.stack([
            (head_in_fp32(bbox_embed, layer_hs) + inverse_sigmoid(layer_ref, LOGIT_EPS)).sigmoid()
            for bbox_embed, layer_hs, layer_ref in zip(self.bbox_embed, hs, result.references[:-1])])
        outputs_class = torch.stack([head_in_fp32(class_embed, layer_hs)
                                     for class_embed, layer_hs in zip(self.class_embed, hs)])
        dn_meta = None
        if dn is not None:
            dn_meta = dict(dn.meta)
            if dn_meta["pad_size"] > 0:
                dn_class, dn_coord, outputs_class, outputs_coord = split_denoising_outputs(
                    outputs_class, outputs_coord, dn_meta["pad_size"])
                dn_meta["output_known_lbs_bboxes"] = self._layer_outputs(dn_class, dn_coord)
        out = self._layer_outputs(outputs_class, outputs_coord)
        if result.hs_enc is not None:
            interm_class = head_in_fp32(self.transformer.enc_out_class_embed, result.hs_enc[-1])
            out["interm_outputs"] = {"pred_logits": interm_class, "pred_boxes": result.ref_enc[-1]}
            out["interm_outputs_for_matching_pre"] = {"pred_logits": interm_class,
                                                      "pred_boxes": result.init_box_proposal}
        if dn_meta is not None:
            out["dn_meta"] = dn_meta
        return out

    def _layer_outputs(self, outputs_class: Tensor, outputs_coord: Tensor) -> dict:
        """``[L, B, N, K]`` and ``[L, B, N, 4]`` -> the last layer's ``pred_logits``/``pred_boxes``, the others
        under ``aux_outputs`` (with aux loss)."""
        out = {"pred_logits": outputs_class[-1], "pred_boxes": outputs_coord[-1]}
        if self.aux_loss:
            out["aux_outputs"] = [{"pred_logits": a, "pred_boxes": b}
                                  for a, b in zip(outputs_class[:-1], outputs_coord[:-1])]
        return out
