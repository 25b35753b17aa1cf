"""The contract every block in models/attention follows (see the package docstring)."""
import torch
from torch import nn


class AttentionBlock(nn.Module):
    """Base class: ``Block(channels, **paper_defaults)``, ``forward(x, mask=None) -> [B, C, H, W]``.

    ``x`` is ``[B, C, H, W]``; ``mask`` is ``[B, H, W]`` bool, True on padding (None: no padding). The output has the
    shape of ``x``, equals ``x`` exactly after :meth:`reset_parameters`, and on an image's valid pixels does not
    depend on its padding. ``positions`` lists where a block may be inserted into a ResNet, ``default_position`` is
    the one used when none is asked for.
    """

    positions: tuple[str, ...] = ("block", "stage")
    default_position: str = "block"
    augments_conv: bool = False  # True: at position "block" it augments the 3x3 convolution (see ConvAugmentation)

    @classmethod
    def default_stages(cls, position: str, last_stage: int) -> tuple[int, ...]:
        """The stages (1..``last_stage``) that get the block at ``position`` when none are asked for: every stage
        from 2 for ``block``, the last one for ``stage``."""
        return tuple(range(2, last_stage + 1)) if position == "block" else (last_stage,)

    @classmethod
    def placement_kwargs(cls, stage: int) -> dict:
        """Constructor arguments that depend on the ResNet stage (1..4) the block is placed in; none by default."""
        return {}

    def reset_parameters(self) -> None:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def attention_maps(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                       query: tuple[int, int] = (0, 0)) -> dict[str, torch.Tensor]:
        """The spatial maps this block computes on input ``x``, by name, each ``[B, H, W]``, for pictures.

        ``query`` (row, column) picks the pixel whose attention is shown by blocks that attend pixel to pixel.
        Blocks whose attention is over channels only (SE, ECA) have none.
        """
        return {}


def zero_scalar() -> nn.Parameter:
    """A learnable 0-dim scale starting at 0 (the gammas of the gated and residual blocks)."""
    return nn.Parameter(torch.zeros(()))


def reduced_channels(channels: int, rd_ratio: float, rd_channels: int | None) -> int:
    """A bottleneck width: ``rd_channels`` if given, else ``round(channels * rd_ratio)`` (at least 1)."""
    return rd_channels or max(1, round(channels * rd_ratio))


def query_key_value(channels: int, rd: int) -> tuple[nn.Conv2d, nn.Conv2d, nn.Conv2d]:
    """The 1x1 convolutions of a self-attention over positions (CCNet, DANet's position module): query and key
    ``channels -> rd``, value ``channels -> channels``."""
    return (nn.Conv2d(channels, rd, kernel_size=1), nn.Conv2d(channels, rd, kernel_size=1),
            nn.Conv2d(channels, channels, kernel_size=1))
