"""Deformable DETR's set criterion: the focal set loss and, for two-stage, the same losses on the encoder
proposals."""
import torch

from models.criterion import FocalSetCriterion


class DeformableCriterion(FocalSetCriterion):
    """Losses as :class:`models.criterion.FocalSetCriterion` (``labels``, ``boxes``, ``cardinality``; ``_0``,
    ``_1``, ... for the earlier decoder layers); with ``enc_outputs`` (two-stage) the encoder proposals are matched
    to the targets as one class (label 0) and get the same losses with suffix ``_enc``."""

    def forward(self, outputs: dict, targets: list[dict]) -> dict:
        """outputs: the model's dict (``enc_outputs`` with two-stage); targets: per image ``labels`` ``[T_i]`` and
        ``boxes`` ``[T_i, 4]`` (normalised cxcywh). Returns the unweighted losses by name."""
        losses = super().forward({k: v for k, v in outputs.items() if k != "enc_outputs"}, targets)
        if "enc_outputs" in outputs:
            class_agnostic = [{**t, "labels": torch.zeros_like(t["labels"])} for t in targets]
            num_boxes = self.num_boxes(targets, outputs["pred_logits"].device)
            losses.update(self.layer_losses(outputs["enc_outputs"], class_agnostic, num_boxes, "_enc"))
        return losses
