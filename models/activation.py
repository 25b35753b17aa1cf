"""The feed-forward activations of the family's transformers, by name: DETR's and Deformable DETR's ``relu``,
``gelu`` and ``glu``; DINO's ``--transformer_activation`` adds ``selu`` and ``prelu``. The real-time detectors'
(RT-DETRv2, D-FINE, DEIM: ``act``, ``enc_act``, ``activation``, ``mlp_act``) are modules, :func:`activation_layer`."""
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


ACTIVATION_MODULES: dict[str, Callable[[], nn.Module]] = {
    "relu": lambda: nn.ReLU(inplace=True),
    "silu": lambda: nn.SiLU(inplace=True),
    "swish": lambda: nn.SiLU(inplace=True),
    "leaky_relu": lambda: nn.LeakyReLU(inplace=True),
    "gelu": nn.GELU,
    "hardsigmoid": lambda: nn.Hardsigmoid(inplace=True),
}


def activation_layer(name: str | None) -> nn.Module:
    """A fresh activation module by name (the official choices, in place where possible); None: identity."""
    if name is None:
        return nn.Identity()
    if name.lower() not in ACTIVATION_MODULES:
        raise ValueError(f"activation must be one of {sorted(ACTIVATION_MODULES)} or None, got {name!r}")
    return ACTIVATION_MODULES[name.lower()]()
