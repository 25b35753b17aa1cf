"""Contrastive denoising (DINO, Zhang et al. 2023, section 3.3): noised copies of the ground truth as extra queries.

Every denoising group holds two parts of ``pad`` queries each (``pad`` = the largest number of targets of an image
in the batch): positives, the image's boxes jittered by less than ``box_noise_scale`` times half their size per
edge, which must reconstruct their box and class; then negatives, jittered by between 1 and 2 times that, which must
predict "no object". A fraction ``label_noise_ratio / 2`` of all labels is replaced by a random class. Slots past an
image's own targets are padding (zero content, anchor box (0.5, 0.5, 0.5, 0.5)).

Query layout along the query axis: ``[group 0: positives | negatives][group 1: ...] ... [matching queries]``.
Attention mask: the matching queries do not see any denoising query (they must not learn from the ground truth)
and denoising groups do not see each other; a denoising query sees its own group and the matching queries.

The random draws (label noise: one uniform per label, then new classes for the chosen ones; box noise: a random
sign per coordinate, then a uniform per coordinate) follow the official implementation, in its order, so that the
same torch seed gives the same noise.

RT-DETR's variant (:func:`contrastive_denoising_group`, RT-DETRv2, D-FINE and DEIM, with options for where the
last two differ) has the same layout and attention mask, but its own group count (``num_denoising // max_targets``
groups), padding (class ``num_classes``, whose embedding row is zero, and box (0, 0, 0, 0)), draw shapes and
``dn_meta``.
"""
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from models.layers.box_encoding import inverse_sigmoid
from util.box_ops import box_cxcywh_to_xyxy, box_xyxy_to_cxcywh


@dataclass
class DenoisingQueries:
    """``content`` ``[B, P, D]`` (label embeddings) and ``anchors`` ``[B, P, 4]`` (boxes in logit space) of the
    P = ``pad_size`` denoising queries; ``attn_mask`` ``[P + Q, P + Q]`` (True: may not attend) over denoising then
    Q matching queries; ``meta``: the official ``dn_meta`` (DINO: {"pad_size": P, "num_dn_group": groups}; RT-DETR:
    see :func:`contrastive_denoising_group`)."""

    content: Tensor
    anchors: Tensor
    attn_mask: Tensor
    meta: dict


def num_denoising_groups(dn_number: int, max_targets: int) -> int:
    """How many denoising groups a batch gets, as the official code decides: ``2 * dn_number`` is the budget of
    denoising queries when it is at least 100, split into groups of 2 * ``max_targets`` (positives and negatives);
    below 100 it is itself the number of groups. Always at least one group (a batch without targets gets one empty
    group)."""
    groups = dn_number * 2
    if max_targets == 0:
        return 1
    if groups >= 100:
        groups = groups // (max_targets * 2)
    return max(groups, 1)


def denoising_attention_mask(pad_size: int, num_groups: int, num_queries: int, device: torch.device) -> Tensor:
    """``[P + Q, P + Q]`` bool, True where query (row) may not attend to key (column): matching queries (the last
    Q) do not see the P denoising queries; each of the ``num_groups`` equal denoising groups sees only itself and the
    matching queries."""
    size = pad_size + num_queries
    mask = torch.zeros(size, size, dtype=torch.bool, device=device)
    mask[pad_size:, :pad_size] = True
    group = pad_size // num_groups
    for g in range(num_groups):
        rows = slice(group * g, group * (g + 1))
        mask[rows, group * (g + 1):pad_size] = True
        mask[rows, :group * g] = True
    return mask


def noised_labels(labels: Tensor, label_noise_ratio: float, num_classes: int) -> Tensor:
    """``labels`` ``[N]`` with each one, with probability ``label_noise_ratio / 2``, replaced by a class drawn
    uniformly from [0, num_classes) (possibly itself)."""
    labels = labels.clone()
    if label_noise_ratio > 0:
        p = torch.rand_like(labels.float())
        chosen = torch.nonzero(p < (label_noise_ratio * 0.5)).view(-1)
        labels.scatter_(0, chosen, torch.randint_like(chosen, 0, num_classes))
    return labels


def noised_boxes(boxes: Tensor, negative: Tensor, box_noise_scale: float) -> Tensor:
    """Jitter cxcywh ``boxes`` ``[N, 4]``: each edge moves by ``u * box_noise_scale`` times half the box size
    (width for x edges, height for y edges) in a random direction, u uniform in [0, 1) for positives and [1, 2) for
    the rows where ``negative`` ``[N]`` (bool) is set; the result is clamped to the image."""
    if box_noise_scale <= 0:
        return boxes.clone()
    corners = torch.cat([boxes[:, :2] - boxes[:, 2:] / 2, boxes[:, :2] + boxes[:, 2:] / 2], 1)
    half_size = torch.cat([boxes[:, 2:] / 2, boxes[:, 2:] / 2], 1)
    sign = torch.randint_like(boxes, low=0, high=2, dtype=torch.float32) * 2.0 - 1.0
    magnitude = torch.rand_like(boxes)
    magnitude[negative] += 1.0
    magnitude *= sign
    corners = corners + torch.mul(magnitude, half_size) * box_noise_scale
    corners = corners.clamp(min=0.0, max=1.0)
    return torch.cat([(corners[:, :2] + corners[:, 2:]) / 2, corners[:, 2:] - corners[:, :2]], 1)


def prepare_denoising(targets: list[dict], dn_number: int, label_noise_ratio: float, box_noise_scale: float,
                      num_queries: int, num_classes: int, label_enc: nn.Embedding, logit_eps: float
                      ) -> DenoisingQueries:
    """The denoising queries of a batch.

    targets: per image ``labels`` ``[T_i]`` and ``boxes`` ``[T_i, 4]`` (normalised cxcywh); label_enc: the class
    embedding of the content queries (``[dn_labelbook_size + 1, D]``); noisy labels are drawn from
    [0, ``num_classes``); the noised boxes become anchors through ``inverse_sigmoid`` with ``logit_eps``.
    """
    device = label_enc.weight.device
    counts = [len(t["labels"]) for t in targets]
    pad = max(counts)
    groups = num_denoising_groups(dn_number, pad)
    labels = torch.cat([t["labels"] for t in targets])
    boxes = torch.cat([t["boxes"] for t in targets])
    image = torch.cat([torch.full_like(t["labels"].long(), i) for i, t in enumerate(targets)])
    # 2 * groups copies of all targets: copy 2g is group g's positives, copy 2g + 1 its negatives
    copies = 2 * groups
    labels = noised_labels(labels.repeat(copies), label_noise_ratio, num_classes)
    copy_index = torch.arange(copies, device=device).repeat_interleave(len(boxes))
    boxes = noised_boxes(boxes.repeat(copies, 1), copy_index % 2 == 1, box_noise_scale)

    pad_size = pad * copies
    content = torch.zeros(len(targets), pad_size, label_enc.embedding_dim, device=device)
    anchors = torch.zeros(len(targets), pad_size, 4, device=device)
    slot_in_image = torch.cat([torch.arange(n, device=device) for n in counts])
    slot = (slot_in_image.repeat(copies) + copy_index * pad).long()
    image = image.repeat(copies)
    if len(image):
        content[(image, slot)] = label_enc(labels.long())
        anchors[(image, slot)] = inverse_sigmoid(boxes, logit_eps)
    attn_mask = denoising_attention_mask(pad_size, groups, num_queries, device)
    return DenoisingQueries(content, anchors, attn_mask, {"pad_size": pad_size, "num_dn_group": groups})


def split_denoising_outputs(outputs_class: Tensor, outputs_coord: Tensor, pad_size: int
                            ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-layer outputs ``[L, B, P + Q, ...]`` -> (denoising class, denoising boxes, matching class, matching boxes),
    the first P queries being the denoising ones."""
    return (outputs_class[:, :, :pad_size], outputs_coord[:, :, :pad_size],
            outputs_class[:, :, pad_size:], outputs_coord[:, :, pad_size:])


def denoising_indices(targets: list[dict], dn_meta: dict) -> list[tuple[Tensor, Tensor]]:
    """Per image (query indices, target indices) pairing every positive denoising query with the target it
    noises: target j of an image sits in slot ``j`` of each group's positive part."""
    groups = dn_meta["num_dn_group"]
    group_size = dn_meta["pad_size"] // groups
    indices = []
    for t in targets:
        device = t["labels"].device
        n = len(t["labels"])
        tgt_idx = torch.arange(n, device=device).repeat(groups)
        query_idx = (torch.arange(groups, device=device) * group_size).repeat_interleave(n) + tgt_idx
        indices.append((query_idx.long(), tgt_idx.long()))
    return indices


def contrastive_denoising_group(targets: list[dict], num_classes: int, num_queries: int, class_embed: nn.Embedding,
                                num_denoising: int = 100, label_noise_ratio: float = 0.5, box_noise_scale: float = 1.0,
                                *, empty_batch_group: bool = True, absolute_sizes: bool = False
                                ) -> DenoisingQueries | None:
    """RT-DETR's denoising queries of a batch (official ``get_contrastive_denoising_training_group``); None when
    ``num_denoising`` <= 0.

    targets: per image ``labels`` ``[T_i]`` and ``boxes`` ``[T_i, 4]`` (normalised cxcywh); class_embed:
    ``[num_classes + 1, D]`` embedding, row ``num_classes`` the padding (zero). With M = max T_i, the batch gets
    G = max(1, num_denoising // M) groups of M positives then M negatives, P = 2 M G queries. Label noise: each
    real label, positive or negative, becomes a uniform class in [0, num_classes) with probability
    ``label_noise_ratio / 2``. Box noise: each edge moves by ``u * box_noise_scale`` half box sizes in a random
    direction, u in [0, 1) for positives and [1, 2) for negatives, then the box is clipped to the image (the
    official code fails with ``box_noise_scale`` 0; here the boxes are then left as they are). The padding and the
    noise are float32, as official, whatever the model's dtype.

    Returns ``content`` ``[B, P, D]`` (class embeddings), ``anchors`` ``[B, P, 4]`` (boxes in logit space,
    ``inverse_sigmoid`` eps 1e-5), ``attn_mask`` ``[P + Q, P + Q]`` (:func:`denoising_attention_mask`) and
    ``meta`` = {"dn_positive_idx": per image the int64 indices of its real positives, group by group,
    "dn_num_group": G, "dn_num_split": [P, num_queries]}.

    Two choices differ between the official RT-DETRv2 and D-FINE (and DEIM), whose released weights were trained
    with them:

    - ``empty_batch_group`` (RT-DETRv2): a batch without any target gets one group holding one never-positive dummy
      query (box (0.5, 0.5, 0.1, 0.1), the padding class), so that every process of a distributed run computes the
      same graph. False (D-FINE): it gets no denoising query at all, P = 0 (empty ``content`` and ``anchors``), no
      mask, and ``meta`` {"dn_positive_idx": None, "dn_num_group": 0, "dn_num_split": [0, num_queries]}.
    - ``absolute_sizes`` (D-FINE): a noised box turned inside out (an edge moved past the opposite one, then
      clipped) keeps the absolute value of its negative width or height; False (RT-DETRv2): such a size stays
      negative and ``inverse_sigmoid`` clamps it to its eps.
    """
    if num_denoising <= 0:
        return None
    counts = [len(t["labels"]) for t in targets]
    device = targets[0]["labels"].device
    batch = len(targets)
    empty_batch = max(counts) == 0
    if empty_batch and not empty_batch_group:
        weight = class_embed.weight
        return DenoisingQueries(weight.new_zeros(batch, 0, weight.shape[1]), torch.zeros(batch, 0, 4, device=device),
                                None, {"dn_positive_idx": None, "dn_num_group": 0, "dn_num_split": [0, num_queries]})
    max_targets = 1 if empty_batch else max(counts)
    num_groups = 1 if empty_batch else max(num_denoising // max_targets, 1)
    labels = torch.full([batch, max_targets], num_classes, dtype=torch.int32, device=device)
    boxes = torch.zeros([batch, max_targets, 4], device=device)
    real = torch.zeros([batch, max_targets], dtype=torch.bool, device=device)
    if empty_batch:
        boxes[..., :2], boxes[..., 2:] = 0.5, 0.1
    for image, (target, count) in enumerate(zip(targets, counts)):
        labels[image, :count] = target["labels"]
        boxes[image, :count] = target["boxes"]
        real[image, :count] = True
    # 2 G copies along the queries: copy 2g holds group g's positives, copy 2g + 1 its negatives
    labels, real = labels.tile([1, 2 * num_groups]), real.tile([1, 2 * num_groups])
    boxes = boxes.tile([1, 2 * num_groups, 1])
    negative = (torch.arange(2 * max_targets * num_groups, device=device) // max_targets % 2 == 1)[None, :, None]
    positive_slots = (torch.arange(num_groups, device=device) * 2 * max_targets)[:, None]
    positive_idx = tuple((positive_slots + torch.arange(count, device=device)).flatten() for count in counts)
    num_dn = 2 * max_targets * num_groups

    if label_noise_ratio > 0:  # the official draws: one uniform per slot, then one class per slot
        chosen = torch.rand(labels.shape, dtype=torch.float32, device=device) < label_noise_ratio * 0.5
        new_labels = torch.randint(0, num_classes, labels.shape, dtype=labels.dtype, device=device)
        labels = torch.where(chosen & real, new_labels, labels)
    if box_noise_scale > 0:  # then one random sign and one uniform per coordinate
        corners = box_cxcywh_to_xyxy(boxes)
        half_sizes = torch.tile(boxes[..., 2:] * 0.5, [1, 1, 2]) * box_noise_scale
        sign = torch.randint(0, 2, boxes.shape, dtype=boxes.dtype, device=device) * 2.0 - 1.0
        part = torch.rand(boxes.shape, dtype=boxes.dtype, device=device)
        part = torch.where(negative, part + 1.0, part)
        corners = torch.clip(corners + sign * part * half_sizes, min=0.0, max=1.0)
        boxes = box_xyxy_to_cxcywh(corners)
        if absolute_sizes:
            boxes = torch.where(boxes < 0, -boxes, boxes)
    meta = {"dn_positive_idx": positive_idx, "dn_num_group": num_groups, "dn_num_split": [num_dn, num_queries]}
    return DenoisingQueries(class_embed(labels), inverse_sigmoid(boxes),
                            denoising_attention_mask(num_dn, num_groups, num_queries, device), meta)


def contrastive_denoising_indices(dn_meta: dict, targets: list[dict]) -> list[tuple[Tensor, Tensor]]:
    """Per image (query indices, target indices) pairing RT-DETR's positive denoising queries (``dn_meta`` of
    :func:`contrastive_denoising_group`) with the targets they noise: target j in slot j of every group; empty
    pairs for a batch that got no denoising query (``dn_num_group`` 0: no target, ``empty_batch_group`` False)."""
    if dn_meta["dn_num_group"] == 0:
        empty = torch.zeros(0, dtype=torch.int64, device=targets[0]["labels"].device)
        return [(empty, empty) for _ in targets]
    indices = []
    for positive_idx, target in zip(dn_meta["dn_positive_idx"], targets):
        count = len(target["labels"])
        target_idx = torch.arange(count, dtype=torch.int64, device=target["labels"].device)
        target_idx = target_idx.tile(dn_meta["dn_num_group"])
        if len(positive_idx) != len(target_idx):
            raise ValueError(f"contrastive_denoising_indices: {len(positive_idx)} positive queries for {count} "
                             f"targets in {dn_meta['dn_num_group']} groups: dn_meta is not of these targets")
        indices.append((positive_idx, target_idx))
    return indices


def dfine_denoising_group(targets: list[dict], num_classes: int, num_queries: int, class_embed: nn.Embedding,
                          num_denoising: int = 100, label_noise_ratio: float = 0.5, box_noise_scale: float = 1.0
                          ) -> DenoisingQueries | None:
    """D-FINE's denoising queries (official ``get_contrastive_denoising_training_group`` of D-FINE; DEIM's RT-DETRv2
    and D-FINE decoders use them too):
    :func:`~models.layers.denoising.contrastive_denoising_group` where a batch without any target gets no denoising
    query (``dn_num_group`` 0) and noised boxes turned inside out keep their absolute sizes, as the released weights
    were trained. (D-FINE's decoder always passes ``box_noise_scale`` 1.)"""
    return contrastive_denoising_group(targets, num_classes, num_queries, class_embed, num_denoising,
                                       label_noise_ratio, box_noise_scale, empty_batch_group=False,
                                       absolute_sizes=True)
