"""Deformable DETR (Zhu et al., "Deformable DETR: Deformable Transformers for End-to-End Object Detection",
ICLR 2021, arXiv:2010.04159): multi-level features, a deformable transformer and sigmoid class heads; optionally
iterative box refinement and two-stage queries."""
import math

import torch
from torch import Tensor, nn

from models.deformable_detr.deformable_transformer import DeformableTransformer
from models.fp32_head import head_in_fp32
from models.layers.box_encoding import inverse_sigmoid
from models.layers.clones import clones
from models.layers.input_projections import init_projections, level_projections, project_levels
from models.mlp import MLP
from util.nested_tensor import NestedTensor, nested_tensor_from_tensor_list


class DeformableDETR(nn.Module):
    """Backbone levels (and extra strided levels) -> deformable transformer -> class and box heads per decoder layer.

    ``input_proj``: per backbone level a 1x1 conv + GroupNorm(32) to ``hidden_dim``; then, up to
    ``num_feature_levels``, 3x3 stride-2 convs + GroupNorm(32), the first on the last backbone map, the next on the
    previous extra level. ``class_embed`` (``num_classes`` sigmoid logits) and ``bbox_embed`` (3-layer MLP) are
    ModuleLists with one entry per decoder layer (plus one for the encoder proposals with ``two_stage``): the same
    module repeated, or independent copies with ``with_box_refine`` (the decoder then shares them to refine its
    reference points). ``query_embed`` ``[Q, 2 * hidden_dim]`` exists unless ``two_stage``.
    """

    def __init__(self, backbone: nn.Module, transformer: DeformableTransformer, num_classes: int, num_queries: int,
                 num_feature_levels: int, aux_loss: bool = True, with_box_refine: bool = False,
                 two_stage: bool = False):
        """backbone: a Joiner with ``feature_channels`` (per returned map) whose ``[1]`` is the position encoding;
        num_classes: largest class id + 1 (no "no object" output: every class is a sigmoid)."""
        super().__init__()
        self.num_queries = num_queries
        self.transformer = transformer
        hidden_dim = transformer.d_model
        # registered before the other modules (then replaced by lists): the official parameter order
        self.class_embed = nn.Linear(hidden_dim, num_classes)
        self.bbox_embed = MLP(hidden_dim, hidden_dim, 4, 3)
        self.num_feature_levels = num_feature_levels
        if not two_stage:
            self.query_embed = nn.Embedding(num_queries, hidden_dim * 2)
        self.input_proj = level_projections(list(backbone.feature_channels), hidden_dim, num_feature_levels)
        self.backbone = backbone
        self.aux_loss = aux_loss
        self.with_box_refine = with_box_refine
        self.two_stage = two_stage

        prior_prob = 0.01  # every class starts at probability 0.01 (focal loss initialisation)
        class_embed, bbox_embed = self.class_embed, self.bbox_embed
        with torch.no_grad():
            class_embed.bias.fill_(-math.log((1 - prior_prob) / prior_prob))
        nn.init.constant_(bbox_embed.layers[-1].weight, 0)
        nn.init.constant_(bbox_embed.layers[-1].bias, 0)
        init_projections(self.input_proj)

        num_pred = transformer.decoder.num_layers + (1 if two_stage else 0)  # the last head scores the proposals
        if with_box_refine:
            self.class_embed = clones(class_embed, num_pred)
            self.bbox_embed = clones(bbox_embed, num_pred)
            nn.init.constant_(self.bbox_embed[0].layers[-1].bias[2:], -2.0)
            self.transformer.decoder.bbox_embed = self.bbox_embed
        else:
            nn.init.constant_(bbox_embed.layers[-1].bias[2:], -2.0)
            self.class_embed = nn.ModuleList([class_embed for _ in range(num_pred)])
            self.bbox_embed = nn.ModuleList([bbox_embed for _ in range(num_pred)])
            self.transformer.decoder.bbox_embed = None
        if two_stage:
            self.transformer.decoder.class_embed = self.class_embed
            for head in self.bbox_embed:
                nn.init.constant_(head.layers[-1].bias[2:], 0.0)

    def forward(self, samples: NestedTensor) -> dict:
        """samples: a NestedTensor (images ``[B, 3, H, W]``, mask ``[B, H, W]`` True on padding); outside
        TorchScript also a list of ``[3, H_i, W_i]`` images or a ``[B, 3, H, W]`` tensor.

        Returns ``pred_logits`` ``[B, Q, K]`` (sigmoid logits), ``pred_boxes`` ``[B, Q, 4]`` (cx, cy, w, h in
        [0, 1] of the unpadded image); with aux loss ``aux_outputs``, the same for each earlier decoder layer; with
        two-stage ``enc_outputs``: the encoder proposals' ``pred_logits`` ``[B, S, K]`` and ``pred_boxes``
        ``[B, S, 4]`` (S: tokens of all levels).
        """
        if isinstance(samples, (list, torch.Tensor)):
            samples = nested_tensor_from_tensor_list(samples)
        features, pos = self.backbone(samples)
        srcs, masks, pos = project_levels(self.input_proj, features, samples.mask, self.backbone[1], pos)
        query_embeds = None if self.two_stage else self.query_embed.weight
        hs, init_reference, inter_references, enc_class, enc_coord_unact = self.transformer(srcs, masks, pos,
                                                                                            query_embeds)
        outputs_classes, outputs_coords = [], []
        for lvl in range(hs.shape[0]):
            reference = inverse_sigmoid(init_reference if lvl == 0 else inter_references[lvl - 1])
            outputs_classes.append(head_in_fp32(self.class_embed[lvl], hs[lvl]))
            delta = head_in_fp32(self.bbox_embed[lvl], hs[lvl])
            if reference.shape[-1] == 4:
                box = delta + reference
            else:  # reference points move the centre only
                box = torch.cat([delta[..., :2] + reference, delta[..., 2:]], -1)
            outputs_coords.append(box.sigmoid())
        outputs_class = torch.stack(outputs_classes)
        outputs_coord = torch.stack(outputs_coords)

        out = {"pred_logits": outputs_class[-1], "pred_boxes": outputs_coord[-1]}
        if self.aux_loss:
            out["aux_outputs"] = self._set_aux_loss(outputs_class, outputs_coord)
        if self.two_stage:
            out["enc_outputs"] = {"pred_logits": enc_class, "pred_boxes": enc_coord_unact.sigmoid()}
        return out

    @torch.jit.unused
    def _set_aux_loss(self, outputs_class: Tensor, outputs_coord: Tensor) -> list[dict]:
        return [{"pred_logits": a, "pred_boxes": b} for a, b in zip(outputs_class[:-1], outputs_coord[:-1])]
