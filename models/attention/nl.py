"""Non-local block (embedded Gaussian).

Wang, Girshick, Gupta, He: "Non-local Neural Networks", CVPR 2018. https://arxiv.org/abs/1711.07971

``z = W_z(softmax_j(theta(x_i) . phi(x_j)) g(x_j)) + x`` with 1x1 convs theta, phi, g: C -> C/2 and W_z: C/2 -> C.
The softmax runs over the valid (non-padded) keys only. The paper puts a zero-initialised BatchNorm after W_z; here
W_z has no norm and is itself zero-initialised (weight and bias), which makes the block the identity at
initialisation without batch statistics. theta/phi/g start from normal(std=0.01) with zero bias, as the authors'
released code (CONV_INIT_STD). ``use_scale=True`` multiplies the logits by ``(C/2) ** -0.5`` (an option of that
code; the paper's equation has no scale, so the default is off). Names: ``theta``, ``phi``, ``g``, ``z``.
"""
import torch
from torch import nn

from models.attention.base import AttentionBlock, reduced_channels
from models.attention.masked_ops import check_mask, masked_softmax, zero_padding


class NonLocal(AttentionBlock):
    """Embedded-Gaussian non-local block; x ``[B, C, H, W]``, mask ``[B, H, W]`` or None -> ``[B, C, H, W]``.

    Attention is ``[B, HW, HW]``: place it once on a stage output, not in every residual block.
    """

    positions = ("stage",)
    default_position = "stage"

    def __init__(self, channels: int, rd_ratio: float = 1 / 2, rd_channels: int | None = None,
                 use_scale: bool = False):
        super().__init__()
        inner = reduced_channels(channels, rd_ratio, rd_channels)
        self.scale = inner ** -0.5 if use_scale else 1.0
        self.theta = nn.Conv2d(channels, inner, kernel_size=1)
        self.phi = nn.Conv2d(channels, inner, kernel_size=1)
        self.g = nn.Conv2d(channels, inner, kernel_size=1)
        self.z = nn.Conv2d(inner, channels, kernel_size=1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for conv in (self.theta, self.phi, self.g):
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)
        nn.init.zeros_(self.z.weight)
        nn.init.zeros_(self.z.bias)

    def attention(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Pixel-to-pixel weights ``[B, HW (queries), HW (keys)]``, padded keys excluded."""
        theta = self.theta(x).flatten(2).transpose(1, 2)  # [B, HW, C']
        phi = self.phi(x).flatten(2)  # [B, C', HW]
        key_mask = None if mask is None else mask.flatten(1)[:, None]  # [B, 1, HW]
        return masked_softmax(torch.bmm(theta, phi) * self.scale, key_mask)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        check_mask(x, mask)
        b, _, h, w = x.shape
        g = zero_padding(self.g(x), mask).flatten(2).transpose(1, 2)  # [B, HW, C']
        y = torch.bmm(self.attention(x, mask), g).transpose(1, 2).reshape(b, -1, h, w)  # [B, C', H, W]
        return x + self.z(y)

    @torch.no_grad()
    def attention_maps(self, x, mask=None, query=(0, 0)) -> dict[str, torch.Tensor]:
        h, w = x.shape[-2:]
        row = self.attention(x, mask)[:, query[0] * w + query[1]]
        return {f"attention of pixel {tuple(query)}": row.view(x.shape[0], h, w)}
