"""Group DETR's query groups (Chen et al. 2022, arXiv:2207.13085), as one object.

In training the decoder gets ``groups`` independent groups of ``num_queries`` queries: queries attend only within
their group, and each group is matched one-to-one with the targets on its own, so every object supervises one query
per group. Outside training only the first group runs, so the deployed model is the plain DETR. With ``groups`` = 1
every method is the identity of plain DETR.
"""
import torch
from torch import nn


class QueryGroups:
    """Which queries run, how they may attend to each other, and how their predictions are matched."""

    def __init__(self, num_queries: int, groups: int = 1):
        if groups < 1:
            raise ValueError(f"query groups must be at least 1, got {groups}")
        self.num_queries = num_queries
        self.groups = groups

    def active(self, training: bool) -> int:
        """How many groups run: all of them in training, the first one otherwise."""
        return self.groups if training else 1

    def queries(self, embedding: torch.Tensor, training: bool) -> torch.Tensor:
        """The running queries out of the full table ``[num_queries * groups, D]``."""
        return embedding[: self.num_queries * self.active(training)]

    def self_attention_mask(self, training: bool, device: torch.device) -> torch.Tensor | None:
        """``[Q*G, Q*G]`` bool, True between queries of different groups (blocked), or None for one group."""
        groups = self.active(training)
        if groups == 1:
            return None
        group_of = torch.arange(self.num_queries * groups, device=device) // self.num_queries
        return group_of[:, None] != group_of[None, :]

    def groups_in(self, outputs: dict) -> int:
        """How many groups an output dict holds (its query count over ``num_queries``)."""
        return max(outputs["pred_logits"].shape[1] // self.num_queries, 1)

    def first_group(self, tensor: torch.Tensor) -> torch.Tensor:
        """``[B, Q*G, ...]`` -> the first group's ``[B, Q, ...]``."""
        return tensor[:, : self.num_queries]

    def match(self, matcher: nn.Module, outputs: dict, targets: list[dict]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """One-to-one matching within each group: every target is matched once per group."""
        return matcher(outputs, targets, self.groups_in(outputs))
