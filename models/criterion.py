"""DETR's set-prediction loss: match predictions to targets one-to-one, then supervise the matched pairs."""
import contextlib
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from models.layers.denoising import contrastive_denoising_indices
from models.layers.fdr import box_edge_distances
from models.losses import (
    accuracy,
    dice_loss,
    matchability_aware_loss,
    sigmoid_focal_loss,
    unimodal_distribution_focal_loss,
    varifocal_loss,
)
from models.query_groups import QueryGroups
from util.box_ops import box_cxcywh_to_xyxy, box_iou, paired_generalized_box_iou, sized_box_corners
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
    sizes (``loss_hw``). Subclasses (the other architectures) replace single losses (``loss_labels``), the boxes'
    corners that IoU and GIoU see (:meth:`box_corners`) or add intermediate outputs through ``layer_losses``.
    """

    # (cx, cy, w, h) [..., 4] -> (x0, y0, x1, y1), for IoU and GIoU
    box_corners = staticmethod(box_cxcywh_to_xyxy)

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
        loss_giou = 1 - paired_generalized_box_iou(self.box_corners(src_boxes), self.box_corners(target_boxes),
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


def matched_class_iou(outputs: dict, targets: list[dict], indices: list, num_classes: int,
                      box_corners: Callable[[torch.Tensor], torch.Tensor] = box_cxcywh_to_xyxy
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """The IoU-aware classification targets of ``pred_logits`` ``[B, Q, K]`` (K = ``num_classes``): ``iou_score``
    ``[B, Q, K]``, the IoU (no gradient) of each matched query's box with its target's at the target's class, 0
    elsewhere, and ``positive`` ``[B, Q, K]``, the one-hot matched class (int64, all 0 for unmatched queries). What
    the varifocal and matchability-aware losses read (``indices``: per image (query, target) indices; ``box_corners``:
    cxcywh -> xyxy for the IoU)."""
    idx = SetCriterion._get_src_permutation_idx(indices)
    src_boxes = outputs["pred_boxes"][idx]
    target_boxes = torch.cat([t["boxes"][j] for t, (_, j) in zip(targets, indices)], dim=0)
    ious = box_iou(box_corners(src_boxes), box_corners(target_boxes))[0].diagonal().detach()
    logits = outputs["pred_logits"]
    target_classes = torch.full(logits.shape[:2], num_classes, dtype=torch.int64, device=logits.device)
    target_classes[idx] = torch.cat([t["labels"][j] for t, (_, j) in zip(targets, indices)])
    positive = F.one_hot(target_classes, num_classes=num_classes + 1)[..., :-1]
    score = torch.zeros_like(target_classes, dtype=logits.dtype)
    score[idx] = ious.to(score.dtype)
    return score.unsqueeze(-1) * positive, positive


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

    LOSS_TERMS = {"vfl": ("loss_vfl",), "boxes": ("loss_bbox", "loss_giou")}  # name in ``losses`` -> its terms
    # the classification losses: name -> method(outputs, targets, indices, num_boxes, num_classes); the other losses
    # are SetCriterion's (:meth:`get_loss`). A subclass adds its own (MAL) by extending both tables.
    CLASSIFICATION_LOSSES = {"vfl": "loss_vfl"}

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
        target_score, positive = matched_class_iou(outputs, targets, indices, num_classes, self.box_corners)
        return {"loss_vfl": varifocal_loss(outputs["pred_logits"], target_score, positive, num_boxes, self.alpha,
                                           self.gamma)}

    def loss_terms(self, loss: str, outputs: dict, targets: list[dict], indices: list, num_boxes: float,
                   num_classes: int | None = None) -> dict:
        """The unweighted terms of the loss ``loss`` (a name of ``losses``) of one prediction: a classification
        loss (:attr:`CLASSIFICATION_LOSSES`) with ``num_classes`` (K, default ``self.num_classes``), else
        :meth:`get_loss`'s."""
        if loss in self.CLASSIFICATION_LOSSES:
            return getattr(self, self.CLASSIFICATION_LOSSES[loss])(outputs, targets, indices, num_boxes, num_classes)
        return self.get_loss(loss, outputs, targets, indices, num_boxes)

    def weighted(self, terms: dict, suffix: str) -> dict:
        """Each term times its weight in ``loss_weights`` (a term without a weight is left out), names followed by
        ``suffix``."""
        return {f"{k}{suffix}": value * self.loss_weights[k] for k, value in terms.items() if k in self.loss_weights}

    def weighted_losses(self, outputs: dict, targets: list[dict], indices: list, num_boxes: float, suffix: str = "",
                        num_classes: int | None = None) -> dict:
        """The weighted terms of one prediction (``pred_logits``, ``pred_boxes``), names followed by ``suffix``."""
        losses = {}
        for loss in self.losses:
            losses.update(self.weighted(self.loss_terms(loss, outputs, targets, indices, num_boxes, num_classes),
                                        suffix))
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


class MatchabilityAwareSetCriterion(VarifocalSetCriterion):
    """RT-DETRv2's loss with DEIM's classification term (Huang et al., CVPR 2025, arXiv:2412.04234; the official
    ``DEIMCriterion`` as DEIM's RT-DETRv2 configs set it, ``use_uni_set: False``): ``losses`` may name ``mal`` ->
    ``loss_mal`` (:func:`models.losses.matchability_aware_loss` with ``gamma`` and ``mal_alpha``) in place of
    ``vfl``, which the official selects the same way, by its ``losses`` list. Everything else is
    :class:`VarifocalSetCriterion`'s: matching per layer, denoising and encoder terms, the weights in
    ``loss_weights``, the names (``loss_mal``, ``loss_mal_aux_0``, ``loss_mal_dn_0``, ``loss_mal_enc_0`` ...).

    As in the official, one ``gamma`` serves VFL and MAL (DEIM's configs: ``losses ['mal', 'boxes']``, ``gamma``
    1.5, ``mal_alpha`` None, weights ``loss_mal`` 1, ``loss_bbox`` 5, ``loss_giou`` 2); ``mal_alpha`` None weighs
    the negatives by ``sigmoid(logit) ** gamma`` alone. The official's last step, replacing NaN terms by 0, is left
    out: a NaN loss stops the run here (util/train_step.py) instead of training on silently.
    """

    LOSS_TERMS = {**VarifocalSetCriterion.LOSS_TERMS, "mal": ("loss_mal",)}
    CLASSIFICATION_LOSSES = {**VarifocalSetCriterion.CLASSIFICATION_LOSSES, "mal": "loss_mal"}

    def __init__(self, matcher: nn.Module, loss_weights: dict[str, float], losses: Sequence[str] = ("mal", "boxes"),
                 alpha: float = 0.2, gamma: float = 2.0, num_classes: int = 80, *, mal_alpha: float | None = None,
                 num_decoder_layers: int = 6, aux_loss: bool = True, num_denoising: int = 100,
                 share_matched_indices: bool = False):
        if "mal" in losses and "vfl" in losses:
            raise ValueError(f"{type(self).__name__}: losses name both 'mal' and 'vfl'; choose one "
                             "classification loss")
        super().__init__(matcher, loss_weights, losses, alpha, gamma, num_classes,
                         num_decoder_layers=num_decoder_layers, aux_loss=aux_loss, num_denoising=num_denoising,
                         share_matched_indices=share_matched_indices)
        self.mal_alpha = mal_alpha

    def loss_mal(self, outputs: dict, targets: list[dict], indices: list, num_boxes: float,
                 num_classes: int | None = None) -> dict:
        """``loss_mal`` of ``pred_logits`` ``[B, Q, K]`` (``num_classes``: K, default ``self.num_classes``)."""
        num_classes = self.num_classes if num_classes is None else num_classes
        iou_score, positive = matched_class_iou(outputs, targets, indices, num_classes, self.box_corners)
        alpha = 1.0 if self.mal_alpha is None else self.mal_alpha
        return {"loss_mal": matchability_aware_loss(outputs["pred_logits"], iou_score, positive, num_boxes,
                                                    self.gamma, alpha)}


def union_of_matches(indices: list, other_indices: list[list]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """D-FINE's "go" indices (official ``_get_go_indices``): per image, every (query, target) pair matched by
    ``indices`` or by any of ``other_indices`` (per image (query, target) index pairs each), a query kept once,
    with the target it was matched to most often (ties: the order of ``torch.argsort`` over the pairs in increasing
    (query, target) order, as official). Queries in decreasing order of that count, int64."""
    union = []
    for image, (queries, matched) in enumerate(indices):
        pairs = torch.stack([torch.cat([queries, *(other[image][0] for other in other_indices)]),
                             torch.cat([matched, *(other[image][1] for other in other_indices)])], dim=1)
        unique, counts = torch.unique(pairs, return_counts=True, dim=0)
        target_of: dict[int, int] = {}
        for query, target in unique[torch.argsort(counts, descending=True)].tolist():
            target_of.setdefault(query, target)
        union.append((torch.tensor(list(target_of), device=pairs.device).long(),
                      torch.tensor(list(target_of.values()), device=pairs.device).long()))
    return union


class DFINECriterion(MatchabilityAwareSetCriterion):
    """D-FINE's loss (official ``DFINECriterion``, Peterande/D-FINE; Peng et al., ICLR 2025, arXiv:2410.13842).

    Terms (``losses`` picks among them): ``vfl`` -> ``loss_vfl`` (the varifocal loss; target score the matched IoU)
    or, as DEIM's D-FINE, ``mal`` -> ``loss_mal`` (:class:`MatchabilityAwareSetCriterion`'s, with ``mal_alpha``);
    ``boxes`` -> ``loss_bbox`` (L1), ``loss_giou`` (1 - GIoU); ``local`` -> ``loss_fgl`` (fine-grained
    localisation: :func:`models.losses.unimodal_distribution_focal_loss` of the edge logits ``pred_corners`` towards
    the two bins around each target edge (:func:`models.losses.box_edge_distances` from the detached reference
    ``ref_points``), weighted by the matched IoU) and ``loss_ddf`` (decoupled distillation focal: the
    KL divergence, at temperature ``distillation_temperature``, of every query's edge distributions from the last
    layer's, ``teacher_corners``, weighted by the matched IoU on matched queries and by the teacher's best class
    probability on the others, the two means mixed in proportion to the square roots of their counts; 0 for the
    last layer itself).

    Matching: each output is matched on its own (``vfl``), but the box and local terms of the decoder layers, the
    first layer's RT-DETR box (``pre_outputs``) and the encoder's selection use the union of all these matches
    (:func:`union_of_matches`), normalised by its size (averaged over processes); denoising outputs are paired by
    construction and normalised by the number of targets times the groups (1 for a batch without targets).
    Names: ``loss_vfl``, ``loss_bbox``, ``loss_giou``, ``loss_fgl`` of the last layer; ``..._aux_{i}`` (with
    ``loss_ddf``) of the others; ``..._pre``; ``..._enc_0``; ``..._dn_{i}`` and ``..._dn_pre``. As official,
    :meth:`forward` returns the terms multiplied by their weight in ``loss_weights`` (the official configs:
    ``{"loss_vfl": 1, "loss_bbox": 5, "loss_giou": 2, "loss_fgl": 0.15, "loss_ddf": 1.5}``, alpha 0.75, gamma 2),
    every term with NaN replaced by 0 (the official last step: the VFL of a batch without targets averages over no
    denoising query), and ``weight_dict`` maps every name it can return to 1.0.

    D-FINE's boxes can turn inside out: IoU and GIoU see them with negative sizes taken as 0
    (:func:`~util.box_ops.sized_box_corners`, the official conversion; :attr:`box_corners`); the matcher must do
    the same (:class:`~models.matcher.DFINEHungarianMatcher`). With a class-agnostic encoder head its terms treat
    every target as class 0 of one class, in the matching too (the official matches them with the real classes,
    which fails for any class but 0).
    DEIM's ``DEIMCriterion`` for D-FINE is this criterion with ``mal`` and ``teacher_self_term`` False (it returns
    no ``loss_ddf`` for the last denoising layer, its own teacher; D-FINE's returns 0).
    Not implemented: ``boxes_weight_format`` and the ``focal`` loss (no official D-FINE config uses them).
    """

    LOSS_TERMS = {**MatchabilityAwareSetCriterion.LOSS_TERMS, "local": ("loss_fgl", "loss_ddf")}
    box_corners = staticmethod(sized_box_corners)

    def __init__(self, matcher: nn.Module, loss_weights: dict[str, float],
                 losses: Sequence[str] = ("vfl", "boxes", "local"), alpha: float = 0.2, gamma: float = 2.0,
                 num_classes: int = 80, reg_max: int = 32, *, num_decoder_layers: int = 6, aux_loss: bool = True,
                 num_denoising: int = 100, distillation_temperature: float = 5.0, mal_alpha: float | None = None,
                 teacher_self_term: bool = True):
        super().__init__(matcher, loss_weights, losses, alpha, gamma, num_classes, mal_alpha=mal_alpha,
                         num_decoder_layers=num_decoder_layers, aux_loss=aux_loss, num_denoising=num_denoising)
        self.teacher_self_term = teacher_self_term
        self.reg_max = reg_max
        self.distillation_temperature = distillation_temperature
        weighted = [name for loss in losses for name in self.LOSS_TERMS[loss] if name in loss_weights]
        last = [name for name in weighted if name != "loss_ddf"]
        first = [name for name in weighted if name not in ("loss_fgl", "loss_ddf")]
        names = [*last]
        if aux_loss:
            names += [f"{name}_aux_{i}" for i in range(num_decoder_layers - 1) for name in weighted]
            names += [f"{name}{suffix}" for suffix in ("_pre", "_enc_0") for name in first]
            if num_denoising > 0:
                names += [f"{name}_dn_{i}" for i in range(num_decoder_layers) for name in weighted]
                names += [f"{name}_dn_pre" for name in first]
        self.weight_dict = dict.fromkeys(names, 1.0)

    def loss_local(self, outputs: dict, targets: list[dict], indices: list, num_boxes: float, up: torch.Tensor,
                   reg_scale: torch.Tensor, balance: list) -> dict:
        """``loss_fgl`` and, with ``teacher_corners``, ``loss_ddf`` of an output with ``pred_corners`` ``[B, Q, 4
        (reg_max + 1)]`` and ``ref_points`` ``[B, Q, 4]`` (none without them). ``balance`` holds the DDF's
        (positive, negative) count weights: set from the matching outputs, reused for the denoising ones (as
        official: they are the last computed)."""
        if "pred_corners" not in outputs:
            return {}
        idx = self._get_src_permutation_idx(indices)
        target_boxes = torch.cat([t["boxes"][i] for t, (_, i) in zip(targets, indices)], dim=0)
        corners = outputs["pred_corners"][idx].reshape(-1, self.reg_max + 1)
        with torch.no_grad():
            bins, weight_right, weight_left = box_edge_distances(
                outputs["ref_points"][idx].detach(), self.box_corners(target_boxes), self.reg_max, reg_scale, up)
        ious = box_iou(self.box_corners(outputs["pred_boxes"][idx]), self.box_corners(target_boxes))[0].diagonal()
        weight = ious.unsqueeze(-1).repeat(1, 1, 4).reshape(-1).detach()
        losses = {"loss_fgl": unimodal_distribution_focal_loss(corners, bins, weight_right, weight_left, weight,
                                                               avg_factor=num_boxes)}
        if "teacher_corners" in outputs:
            distillation = self.distillation_loss(outputs, idx, ious, balance)
            if distillation is not None:
                losses["loss_ddf"] = distillation
        return losses

    def distillation_loss(self, outputs: dict, idx: tuple[torch.Tensor, torch.Tensor], ious: torch.Tensor,
                          balance: list) -> torch.Tensor | None:
        """DDF of ``pred_corners`` against ``teacher_corners`` (both ``[B, Q, 4 (reg_max + 1)]``); ``idx`` the
        matched queries and ``ious`` their IoU; ``balance`` as in :meth:`loss_local` (set unless the output is a
        denoising one). For the teacher itself (the last denoising layer) a zero term, or None (no term) without
        ``teacher_self_term``, as DEIM's criterion."""
        corners = outputs["pred_corners"].reshape(-1, self.reg_max + 1)
        teacher = outputs["teacher_corners"].reshape(-1, self.reg_max + 1)
        if torch.equal(corners, teacher):
            return corners.sum() * 0 if self.teacher_self_term else None
        temperature = self.distillation_temperature
        weight = outputs["teacher_logits"].sigmoid().max(dim=-1)[0]
        matched = torch.zeros_like(weight, dtype=torch.bool)
        matched[idx] = True
        matched = matched.unsqueeze(-1).repeat(1, 1, 4).reshape(-1)
        weight[idx] = ious.reshape_as(weight[idx]).to(weight.dtype)
        weight = weight.unsqueeze(-1).repeat(1, 1, 4).reshape(-1).detach()
        divergence = F.kl_div(F.log_softmax(corners / temperature, dim=1),
                              F.softmax(teacher.detach() / temperature, dim=1), reduction="none").sum(-1)
        loss = weight * (temperature ** 2) * divergence
        if "is_dn" not in outputs:
            batch_scale = 8 / outputs["pred_boxes"].shape[0]  # the official: as for 8 images per process
            balance[:] = [(matched.sum() * batch_scale) ** 0.5, ((~matched).sum() * batch_scale) ** 0.5]
        positive, negative = balance
        loss_positive = loss[matched].mean() if matched.any() else 0
        loss_negative = loss[~matched].mean() if (~matched).any() else 0
        return (loss_positive * positive + loss_negative * negative) / (positive + negative)

    def output_losses(self, outputs: dict, targets: list[dict], class_indices: list, box_indices: list,
                      num_boxes: float, num_box_matches: float, suffix: str, fdr: dict,
                      num_classes: int | None = None) -> dict:
        """The weighted terms of one output, names followed by ``suffix``: ``vfl`` with ``class_indices`` over
        ``num_boxes``, ``boxes`` and ``local`` with ``box_indices`` over ``num_box_matches``; ``fdr``: ``up``,
        ``reg_scale`` and the DDF ``balance``."""
        terms = {}
        for loss in self.losses:
            if loss == "local":
                terms.update(self.loss_local(outputs, targets, box_indices, num_box_matches, **fdr))
            elif loss in self.CLASSIFICATION_LOSSES:
                terms.update(self.loss_terms(loss, outputs, targets, class_indices, num_boxes, num_classes))
            else:
                terms.update(self.loss_terms(loss, outputs, targets, box_indices, num_box_matches))
        return self.weighted(terms, suffix)

    def num_matches(self, indices: list, device: torch.device) -> float:
        """The number of matched pairs averaged over processes, at least 1 (a batch's own, also within
        :meth:`normalised_over`)."""
        count = torch.as_tensor([float(sum(len(queries) for queries, _ in indices))], device=device)
        if is_dist_avail_and_initialized():
            torch.distributed.all_reduce(count)
        return torch.clamp(count / get_world_size(), min=1).item()

    def forward(self, outputs: dict, targets: list[dict]) -> dict:
        """outputs: DFINETransformer's training dict (or its evaluation dict: the classification and box terms of
        the last layer); targets: per image ``labels`` ``[T_i]`` and ``boxes``
        ``[T_i, 4]`` (normalised cxcywh). Returns the weighted terms by name."""
        device = outputs["pred_logits"].device
        # (evaluation outputs carry neither the distributions nor these: no local terms then)
        fdr = {"up": outputs.get("up"), "reg_scale": outputs.get("reg_scale"), "balance": [None, None]}
        indices = self.matcher(outputs, targets)
        layer_indices = [self.matcher(layer, targets) for layer in outputs.get("aux_outputs", [])]
        pre_indices = self.matcher(outputs["pre_outputs"], targets) if "pre_outputs" in outputs else None
        enc_classes, enc_targets = None, targets
        if outputs.get("enc_meta", {}).get("class_agnostic"):
            enc_classes = 1
            enc_targets = [{**t, "labels": torch.zeros_like(t["labels"])} for t in targets]
        enc_indices = [self.matcher(enc, enc_targets) for enc in outputs.get("enc_aux_outputs", [])]
        others = layer_indices + ([] if pre_indices is None else [pre_indices]) + enc_indices
        go_indices = union_of_matches(indices, others)
        num_boxes = self.num_boxes(targets, device)
        num_go = self.num_matches(go_indices, device)

        losses = self.output_losses(outputs, targets, indices, go_indices, num_boxes, num_go, "", fdr)
        for i, (layer, layer_match) in enumerate(zip(outputs.get("aux_outputs", []), layer_indices)):
            losses.update(self.output_losses(layer, targets, layer_match, go_indices, num_boxes, num_go,
                                             f"_aux_{i}", fdr))
        if pre_indices is not None:
            losses.update(self.output_losses(outputs["pre_outputs"], targets, pre_indices, go_indices, num_boxes,
                                             num_go, "_pre", fdr))
        for i, (enc, enc_match) in enumerate(zip(outputs.get("enc_aux_outputs", []), enc_indices)):
            losses.update(self.output_losses(enc, enc_targets, enc_match, go_indices, num_boxes, num_go,
                                             f"_enc_{i}", fdr, enc_classes))
        if "dn_outputs" in outputs:
            dn_meta = outputs["dn_meta"]
            dn_indices = contrastive_denoising_indices(dn_meta, targets)
            dn_boxes = num_boxes * dn_meta["dn_num_group"] or 1
            for i, dn in enumerate(outputs["dn_outputs"]):
                losses.update(self.output_losses({**dn, "is_dn": True}, targets, dn_indices, dn_indices, dn_boxes,
                                                 dn_boxes, f"_dn_{i}", fdr))
            if "dn_pre_outputs" in outputs:
                losses.update(self.output_losses(outputs["dn_pre_outputs"], targets, dn_indices, dn_indices,
                                                 dn_boxes, dn_boxes, "_dn_pre", fdr))
        unnamed = sorted(set(losses) - set(self.weight_dict))
        if unnamed:
            raise ValueError(f"DFINECriterion: {unnamed} are not in weight_dict: the outputs hold more than "
                             f"num_decoder_layers ({self.num_decoder_layers}), aux_loss or num_denoising said")
        return {name: torch.nan_to_num(loss, nan=0.0) for name, loss in losses.items()}
