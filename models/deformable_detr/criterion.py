"""Deformable DETR's set criterion: DETR's, with a sigmoid focal classification loss and, for two-stage, losses on
the encoder proposals."""
import torch

from models.criterion import SetCriterion
from models.losses import accuracy, sigmoid_focal_loss


class DeformableCriterion(SetCriterion):
    """Losses as DETR's SetCriterion (``labels``, ``boxes``, ``cardinality``; ``_0``, ``_1``, ... for the earlier
    decoder layers) except:

    ``loss_ce``: sigmoid focal loss (``focal_alpha``, gamma 2) of the logits ``[B, Q, K]`` against one-hot targets
    (unmatched queries: all zeros), summed over queries and classes and divided by the number of target boxes
    (the official ``mean over queries * Q``). ``cardinality_error`` counts queries whose best class is not the last
    one (the official rule, kept for sigmoid logits). With ``enc_outputs`` (two-stage) the encoder proposals are
    matched to the targets as one class (label 0) and get the same losses with suffix ``_enc``.
    """

    def __init__(self, num_classes: int, matcher: torch.nn.Module, weight_dict: dict, losses: list[str],
                 focal_alpha: float = 0.25):
        # eos_coef is unused: the sigmoid classifier has no "no object" output
        super().__init__(num_classes, matcher, weight_dict, eos_coef=1.0, losses=losses)
        self.focal_alpha = focal_alpha

    def loss_labels(self, outputs, targets, indices, num_boxes, log=True) -> dict:
        src_logits = outputs["pred_logits"]
        idx = self._get_src_permutation_idx(indices)
        target_classes_o = torch.cat([t["labels"][j] for t, (_, j) in zip(targets, indices)])
        target_classes = torch.full(src_logits.shape[:2], self.num_classes, dtype=torch.int64,
                                    device=src_logits.device)
        target_classes[idx] = target_classes_o
        # one-hot with an extra "no object" column, which is then dropped: unmatched queries are all zeros
        onehot = torch.zeros([*src_logits.shape[:2], src_logits.shape[2] + 1], dtype=src_logits.dtype,
                             layout=src_logits.layout, device=src_logits.device)
        onehot.scatter_(2, target_classes.unsqueeze(-1), 1)
        onehot = onehot[:, :, :-1]
        loss_ce = sigmoid_focal_loss(src_logits, onehot, num_boxes, alpha=self.focal_alpha, gamma=2)
        losses = {"loss_ce": loss_ce * src_logits.shape[1]}
        if log:
            losses["class_error"] = 100 - accuracy(src_logits[idx], target_classes_o)[0]
        return losses

    def forward(self, outputs: dict, targets: list[dict]) -> dict:
        """outputs: the model's dict (``enc_outputs`` with two-stage); targets: per image ``labels`` ``[T_i]`` and
        ``boxes`` ``[T_i, 4]`` (normalised cxcywh). Returns the unweighted losses by name."""
        losses = super().forward({k: v for k, v in outputs.items() if k != "enc_outputs"}, targets)
        if "enc_outputs" in outputs:
            class_agnostic = [{**t, "labels": torch.zeros_like(t["labels"])} for t in targets]
            num_boxes = self.num_boxes(targets, outputs["pred_logits"].device)
            losses.update(self.layer_losses(outputs["enc_outputs"], class_agnostic, num_boxes, "_enc"))
        return losses
