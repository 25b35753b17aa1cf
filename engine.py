"""One training epoch and one evaluation pass; ``main.py`` wires them to data, model and optimiser."""
import math
from typing import Iterable

import torch
from torch import nn

from datasets.coco_eval import CocoEvaluator
from datasets.panoptic_eval import format_pq_table
from util.distributed import broadcast_object, is_main_process, reduce_dict
from util.metric_logger import MetricLogger, SmoothedValue

STATS_NAMES = {"bbox": "bbox", "segm": "masks"}  # the official log's keys: coco_eval_bbox, coco_eval_masks
PROGRESS_METERS = ("lr", "loss", "loss_ce", "loss_bbox", "loss_giou", "loss_mask", "loss_dice", "class_error")


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; carries the epoch, iteration and the loss terms."""

    def __init__(self, epoch: int, iteration: int, loss_terms: dict[str, float]):
        terms = ", ".join(f"{k}={v:.4g}" for k, v in sorted(loss_terms.items()))
        super().__init__(f"non-finite loss at epoch {epoch}, iteration {iteration}: {terms}")
        self.epoch, self.iteration, self.loss_terms = epoch, iteration, loss_terms


def _weighted_logs(loss_dict: dict, weight_dict: dict) -> tuple[float, dict, dict]:
    """Reduce losses over processes; return (total weighted loss, weighted terms, unweighted terms)."""
    reduced = reduce_dict(loss_dict)
    unscaled = {f"{k}_unscaled": v.item() for k, v in reduced.items()}
    scaled = {k: v.item() * weight_dict[k] for k, v in reduced.items() if k in weight_dict}
    return sum(scaled.values()), scaled, unscaled


def train_one_epoch(model: nn.Module, criterion: nn.Module, data_loader: Iterable, optimizer: torch.optim.Optimizer,
                    device: torch.device, epoch: int, max_norm: float = 0, print_freq: int = 10) -> dict:
    """Train for one pass over ``data_loader``; returns the epoch averages of every logged value.

    Raises NonFiniteLossError (before any parameter update) when the loss is not finite.
    """
    model.train()
    criterion.train()
    metric_logger = MetricLogger(delimiter="  ", shown=PROGRESS_METERS)
    metric_logger.add_meter("lr", SmoothedValue(window_size=1, fmt="{value:.6f}"))
    metric_logger.add_meter("class_error", SmoothedValue(window_size=1, fmt="{value:.2f}"))
    header = f"Epoch: [{epoch}]"
    weight_dict = criterion.weight_dict
    for it, (samples, targets) in enumerate(metric_logger.log_every(data_loader, print_freq, header)):
        samples = samples.to(device)
        targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
        outputs = model(samples)
        loss_dict = criterion(outputs, targets)
        losses = sum(loss_dict[k] * weight_dict[k] for k in loss_dict if k in weight_dict)
        loss_value, scaled, unscaled = _weighted_logs(loss_dict, weight_dict)
        if not math.isfinite(loss_value):
            raise NonFiniteLossError(epoch, it, scaled)

        optimizer.zero_grad()
        losses.backward()
        if max_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        optimizer.step()

        metric_logger.update(loss=loss_value, **scaled, **unscaled)
        metric_logger.update(class_error=unscaled["class_error_unscaled"])
        metric_logger.update(lr=optimizer.param_groups[0]["lr"])
    metric_logger.synchronize_between_processes()
    print("Averaged stats:", metric_logger, flush=True)
    return {k: meter.global_avg for k, meter in metric_logger.meters.items()}


@torch.no_grad()
def evaluate(model: nn.Module, criterion: nn.Module, postprocessors: dict, data_loader: Iterable, base_ds,
             device: torch.device, print_freq: int = 10, panoptic_evaluator=None) -> tuple[dict, CocoEvaluator]:
    """Loss and COCO evaluation over ``data_loader`` (gathered across processes).

    ``postprocessors`` has ``bbox``, and with a mask head ``segm`` (instance masks, evaluated by COCOeval too) and
    ``panoptic`` (evaluated by ``panoptic_evaluator``, a fresh datasets.panoptic_eval.PanopticEvaluator).
    Returns (averaged stats with ``coco_eval_bbox`` (and ``coco_eval_masks``): the 12 COCO numbers, and with a
    panoptic evaluator ``PQ_all``, ``PQ_th``, ``PQ_st`` (dicts of pq, sq, rq in [0, 1] and n); the CocoEvaluator,
    whose COCOeval has run on the main process only).
    """
    model.eval()
    criterion.eval()
    metric_logger = MetricLogger(delimiter="  ", shown=PROGRESS_METERS)
    metric_logger.add_meter("class_error", SmoothedValue(window_size=1, fmt="{value:.2f}"))
    iou_types = tuple(k for k in ("segm", "bbox") if k in postprocessors)
    coco_evaluator = CocoEvaluator(base_ds, iou_types)
    for samples, targets in metric_logger.log_every(data_loader, print_freq, "Test:"):
        samples = samples.to(device)
        targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
        outputs = model(samples)
        loss_dict = criterion(outputs, targets)
        loss_value, scaled, unscaled = _weighted_logs(loss_dict, criterion.weight_dict)
        metric_logger.update(loss=loss_value, **scaled, **unscaled)
        metric_logger.update(class_error=unscaled["class_error_unscaled"])

        orig_target_sizes = torch.stack([t["orig_size"] for t in targets], dim=0)
        target_sizes = torch.stack([t["size"] for t in targets], dim=0)
        results = postprocessors["bbox"](outputs, orig_target_sizes)
        if "segm" in postprocessors:
            results = postprocessors["segm"](results, outputs, orig_target_sizes, target_sizes)
        coco_evaluator.update({t["image_id"].item(): r for t, r in zip(targets, results)})
        if panoptic_evaluator is not None:
            panoptic = postprocessors["panoptic"](outputs, target_sizes, orig_target_sizes)
            for target, prediction in zip(targets, panoptic):
                image_id = target["image_id"].item()
                prediction.update(image_id=image_id, file_name=f"{image_id:012d}.png")
            panoptic_evaluator.update(panoptic)
    metric_logger.synchronize_between_processes()
    print("Averaged stats:", metric_logger, flush=True)
    coco_evaluator.synchronize_between_processes()
    coco_stats = None
    if is_main_process():  # every process holds all detections now; one COCOeval is enough
        num_detections = sum(len(r) for r in coco_evaluator.results[iou_types[-1]].values())
        print(f"COCO evaluation of {len(coco_evaluator.img_ids)} images, {num_detections} detections", flush=True)
        coco_evaluator.accumulate()
        coco_evaluator.summarize()
        coco_stats = {f"coco_eval_{STATS_NAMES[t]}": coco_evaluator.coco_eval[t].stats.tolist() for t in iou_types}
    if panoptic_evaluator is not None:
        panoptic_evaluator.synchronize_between_processes()
        if is_main_process():
            pq = panoptic_evaluator.summarize()
            print(format_pq_table(pq), flush=True)
            coco_stats.update(PQ_all=pq["All"], PQ_th=pq["Things"], PQ_st=pq["Stuff"])
    stats = {k: meter.global_avg for k, meter in metric_logger.meters.items()}
    stats.update(broadcast_object(coco_stats))
    return stats, coco_evaluator
