"""The small feed-forward network used for box regression heads."""
import torch
from torch import nn

from models.activation import activation_layer


class MLP(nn.Module):
    """``num_layers`` linear layers with an activation between them (``act``, by name: ReLU unless the official
    config says otherwise, as DEIM's ``mlp_act``): ``[..., input_dim]`` -> ``[..., output_dim]``."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int, act: str = "relu"):
        super().__init__()
        self.num_layers = num_layers
        h = [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(n, k) for n, k in zip([input_dim] + h, h + [output_dim]))
        self.act = activation_layer(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = self.act(layer(x)) if i < self.num_layers - 1 else layer(x)
        return x
