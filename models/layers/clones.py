"""Independent copies of a module, as the transformers stack their layers."""
import copy

from torch import nn


def clones(module: nn.Module, n: int) -> nn.ModuleList:
    """``n`` deep copies of ``module`` (same initial weights, trained separately)."""
    return nn.ModuleList([copy.deepcopy(module) for _ in range(n)])
