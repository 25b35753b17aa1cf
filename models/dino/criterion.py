"""DINO's loss: focal classification and L1 + GIoU box losses on the matched queries of every decoder layer, of the
encoder's selected proposals (suffix ``_interm``), and of the denoising queries (suffix ``_dn``) against the
targets they were made from."""
import torch
from torch import Tensor, nn

from models.criterion import FocalSetCriterion
from models.layers.denoising import denoising_indices

GIOU_EPS = 1e-6  # the official DINO's GIoU adds it to the union and the enclosing area (matcher and loss)
DN_LOSS_NAMES = ("loss_bbox_dn", "loss_giou_dn", "loss_ce_dn", "loss_xy_dn", "loss_hw_dn", "cardinality_error_dn")


class DINOCriterion(FocalSetCriterion):
    """Losses by name (weight them with ``weight_dict``):

    ``loss_ce``: Deformable DETR's sigmoid focal loss (``focal_alpha``, gamma 2) against one-hot targets (unmatched
    queries: all zeros), summed over queries and classes, divided by the number of targets;
    ``class_error`` (logged, last layer); ``loss_bbox`` (L1), ``loss_giou`` (1 - GIoU, DINO's), both per target;
    ``loss_xy`` / ``loss_hw`` (logged: the L1 of centres / sizes); ``cardinality_error`` (logged).
    Each earlier decoder layer repeats them with suffix ``_0``, ``_1``, ...; the encoder's selected proposals
    (``interm_outputs``) with ``_interm``. Denoising: the positive denoising queries are paired with their targets
    (no matching), the negatives and padding count as "no object", and the losses are normalised by the number of
    targets times the number of groups, with suffix ``_dn`` (``_dn_0``, ... for earlier layers). Outside training
    or without denoising queries the denoising entries are zeros, as in the official code.
    """

    def __init__(self, num_classes: int, matcher: nn.Module, weight_dict: dict, focal_alpha: float = 0.25,
                 losses: tuple[str, ...] = ("labels", "boxes", "cardinality")):
        super().__init__(num_classes, matcher, weight_dict, losses=list(losses), focal_alpha=focal_alpha,
                         giou_eps=GIOU_EPS, log_box_parts=True)

    def forward(self, outputs: dict, targets: list[dict]) -> dict:
        """outputs: the model's dict; targets: per image ``labels`` ``[T_i]``, ``boxes`` ``[T_i, 4]`` (cxcywh).
        Returns the unweighted losses by name."""
        device = outputs["pred_logits"].device
        main = {k: v for k, v in outputs.items() if k not in ("aux_outputs", "dn_meta")}
        indices = self.match(main, targets)
        num_boxes = self.num_boxes(targets, device)
        dn_meta = outputs.get("dn_meta")
        dn_outputs = dn_meta.get("output_known_lbs_bboxes") if (self.training and dn_meta) else None

        losses = {}
        if dn_outputs is not None:
            dn_indices = denoising_indices(targets, dn_meta)
            dn_boxes = num_boxes * dn_meta["num_dn_group"]
            losses.update(self.layer_losses(dn_outputs, targets, dn_boxes, "_dn", dn_indices))
        else:
            losses.update(_zeros(DN_LOSS_NAMES, "", device))
        for loss in self.losses:
            losses.update(self.get_loss(loss, outputs, targets, indices, num_boxes))
        for i, aux_outputs in enumerate(outputs.get("aux_outputs", [])):
            losses.update(self.layer_losses(aux_outputs, targets, num_boxes, f"_{i}"))
            if dn_outputs is not None:
                losses.update(self.layer_losses(dn_outputs["aux_outputs"][i], targets, dn_boxes, f"_dn_{i}",
                                                dn_indices))
            else:
                losses.update(_zeros(DN_LOSS_NAMES, f"_{i}", device))
        if "interm_outputs" in outputs:
            losses.update(self.layer_losses(outputs["interm_outputs"], targets, num_boxes, "_interm"))
        return losses


def _zeros(names: tuple[str, ...], suffix: str, device: torch.device) -> dict[str, Tensor]:
    return {f"{name}{suffix}": torch.as_tensor(0.0, device=device) for name in names}
