"""DETR (Carion et al., "End-to-End Object Detection with Transformers", ECCV 2020, arXiv:2005.12872): backbone,
transformer and the class and box heads of the object queries."""
from typing import NamedTuple

import torch
from torch import Tensor, nn

from models.mlp import MLP
from models.query_groups import QueryGroups
from util.nested_tensor import NestedTensor, nested_tensor_from_tensor_list


class DecodeResult(NamedTuple):
    """One DETR pass before the heads: the backbone ``features`` (NestedTensors, input side first), ``src_proj``
    ``[B, D, h, w]`` (last feature map after the input projection), its padding ``mask`` ``[B, h, w]``, every decoder
    layer's output ``hs`` ``[L, B, Q, D]`` and the encoder ``memory`` ``[B, D, h, w]``."""
    features: list[NestedTensor]
    src_proj: Tensor
    mask: Tensor
    hs: Tensor
    memory: Tensor


class DETR(nn.Module):
    """Backbone + transformer + heads: ``num_queries`` learned queries each predict a class and a box."""

    __jit_ignored_attributes__ = ["query_groups"]  # used in training only, where TorchScript never runs

    def __init__(self, backbone: nn.Module, transformer: nn.Module, num_classes: int, num_queries: int,
                 aux_loss: bool = False, query_groups: int = 1):
        """num_classes: largest class id + 1; the classifier has one more output for "no object".

        query_groups > 1 trains with that many groups of ``num_queries`` queries (Group DETR, see
        models/query_groups.py); only the first group runs outside training.
        """
        super().__init__()
        self.num_queries = num_queries
        self.num_query_groups = query_groups
        self.query_groups = QueryGroups(num_queries, query_groups)
        self.transformer = transformer
        hidden_dim = transformer.d_model
        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.bbox_embed = MLP(hidden_dim, hidden_dim, 4, 3)
        self.query_embed = nn.Embedding(num_queries * query_groups, hidden_dim)
        self.input_proj = nn.Conv2d(backbone.num_channels, hidden_dim, kernel_size=1)
        self.backbone = backbone
        self.aux_loss = aux_loss

    def forward(self, samples: NestedTensor) -> dict[str, Tensor]:
        """samples: a NestedTensor (images ``[B, 3, H, W]``, mask ``[B, H, W]`` True on padding); outside
        TorchScript also a list of ``[3, H_i, W_i]`` images or a ``[B, 3, H, W]`` tensor.

        Returns ``pred_logits`` ``[B, Q, K+1]``, ``pred_boxes`` ``[B, Q, 4]`` (cx, cy, w, h in [0, 1] of the
        unpadded image) and, with aux loss, ``aux_outputs``: the same two keys for each earlier decoder layer.
        Training with query groups returns all groups' queries (Q * groups).
        """
        return self.predict(self.decode(samples).hs)

    def decode(self, samples: NestedTensor) -> DecodeResult:
        """The forward pass up to the heads, keeping what a mask head needs (see DecodeResult)."""
        if isinstance(samples, (list, torch.Tensor)):
            samples = nested_tensor_from_tensor_list(samples)
        features, pos = self.backbone(samples)
        src, mask = features[-1].decompose()
        assert mask is not None
        if self.training and self.num_query_groups > 1:
            queries, query_mask = self._group_queries()
        else:
            queries, query_mask = self.query_embed.weight[: self.num_queries], None
        src_proj = self.input_proj(src)
        hs, memory = self.transformer(src_proj, mask, queries, pos[-1], query_mask)
        return DecodeResult(features, src_proj, mask, hs, memory)

    def predict(self, hs: Tensor) -> dict[str, Tensor]:
        """Class and box heads on decoder outputs ``[L, B, Q, D]``: the last layer's predictions, and the earlier
        layers' under ``aux_outputs`` when aux loss is on. Under autocast (``--amp``) the heads run in fp32: bf16 has
        8 bits of mantissa, so a box coordinate near 0.5 could only move in steps of 1/256 of the image (not in
        TorchScript, which keeps the heads under autocast)."""
        if not torch.jit.is_scripting():
            if torch.is_autocast_enabled(hs.device.type):
                with torch.autocast(hs.device.type, enabled=False):
                    return self._predict(hs.float())
        return self._predict(hs)

    def _predict(self, hs: Tensor) -> dict[str, Tensor]:
        outputs_class = self.class_embed(hs)
        outputs_coord = self.bbox_embed(hs).sigmoid()
        out = {"pred_logits": outputs_class[-1], "pred_boxes": outputs_coord[-1]}
        if self.aux_loss and not torch.jit.is_scripting():
            out["aux_outputs"] = self._set_aux_loss(outputs_class, outputs_coord)
        return out

    @torch.jit.unused
    def _group_queries(self) -> tuple[Tensor, Tensor | None]:
        return (self.query_groups.queries(self.query_embed.weight, True),
                self.query_groups.self_attention_mask(True, self.query_embed.weight.device))

    @torch.jit.unused
    def _set_aux_loss(self, outputs_class, outputs_coord):
        # Not annotated on purpose: TorchScript then types the (never run) call as a Tensor, so the outputs stay
        # a Dict[str, Tensor] in a scripted model, which has no aux outputs.
        return [{"pred_logits": a, "pred_boxes": b} for a, b in zip(outputs_class[:-1], outputs_coord[:-1])]
