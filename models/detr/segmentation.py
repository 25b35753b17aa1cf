"""DETR's segmentation head (Carion et al. 2020, arXiv:2005.12872, section 4.4): a mask per object query.

``DETRsegm`` wraps a DETR. For each query, ``MHAttentionMap`` computes multi-head attention scores of the last
decoder output over the encoder memory (``[B, Q, heads, h, w]``); ``MaskHeadSmallConv`` concatenates them with the
projected last feature map and upsamples FPN-style through the earlier backbone stages to a mask logit map at
stride 4. Losses are the focal and DICE losses on matched queries. ``PostProcessSegm`` turns masks into binary
instance masks; ``PostProcessPanoptic`` merges things and stuff into a COCO panoptic PNG.

Parameter names are the official ones, so the official panoptic checkpoints load with ``strict=True``.
"""
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from models.detr.detr import DETR, DecodeResult
from util.nested_tensor import NestedTensor
from util.panoptic_png import encode_panoptic_png

GROUP_NORM_GROUPS = 8
COCO_PANOPTIC_LAST_THING = 90  # COCO panoptic category ids 1..90 are things, 92..200 stuff


def coco_panoptic_is_thing_map(num_classes: int = 201) -> dict[int, bool]:
    """COCO panoptic's rule, for models used without their annotation file: class id -> True for things."""
    return {i: i <= COCO_PANOPTIC_LAST_THING for i in range(num_classes)}


class DETRsegm(nn.Module):
    """A DETR with a mask head: adds ``pred_masks`` ``[B, Q, H/4, W/4]`` (logits) to DETR's outputs.

    ``freeze_detr`` (the official two-stage recipe: box model first, then the mask head) makes every parameter of
    ``detr`` untrainable and, unlike the official code, also keeps ``detr`` in eval mode and runs it without
    gradients: dropout is off and trainable BatchNorm statistics do not drift, so the head learns on exactly the
    boxes and features it will see at test time.
    """

    __jit_unused_properties__ = ["backbone"]

    def __init__(self, detr: DETR, freeze_detr: bool = False):
        super().__init__()
        self.detr = detr
        self.freeze_detr = freeze_detr
        if freeze_detr:
            for p in self.detr.parameters():
                p.requires_grad_(False)
        hidden_dim, nheads = detr.transformer.d_model, detr.transformer.nhead
        feature_channels = detr.backbone.feature_channels
        if len(feature_channels) < 2:
            raise ValueError("DETRsegm needs a backbone built with return_interm_layers=True")
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

    def forward(self, samples: NestedTensor) -> dict[str, Tensor]:
        """samples as for DETR.forward. Returns DETR's outputs plus ``pred_masks`` ``[B, Q, H/4, W/4]`` logits over
        the padded batch (Q counts every query group in training)."""
        if self.freeze_detr and not torch.jit.is_scripting():
            decoded, out = self._frozen_detr(samples)
        else:
            decoded = self.detr.decode(samples)
            out = self.detr.predict(decoded.hs)
        hs = decoded.hs[-1]
        bs, num_queries = hs.shape[:2]
        bbox_mask = self.bbox_attention(hs, decoded.memory, mask=decoded.mask)
        fpns = [f.tensors for f in decoded.features[:-1]]
        fpns.reverse()
        seg_masks = self.mask_head(decoded.src_proj, bbox_mask, fpns)
        out["pred_masks"] = seg_masks.view(bs, num_queries, seg_masks.shape[-2], seg_masks.shape[-1])
        return out

    @torch.jit.unused
    def _frozen_detr(self, samples: NestedTensor) -> tuple[DecodeResult, dict]:
        """The frozen box model's pass, without gradients."""
        with torch.no_grad():
            decoded = self.detr.decode(samples)
            return decoded, self.detr.predict(decoded.hs)


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
        if levels not in (2, 3):
            raise ValueError(f"the mask head takes 2 or 3 FPN levels, got {levels}")
        inter_dims = mask_head_widths(dim, context_dim, levels)
        if any(c % GROUP_NORM_GROUPS for c in inter_dims):
            raise ValueError(f"the mask head's GroupNorm needs widths divisible by {GROUP_NORM_GROUPS}, got "
                             f"{inter_dims} (input {dim}, context {context_dim}, {levels} FPN levels)")
        self.dim = dim
        self.levels = levels
        widths = [dim, dim] + inter_dims[1:]  # lay_i maps widths[i-1] -> widths[i]
        for i in range(1, levels + 3):
            setattr(self, f"lay{i}", nn.Conv2d(widths[i - 1], widths[i], 3, padding=1))
            setattr(self, f"gn{i}", nn.GroupNorm(GROUP_NORM_GROUPS, widths[i]))
        self.out_lay = nn.Conv2d(widths[-1], 1, 3, padding=1)
        for k in range(1, levels + 1):
            setattr(self, f"adapter{k}", nn.Conv2d(fpn_dims[k - 1], inter_dims[k], 1))
        if levels == 2:
            self.adapter3 = self.lay5 = self.gn5 = None
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, a=1)
                nn.init.constant_(m.bias, 0)

    def forward(self, x: Tensor, bbox_mask: Tensor, fpns: list[Tensor]) -> Tensor:
        """x ``[B, D, h, w]``, bbox_mask ``[B, Q, heads, h, w]``, fpns coarsest first ``[B, C_k, H_k, W_k]``.

        Returns mask logits ``[B * Q, 1, H_last, W_last]`` at the finest FPN input's resolution. (Written out layer
        by layer, as TorchScript needs; the third FPN level exists only for layer4 models.)"""
        x = torch.cat([_expand(x, bbox_mask.shape[1]), bbox_mask.flatten(0, 1)], 1)
        x = F.relu(self.gn1(self.lay1(x)))
        x = F.relu(self.gn2(self.lay2(x)))
        x = F.relu(self.gn3(self.lay3(_add_fpn(self.adapter1(fpns[0]), x))))
        x = F.relu(self.gn4(self.lay4(_add_fpn(self.adapter2(fpns[1]), x))))
        if self.adapter3 is not None and self.lay5 is not None and self.gn5 is not None:
            x = F.relu(self.gn5(self.lay5(_add_fpn(self.adapter3(fpns[2]), x))))
        return self.out_lay(x)


def mask_head_widths(dim: int, context_dim: int, levels: int) -> list[int]:
    """Widths of the mask head's GroupNorm layers: the input ``dim`` (hidden + heads), then ``context_dim / 2^k``
    for k = 1 .. levels + 1."""
    return [dim] + [context_dim // 2 ** k for k in range(1, levels + 2)]


def _add_fpn(cur_fpn: Tensor, x: Tensor) -> Tensor:
    """An adapted FPN map ``[B, C, H, W]`` (repeated per query to ``[B*Q, ...]``) plus ``x`` upsampled to it."""
    if cur_fpn.size(0) != x.size(0):
        cur_fpn = _expand(cur_fpn, x.size(0) // cur_fpn.size(0))
    return cur_fpn + F.interpolate(x, size=cur_fpn.shape[-2:], mode="nearest")


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
