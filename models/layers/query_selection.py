"""Mixed query selection (DINO section 3.4): the encoder tokens with the highest class scores give the decoder its
initial anchor boxes; the content queries stay learned (or, without ``embed_init_tgt``, are the tokens' features)."""
import torch
from torch import Tensor


def top_k_tokens(class_logits: Tensor, k: int) -> Tensor:
    """Indices ``[B, k]`` of the k tokens whose best class logit is highest, best first, for logits
    ``[B, S, K]``."""
    return torch.topk(class_logits.max(-1)[0], k, dim=1)[1]


def gather_tokens(x: Tensor, index: Tensor) -> Tensor:
    """``x[b, index[b, i]]``: ``[B, S, C]`` and ``[B, k]`` -> ``[B, k, C]``."""
    return torch.gather(x, 1, index.unsqueeze(-1).repeat(1, 1, x.shape[-1]))
