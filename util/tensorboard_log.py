"""``--tensorboard``: a run's numbers and a few pictures as TensorBoard event files under ``OUTPUT_DIR/tensorboard``.

    tensorboard --logdir OUTPUT_DIR/tensorboard

Per training iteration (step = epoch * iterations per epoch + iteration): ``train/loss`` (the weighted total),
``train/<term>`` (each weighted loss term), ``train_unscaled/<term>`` (every term as the criterion returns it,
class and cardinality errors included), ``train/grad_norm`` (before clipping), ``lr/group<i>`` (each parameter
group's learning rate) and ``speed/iterations_per_s``. Per epoch (step = epoch): ``epoch/train_<key>`` (the epoch
averages of log.txt), and after each evaluation ``epoch/test_<key>`` (losses), ``coco_bbox/<name>`` (and
``coco_masks/<name>``) for the 12 COCO numbers (AP, AP50, AP75, AP_small, AP_medium, AP_large, AR1, AR10, AR100,
AR_small, AR_medium, AR_large), ``panoptic/<PQ_all|PQ_th|PQ_st>_<pq|sq|rq>``, ``val/<image id>``: the first
validation images with their ground-truth boxes (left) and the model's predictions (right),
``val_per_class/AP/<category name>``: the box AP of each category with ground truth (evaluation/per_class.py; names
from the dataset's categories, characters other than letters, digits, ``_.-`` replaced by ``_``), and the image
``val_confusion_matrix`` (evaluation/confusion.py: rows ground truth, columns prediction).

Only the main process writes (run.py makes one there); iteration values are read from the device in groups, every
``FLUSH_EVERY`` iterations and at the end of an epoch, not every step. Importing this module imports TensorBoard:
run.py does so only with ``--tensorboard``.
"""
import re
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn
from torch.utils.tensorboard import SummaryWriter

from util.box_ops import box_cxcywh_to_xyxy
from util.checkpoint import preserved_rng_state
from util.drawing import colour, draw_boxes, image_from_normalized
from util.nested_tensor import nested_tensor_from_tensor_list

COCO_STATS_NAMES = ("AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large", "AR1", "AR10", "AR100", "AR_small",
                    "AR_medium", "AR_large")
FLUSH_EVERY = 20  # iterations whose values are read from the device together
NUM_IMAGES = 4  # validation images drawn at each evaluation
SCORE_THRESHOLD = 0.3  # predictions drawn: this score or more, the best MAX_DRAWN of them
MAX_DRAWN = 20
MIN_PICTURE_SIDE = 256  # smaller images are enlarged (nearest neighbour) so that the captions stay readable


class TensorBoardLog:
    """Writes the values of :func:`engine.train_one_epoch` steps and :func:`engine.finish_epoch` epochs; ``close``
    at the end. ``category_names``: id -> name for the pictures' captions; ``image_mean`` / ``image_std``: the
    per-channel normalisation of the model's input images, undone for the pictures (None: inputs in [0, 1])."""

    def __init__(self, log_dir: str | Path, category_names: dict[int, str] | None = None,
                 image_mean: tuple[float, float, float] | None = None,
                 image_std: tuple[float, float, float] | None = None):
        self.writer = SummaryWriter(log_dir=str(log_dir))
        self.category_names = category_names or {}
        self.image_mean = image_mean or (0.0, 0.0, 0.0)
        self.image_std = image_std or (1.0, 1.0, 1.0)
        self.pending: list[tuple[int, list[str], list[float], Tensor, list[float], float]] = []
        self.last_time: float | None = None

    def training_step(self, epoch: int, iteration: int, iterations_per_epoch: int, loss_dict: dict[str, Tensor],
                      weight_dict: dict[str, float], grad_norm: Tensor | None,
                      optimizer: torch.optim.Optimizer) -> None:
        """One optimisation step: its loss terms (averaged over processes, on the device), the gradient norm before
        clipping and the optimiser's learning rates."""
        now = time.perf_counter()
        seconds = now - self.last_time if self.last_time is not None and iteration > 0 else float("nan")
        self.last_time = now
        names = list(loss_dict)
        values = [loss_dict[k].detach().float().reshape(()) for k in names]
        weights = [float(weight_dict.get(k, 0.0)) for k in names]
        if grad_norm is not None:
            names.append("grad_norm")
            values.append(grad_norm.detach().float().reshape(()))
            weights.append(0.0)
        lrs = [group["lr"] for group in optimizer.param_groups]
        self.pending.append((epoch * iterations_per_epoch + iteration, names, weights, torch.stack(values), lrs,
                             seconds))
        if len(self.pending) >= FLUSH_EVERY or iteration == iterations_per_epoch - 1:
            self.flush()

    def flush(self) -> None:
        """Write the pending iterations' values (one device-to-host transfer)."""
        if not self.pending:
            return
        if len({len(p[1]) for p in self.pending}) == 1:
            rows = torch.stack([p[3] for p in self.pending]).cpu().tolist()
        else:  # terms that changed between steps
            rows = [p[3].cpu().tolist() for p in self.pending]
        for (step, names, weights, _, lrs, seconds), values in zip(self.pending, rows):
            total = 0.0
            for name, value, weight in zip(names, values, weights):
                if name == "grad_norm":
                    self.writer.add_scalar("train/grad_norm", value, step)
                    continue
                self.writer.add_scalar(f"train_unscaled/{name}", value, step)
                if weight:
                    self.writer.add_scalar(f"train/{name}", value * weight, step)
                    total += value * weight
            self.writer.add_scalar("train/loss", total, step)
            for i, lr in enumerate(lrs):
                self.writer.add_scalar(f"lr/group{i}", lr, step)
            if seconds == seconds and seconds > 0:  # not NaN: the first step of an epoch has no duration
                self.writer.add_scalar("speed/iterations_per_s", 1.0 / seconds, step)
        self.pending.clear()

    def epoch_end(self, epoch: int, log_stats: dict, evaluation=None) -> None:
        """The epoch's line of log.txt (``train_*``, ``test_*``) and, when ``evaluation`` (engine.Evaluation) ran
        this epoch, its COCO numbers and pictures of the first validation images."""
        self.flush()
        for key, value in log_stats.items():
            if key in ("epoch", "n_parameters"):
                continue
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(f"epoch/{key}", value, epoch)
            elif key.startswith("test_coco_eval_") and isinstance(value, list):
                kind = key[len("test_coco_eval_"):]
                for name, number in zip(COCO_STATS_NAMES, value):
                    self.writer.add_scalar(f"coco_{kind}/{name}", number, epoch)
            elif key.startswith("test_PQ_") and isinstance(value, dict):
                for name in ("pq", "sq", "rq"):
                    if name in value:
                        self.writer.add_scalar(f"panoptic/{key[len('test_'):]}_{name}", value[name], epoch)
        if evaluation is not None:
            for tag, picture in self.validation_pictures(evaluation):
                self.writer.add_image(tag, np.asarray(picture).transpose(2, 0, 1), epoch)
            if getattr(evaluation, "report", None) is not None:
                self.evaluation_report(epoch, evaluation.report)
        self.writer.flush()

    def evaluation_report(self, epoch: int, report) -> None:
        """An evaluation's per-class box AP (``val_per_class/AP/<name>``, categories with ground truth) and its
        confusion matrix (image ``val_confusion_matrix``) of an evaluation/report.py EvaluationReport."""
        for tag, row in zip(per_class_tags(report.per_class), report.per_class):
            if row["AP"] >= 0:
                self.writer.add_scalar(tag, row["AP"], epoch)
        self.writer.add_image("val_confusion_matrix", report.confusion_pixels(), epoch, dataformats="HWC")

    @torch.no_grad()
    def validation_pictures(self, evaluation) -> list[tuple[str, Image.Image]]:
        """(tag, picture) for the first NUM_IMAGES images of the evaluation's dataset: ground truth left, the
        model's predictions right, at the model's input size. Leaves the RNGs and the model's mode as they were."""
        model: nn.Module = getattr(evaluation.model, "module", evaluation.model)  # not through DDP: main process only
        dataset = evaluation.data_loader.dataset
        was_training = model.training
        pictures = []
        with preserved_rng_state():
            model.eval()
            try:
                for index in range(min(NUM_IMAGES, len(dataset))):
                    item = dataset[index]
                    if not isinstance(item, tuple):  # an image --skip_bad_images left out
                        continue
                    image, target = item
                    outputs = model(nested_tensor_from_tensor_list([image.to(evaluation.device)]))
                    size = target["size"].to(evaluation.device)[None]
                    result = evaluation.postprocessors["bbox"](outputs, size)[0]
                    pictures.append((f"val/{int(target['image_id'])}", self._picture(image, target, result)))
            finally:
                model.train(was_training)
        return pictures

    def _picture(self, image: Tensor, target: dict, result: dict) -> Image.Image:
        """Ground truth and predictions of one normalised image ``[3, h, w]``, side by side."""
        base = image_from_normalized(image, self.image_mean, self.image_std)
        scale = max(1, -(-MIN_PICTURE_SIDE // min(base.size)))
        base = base.resize((base.width * scale, base.height * scale), Image.NEAREST)
        h, w = (int(v) for v in target["size"])
        gt_boxes = box_cxcywh_to_xyxy(target["boxes"].cpu()) * torch.tensor([w, h, w, h]) * scale
        gt_labels = target["labels"].tolist()
        truth = draw_boxes(base, gt_boxes.tolist(), [self._name(label) for label in gt_labels],
                           [colour(label) for label in gt_labels])
        order = result["scores"].argsort(descending=True)[:MAX_DRAWN]
        order = order[result["scores"][order] >= SCORE_THRESHOLD].cpu()
        scores, labels = result["scores"].cpu()[order].tolist(), result["labels"].cpu()[order].tolist()
        boxes = (result["boxes"].cpu()[order] * scale).tolist()
        predicted = draw_boxes(base, boxes, [f"{self._name(label)} {s:.2f}" for label, s in zip(labels, scores)],
                               [colour(label) for label in labels])
        both = Image.new("RGB", (2 * base.width + scale, base.height), (255, 255, 255))
        both.paste(truth, (0, 0))
        both.paste(predicted, (base.width + scale, 0))
        return both

    def _name(self, label: int) -> str:
        return str(self.category_names.get(label, label))

    def close(self) -> None:
        self.flush()
        self.writer.close()


def per_class_tags(rows: list[dict]) -> list[str]:
    """``val_per_class/AP/<name>`` for each per-class row, the name's characters other than letters, digits and
    ``_.-`` replaced by ``_``; names that clash after that get ``_<category id>``."""
    names = [re.sub(r"[^A-Za-z0-9_.\-]", "_", row["name"]) for row in rows]
    clashing = {name for name in names if names.count(name) > 1}
    return [f"val_per_class/AP/{name}_{row['category_id']}" if name in clashing else f"val_per_class/AP/{name}"
            for name, row in zip(names, rows)]
