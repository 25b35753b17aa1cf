"""DETR's set-prediction loss: match predictions to targets one-to-one, then supervise the matched pairs."""
import contextlib
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from models.layers.denoising import contrastive_denoising_indices
from models.losses import accuracy, dice_loss, sigmoid_focal_loss, varifocal_loss
from models.query_groups import QueryGroups
from util.box_ops import box_cxcywh_to_xyxy, box_iou, paired_generalized_box_iou
from util.distributed import get_world_size, is_dist_avail_and_initialized


class SetCriterion(nn.Module):
    """DETR's loss.

    Losses (``losses`` picks among them): ``labels`` -> ``loss_ce`` (cross-entropy, no-object weighted by
    ``eos_coef``) and logged ``class_error`` (%); ``cardinality`` -> ``cardinality_error`` (logged, no gradient);
    ``boxes`` -> ``loss_bbox`` (L1) and ``loss_giou`` (1 - GIoU), both summed over matches and divided by the
    number of target boxes averaged over processes; ``masks`` -> ``loss_mask`` (focal) and ``loss_dice`` (see
    loss_masks; last decoder layer only). With ``aux_outputs`` every loss is repeated per earlier decoder layer with
    suffix ``_0``, ``_1``, ...

    ``query_groups`` (Group DETR) decides how predictions are matched; None is plain DETR. ``giou_eps`` is added
    to the GIoU's denominators (DINO: 1e-6); ``log_box_parts`` adds the logged L1 of centres (``loss_xy``) and
    sizes (``loss_hw``). Subclasses (the other architectures) replace single losses (``loss_labels``) or add
    intermediate outputs through ``layer_losses``.
    """

    def __init__(self, num_classes: int, matcher: nn.Module, weight_dict: dict, eos_coef: float | None,
                 losses: list[str], query_groups: QueryGroups | None = None, giou_eps: float = 0.0,
                 log_box_parts: bool = False):
        super().__init__()
        self.num_classes = num_classes
        self.matcher = matcher
        self.weight_dict = weight_dict
        self.eos_coef = eos_coef
        self.losses = losses
        self.query_groups = query_groups
        self.giou_eps = giou_eps
        self.log_box_parts = log_box_parts
        self._box_total: float | None = None  # set by normalised_over (gradient accumulation)
        self._mean_scale = 1.0
        if eos_coef is not None:  # the softmax classifier's class weights, "no object" last
            empty_weight = torch.ones(self.num_classes + 1)
            empty_weight[-1] = self.eos_coef
            self.register_buffer("empty_weight", empty_weight)

    def loss_labels(self, outputs, targets, indices, num_boxes, log=True) -> dict:
        """``loss_ce`` (:meth:`classification_loss`) of ``pred_logits`` ``[B, Q, K(+1)]`` against every query's
        target class (matched: its target's label; unmatched: ``num_classes``, "no object"), and with ``log`` the
        matched queries' ``class_error`` (%)."""
        src_logits = outputs["pred_logits"]
        idx = self._get_src_permutation_idx(indices)
        target_classes_o = torch.cat([t["labels"][j] for t, (_, j) in zip(targets, indices)])
        target_classes = torch.full(src_logits.shape[:2], self.num_classes, dtype=torch.int64,
                                    device=src_logits.device)
        target_classes[idx] = target_classes_o
        losses = {"loss_ce": self.classification_loss(src_logits, target_classes, num_boxes)}
        if log:
            losses["class_error"] = 100 - accuracy(src_logits[idx], target_classes_o)[0]
        return losses

    def classification_loss(self, logits: torch.Tensor, target_classes: torch.Tensor, num_boxes: float
                            ) -> torch.Tensor:
        """DETR's: cross-entropy over the K + 1 softmax classes, "no object" weighted by ``eos_coef`` (a weighted mean
        over queries)."""
        return F.cross_entropy(logits.transpose(1, 2), target_classes, self.empty_weight) * self._mean_scale

    @torch.no_grad()
    def loss_cardinality(self, outputs, targets, indices, num_boxes) -> dict:
        """Absolute error in the number of predicted objects (argmax not "no object"); for logging only.
        With query groups, the first group's count."""
        pred_logits = outputs["pred_logits"]
        if self.groups_in(outputs) > 1:
            pred_logits = self.query_groups.first_group(pred_logits)
        tgt_lengths = torch.as_tensor([len(v["labels"]) for v in targets], device=pred_logits.device)
        card_pred = (pred_logits.argmax(-1) != pred_logits.shape[-1] - 1).sum(1)
        return {"cardinality_error": F.l1_loss(card_pred.float(), tgt_lengths.float())}

    def loss_boxes(self, outputs, targets, indices, num_boxes) -> dict:
        idx = self._get_src_permutation_idx(indices)
        src_boxes = outputs["pred_boxes"][idx]
        target_boxes = torch.cat([t["boxes"][i] for t, (_, i) in zip(targets, indices)], dim=0)
        loss_bbox = F.l1_loss(src_boxes, target_boxes, reduction="none")
        loss_giou = 1 - paired_generalized_box_iou(box_cxcywh_to_xyxy(src_boxes), box_cxcywh_to_xyxy(target_boxes),
                                                   eps=self.giou_eps)
        losses = {"loss_bbox": loss_bbox.sum() / num_boxes, "loss_giou": loss_giou.sum() / num_boxes}
        if self.log_box_parts:
            with torch.no_grad():
                losses["loss_xy"] = loss_bbox[..., :2].sum() / num_boxes
                losses["loss_hw"] = loss_bbox[..., 2:].sum() / num_boxes
        return losses

    def loss_masks(self, outputs, targets, indices, num_boxes) -> dict:
        """Focal (``loss_mask``) and DICE (``loss_dice``) losses of matched ``pred_masks`` ``[B, Q, h, w]`` against
        target ``masks`` ``[T_i, H_i, W_i]``, upsampled to the padded batch size (padding counts as background)."""
        src_masks = outputs["pred_masks"][self._get_src_permutation_idx(indices)]
        height = max(t["masks"].shape[-2] for t in targets)
        width = max(t["masks"].shape[-1] for t in targets)
        target_masks = torch.cat([_pad_to(t["masks"][j], height, width) for t, (_, j) in zip(targets, indices)])
        target_masks = target_masks.to(src_masks)
        src_masks = F.interpolate(src_masks[:, None], size=(height, width), mode="bilinear", align_corners=False)
        src_masks = src_masks[:, 0].flatten(1)
        target_masks = target_masks.flatten(1)
        return {"loss_mask": sigmoid_focal_loss(src_masks, target_masks, num_boxes),
                "loss_dice": dice_loss(src_masks, target_masks, num_boxes)}

    @staticmethod
    def _get_src_permutation_idx(indices) -> tuple[torch.Tensor, torch.Tensor]:
        """(batch index, query index) of every matched prediction, for indexing ``[B, Q, ...]`` outputs."""
        batch_idx = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)])
        src_idx = torch.cat([src for (src, _) in indices])
        return batch_idx, src_idx

    def get_loss(self, loss, outputs, targets, indices, num_boxes, **kwargs) -> dict:
        loss_map = {"labels": self.loss_labels, "cardinality": self.loss_cardinality, "boxes": self.loss_boxes,
                    "masks": self.loss_masks}
        if loss not in loss_map:
            raise ValueError(f"unknown loss {loss!r}; choose from {sorted(loss_map)}")
        return loss_map[loss](outputs, targets, indices, num_boxes, **kwargs)

    def groups_in(self, outputs: dict) -> int:
        """How many query groups ``outputs`` holds (1 without Group DETR)."""
        return 1 if self.query_groups is None else self.query_groups.groups_in(outputs)

    def match(self, outputs: dict, targets: list[dict]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per image (prediction indices, target indices) of the one-to-one matching."""
        if self.query_groups is None:
            return self.matcher(outputs, targets)
        return self.query_groups.match(self.matcher, outputs, targets)

    @contextlib.contextmanager
    def normalised_over(self, total_boxes: float, batches: int):
        """Within, every loss of a batch is normalised as part of ``batches`` batches trained as one (gradient
        accumulation): the per-box terms by ``total_boxes`` (the boxes of all of them, averaged over processes as
        :meth:`num_boxes` does) instead of the batch's own, and DETR's cross-entropy, a mean over queries, divided
        by ``batches``. Summed over the batches, the losses are those of the one larger batch (DETR's cross-entropy
        when the batches hold as many targets, its weights then summing alike)."""
        self._box_total, self._mean_scale = total_boxes, 1.0 / batches
        try:
            yield
        finally:
            self._box_total, self._mean_scale = None, 1.0

    def num_boxes(self, targets: list[dict], device: torch.device, matches_per_target: int = 1) -> float:
        """Number of target boxes averaged over processes (at least 1): the losses' normaliser (the accumulated
        batches' total within :meth:`normalised_over`)."""
        if self._box_total is not None:
            return self._box_total * matches_per_target
        num_boxes = sum(len(t["labels"]) for t in targets) * matches_per_target
        num_boxes = torch.as_tensor([num_boxes], dtype=torch.float, device=device)
        if is_dist_avail_and_initialized():
            torch.distributed.all_reduce(num_boxes)
        return torch.clamp(num_boxes / get_world_size(), min=1).item()

    def layer_losses(self, outputs: dict, targets: list[dict], num_boxes: float, suffix: str,
                     indices: list[tuple[torch.Tensor, torch.Tensor]] | None = None) -> dict:
        """The losses of an intermediate prediction (no masks, no logged class error), each name followed by
        ``suffix``; matched on its own unless ``indices`` (per image (prediction, target) indices) pair them."""
        if indices is None:
            indices = self.match(outputs, targets)
        losses = {}
        for loss in self.losses:
            if loss == "masks":  # only the last decoder layer predicts masks
                continue
            kwargs = {"log": False} if loss == "labels" else {}
            l_dict = self.get_loss(loss, outputs, targets, indices, num_boxes, **kwargs)
            losses.update({f"{k}{suffix}": v for k, v in l_dict.items()})
        return losses

    def forward(self, outputs: dict, targets: list[dict]) -> dict:
        """outputs: the model's dict; targets: per image ``labels`` ``[T_i]``, ``boxes`` ``[T_i, 4]`` (cxcywh).

        Returns the unweighted losses by name; weight them with ``weight_dict``.
        """
        outputs_without_aux = {k: v for k, v in outputs.items() if k != "aux_outputs"}
        indices = self.match(outputs_without_aux, targets)
        # With query groups every target is matched once per group: normalise by all matches.
        num_boxes = self.num_boxes(targets, outputs["pred_logits"].device, self.groups_in(outputs))
        losses = {}
        for loss in self.losses:
            losses.update(self.get_loss(loss, outputs, targets, indices, num_boxes))
        for i, aux_outputs in enumerate(outputs.get("aux_outputs", [])):
            losses.update(self.layer_losses(aux_outputs, targets, num_boxes, f"_{i}"))
        return losses


class FocalSetCriterion(SetCriterion):
    """The set loss of sigmoid classifiers (Deformable DETR, DINO): DETR's losses with ``loss_ce`` the sigmoid
    focal loss (``focal_alpha``, gamma 2) of the logits ``[B, Q, K]`` against one-hot targets (unmatched queries:
    all zeros), summed over queries and classes and divided by the number of target boxes (the official ``mean over
    queries * Q``). ``cardinality_error`` counts queries whose best class is not the last one (the official rule,
    kept for sigmoid logits)."""

    def __init__(self, num_classes: int, matcher: nn.Module, weight_dict: dict, losses: list[str],
                 focal_alpha: float = 0.25, giou_eps: float = 0.0, log_box_parts: bool = False):
        super().__init__(num_classes, matcher, weight_dict, eos_coef=None, losses=losses, giou_eps=giou_eps,
                         log_box_parts=log_box_parts)
        self.focal_alpha = focal_alpha

    def classification_loss(self, logits: torch.Tensor, target_classes: torch.Tensor, num_boxes: float
                            ) -> torch.Tensor:
        """The sigmoid focal loss of ``logits`` ``[B, Q, K]`` against one-hot targets."""
        # one-hot with an extra "no object" column, which is then dropped: unmatched queries are all zeros
        onehot = torch.zeros([*logits.shape[:2], logits.shape[2] + 1], dtype=logits.dtype, layout=logits.layout,
                             device=logits.device)
        onehot.scatter_(2, target_classes.unsqueeze(-1), 1)
        onehot = onehot[:, :, :-1]
        return sigmoid_focal_loss(logits, onehot, num_boxes, alpha=self.focal_alpha, gamma=2) * logits.shape[1]


def _pad_to(masks: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Zero-pad ``[N, h, w]`` at the bottom/right to ``[N, height, width]``."""
    return F.pad(masks, (0, width - masks.shape[-1], 0, height - masks.shape[-2]))


class VarifocalSetCriterion(SetCriterion):
    """RT-DETRv2's loss (official ``RTDETRCriterionv2``): the varifocal loss and the box losses of the last decoder
    layer, of every earlier layer (``aux_outputs``, each matched on its own unless ``share_matched_indices``), of
    every layer's denoising queries (``dn_aux_outputs``, paired by construction) and of the encoder's selected
    tokens (``enc_aux_outputs``).

    losses: among ``vfl`` -> ``loss_vfl`` (:func:`models.losses.varifocal_loss` with ``alpha``, ``gamma``; the
    target score is the IoU of the matched pair, no gradient) and ``boxes`` -> ``loss_bbox`` (L1) and
    ``loss_giou`` (1 - GIoU), all normalised by the number of target boxes averaged over processes (denoising: times
    the number of groups). Names: ``loss_vfl`` ..., then ``loss_vfl_aux_{i}`` (i < num_decoder_layers - 1),
    ``loss_vfl_dn_{i}`` (i < num_decoder_layers), ``loss_vfl_enc_0`` ... The arguments before ``*`` are the
    official ones, in its order and with its defaults (the official configs: alpha 0.75, gamma 2).

    As the official, :meth:`forward` returns the terms already multiplied by their weight in ``loss_weights``
    (``{"loss_vfl": 1, "loss_bbox": 5, "loss_giou": 2}`` in the official configs; a term without a weight is not
    returned), and ``weight_dict`` maps every name it can return to 1.0: for a decoder of ``num_decoder_layers``
    layers, with intermediate outputs when ``aux_loss`` (the decoder's: aux, encoder and denoising outputs come
    together) and denoising ones when ``num_denoising`` > 0. With a class-agnostic encoder head
    (``enc_meta["class_agnostic"]``) the encoder's terms treat every target as class 0 of one class, in the matching
    too (the official matches them with the real classes, which fails for any class but 0).
    """

    LOSS_TERMS = {"vfl": ("loss_vfl",), "boxes": ("loss_bbox", "loss_giou")}

    def __init__(self, matcher: nn.Module, loss_weights: dict[str, float], losses: Sequence[str] = ("vfl", "boxes"),
                 alpha: float = 0.2, gamma: float = 2.0, num_classes: int = 80, *, num_decoder_layers: int = 6,
                 aux_loss: bool = True, num_denoising: int = 100, share_matched_indices: bool = False):
        unknown = sorted(set(losses) - set(self.LOSS_TERMS))
        if unknown:
            raise ValueError(f"VarifocalSetCriterion: unknown losses {unknown}; choose from {sorted(self.LOSS_TERMS)}")
        terms = [name for loss in losses for name in self.LOSS_TERMS[loss]]
        unknown = sorted(set(loss_weights) - set(terms))
        if unknown:
            raise ValueError(f"VarifocalSetCriterion: loss_weights name {unknown}, which losses {list(losses)} do "
                             f"not compute ({terms})")
        suffixes = [""]
        if aux_loss:
            suffixes += [f"_aux_{i}" for i in range(num_decoder_layers - 1)]
            suffixes += [f"_dn_{i}" for i in range(num_decoder_layers)] if num_denoising > 0 else []
            suffixes += ["_enc_0"]
        weighted = [name for name in terms if name in loss_weights]
        super().__init__(num_classes, matcher, {f"{name}{suffix}": 1.0 for suffix in suffixes for name in weighted},
                         eos_coef=None, losses=list(losses))
        self.loss_weights = dict(loss_weights)
        self.num_decoder_layers = num_decoder_layers
        self.alpha = alpha
        self.gamma = gamma
        self.share_matched_indices = share_matched_indices

    def loss_vfl(self, outputs: dict, targets: list[dict], indices: list, num_boxes: float,
                 num_classes: int | None = None) -> dict:
        """``loss_vfl`` of ``pred_logits`` ``[B, Q, K]``: the matched queries' target is the IoU of their box with
        the target's at the target's class (``num_classes``: K, default ``self.num_classes``)."""
        num_classes = self.num_classes if num_classes is None else num_classes
        idx = self._get_src_permutation_idx(indices)
        src_boxes = outputs["pred_boxes"][idx]
        target_boxes = torch.cat([t["boxes"][j] for t, (_, j) in zip(targets, indices)], dim=0)
        ious = box_iou(box_cxcywh_to_xyxy(src_boxes), box_cxcywh_to_xyxy(target_boxes))[0].diagonal().detach()
        logits = outputs["pred_logits"]
        target_classes = torch.full(logits.shape[:2], num_classes, dtype=torch.int64, device=logits.device)
        target_classes[idx] = torch.cat([t["labels"][j] for t, (_, j) in zip(targets, indices)])
        positive = F.one_hot(target_classes, num_classes=num_classes + 1)[..., :-1]
        score = torch.zeros_like(target_classes, dtype=logits.dtype)
        score[idx] = ious.to(score.dtype)
        target_score = score.unsqueeze(-1) * positive
        return {"loss_vfl": varifocal_loss(logits, target_score, positive, num_boxes, self.alpha, self.gamma)}

    def weighted_losses(self, outputs: dict, targets: list[dict], indices: list, num_boxes: float, suffix: str = "",
                        num_classes: int | None = None) -> dict:
        """The weighted terms of one prediction (``pred_logits``, ``pred_boxes``), names followed by ``suffix``."""
        losses = {}
        for loss in self.losses:
            if loss == "vfl":
                terms = self.loss_vfl(outputs, targets, indices, num_boxes, num_classes)
            else:
                terms = self.loss_boxes(outputs, targets, indices, num_boxes)
            losses.update({f"{k}{suffix}": value * self.loss_weights[k] for k, value in terms.items()
                           if k in self.loss_weights})
        return losses

    def forward(self, outputs: dict, targets: list[dict]) -> dict:
        """outputs: RTDETRTransformerv2's dict; targets: per image ``labels`` ``[T_i]`` and ``boxes`` ``[T_i, 4]``
        (normalised cxcywh). Returns the weighted terms by name."""
        num_boxes = self.num_boxes(targets, outputs["pred_logits"].device)
        indices = self.matcher(outputs, targets)
        losses = self.weighted_losses(outputs, targets, indices, num_boxes)
        for i, aux_outputs in enumerate(outputs.get("aux_outputs", [])):
            if not self.share_matched_indices:
                indices = self.matcher(aux_outputs, targets)
            losses.update(self.weighted_losses(aux_outputs, targets, indices, num_boxes, f"_aux_{i}"))
        if "dn_aux_outputs" in outputs:
            dn_meta = outputs["dn_meta"]
            indices = contrastive_denoising_indices(dn_meta, targets)
            for i, dn_outputs in enumerate(outputs["dn_aux_outputs"]):
                losses.update(self.weighted_losses(dn_outputs, targets, indices, num_boxes * dn_meta["dn_num_group"],
                                                   f"_dn_{i}"))
        if "enc_aux_outputs" in outputs:
            num_classes, enc_targets = self.num_classes, targets
            if outputs["enc_meta"]["class_agnostic"]:
                num_classes = 1
                enc_targets = [{**t, "labels": torch.zeros_like(t["labels"])} for t in targets]
            for i, enc_outputs in enumerate(outputs["enc_aux_outputs"]):
                indices = self.matcher(enc_outputs, enc_targets)
                losses.update(self.weighted_losses(enc_outputs, enc_targets, indices, num_boxes, f"_enc_{i}",
                                                   num_classes))
        unnamed = sorted(set(losses) - set(self.weight_dict))
        if unnamed:
            raise ValueError(f"VarifocalSetCriterion: {unnamed} are not in weight_dict: the outputs hold more "
                             f"than num_decoder_layers ({self.num_decoder_layers}), aux_loss or num_denoising said")
        return losses
