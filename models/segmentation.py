"""DETR's segmentation head (Carion et al. 2020, arXiv:2005.12872, section 4.4): a mask per object query.

``DETRsegm`` wraps a DETR. For each query, ``MHAttentionMap`` computes multi-head attention scores of the last
decoder output over the encoder memory (``[B, Q, heads, h, w]``); ``MaskHeadSmallConv`` concatenates them with the
projected last feature map and upsamples FPN-style through the earlier backbone stages to a mask logit map at
stride 4. Losses are the focal and DICE losses on matched queries. ``PostProcessSegm`` turns masks into binary
instance masks; ``PostProcessPanoptic`` merges things and stuff into a COCO panoptic PNG.

Parameter names are the official ones, so the official panoptic checkpoints load with ``strict=True``.
"""
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from util.nested_tensor import NestedTensor
from util.panoptic_png import encode_panoptic_png

if TYPE_CHECKING:
    from models.detr import DETR

GROUP_NORM_GROUPS = 8


class DETRsegm(nn.Module):
    """A DETR with a mask head: adds ``pred_masks`` ``[B, Q, H/4, W/4]`` (logits) to DETR's outputs.

    ``freeze_detr`` (the official two-stage recipe: box model first, then the mask head) makes every parameter of
    ``detr`` untrainable and, unlike the official code, also keeps ``detr`` in eval mode and runs it without
    gradients: dropout is off and trainable BatchNorm statistics do not drift, so the head learns on exactly the
    boxes and features it will see at test time.
    """

    def __init__(self, detr: "DETR", freeze_detr: bool = False):
        super().__init__()
        self.detr = detr
        self.freeze_detr = freeze_detr
        if freeze_detr:
            for p in self.detr.parameters():
                p.requires_grad_(False)
        hidden_dim, nheads = detr.transformer.d_model, detr.transformer.nhead
        feature_channels = detr.backbone.feature_channels
        if len(feature_channels) < 2:
            raise ValueError("DETRsegm needs a backbone built with return_interm_layers=True (the --masks flag)")
        self.bbox_attention = MHAttentionMap(hidden_dim, hidden_dim, nheads, dropout=0.0)
        # FPN inputs: the stages before the last, nearest to it first (official R50: layer3, layer2, layer1)
        self.mask_head = MaskHeadSmallConv(hidden_dim + nheads, feature_channels[-2::-1], hidden_dim)

    @property
    def backbone(self) -> nn.Module:
        """The wrapped DETR's backbone (for code that groups parameters by module, as for a plain DETR)."""
        return self.detr.backbone

    def train(self, mode: bool = True) -> "DETRsegm":
        super().train(mode)
        if self.freeze_detr:
            self.detr.eval()
        return self

    def forward(self, samples: NestedTensor | list[torch.Tensor] | torch.Tensor) -> dict:
        """samples as for DETR.forward. Returns DETR's outputs plus ``pred_masks`` ``[B, Q, H/4, W/4]`` logits over
        the padded batch (Q counts every query group in training)."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_detr):
            decoded = self.detr.decode(samples)
        out = dict(decoded.outputs)
        bs, num_queries = out["pred_logits"].shape[:2]
        bbox_mask = self.bbox_attention(decoded.hs, decoded.memory, mask=decoded.mask)
        fpns = [f.tensors for f in decoded.features[-2::-1]]
        seg_masks = self.mask_head(decoded.src_proj, bbox_mask, fpns)
        out["pred_masks"] = seg_masks.view(bs, num_queries, seg_masks.shape[-2], seg_masks.shape[-1])
        return out


def _expand(tensor: torch.Tensor, length: int) -> torch.Tensor:
    """``[B, C, H, W]`` -> ``[B * length, C, H, W]``, each image repeated ``length`` times in a row."""
    return tensor.unsqueeze(1).repeat(1, int(length), 1, 1, 1).flatten(0, 1)


class MaskHeadSmallConv(nn.Module):
    """Per-query mask decoder: 3x3 conv + GroupNorm + ReLU blocks, upsampled through the FPN feature maps.

    ``dim``: input channels (hidden_dim + heads); ``fpn_dims``: channels of the FPN inputs, coarsest first (three for
    the official layer4 model: layer3, layer2, layer1; two with --feature_layer layer3); ``context_dim``: hidden_dim.
    Layer k after the two input convs halves the width (context_dim / 2^k), so the widths must stay divisible by
    GroupNorm's 8 groups. Names (lay1.., gn1.., adapter1.., out_lay) are the official ones.
    """

    def __init__(self, dim: int, fpn_dims: list[int], context_dim: int):
        super().__init__()
        levels = len(fpn_dims)
        inter_dims = [dim] + [context_dim // 2 ** k for k in range(1, levels + 2)]
        bad = [c for c in inter_dims[: levels + 2] if c % GROUP_NORM_GROUPS]
        if bad:
            raise ValueError(f"the mask head's GroupNorm needs widths divisible by {GROUP_NORM_GROUPS}: "
                             f"--hidden_dim {context_dim} with --nheads {dim - context_dim} gives {inter_dims}; use a "
                             f"--hidden_dim divisible by {GROUP_NORM_GROUPS * 2 ** (levels + 1)} and --nheads "
                             f"divisible by {GROUP_NORM_GROUPS}")
        self.dim = dim
        self.levels = levels
        widths = [dim, dim] + inter_dims[1: levels + 2]  # lay_i maps widths[i-1] -> widths[i]
        for i in range(1, levels + 3):
            setattr(self, f"lay{i}", nn.Conv2d(widths[i - 1], widths[i], 3, padding=1))
            setattr(self, f"gn{i}", nn.GroupNorm(GROUP_NORM_GROUPS, widths[i]))
        self.out_lay = nn.Conv2d(widths[-1], 1, 3, padding=1)
        for k in range(1, levels + 1):
            setattr(self, f"adapter{k}", nn.Conv2d(fpn_dims[k - 1], inter_dims[k], 1))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, a=1)
                nn.init.constant_(m.bias, 0)

    def _block(self, i: int, x: torch.Tensor) -> torch.Tensor:
        return F.relu(getattr(self, f"gn{i}")(getattr(self, f"lay{i}")(x)))

    def forward(self, x: torch.Tensor, bbox_mask: torch.Tensor, fpns: list[torch.Tensor]) -> torch.Tensor:
        """x ``[B, D, h, w]``, bbox_mask ``[B, Q, heads, h, w]``, fpns coarsest first ``[B, C_k, H_k, W_k]``.

        Returns mask logits ``[B * Q, 1, H_last, W_last]`` at the finest FPN input's resolution."""
        x = torch.cat([_expand(x, bbox_mask.shape[1]), bbox_mask.flatten(0, 1)], 1)
        x = self._block(2, self._block(1, x))
        for k, fpn in enumerate(fpns, start=1):
            cur_fpn = getattr(self, f"adapter{k}")(fpn)
            if cur_fpn.size(0) != x.size(0):
                cur_fpn = _expand(cur_fpn, x.size(0) // cur_fpn.size(0))
            x = cur_fpn + F.interpolate(x, size=cur_fpn.shape[-2:], mode="nearest")
            x = self._block(k + 2, x)
        return self.out_lay(x)


class MHAttentionMap(nn.Module):
    """Multi-head attention scores (no values) of queries ``[B, Q, D]`` over a feature map ``[B, D, h, w]``.

    As the official head, the softmax runs jointly over heads and positions, and padded positions get zero weight.
    """

    def __init__(self, query_dim: int, hidden_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True):
        super().__init__()
        self.num_heads = num_heads
        self.hidden_dim = hidden_dim
        self.dropout = nn.Dropout(dropout)
        self.q_linear = nn.Linear(query_dim, hidden_dim, bias=bias)
        self.k_linear = nn.Linear(query_dim, hidden_dim, bias=bias)
        nn.init.zeros_(self.k_linear.bias)
        nn.init.zeros_(self.q_linear.bias)
        nn.init.xavier_uniform_(self.k_linear.weight)
        nn.init.xavier_uniform_(self.q_linear.weight)
        self.normalize_fact = float(hidden_dim / self.num_heads) ** -0.5

    def forward(self, q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """q ``[B, Q, D]``, k ``[B, D, h, w]``, mask ``[B, h, w]`` True on padding -> ``[B, Q, heads, h, w]``."""
        q = self.q_linear(q)
        k = F.conv2d(k, self.k_linear.weight.unsqueeze(-1).unsqueeze(-1), self.k_linear.bias)
        head_dim = self.hidden_dim // self.num_heads
        qh = q.view(q.shape[0], q.shape[1], self.num_heads, head_dim)
        kh = k.view(k.shape[0], self.num_heads, head_dim, k.shape[-2], k.shape[-1])
        weights = torch.einsum("bqnc,bnchw->bqnhw", qh * self.normalize_fact, kh)
        if mask is not None:
            weights = weights.masked_fill(mask.unsqueeze(1).unsqueeze(1), float("-inf"))
        weights = F.softmax(weights.flatten(2), dim=-1).view(weights.size())
        return self.dropout(weights)


def dice_loss(inputs: torch.Tensor, targets: torch.Tensor, num_boxes: float) -> torch.Tensor:
    """DICE loss (Milletari et al. 2016) of mask logits ``[N, P]`` against binary targets ``[N, P]``, summed over
    masks and divided by ``num_boxes``."""
    inputs = inputs.sigmoid().flatten(1)
    numerator = 2 * (inputs * targets).sum(1)
    denominator = inputs.sum(-1) + targets.sum(-1)
    loss = 1 - (numerator + 1) / (denominator + 1)
    return loss.sum() / num_boxes


def sigmoid_focal_loss(inputs: torch.Tensor, targets: torch.Tensor, num_boxes: float, alpha: float = 0.25,
                       gamma: float = 2) -> torch.Tensor:
    """Focal loss (Lin et al. 2017) of logits ``[N, P]`` against binary targets ``[N, P]``: mean over pixels, summed
    over masks, divided by ``num_boxes``. ``alpha`` weights positives (negative: no weighting)."""
    prob = inputs.sigmoid()
    ce_loss = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce_loss * ((1 - p_t) ** gamma)
    if alpha >= 0:
        alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
        loss = alpha_t * loss
    return loss.mean(1).sum() / num_boxes


class PostProcessSegm(nn.Module):
    """Adds binary ``masks`` ``[Q, 1, H, W]`` (uint8, original image size) to PostProcess's per-image results."""

    def __init__(self, threshold: float = 0.5):
        super().__init__()
        self.threshold = threshold

    @torch.no_grad()
    def forward(self, results: list[dict], outputs: dict, orig_target_sizes: torch.Tensor,
                max_target_sizes: torch.Tensor) -> list[dict]:
        """orig_target_sizes ``[B, 2]``: original (h, w); max_target_sizes ``[B, 2]``: (h, w) as fed to the model."""
        if len(orig_target_sizes) != len(max_target_sizes):
            raise ValueError(f"PostProcessSegm: {len(orig_target_sizes)} original sizes but {len(max_target_sizes)} "
                             "input sizes")
        max_h, max_w = max_target_sizes.max(0)[0].tolist()
        outputs_masks = F.interpolate(outputs["pred_masks"], size=(max_h, max_w), mode="bilinear", align_corners=False)
        outputs_masks = (outputs_masks.sigmoid() > self.threshold).cpu()
        for i, (cur_mask, t, tt) in enumerate(zip(outputs_masks, max_target_sizes, orig_target_sizes)):
            img_h, img_w = t[0], t[1]
            masks = cur_mask[:, :img_h, :img_w].unsqueeze(1)
            results[i]["masks"] = F.interpolate(masks.float(), size=tuple(tt.tolist()), mode="nearest").byte()
        return results


class PostProcessPanoptic(nn.Module):
    """Model outputs -> COCO panoptic predictions: per image ``png_string`` (the PNG's bytes, segment ids from 0)
    and ``segments_info`` (``id``, ``isthing``, ``category_id``, ``area`` in pixels of the output size).

    As the official post-processor: queries whose most likely class is not "no object" with probability above
    ``threshold`` (and whose class is in ``is_thing_map``) are kept; stuff queries of the same class are merged;
    every pixel goes to the kept segment with the highest mask logit; segments of at most 4 pixels are dropped
    (repeatedly, re-assigning their pixels). If no query passes the threshold the image is one void segment (all
    ids 0, empty ``segments_info``). The official code merges stuff by relabelling pixels, which its tiny-segment
    pass then undoes (the emptied duplicates are dropped and their pixels re-assigned without the merge); merging
    the mask logits first keeps the merge.
    """

    def __init__(self, is_thing_map: dict[int, bool], threshold: float = 0.85):
        """is_thing_map: category id -> True for things, False for stuff."""
        super().__init__()
        self.threshold = threshold
        self.is_thing_map = is_thing_map

    @torch.no_grad()
    def forward(self, outputs: dict, processed_sizes: torch.Tensor | list,
                target_sizes: torch.Tensor | list | None = None) -> list[dict]:
        """processed_sizes ``[B, 2]``: (h, w) of each image as fed to the model; target_sizes ``[B, 2]``: output
        (h, w), default the same.

        The masks cover the padded batch; each image is its top-left ``processed_size`` part. (The official code
        resizes the whole padded map to the image size, which misaligns every image smaller than the batch's
        padding; with one image per batch both agree.)"""
        if target_sizes is None:
            target_sizes = processed_sizes
        if len(processed_sizes) != len(target_sizes):
            raise ValueError(f"PostProcessPanoptic: {len(processed_sizes)} processed sizes but {len(target_sizes)} "
                             "target sizes")
        no_object = outputs["pred_logits"].shape[-1] - 1
        # The masks cover the padded batch, whose size is the largest processed size: upsample to it, then crop.
        padded_hw = _hw(torch.as_tensor(processed_sizes).max(0)[0])
        preds = []
        for cur_logits, cur_masks, size, target_size in zip(outputs["pred_logits"], outputs["pred_masks"],
                                                            processed_sizes, target_sizes):
            cur_scores, cur_classes = cur_logits.softmax(-1).max(-1)
            known = torch.as_tensor([c in self.is_thing_map for c in cur_classes.tolist()], dtype=torch.bool,
                                    device=cur_classes.device)
            keep = cur_classes.ne(no_object) & (cur_scores > self.threshold) & known
            cur_scores, cur_classes, cur_masks = cur_scores[keep], cur_classes[keep], cur_masks[keep]
            h, w = _hw(size)
            cur_masks = F.interpolate(cur_masks[:, None], padded_hw, mode="bilinear").squeeze(1)[:, :h, :w]
            cur_classes, cur_masks = _merge_stuff(cur_classes, cur_masks, self.is_thing_map)
            final_hw = _hw(target_size)
            area, seg_ids = _assign_pixels(cur_masks, final_hw)
            while cur_classes.numel() > 0:  # drop tiny segments until none is left
                small = torch.as_tensor([a <= 4 for a in area], dtype=torch.bool, device=cur_classes.device)
                if not small.any():
                    break
                cur_classes, cur_masks = cur_classes[~small], cur_masks[~small]
                area, seg_ids = _assign_pixels(cur_masks, final_hw)
            segments_info = [{"id": i, "isthing": self.is_thing_map[int(c)], "category_id": int(c), "area": a}
                             for i, (c, a) in enumerate(zip(cur_classes.tolist(), area))]
            preds.append({"png_string": encode_panoptic_png(seg_ids), "segments_info": segments_info})
        return preds


def _hw(size) -> tuple[int, int]:
    return tuple(int(v) for v in size)


def _merge_stuff(classes: torch.Tensor, masks: torch.Tensor, is_thing_map: dict[int, bool]
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """One segment per stuff class: queries ``[N]`` with masks ``[N, h, w]`` of the same stuff class become the first
    of them, with the pixel-wise maximum of their mask logits (so a pixel goes to the merged segment exactly when
    one of them would have won it)."""
    keep = torch.ones(len(classes), dtype=torch.bool, device=classes.device)
    masks = masks.clone()
    first_of_class = {}
    for k, label in enumerate(classes.tolist()):
        if is_thing_map[label]:
            continue
        if label in first_of_class:
            first = first_of_class[label]
            masks[first] = torch.maximum(masks[first], masks[k])
            keep[k] = False
        else:
            first_of_class[label] = k
    return classes[keep], masks[keep]


def _assign_pixels(masks: torch.Tensor, final_hw: tuple[int, int]) -> tuple[list[int], np.ndarray]:
    """Mask logits ``[N, h, w]`` -> (pixel count of each of the N segments at ``final_hw``, ``[H, W]`` segment ids).

    Each pixel takes the segment of highest logit (ids 0 when N = 0); the id map is resized to ``final_hw`` by
    nearest neighbour (PIL's, as the official)."""
    h, w = masks.shape[-2:]
    if masks.shape[0] == 0:
        ids = np.zeros((h, w), dtype=np.int32)
    else:
        ids = masks.flatten(1).argmax(0).view(h, w).cpu().numpy().astype(np.int32)
    final_h, final_w = final_hw
    resized = Image.fromarray(ids).resize((final_w, final_h), resample=Image.NEAREST)
    seg_ids = np.asarray(resized, dtype=np.int64)
    counts = np.bincount(seg_ids.ravel(), minlength=masks.shape[0])
    return counts[: masks.shape[0]].tolist(), seg_ids
