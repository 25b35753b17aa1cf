"""One training epoch, one evaluation pass, and what happens at the end of an epoch (evaluation when due, the saved
COCOeval state, the per-class table, confusion matrix and detections, the log line); ``main.py`` wires them to data,
model and optimiser."""
import json
import math
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Iterable

import torch
from torch import nn

from datasets.bad_images import SkippedImages, split_batch
from evaluation.coco_eval import CocoEvaluator, results_to_cpu
from evaluation.panoptic_eval import PanopticEvaluator, format_pq_table
from evaluation.per_class import evaluator_per_class, format_per_class_table
from evaluation.report import EvaluationReport
from evaluation.saved_detections import FILE_NAME as DETECTIONS_FILE
from models.postprocess import detections
from util.amp import Precision
from util.best_checkpoint import BestCheckpoint
from util.checkpoint import preserved_rng_state, save_checkpoint
from util.distributed import broadcast_object, is_main_process, reduce_dict
from util.loss_log import DeferredLosses
from util.metric_logger import MetricLogger, SmoothedValue
from util.nested_tensor import NestedTensor
from util.train_step import TrainStep

STATS_NAMES = {"bbox": "bbox", "segm": "masks"}  # the official log's keys: coco_eval_bbox, coco_eval_masks
PROGRESS_METERS = ("lr", "loss", "loss_ce", "loss_vfl", "loss_bbox", "loss_giou", "loss_mask", "loss_dice",
                   "class_error")


def epoch_averages(metric_logger: MetricLogger) -> dict[str, float]:
    """Each meter's average over the epoch, leaving out meters that were never updated (RT-DETRv2's criterion logs no
    ``class_error``: 0 would read as a perfect classifier)."""
    return {k: meter.global_avg for k, meter in metric_logger.meters.items() if meter.count}


def train_one_epoch(model: nn.Module, criterion: nn.Module, data_loader: Iterable, optimizer: torch.optim.Optimizer,
                    device: torch.device, epoch: int, max_norm: float = 0, print_freq: int = 10, *,
                    stop_check: Callable[[str], None] | None = None, skipped: SkippedImages | None = None,
                    step: TrainStep | None = None, read_every_step: bool = False, monitor=None,
                    accumulate_steps: int = 1) -> dict:
    """Train for one pass over ``data_loader``; returns the epoch averages of every logged value and ``epoch_time``
    (seconds this process spent in the epoch, data loading included).

    ``step`` runs each optimisation step (util/train_step.py: AMP, EMA, ...; default: a plain fp32 step with
    ``max_norm`` clipping). The loss terms are read from the device at progress lines and at the end of the epoch
    (util/loss_log.py), or every step with ``read_every_step`` (the official loop). Raises NonFiniteLossError when
    the loss is not finite; that step leaves the parameters untouched. ``stop_check(where)`` is
    called before every step and may raise to abandon the epoch there (``util.stop_signals``). ``skipped`` counts the
    images ``--skip_bad_images`` left out of the batches (``skipped_images`` is then among the returned values); a
    step whose batch lost every image is skipped. ``grad_norm`` (the gradient norm before clipping) is averaged over
    the steps like the loss terms, read from the device once at the end. ``monitor`` (``--tensorboard``:
    util/tensorboard_log.py, main process only) gets every step's loss terms, gradient norm and learning rates.
    ``accumulate_steps`` N: one optimiser step on the gradients of N consecutive batches (``TrainStep.accumulated``;
    the epoch's last step takes what is left), logged as one step.
    """
    model.train()
    criterion.train()
    metric_logger = MetricLogger(delimiter="  ", shown=PROGRESS_METERS)
    metric_logger.add_meter("lr", SmoothedValue(window_size=1, fmt="{value:.6f}"))
    metric_logger.add_meter("class_error", SmoothedValue(window_size=1, fmt="{value:.2f}"))
    header = f"Epoch: [{epoch}]"
    step = step or TrainStep(model, criterion, optimizer, max_norm)
    loss_log = DeferredLosses(criterion.weight_dict, epoch, every_step=read_every_step)
    last = len(data_loader) - 1
    grad_norms = []
    start = time.perf_counter()
    accumulate = max(1, accumulate_steps)
    steps_per_epoch = math.ceil(len(data_loader) / accumulate)
    pending = []
    for it, batch in enumerate(metric_logger.log_every(data_loader, print_freq, header)):
        if stop_check is not None:
            stop_check(f"during epoch {epoch} (before its iteration {it}; the epoch is abandoned)")
        samples, targets, left_out = split_batch(batch)
        if skipped is not None:
            skipped.add(left_out)
            if skipped.lost_batch(samples is None):
                continue
        samples = samples.to(device, non_blocking=True)
        targets = [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets]
        pending.append((samples, targets))
        if len(pending) < accumulate and it != last:  # --accumulate_steps: gradients of several batches, one step
            continue
        shown = it % print_freq == 0 or it == last  # log_every prints a progress line after this iteration
        _optimise(step, pending, epoch * steps_per_epoch + it // accumulate, it, shown, loss_log, metric_logger,
                  grad_norms, monitor, epoch, len(data_loader))
        pending = []
    if pending:  # the epoch's last batches were skipped (unreadable images): train on what came before them
        _optimise(step, pending, epoch * steps_per_epoch + last // accumulate, last, True, loss_log, metric_logger,
                  grad_norms, monitor, epoch, len(data_loader))
    loss_log.flush(metric_logger)
    for value in torch.stack(grad_norms).tolist() if grad_norms else []:
        metric_logger.update(grad_norm=value)
    metric_logger.synchronize_between_processes()
    print("Averaged stats:", metric_logger, flush=True)
    stats = {**epoch_averages(metric_logger), "epoch_time": time.perf_counter() - start}
    if skipped is not None:
        stats["skipped_images"] = skipped.report(f"epoch {epoch}")
    return stats


def _optimise(step: TrainStep, batches: list, step_index: int, it: int, shown: bool, loss_log: DeferredLosses,
              metric_logger: MetricLogger, grad_norms: list, monitor, epoch: int, iterations: int) -> None:
    """One optimiser step on ``batches`` and its log entries (iteration ``it``)."""
    result = step.accumulated(batches, step_index)
    loss_log.add(it, result.loss_dict, step.optimizer.param_groups[0]["lr"], metric_logger,
                 read_now=result.read_now or shown)
    if result.grad_norm is not None:
        grad_norms.append(result.grad_norm.detach().reshape(()))
    if monitor is not None:
        monitor.training_step(epoch, it, iterations, result.loss_dict, step.criterion.weight_dict, result.grad_norm,
                              step.optimizer)


def single_images(samples: NestedTensor, targets: list[dict]) -> list[NestedTensor]:
    """Each image of a padded batch alone, without padding (``target["size"]`` is its height and width), exactly
    as a batch of that one image holds it."""
    singles = []
    for i, target in enumerate(targets):
        h, w = target["size"].tolist()
        singles.append(NestedTensor(samples.tensors[i:i + 1, :, :h, :w].contiguous(),
                                    samples.mask[i:i + 1, :h, :w].contiguous()))
    return singles


@torch.no_grad()
def evaluate(model: nn.Module, criterion: nn.Module, postprocessors: dict, data_loader: Iterable, base_ds,
             device: torch.device, print_freq: int = 10, panoptic_evaluator=None, *, batch_invariant: bool = False,
             stop_check: Callable[[str], None] | None = None, skipped: SkippedImages | None = None,
             eval_backend: str = "pycocotools", precision: Precision | None = None) -> tuple[dict, CocoEvaluator]:
    """Loss and COCO evaluation over ``data_loader`` (gathered across processes).

    ``postprocessors`` has ``bbox``, and with a mask head ``segm`` (instance masks, evaluated by COCOeval too) and
    ``panoptic`` (evaluated by ``panoptic_evaluator``, a fresh evaluation.panoptic_eval.PanopticEvaluator).
    Returns (averaged stats with ``coco_eval_bbox`` (and ``coco_eval_masks``): the 12 COCO numbers, and with a
    panoptic evaluator ``PQ_all``, ``PQ_th``, ``PQ_st`` (dicts of pq, sq, rq in [0, 1] and n); the CocoEvaluator,
    whose COCOeval has run on the main process only). The main process prints COCO's table and the per-class box
    table (evaluation/per_class.py).

    By default a batch is padded to its largest image, as in the official code; the backbone's convolutions see that
    padding at the image borders, so the numbers change with the batch size when image sizes differ.
    ``batch_invariant``: each image goes through the model alone, unpadded, which gives the numbers of batch size 1
    at any batch size (the logged losses are then averages of per-image losses). ``stop_check`` and ``skipped`` as
    for :func:`train_one_epoch` (images left out are not evaluated; ``skipped_images`` is then among the stats).
    ``eval_backend``: the COCOeval implementation (evaluation/coco_eval.py). Detections come to the host once per
    batch, the loss terms at progress lines. ``precision`` (``--amp``): the forward runs under its autocast, the
    losses and post-processing in fp32.
    """
    precision = precision or Precision("off", device)
    model.eval()
    criterion.eval()
    metric_logger = MetricLogger(delimiter="  ", shown=PROGRESS_METERS)
    metric_logger.add_meter("class_error", SmoothedValue(window_size=1, fmt="{value:.2f}"))
    iou_types = tuple(k for k in ("segm", "bbox") if k in postprocessors)
    coco_evaluator = CocoEvaluator(base_ds, iou_types, backend=eval_backend)
    loss_log = DeferredLosses(criterion.weight_dict, epoch=-1, stop_on_non_finite=False)
    last = len(data_loader) - 1
    for it, batch in enumerate(metric_logger.log_every(data_loader, print_freq, "Test:")):
        if stop_check is not None:
            stop_check(f"during evaluation (before its batch {it})")
        samples, targets, left_out = split_batch(batch)
        lost_somewhere = False
        if skipped is not None:
            skipped.add(left_out)
            lost_somewhere = skipped.lost_batch(samples is None)
        if samples is None:
            continue
        samples = samples.to(device, non_blocking=True)
        targets = [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets]
        parts = list(zip(single_images(samples, targets), ([t] for t in targets))) if batch_invariant \
            else [(samples, targets)]
        loss_dicts = []
        for part_samples, part_targets in parts:
            with precision.autocast():
                outputs = model(part_samples)
            outputs = precision.to_fp32(outputs)
            loss_dicts.append(criterion(outputs, part_targets))
            _record_predictions(outputs, part_targets, postprocessors, coco_evaluator, panoptic_evaluator)
        if not lost_somewhere:  # a step that lost its whole batch on some process takes part in no collective
            loss_dict = loss_dicts[0] if len(loss_dicts) == 1 else \
                {k: torch.stack([d[k] for d in loss_dicts]).mean() for k in loss_dicts[0]}
            loss_log.add(it, reduce_dict(loss_dict), None, metric_logger,
                         read_now=it % print_freq == 0 or it == last)
    loss_log.flush(metric_logger)
    metric_logger.synchronize_between_processes()
    print("Averaged stats:", metric_logger, flush=True)
    coco_evaluator.synchronize_between_processes()
    coco_stats = None
    if is_main_process():  # every process holds all detections now; one COCOeval is enough
        num_detections = sum(len(r) for r in coco_evaluator.results[iou_types[-1]].values())
        print(f"COCO evaluation of {len(coco_evaluator.img_ids)} images, {num_detections} detections", flush=True)
        coco_evaluator.accumulate()
        coco_evaluator.summarize()
        print(format_per_class_table(evaluator_per_class(coco_evaluator, "bbox")), flush=True)
        coco_stats = {f"coco_eval_{STATS_NAMES[t]}": coco_evaluator.coco_eval[t].stats.tolist() for t in iou_types}
    if panoptic_evaluator is not None:
        panoptic_evaluator.synchronize_between_processes()
        if is_main_process():
            pq = panoptic_evaluator.summarize()
            print(format_pq_table(pq), flush=True)
            coco_stats.update(PQ_all=pq["All"], PQ_th=pq["Things"], PQ_st=pq["Stuff"])
    stats = epoch_averages(metric_logger)
    stats.update(broadcast_object(coco_stats))
    if skipped is not None:
        stats["skipped_images"] = skipped.report("evaluation")
    return stats, coco_evaluator


def _record_predictions(outputs: dict, targets: list[dict], postprocessors: dict, coco_evaluator: CocoEvaluator,
                        panoptic_evaluator) -> None:
    """Post-process a batch's outputs and hand them to the COCO (and panoptic) evaluator."""
    orig_target_sizes = torch.stack([t["orig_size"] for t in targets], dim=0)
    target_sizes = torch.stack([t["size"] for t in targets], dim=0)
    results = detections(postprocessors["bbox"], outputs, orig_target_sizes)
    if "segm" in postprocessors:
        results = postprocessors["segm"](results, outputs, orig_target_sizes, target_sizes)
    image_ids = torch.stack([t["image_id"].reshape(()) for t in targets]).tolist()
    coco_evaluator.update(dict(zip(image_ids, results_to_cpu(results))))
    if panoptic_evaluator is not None:
        panoptic = postprocessors["panoptic"](outputs, target_sizes, orig_target_sizes)
        for image_id, prediction in zip(image_ids, panoptic):
            prediction.update(image_id=image_id, file_name=f"{image_id:012d}.png")
        panoptic_evaluator.update(panoptic)


class Evaluation:
    """Evaluates one model on the val set whenever called: COCO box (and mask) AP, and PQ for panoptic models.

    ``panoptic_ground_truth`` is (annotation file, PNG folder) of the val set; predicted PNGs go to
    ``OUTPUT_DIR/panoptic_eval``, or without an output folder to a temporary one that all processes share and that
    is removed afterwards. After each call, ``report`` (main process; None elsewhere) holds the per-class numbers,
    the confusion matrix at ``confusion_threshold`` (``--confusion_threshold``) and the boxes behind them
    (evaluation/report.py), also written to ``OUTPUT_DIR/eval/`` (per_class.csv, confusion_matrix.csv and .png,
    detections.pth).
    """

    def __init__(self, model: nn.Module, criterion: nn.Module, postprocessors: dict, data_loader: Iterable,
                 coco_ground_truth, device: torch.device, print_freq: int, output_dir: Path | None,
                 panoptic_ground_truth: tuple[Path, Path] | None = None, *, batch_invariant: bool = False,
                 skipped: SkippedImages | None = None, eval_backend: str = "pycocotools",
                 precision: Precision | None = None, confusion_threshold: float = 0.5):
        self.model, self.criterion, self.postprocessors = model, criterion, postprocessors
        self.data_loader, self.coco_ground_truth, self.device = data_loader, coco_ground_truth, device
        self.print_freq, self.output_dir, self.panoptic_ground_truth = print_freq, output_dir, panoptic_ground_truth
        self.batch_invariant, self.skipped, self.eval_backend = batch_invariant, skipped, eval_backend
        self.precision, self.confusion_threshold = precision, confusion_threshold
        self.report: EvaluationReport | None = None
        self.stop_check: Callable[[str], None] | None = None  # set while a training run can be stopped

    def __call__(self) -> tuple[dict, CocoEvaluator]:
        """(stats, CocoEvaluator) as :func:`evaluate` returns them."""
        stats, coco_evaluator = self._evaluate()
        self.report = None
        if is_main_process():
            self.report = EvaluationReport.from_evaluator(coco_evaluator, self.confusion_threshold)
            if self.output_dir is not None:
                self.report.write(self.output_dir / "eval")
        return stats, coco_evaluator

    def _evaluate(self) -> tuple[dict, CocoEvaluator]:
        options = dict(batch_invariant=self.batch_invariant, stop_check=self.stop_check, skipped=self.skipped,
                       eval_backend=self.eval_backend, precision=self.precision)
        if "panoptic" not in self.postprocessors:
            return evaluate(self.model, self.criterion, self.postprocessors, self.data_loader, self.coco_ground_truth,
                            self.device, self.print_freq, **options)
        temporary = self.output_dir is None
        folder = self.output_dir / "panoptic_eval" if not temporary else Path(
            broadcast_object(tempfile.mkdtemp(prefix="panoptic_eval_") if is_main_process() else None))
        ann_file, ann_folder = self.panoptic_ground_truth
        panoptic_evaluator = PanopticEvaluator(ann_file, ann_folder, output_dir=str(folder))
        result = evaluate(self.model, self.criterion, self.postprocessors, self.data_loader, self.coco_ground_truth,
                          self.device, self.print_freq, panoptic_evaluator=panoptic_evaluator, **options)
        if temporary and is_main_process():  # evaluate() returns after the main process has read every PNG
            shutil.rmtree(folder, ignore_errors=True)
        return result


def finish_epoch(epoch: int, train_stats: dict, evaluation: Evaluation | None, output_dir: Path | None,
                 n_parameters: int, ema_evaluation: Evaluation | None = None, monitor=None,
                 best: BestCheckpoint | None = None) -> dict:
    """After an epoch's checkpoint: run ``evaluation`` (None when not due), keep its COCOeval state in
    ``eval/latest.pth`` (and ``eval/NNN.pth`` every 50 epochs, with its detections as ``eval/NNN_detections.pth``;
    the evaluation itself writes ``eval/detections.pth``, the per-class table and the confusion matrix), append the
    epoch's line to ``log.txt``.
    ``ema_evaluation`` (``--ema``) evaluates the moving average too; its numbers are logged as ``test_ema_*``.

    Evaluation leaves the RNGs as it found them (its loader and transforms draw from them), so a run resumed from
    this epoch's checkpoint trains exactly as the uninterrupted one. Returns the evaluation's stats or {}.
    ``monitor`` (``--tensorboard``, main process only) gets the epoch's log line and, after an evaluation, draws
    validation images with it and takes its per-class AP and confusion matrix (``evaluation.report``).
    ``best`` (util/best_checkpoint.py) takes the evaluation's AP (log.txt's lines stay as they were).
    """
    log_stats = {f"train_{k}": v for k, v in train_stats.items()}
    test_stats = {}
    if evaluation is not None:
        with preserved_rng_state():
            test_stats, coco_evaluator = evaluation()
            ema_stats = ema_evaluation()[0] if ema_evaluation is not None else {}
        log_stats.update({f"test_{k}": v for k, v in test_stats.items()})
        log_stats.update({f"test_ema_{k}": v for k, v in ema_stats.items()})
        if output_dir is not None and is_main_process():
            (output_dir / "eval").mkdir(exist_ok=True)
            for name in ["latest.pth"] + ([f"{epoch:03}.pth"] if epoch % 50 == 0 else []):
                save_checkpoint(coco_evaluator.saved_state("bbox"), output_dir / "eval" / name)
            if epoch % 50 == 0 and evaluation.report is not None:
                save_checkpoint(evaluation.report.saved.state(), output_dir / "eval" / f"{epoch:03}_{DETECTIONS_FILE}")
    if best is not None and evaluation is not None and is_main_process():
        if best.update(epoch, log_stats):
            print(f"best so far: {best.metric}[0] = {best.value:.4f} (epoch {epoch})", flush=True)
    log_stats.update({"epoch": epoch, "n_parameters": n_parameters})
    if output_dir is not None and is_main_process():
        with (output_dir / "log.txt").open("a") as f:
            f.write(json.dumps(log_stats) + "\n")
    if monitor is not None:
        monitor.epoch_end(epoch, log_stats, evaluation)
    return test_stats


def summary_line(stats: dict, output_dir: Path | None) -> str:
    """One line with box AP/AP50 (and mask AP, PQ where evaluated) and where the outputs are."""
    parts = [f"bbox AP = {stats['coco_eval_bbox'][0]:.3f}, AP50 = {stats['coco_eval_bbox'][1]:.3f}"]
    if "coco_eval_masks" in stats:
        parts.append(f"mask AP = {stats['coco_eval_masks'][0]:.3f}, AP50 = {stats['coco_eval_masks'][1]:.3f}")
    if "PQ_all" in stats:
        parts.append(f"PQ = {stats['PQ_all']['pq']:.3f} (things {stats['PQ_th']['pq']:.3f}, "
                     f"stuff {stats['PQ_st']['pq']:.3f})")
    where = f"; outputs in {output_dir.resolve()}" if output_dir is not None else ""
    return "; ".join(parts) + where
