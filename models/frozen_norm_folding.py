"""Frozen BatchNorm folded into the convolution before it (``--fold_frozen_bn``).

A frozen BatchNorm is an affine map per channel, ``y = x * s + b`` with ``s = weight / sqrt(running_var + eps)`` and
``b = bias - running_mean * s``, so ``norm(conv(x, W)) = conv(x, W * s, bias=b)``: the same math with other rounding,
and one pass over the activation fewer in the forward and in the backward (on the CPU, where those passes are memory
bound, a DETR-R50 main.py epoch runs 1.17x faster; benchmarks/RESULTS.md). ``W * s`` is recomputed at every forward
from the live weights and statistics, so gradients reach ``W`` as before (``dL/dW = s * dL/d(W s)``), optimiser
updates and loaded checkpoints take effect at once, and no parameter or state-dict name changes.

Folding swaps the classes of the two modules in place: the convolution becomes a :class:`NormFoldedConv2d` that
reads its norm's buffers, the norm a :class:`FoldedFrozenBatchNorm2d` that passes its input through (forward hooks
on it still see the normalised features). A convolution carrying hooks when folding happens (the backbone
attention blocks that read its raw output) is left unfolded; a hook registered on a folded convolution later sees
the normalised output. The folded modules run eagerly, under ``torch.compile`` and ``torch.jit.trace``, but
``torch.jit.script`` cannot script them: the export tools build their models unfolded.
"""
import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d


class FoldedFrozenBatchNorm2d(FrozenBatchNorm2d):
    """A FrozenBatchNorm2d applied by the convolution before it: identity; keeps its buffers and names."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def scale_and_shift(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The per-channel ``s`` and ``b`` of ``x * s + b``, both ``[C]``, from the live buffers."""
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        return scale, self.bias - self.running_mean * scale

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.weight.shape[0]}, eps={self.eps}, applied by the convolution)"


class NormFoldedConv2d(nn.Conv2d):
    """A bias-free Conv2d followed by its frozen norm, in one convolution: ``[B, Cin, H, W] -> [B, Cout, H', W']``."""

    folded_norm: FoldedFrozenBatchNorm2d  # a plain attribute, not a submodule: the norm stays where it is registered

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale, shift = self.folded_norm.scale_and_shift()
        out = self._conv_forward(x, self.weight * scale.reshape(-1, 1, 1, 1), shift)
        # Under autocast the unfolded norm's fp32 buffers promote the half-precision convolution output to fp32;
        # keep that, so that the residual stream and the features keep their dtype.
        return out.to(torch.promote_types(out.dtype, shift.dtype))


def _conv_norm_pairs(module: nn.Module):
    """(conv, norm) pairs in torchvision's ResNet layout: ``convK`` then ``bnK`` in a block or the stem, and a
    convolution followed by its norm inside a ``Sequential`` (the shortcut's ``downsample``)."""
    for parent in module.modules():
        children = parent._modules
        if isinstance(parent, nn.Sequential):
            items = list(children.values())
            yield from zip(items[:-1], items[1:])
        else:
            for name, child in children.items():
                if name.startswith("conv") and f"bn{name[4:]}" in children:
                    yield child, children[f"bn{name[4:]}"]


def fold_frozen_batchnorm(module: nn.Module) -> int:
    """Fold every FrozenBatchNorm2d of ``module`` (a ResNet body or a model holding one) into the bias-free,
    hook-free Conv2d before it; returns how many were folded. Folding twice folds nothing more."""
    folded = 0
    for conv, norm in _conv_norm_pairs(module):
        foldable = (type(conv) is nn.Conv2d and type(norm) is FrozenBatchNorm2d and conv.bias is None
                    and conv.out_channels == norm.weight.shape[0]
                    and not (conv._forward_hooks or conv._forward_pre_hooks))
        if foldable:
            conv.__class__, norm.__class__ = NormFoldedConv2d, FoldedFrozenBatchNorm2d
            object.__setattr__(conv, "folded_norm", norm)  # not registered: state-dict names stay the official ones
            folded += 1
    return folded
