"""Loss functions shared by the DETR family: focal and DICE losses on logits, top-k accuracy for logging, the varifocal
and matchability-aware losses (RT-DETR, DEIM) and D-FINE's fine-grained localisation loss (its targets:
models/layers/fdr.py)."""
import torch
import torch.nn.functional as F


def sigmoid_focal_loss(inputs: torch.Tensor, targets: torch.Tensor, num_boxes: float, alpha: float = 0.25,
                       gamma: float = 2) -> torch.Tensor:
    """Focal loss (Lin et al. 2017, arXiv:1708.02002) of logits against targets in {0, 1} of the same shape: mean
    over dimension 1, summed over the rest, divided by ``num_boxes`` (masks ``[N, P]``: mean over pixels; class
    scores ``[B, Q, K]``: mean over queries, summed over images and classes, as the official code).
    ``alpha`` weights positives (negative: no weighting)."""
    prob = inputs.sigmoid()
    ce_loss = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce_loss * ((1 - p_t) ** gamma)
    if alpha >= 0:
        alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
        loss = alpha_t * loss
    return loss.mean(1).sum() / num_boxes


def dice_loss(inputs: torch.Tensor, targets: torch.Tensor, num_boxes: float) -> torch.Tensor:
    """DICE loss (Milletari et al. 2016) of mask logits ``[N, P]`` against binary targets ``[N, P]``, summed over
    masks and divided by ``num_boxes``."""
    inputs = inputs.sigmoid().flatten(1)
    numerator = 2 * (inputs * targets).sum(1)
    denominator = inputs.sum(-1) + targets.sum(-1)
    loss = 1 - (numerator + 1) / (denominator + 1)
    return loss.sum() / num_boxes


@torch.no_grad()
def accuracy(output: torch.Tensor, target: torch.Tensor, topk: tuple = (1,)) -> list[torch.Tensor]:
    """Top-k accuracy in percent of logits ``[N, K]`` against labels ``[N]``; 0 when N = 0."""
    if target.numel() == 0:
        return [torch.zeros([], device=output.device)]
    maxk = max(topk)
    _, pred = output.topk(maxk, 1, True, True)
    correct = pred.t().eq(target.view(1, -1).expand_as(pred.t()))
    return [correct[:k].reshape(-1).float().sum(0) * (100.0 / target.size(0)) for k in topk]


def varifocal_loss(logits: torch.Tensor, target_score: torch.Tensor, positive: torch.Tensor, num_boxes: float,
                   alpha: float = 0.75, gamma: float = 2.0) -> torch.Tensor:
    """Varifocal loss (Zhang et al. 2021, arXiv:2008.13367) as RT-DETR computes it: binary cross-entropy of logits
    ``[B, Q, K]`` against ``target_score`` ``[B, Q, K]`` (the IoU with the matched box at its class, 0 elsewhere),
    each term weighted by ``target_score`` where ``positive`` (one-hot ``[B, Q, K]`` of the matched class) and by
    ``alpha * sigmoid(logit)^gamma`` (no gradient) elsewhere; mean over queries, summed over images and classes,
    times Q, divided by ``num_boxes``."""
    pred_score = logits.sigmoid().detach()
    weight = alpha * pred_score.pow(gamma) * (1 - positive) + target_score
    loss = F.binary_cross_entropy_with_logits(logits, target_score, weight=weight, reduction="none")
    return loss.mean(1).sum() * logits.shape[1] / num_boxes


def matchability_aware_loss(logits: torch.Tensor, iou_score: torch.Tensor, positive: torch.Tensor, num_boxes: float,
                            gamma: float = 1.5, alpha: float = 1.0) -> torch.Tensor:
    """Matchability-aware loss (MAL; DEIM, Huang et al., CVPR 2025, arXiv:2412.04234) as the official DEIM code
    computes it: binary cross-entropy of logits ``[B, Q, K]`` against ``iou_score ** gamma``, where ``iou_score``
    ``[B, Q, K]`` is the IoU of a matched query's box with its target's at the target's class and 0 elsewhere. A
    positive term (``positive``: one-hot ``[B, Q, K]`` of the matched class) has weight 1, every other
    ``alpha * sigmoid(logit) ** gamma`` (no gradient; the official ``mal_alpha``, None there meaning 1). Mean over
    queries, summed over images and classes, times Q, divided by ``num_boxes``.

    Against the varifocal loss: the target is ``IoU ** gamma`` rather than the IoU, and positives weigh 1 rather
    than their IoU, so a low-IoU match (frequent with the many matches of dense one-to-one training) still teaches
    its class."""
    pred_score = logits.sigmoid().detach()
    weight = alpha * pred_score.pow(gamma) * (1 - positive) + positive
    target = iou_score.pow(gamma)
    loss = F.binary_cross_entropy_with_logits(logits, target, weight=weight, reduction="none")
    return loss.mean(1).sum() * logits.shape[1] / num_boxes


def unimodal_distribution_focal_loss(logits: torch.Tensor, index: torch.Tensor, weight_right: torch.Tensor,
                                     weight_left: torch.Tensor, weight: torch.Tensor, avg_factor: float
                                     ) -> torch.Tensor:
    """D-FINE's fine-grained localisation loss (FGL) of edge distributions ``logits`` ``[N, reg_max + 1]``: the
    cross-entropy towards the left bin ``floor(index)`` times ``weight_left`` plus that towards the next bin times
    ``weight_right`` (``[N]`` each; :func:`models.layers.fdr.box_edge_distances`), times ``weight`` ``[N]`` (taken in
    float32, as official), summed and divided by ``avg_factor``."""
    left_bin = index.long()
    loss = (F.cross_entropy(logits, left_bin, reduction="none") * weight_left.reshape(-1)
            + F.cross_entropy(logits, left_bin + 1, reduction="none") * weight_right.reshape(-1))
    return (loss * weight.float()).sum() / avg_factor
