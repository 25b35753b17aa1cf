"""The feed-forward activations DINO's transformer can use (``--transformer_activation``)."""
from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor, nn

ACTIVATIONS = ("relu", "gelu", "selu", "prelu")


def activation_fn(name: str) -> Callable[[Tensor], Tensor]:
    """A function for relu, gelu and selu; a fresh ``nn.PReLU()`` (one learned slope, so a parameter named
    ``activation.weight`` in its layer) for prelu."""
    if name == "relu":
        return F.relu
    if name == "gelu":
        return F.gelu
    if name == "selu":
        return F.selu
    if name == "prelu":
        return nn.PReLU()
    raise ValueError(f"--transformer_activation must be one of {ACTIVATIONS}, got {name!r}")
