"""The feed-forward activations of the family's transformers, by name: DETR's and Deformable DETR's ``relu``,
``gelu`` and ``glu``; DINO's ``--transformer_activation`` adds ``selu`` and ``prelu``."""
from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor, nn

ACTIVATIONS = ("relu", "gelu", "glu", "selu", "prelu")
DINO_ACTIVATIONS = ("relu", "gelu", "selu", "prelu")  # the choices of DINO's official configs


def activation_fn(name: str) -> Callable[[Tensor], Tensor]:
    """The function for relu, gelu, glu and selu; a fresh ``nn.PReLU()`` (one learned slope, so a parameter named
    ``activation.weight`` in its layer) for prelu."""
    functions = {"relu": F.relu, "gelu": F.gelu, "glu": F.glu, "selu": F.selu}
    if name == "prelu":
        return nn.PReLU()
    if name not in functions:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {name!r}")
    return functions[name]
