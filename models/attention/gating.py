"""Zero-initialised gating, shared by the gate blocks (SE, ECA, CA, CBAM) so that they start as identities."""
import torch
from torch import nn

from models.attention.base import AttentionBlock, zero_scalar


class ZeroInitGate(AttentionBlock):
    """``y = x + gamma * (attn(x, mask) - x)`` with a learnable scalar ``gamma`` starting at 0.

    ``attn`` is the paper's module, the class ``paper_module`` built as ``paper_module(channels, **kwargs)`` (its
    signature holds the paper's defaults): ``attn(x, mask) -> gate(x) * x`` ``[B, C, H, W]``. At ``gamma = 0`` the
    block is exactly the identity (a pretrained backbone is unchanged); at ``gamma = 1`` it is exactly the paper's
    block. Subclasses only name ``paper_module``.
    """

    positions = ("block", "stage")
    default_position = "block"
    paper_module: type[nn.Module]

    def __init__(self, channels: int, **kwargs):
        super().__init__()
        self.attn = self.paper_module(channels, **kwargs)
        self.gamma = zero_scalar()

    def reset_parameters(self) -> None:
        self.attn.reset_parameters()
        nn.init.zeros_(self.gamma)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x ``[B, C, H, W]``, mask ``[B, H, W]`` (True on padding) or None -> ``[B, C, H, W]``."""
        return x + self.gamma * (self.attn(x, mask) - x)

    @torch.no_grad()
    def attention_maps(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                       query: tuple[int, int] = (0, 0)) -> dict[str, torch.Tensor]:
        """The paper module's maps (see :meth:`AttentionBlock.attention_maps`), if it draws any, named with the
        current gate scale: at gamma = 0 the maps have no effect yet."""
        maps = getattr(self.attn, "attention_maps", None)
        if maps is None:
            return {}
        return {f"{name} (gamma {self.gamma.item():.2f})": m for name, m in maps(x, mask, query).items()}
