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
"""
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from models.layers.box_encoding import inverse_sigmoid


@dataclass
class DenoisingQueries:
    """``content`` ``[B, P, D]`` (label embeddings) and ``anchors`` ``[B, P, 4]`` (boxes in logit space) of the
    P = ``pad_size`` denoising queries; ``attn_mask`` ``[P + Q, P + Q]`` (True: may not attend) over denoising then
    Q matching queries; ``meta``: {"pad_size": P, "num_dn_group": groups} (the official ``dn_meta``)."""

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
