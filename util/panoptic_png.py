"""COCO panoptic PNG encoding: a segment id is stored in a pixel's colour as ``id = R + 256·G + 256²·B``.

Id 0 (black) marks void pixels in ground truth. These are the two conversions of the COCO panoptic API
(``panopticapi.utils.rgb2id`` / ``id2rgb``), which is not installable from a package registry.
"""
import io

import numpy as np
from PIL import Image


def rgb2id(color: np.ndarray) -> np.ndarray:
    """``[H, W, 3]`` colours (any integer dtype) -> ``[H, W]`` int64 segment ids."""
    color = np.asarray(color)
    if color.ndim != 3 or color.shape[-1] != 3:
        raise ValueError(f"expected an [H, W, 3] colour array, got shape {color.shape}")
    color = color.astype(np.int64)
    return color[..., 0] + 256 * color[..., 1] + 256 * 256 * color[..., 2]


def id2rgb(ids: np.ndarray) -> np.ndarray:
    """``[H, W]`` non-negative segment ids (< 256³) -> ``[H, W, 3]`` uint8 colours."""
    ids = np.asarray(ids, dtype=np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= 256 ** 3):
        raise ValueError(f"segment ids must lie in [0, 256**3), got range [{ids.min()}, {ids.max()}]")
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)


def read_panoptic_png(path) -> np.ndarray:
    """A COCO panoptic PNG file -> ``[H, W]`` int64 segment ids."""
    with Image.open(path) as image:
        return rgb2id(np.asarray(image.convert("RGB")))


def encode_panoptic_png(ids: np.ndarray) -> bytes:
    """``[H, W]`` segment ids -> the bytes of a COCO panoptic PNG."""
    with io.BytesIO() as buffer:
        Image.fromarray(id2rgb(ids)).save(buffer, format="PNG")
        return buffer.getvalue()
