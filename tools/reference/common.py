"""What the reference generators share: importing an official clone beside this repository's packages, and the
compact file format of saved reference values (tests read it with :func:`unpack`)."""
import contextlib
import math
import sys
import types
from pathlib import Path

import torch

OFFICIAL_PACKAGES = ("models", "util", "datasets")


@contextlib.contextmanager
def official_packages(path: Path):
    """Inside, ``models``, ``util`` and ``datasets`` import from the official clone at ``path``; ours are set aside
    and put back on exit (the official modules stay usable through the references taken inside)."""
    def remove(packages):
        return {k: sys.modules.pop(k) for k in list(sys.modules) if k.split(".")[0] in packages}

    ours = remove(OFFICIAL_PACKAGES)
    sys.path.insert(0, str(path))
    try:
        yield
    finally:
        sys.path.remove(str(path))
        remove(OFFICIAL_PACKAGES)
        sys.modules.update(ours)


def stub_cuda_extension() -> None:
    """The official deformable attention imports its compiled CUDA module at import time; an empty stand-in lets the
    Python code import (the generators then route the sampling to the official pure-PyTorch function)."""
    sys.modules.setdefault("MultiScaleDeformableAttention", types.ModuleType("MultiScaleDeformableAttention"))


def use_pytorch_sampling(ms_deform_attn_func: types.ModuleType) -> None:
    """Route the official ``MSDeformAttnFunction`` to the official ``ms_deform_attn_core_pytorch``."""
    def pytorch_sampling(value, shapes, level_start_index, locations, weights, im2col_step):
        return ms_deform_attn_func.ms_deform_attn_core_pytorch(value, shapes, locations, weights)

    ms_deform_attn_func.MSDeformAttnFunction.apply = staticmethod(pytorch_sampling)


def pack(values: dict) -> dict:
    """One flat tensor per dtype plus (name, dtype, shape) entries and the non-tensor values: a small file (each
    saved tensor would cost about a kilobyte)."""
    flats: dict[str, list] = {}
    meta, plain = [], {}
    for key, value in values.items():
        if isinstance(value, torch.Tensor):
            dtype = str(value.dtype).removeprefix("torch.")
            flats.setdefault(dtype, []).append(value.flatten())
            meta.append((key, dtype, list(value.shape)))
        else:
            plain[key] = value
    return {"meta": meta, "plain": plain, "flat": {k: torch.cat(v) for k, v in flats.items()}}


def unpack(packed: dict) -> dict:
    """The values :func:`pack` packed."""
    values, offsets = dict(packed["plain"]), dict.fromkeys(packed["flat"], 0)
    for key, dtype, shape in packed["meta"]:
        n = math.prod(shape)
        values[key] = packed["flat"][dtype][offsets[dtype]: offsets[dtype] + n].reshape(shape)
        offsets[dtype] += n
    return values
