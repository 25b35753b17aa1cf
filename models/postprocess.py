"""Post-processing: model outputs -> per image scores, labels and absolute xyxy boxes.

:class:`PostProcess` is DETR's (softmax, one detection per query); :class:`SigmoidTopKPostProcess` that of the
sigmoid classifiers (Deformable DETR, DINO: the best query-class pairs, optionally NMS); :class:`RTDETRPostProcessor`
RT-DETR's (the best query-class pairs, image sizes as (width, height), labels mapped to dataset ids).
"""
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import nms

from util.box_ops import box_cxcywh_to_xyxy


def check_target_sizes(name: str, num_outputs: int, target_sizes: torch.Tensor) -> None:
    """``target_sizes`` must be ``[B, 2]`` with one row per image of the outputs."""
    if num_outputs != len(target_sizes):
        raise ValueError(f"{name}: {num_outputs} outputs but {len(target_sizes)} target sizes")
    if target_sizes.ndim != 2 or target_sizes.shape[1] != 2:
        raise ValueError(f"{name}: target_sizes must be [B, 2], got {tuple(target_sizes.shape)}")


def scale_boxes(boxes_cxcywh: torch.Tensor, target_sizes: torch.Tensor) -> torch.Tensor:
    """Relative cxcywh boxes ``[B, N, 4]`` -> absolute xyxy pixels of images ``target_sizes`` ``[B, 2]`` (h, w)."""
    boxes = box_cxcywh_to_xyxy(boxes_cxcywh)
    img_h, img_w = target_sizes.unbind(1)
    scale_fct = torch.stack([img_w, img_h, img_w, img_h], dim=1)
    return boxes * scale_fct[:, None, :]


class PostProcess(nn.Module):
    """Model outputs -> per image ``scores`` ``[Q]``, ``labels`` ``[Q]``, ``boxes`` ``[Q, 4]`` absolute xyxy."""

    @torch.no_grad()
    def forward(self, outputs: dict, target_sizes: torch.Tensor) -> list[dict]:
        """target_sizes: ``[B, 2]`` (height, width) of each original image, in pixels."""
        out_logits, out_bbox = outputs["pred_logits"], outputs["pred_boxes"]
        check_target_sizes("PostProcess", len(out_logits), target_sizes)
        prob = F.softmax(out_logits, -1)
        scores, labels = prob[..., :-1].max(-1)
        boxes = scale_boxes(out_bbox, target_sizes)
        return [{"scores": s, "labels": lab, "boxes": b} for s, lab, b in zip(scores, labels, boxes)]


class SigmoidTopKPostProcess(nn.Module):
    """Model outputs -> per image ``scores`` ``[n]`` (sigmoid probabilities, descending), ``labels`` ``[n]`` (class
    ids) and ``boxes`` ``[n, 4]`` (absolute xyxy) of the ``num_select`` highest scores over all query-class pairs
    (a query may appear once per class); n = min(num_select, Q * K). ``nms_iou_threshold`` > 0 then removes pairs
    that overlap a better one by more than that IoU (class-agnostic), as DINO's option."""

    def __init__(self, num_select: int = 100, nms_iou_threshold: float = -1):
        super().__init__()
        if num_select < 1:
            raise ValueError(f"SigmoidTopKPostProcess: num_select must be at least 1, got {num_select}")
        self.num_select = num_select
        self.nms_iou_threshold = nms_iou_threshold

    @torch.no_grad()
    def forward(self, outputs: dict, target_sizes: torch.Tensor) -> list[dict]:
        """outputs: ``pred_logits`` ``[B, Q, K]``, ``pred_boxes`` ``[B, Q, 4]`` (normalised cxcywh);
        target_sizes: ``[B, 2]`` (height, width) of each original image, in pixels."""
        out_logits, out_bbox = outputs["pred_logits"], outputs["pred_boxes"]
        check_target_sizes(type(self).__name__, len(out_logits), target_sizes)
        num_classes = out_logits.shape[2]
        prob = out_logits.sigmoid().view(out_logits.shape[0], -1)
        scores, index = torch.topk(prob, min(self.num_select, prob.shape[1]), dim=1)
        query = torch.div(index, num_classes, rounding_mode="floor")
        labels = index % num_classes
        boxes = torch.gather(scale_boxes(out_bbox, target_sizes), 1, query.unsqueeze(-1).repeat(1, 1, 4))
        if self.nms_iou_threshold > 0:
            keep = [nms(b, s, iou_threshold=self.nms_iou_threshold) for b, s in zip(boxes, scores)]
            return [{"scores": s[k], "labels": lab[k], "boxes": b[k]}
                    for s, lab, b, k in zip(scores, labels, boxes, keep)]
        return [{"scores": s, "labels": lab, "boxes": b} for s, lab, b in zip(scores, labels, boxes)]


class RTDETRPostProcessor(nn.Module):
    """RT-DETR's post-processor (official ``RTDETRPostProcessor``): per image the ``num_top_queries`` best
    query-class pairs by sigmoid score (a query may appear once per class; no threshold), their labels and absolute
    xyxy boxes; with ``use_focal_loss`` False, the best softmax class of each query (the last logit is "no object"),
    the ``num_top_queries`` best queries.

    The image sizes come as (width, height), as the official datasets give ``orig_size``: ``target_sizes_wh``
    tells the evaluation loop, which holds (height, width), to flip them. ``category_ids`` (index = label) maps the
    labels to dataset ids (COCO's 80 ids in increasing order: the official ``remap_mscoco_category``). After
    :meth:`deploy` it returns the tensors ``(labels, boxes, scores)``, ``[B, n]``, ``[B, n, 4]``, ``[B, n]``,
    labels not mapped, as the official export. n = min(num_top_queries, Q * K) (the official fails for fewer pairs).
    """

    target_sizes_wh = True

    def __init__(self, num_classes: int = 80, use_focal_loss: bool = True, num_top_queries: int = 300,
                 category_ids: list[int] | None = None):
        super().__init__()
        if num_top_queries < 1:
            raise ValueError(f"RTDETRPostProcessor: num_top_queries must be at least 1, got {num_top_queries}")
        if category_ids is not None and len(category_ids) != num_classes:
            raise ValueError(f"RTDETRPostProcessor: {len(category_ids)} category_ids for {num_classes} classes")
        self.num_classes = int(num_classes)
        self.use_focal_loss = use_focal_loss
        self.num_top_queries = num_top_queries
        self.category_ids = None if category_ids is None else list(category_ids)
        self.deploy_mode = False

    def extra_repr(self) -> str:
        return (f"use_focal_loss={self.use_focal_loss}, num_classes={self.num_classes}, "
                f"num_top_queries={self.num_top_queries}")

    @torch.no_grad()
    def forward(self, outputs: dict, orig_target_sizes: torch.Tensor) -> list[dict] | tuple[torch.Tensor, ...]:
        """outputs: ``pred_logits`` ``[B, Q, K]`` (``[B, Q, K + 1]`` without focal loss), ``pred_boxes``
        ``[B, Q, 4]`` (normalised cxcywh); orig_target_sizes: ``[B, 2]`` (width, height) in pixels.

        Returns per image ``labels`` ``[n]``, ``boxes`` ``[n, 4]`` (absolute xyxy), ``scores`` ``[n]`` (descending
        with focal loss), or the deploy tuple."""
        logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
        check_target_sizes(type(self).__name__, len(logits), orig_target_sizes)
        boxes = box_cxcywh_to_xyxy(boxes)
        boxes = (boxes * orig_target_sizes.repeat(1, 2).unsqueeze(1)).to(boxes.dtype)
        if self.use_focal_loss:
            scores = logits.sigmoid().flatten(1)
            scores, index = torch.topk(scores, min(self.num_top_queries, scores.shape[1]), dim=-1)
            labels = index - index // self.num_classes * self.num_classes  # index % K, as official (old TensorRT)
            index = index // self.num_classes
            boxes = boxes.gather(dim=1, index=index.unsqueeze(-1).repeat(1, 1, boxes.shape[-1]))
        else:
            scores, labels = F.softmax(logits, dim=-1)[:, :, :-1].max(dim=-1)
            if scores.shape[1] > self.num_top_queries:
                scores, index = torch.topk(scores, self.num_top_queries, dim=-1)
                labels = torch.gather(labels, dim=1, index=index)
                boxes = torch.gather(boxes, dim=1, index=index.unsqueeze(-1).tile(1, 1, boxes.shape[-1]))
        if self.deploy_mode:
            return labels, boxes, scores
        if self.category_ids is not None:
            labels = torch.as_tensor(self.category_ids, device=labels.device)[labels]
        return [{"labels": lab, "boxes": box, "scores": score} for lab, box, score in zip(labels, boxes, scores)]

    def deploy(self) -> "RTDETRPostProcessor":
        """Evaluation mode returning the ``(labels, boxes, scores)`` tensors (for export); returns itself."""
        self.eval()
        self.deploy_mode = True
        return self


def detections(postprocessor: nn.Module, outputs: dict, sizes_hw: torch.Tensor) -> list[dict]:
    """``postprocessor(outputs, sizes)`` for image sizes ``[B, 2]`` given as (height, width), flipped for the
    post-processors that take (width, height) (``target_sizes_wh``, RT-DETR's)."""
    return postprocessor(outputs, sizes_hw.flip(-1) if getattr(postprocessor, "target_sizes_wh", False) else sizes_hw)


class CategoryIdPostProcess(nn.Module):
    """Another post-processor's detections with their labels (0..K-1, ``--remap_mscoco_category``) mapped to
    dataset category ids ``label_to_category_id[label]``; the other entries and the call as the wrapped one's."""

    def __init__(self, postprocessor: nn.Module, label_to_category_id: list[int]):
        super().__init__()
        self.postprocessor = postprocessor
        self.label_to_category_id = list(label_to_category_id)
        self.target_sizes_wh = getattr(postprocessor, "target_sizes_wh", False)

    @torch.no_grad()
    def forward(self, outputs: dict, target_sizes: torch.Tensor) -> list[dict]:
        results = self.postprocessor(outputs, target_sizes)
        for result in results:
            table = torch.as_tensor(self.label_to_category_id, device=result["labels"].device)
            result["labels"] = table[result["labels"]]
        return results


def with_category_ids(postprocessors: dict, label_to_category_id: list[int] | None) -> dict:
    """The post-processors with the ``bbox`` one giving dataset category ids: wrapped in
    :class:`CategoryIdPostProcess` unless it maps labels itself (``category_ids`` set) or there is no table."""
    bbox = postprocessors["bbox"]
    if label_to_category_id is None or getattr(bbox, "category_ids", None) is not None:
        return postprocessors
    return {**postprocessors, "bbox": CategoryIdPostProcess(bbox, label_to_category_id)}
