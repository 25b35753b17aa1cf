"""DETR's post-processing: softmax scores and absolute boxes, one prediction per query."""
import torch
import torch.nn.functional as F
from torch import nn

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
