"""DETR (Carion et al., "End-to-End Object Detection with Transformers", ECCV 2020, arXiv:2005.12872):
the detector, its set-prediction loss and the post-processing to COCO boxes."""
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from util.box_ops import box_cxcywh_to_xyxy, paired_generalized_box_iou
from util.distributed import get_world_size, is_dist_avail_and_initialized
from util.nested_tensor import NestedTensor, nested_tensor_from_tensor_list


class DecodeResult(NamedTuple):
    """One DETR forward pass: ``outputs`` (DETR.forward's dict), the backbone ``features`` (NestedTensors, input side
    first), ``src_proj`` ``[B, D, h, w]`` (last feature map after the input projection), its padding ``mask``
    ``[B, h, w]``, the last decoder layer ``hs`` ``[B, Q, D]`` and the encoder ``memory`` ``[B, D, h, w]``."""
    outputs: dict
    features: list
    src_proj: torch.Tensor
    mask: torch.Tensor
    hs: torch.Tensor
    memory: torch.Tensor


class DETR(nn.Module):
    """Backbone + transformer + heads: ``num_queries`` learned queries each predict a class and a box."""

    def __init__(self, backbone: nn.Module, transformer: nn.Module, num_classes: int, num_queries: int,
                 aux_loss: bool = False, query_groups: int = 1):
        """num_classes: largest class id + 1; the classifier has one more output for "no object".

        query_groups > 1 trains with that many independent groups of ``num_queries`` queries (Group DETR, Chen et
        al. 2022, arXiv:2207.13085): queries attend only within their group and each group is matched one-to-one,
        so every object supervises several queries. Only the first group is used outside training.
        """
        super().__init__()
        if query_groups < 1:
            raise ValueError(f"--query_groups must be at least 1, got {query_groups}")
        self.num_queries = num_queries
        self.query_groups = query_groups
        self.transformer = transformer
        hidden_dim = transformer.d_model
        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.bbox_embed = MLP(hidden_dim, hidden_dim, 4, 3)
        self.query_embed = nn.Embedding(num_queries * query_groups, hidden_dim)
        self.input_proj = nn.Conv2d(backbone.num_channels, hidden_dim, kernel_size=1)
        self.backbone = backbone
        self.aux_loss = aux_loss

    def forward(self, samples: NestedTensor | list[torch.Tensor] | torch.Tensor) -> dict:
        """samples: a NestedTensor (images ``[B, 3, H, W]``, mask ``[B, H, W]`` True on padding), or a list of
        ``[3, H_i, W_i]`` images.

        Returns ``pred_logits`` ``[B, Q, K+1]``, ``pred_boxes`` ``[B, Q, 4]`` (cx, cy, w, h in [0, 1] of the
        unpadded image) and, with aux loss, ``aux_outputs``: the same two keys for each earlier decoder layer.
        Training with query groups returns all groups' queries (Q * groups) and ``query_groups``.
        """
        return self.decode(samples).outputs

    def decode(self, samples: NestedTensor | list[torch.Tensor] | torch.Tensor) -> DecodeResult:
        """The forward pass, keeping what a mask head needs besides the outputs (see DecodeResult)."""
        if isinstance(samples, (list, tuple)):
            samples = nested_tensor_from_tensor_list(list(samples))
        elif isinstance(samples, torch.Tensor):
            samples = nested_tensor_from_tensor_list(list(samples))
        features, pos = self.backbone(samples)
        src, mask = features[-1].decompose()
        groups = self.query_groups if self.training else 1
        queries = self.query_embed.weight[: self.num_queries * groups]
        query_mask = self._group_mask(groups, queries.device) if groups > 1 else None
        src_proj = self.input_proj(src)
        hs, memory = self.transformer(src_proj, mask, queries, pos[-1], query_mask)
        outputs_class = self.class_embed(hs)
        outputs_coord = self.bbox_embed(hs).sigmoid()
        out = {"pred_logits": outputs_class[-1], "pred_boxes": outputs_coord[-1]}
        if self.aux_loss:
            out["aux_outputs"] = self._set_aux_loss(outputs_class, outputs_coord)
        if groups > 1:
            out["query_groups"] = groups
        return DecodeResult(out, features, src_proj, mask, hs[-1], memory)

    def _group_mask(self, groups: int, device: torch.device) -> torch.Tensor:
        """``[Q*G, Q*G]`` bool, True between queries of different groups (blocked in self-attention)."""
        group_of = torch.arange(self.num_queries * groups, device=device) // self.num_queries
        return group_of[:, None] != group_of[None, :]

    @torch.jit.unused
    def _set_aux_loss(self, outputs_class: torch.Tensor, outputs_coord: torch.Tensor) -> list[dict]:
        return [{"pred_logits": a, "pred_boxes": b} for a, b in zip(outputs_class[:-1], outputs_coord[:-1])]


class SetCriterion(nn.Module):
    """DETR's loss: match predictions to targets (Hungarian), then supervise matched pairs.

    Losses (``losses`` picks among them): ``labels`` -> ``loss_ce`` (cross-entropy, no-object weighted by
    ``eos_coef``) and logged ``class_error`` (%); ``cardinality`` -> ``cardinality_error`` (logged, no gradient);
    ``boxes`` -> ``loss_bbox`` (L1) and ``loss_giou`` (1 - GIoU), both summed over matches and divided by the
    number of target boxes averaged over processes; ``masks`` -> ``loss_mask`` (focal) and ``loss_dice`` (see
    loss_masks; last decoder layer only). With aux outputs every loss is repeated per earlier decoder
    layer with suffix ``_0``, ``_1``, ...
    """

    def __init__(self, num_classes: int, matcher: nn.Module, weight_dict: dict, eos_coef: float, losses: list[str]):
        super().__init__()
        self.num_classes = num_classes
        self.matcher = matcher
        self.weight_dict = weight_dict
        self.eos_coef = eos_coef
        self.losses = losses
        empty_weight = torch.ones(self.num_classes + 1)
        empty_weight[-1] = self.eos_coef
        self.register_buffer("empty_weight", empty_weight)

    def loss_labels(self, outputs, targets, indices, num_boxes, log=True) -> dict:
        src_logits = outputs["pred_logits"]
        idx = self._get_src_permutation_idx(indices)
        target_classes_o = torch.cat([t["labels"][j] for t, (_, j) in zip(targets, indices)])
        target_classes = torch.full(src_logits.shape[:2], self.num_classes, dtype=torch.int64,
                                    device=src_logits.device)
        target_classes[idx] = target_classes_o
        loss_ce = F.cross_entropy(src_logits.transpose(1, 2), target_classes, self.empty_weight)
        losses = {"loss_ce": loss_ce}
        if log:
            losses["class_error"] = 100 - accuracy(src_logits[idx], target_classes_o)[0]
        return losses

    @torch.no_grad()
    def loss_cardinality(self, outputs, targets, indices, num_boxes) -> dict:
        """Absolute error in the number of predicted objects (argmax not "no object"); for logging only.
        With query groups, the first group's count."""
        pred_logits = outputs["pred_logits"]
        pred_logits = pred_logits[:, : pred_logits.shape[1] // outputs.get("query_groups", 1)]
        tgt_lengths = torch.as_tensor([len(v["labels"]) for v in targets], device=pred_logits.device)
        card_pred = (pred_logits.argmax(-1) != pred_logits.shape[-1] - 1).sum(1)
        return {"cardinality_error": F.l1_loss(card_pred.float(), tgt_lengths.float())}

    def loss_boxes(self, outputs, targets, indices, num_boxes) -> dict:
        idx = self._get_src_permutation_idx(indices)
        src_boxes = outputs["pred_boxes"][idx]
        target_boxes = torch.cat([t["boxes"][i] for t, (_, i) in zip(targets, indices)], dim=0)
        loss_bbox = F.l1_loss(src_boxes, target_boxes, reduction="none")
        loss_giou = 1 - paired_generalized_box_iou(box_cxcywh_to_xyxy(src_boxes), box_cxcywh_to_xyxy(target_boxes))
        return {"loss_bbox": loss_bbox.sum() / num_boxes, "loss_giou": loss_giou.sum() / num_boxes}

    def loss_masks(self, outputs, targets, indices, num_boxes) -> dict:
        """Focal (``loss_mask``) and DICE (``loss_dice``) losses of matched ``pred_masks`` ``[B, Q, h, w]`` against
        target ``masks`` ``[T_i, H_i, W_i]``, upsampled to the padded batch size (padding counts as background)."""
        from models.segmentation import dice_loss, sigmoid_focal_loss

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

    def _get_src_permutation_idx(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        batch_idx = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)])
        src_idx = torch.cat([src for (src, _) in indices])
        return batch_idx, src_idx

    def _get_tgt_permutation_idx(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        batch_idx = torch.cat([torch.full_like(tgt, i) for i, (_, tgt) in enumerate(indices)])
        tgt_idx = torch.cat([tgt for (_, tgt) in indices])
        return batch_idx, tgt_idx

    def get_loss(self, loss, outputs, targets, indices, num_boxes, **kwargs) -> dict:
        loss_map = {"labels": self.loss_labels, "cardinality": self.loss_cardinality, "boxes": self.loss_boxes,
                    "masks": self.loss_masks}
        if loss not in loss_map:
            raise ValueError(f"unknown loss {loss!r}; choose from {sorted(loss_map)}")
        return loss_map[loss](outputs, targets, indices, num_boxes, **kwargs)

    def forward(self, outputs: dict, targets: list[dict]) -> dict:
        """outputs: the model's dict; targets: per image ``labels`` ``[T_i]``, ``boxes`` ``[T_i, 4]`` (cxcywh).

        Returns the unweighted losses by name; weight them with ``weight_dict``.
        """
        outputs_without_aux = {k: v for k, v in outputs.items() if k != "aux_outputs"}
        groups = outputs.get("query_groups", 1)
        indices = self.matcher(outputs_without_aux, targets, groups)

        # With query groups every target is matched once per group: normalise by all matches.
        num_boxes = sum(len(t["labels"]) for t in targets) * groups
        num_boxes = torch.as_tensor([num_boxes], dtype=torch.float, device=next(iter(outputs.values())).device)
        if is_dist_avail_and_initialized():
            torch.distributed.all_reduce(num_boxes)
        num_boxes = torch.clamp(num_boxes / get_world_size(), min=1).item()

        losses = {}
        for loss in self.losses:
            losses.update(self.get_loss(loss, outputs, targets, indices, num_boxes))
        for i, aux_outputs in enumerate(outputs.get("aux_outputs", [])):
            aux_outputs = {**aux_outputs, "query_groups": groups}
            indices = self.matcher(aux_outputs, targets, groups)
            for loss in self.losses:
                if loss == "masks":  # only the last decoder layer predicts masks
                    continue
                kwargs = {"log": False} if loss == "labels" else {}
                l_dict = self.get_loss(loss, aux_outputs, targets, indices, num_boxes, **kwargs)
                losses.update({f"{k}_{i}": v for k, v in l_dict.items()})
        return losses


class PostProcess(nn.Module):
    """Model outputs -> per image ``scores`` ``[Q]``, ``labels`` ``[Q]``, ``boxes`` ``[Q, 4]`` absolute xyxy."""

    @torch.no_grad()
    def forward(self, outputs: dict, target_sizes: torch.Tensor) -> list[dict]:
        """target_sizes: ``[B, 2]`` (height, width) of each original image, in pixels."""
        out_logits, out_bbox = outputs["pred_logits"], outputs["pred_boxes"]
        if len(out_logits) != len(target_sizes):
            raise ValueError(f"PostProcess: {len(out_logits)} outputs but {len(target_sizes)} target sizes")
        if target_sizes.shape[1] != 2:
            raise ValueError(f"PostProcess: target_sizes must be [B, 2], got {tuple(target_sizes.shape)}")
        prob = F.softmax(out_logits, -1)
        scores, labels = prob[..., :-1].max(-1)
        boxes = box_cxcywh_to_xyxy(out_bbox)
        img_h, img_w = target_sizes.unbind(1)
        scale_fct = torch.stack([img_w, img_h, img_w, img_h], dim=1)
        boxes = boxes * scale_fct[:, None, :]
        return [{"scores": s, "labels": lab, "boxes": b} for s, lab, b in zip(scores, labels, boxes)]


class MLP(nn.Module):
    """Feed-forward network of ``num_layers`` linear layers with ReLU between them."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int):
        super().__init__()
        self.num_layers = num_layers
        h = [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(n, k) for n, k in zip([input_dim] + h, h + [output_dim]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = F.relu(layer(x)) if i < self.num_layers - 1 else layer(x)
        return x


def _pad_to(masks: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Zero-pad ``[N, h, w]`` at the bottom/right to ``[N, height, width]``."""
    return F.pad(masks, (0, width - masks.shape[-1], 0, height - masks.shape[-2]))


@torch.no_grad()
def accuracy(output: torch.Tensor, target: torch.Tensor, topk: tuple = (1,)) -> list[torch.Tensor]:
    """Top-k accuracy in percent of logits ``[N, K]`` against labels ``[N]``; 0 when N = 0."""
    if target.numel() == 0:
        return [torch.zeros([], device=output.device)]
    maxk = max(topk)
    _, pred = output.topk(maxk, 1, True, True)
    correct = pred.t().eq(target.view(1, -1).expand_as(pred.t()))
    return [correct[:k].reshape(-1).float().sum(0) * (100.0 / target.size(0)) for k in topk]


def build(args) -> tuple[nn.Module, nn.Module, dict]:
    """DETR, its criterion and post-processors from parsed flags; ``args.num_classes`` must be set."""
    from models.backbone import build_backbone
    from models.matcher import build_matcher
    from models.segmentation import DETRsegm, PostProcessPanoptic, PostProcessSegm
    from models.transformer import build_transformer

    if args.num_classes is None or args.num_classes < 1:
        raise ValueError(f"--num_classes must be a positive integer, got {args.num_classes}")
    device = torch.device(args.device)
    model = DETR(build_backbone(args), build_transformer(args), num_classes=args.num_classes,
                 num_queries=args.num_queries, aux_loss=args.aux_loss, query_groups=args.query_groups)
    if args.masks:
        model = DETRsegm(model, freeze_detr=bool(args.frozen_weights))
    weight_dict = {"loss_ce": 1, "loss_bbox": args.bbox_loss_coef, "loss_giou": args.giou_loss_coef}
    if args.masks:
        weight_dict.update({"loss_mask": args.mask_loss_coef, "loss_dice": args.dice_loss_coef})
    if args.aux_loss:
        aux_weight_dict = {}
        for i in range(args.dec_layers - 1):
            aux_weight_dict.update({f"{k}_{i}": v for k, v in weight_dict.items()})
        weight_dict.update(aux_weight_dict)
    criterion = SetCriterion(args.num_classes, matcher=build_matcher(args), weight_dict=weight_dict,
                             eos_coef=args.eos_coef,
                             losses=["labels", "boxes", "cardinality"] + (["masks"] if args.masks else []))
    criterion.to(device)
    postprocessors = {"bbox": PostProcess()}
    if args.masks:
        postprocessors["segm"] = PostProcessSegm()
        if args.dataset_file == "coco_panoptic":
            # COCO panoptic: ids 1..90 are things, 92..200 stuff; main.py takes the map from the dataset instead
            postprocessors["panoptic"] = PostProcessPanoptic({i: i <= 90 for i in range(201)}, threshold=0.85)
    return model, criterion, postprocessors
