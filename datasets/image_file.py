"""Reading one image file of a dataset as the 8-bit RGB image its annotations describe, or refusing it by name.

- The whole file is decoded here (a truncated or corrupt file fails now, naming the file and the image id, not
  later inside a transform); a JPEG must also have a complete marker structure (``datasets.jpeg_structure``).
- EXIF orientation is applied (``PIL.ImageOps.exif_transpose``), as annotation tools display and annotate images.
- 16-bit greyscale images (Pillow modes ``I;16*``, and ``I`` holding 0..65535) keep their high byte, as Pillow
  reads 16-bit colour PNGs; 32-bit float images are refused.
- With ``expected_size`` (the annotation file's width and height) a decoded image of another size is refused.
"""
import io
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageOps

from datasets.jpeg_structure import jpeg_structure_error

EXIF_ORIENTATION = 0x0112
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


class BadImageError(OSError):
    """An image file that cannot be used (unreadable, truncated, corrupt, or not the size its annotation file
    says); the message names the file and the image id."""


def read_file_bytes(path: str | Path) -> bytes:
    """The bytes of ``path``, read in one go."""
    with open(path, "rb") as f:
        return f.read()


def read_image(path: str | Path, image_id: int, ann_file: str | Path, expected_size: tuple[int, int] | None = None,
               cache=None) -> PIL.Image.Image:
    """The image of ``image_id`` (listed in ``ann_file``) at ``path`` as an 8-bit RGB image, upright.

    ``expected_size`` is (width, height) as the annotation file records them; ``cache`` a
    ``datasets.image_cache.ImageBytesCache`` to take the file's bytes from (``--cache_mode``). Raises
    FileNotFoundError for a missing file and BadImageError for one that cannot be used, each naming the file and
    the id.
    """
    where = f"image file {path} (image id {image_id})"
    try:
        data = cache.get(path) if cache is not None else read_file_bytes(path)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"image file {path} (image id {image_id} in {ann_file}) not found") from exc
    except OSError as exc:
        raise BadImageError(f"cannot read {where}: {exc.strerror or exc}") from exc
    if not data:
        raise BadImageError(f"{where} is empty (0 bytes)")
    if data[:2] == b"\xff\xd8":
        problem = jpeg_structure_error(data)
        if problem:
            raise BadImageError(f"{where} {problem}")
    try:
        with PIL.Image.open(io.BytesIO(data)) as img:
            img.load()  # decode everything now: a truncated file fails here
            if img.getexif().get(EXIF_ORIENTATION, 1) != 1:
                img = PIL.ImageOps.exif_transpose(img)
            rgb = _to_rgb(img, where)
    except BadImageError:
        raise
    except PIL.UnidentifiedImageError as exc:
        raise BadImageError(f"{where} is not in an image format Pillow can read") from exc
    except (OSError, ValueError, SyntaxError, PIL.Image.DecompressionBombError) as exc:
        raise BadImageError(f"cannot decode {where}: {exc}") from exc
    if expected_size is not None and rgb.size != tuple(expected_size):
        raise BadImageError(size_mismatch(where, rgb.size, expected_size, ann_file))
    return rgb


def size_mismatch(where: str, size: tuple[int, int], expected_size: tuple[int, int], ann_file: str | Path) -> str:
    """The message for an image whose decoded ``size`` (w, h) is not the annotation file's ``expected_size``."""
    return (f"{where} is {size[0]}x{size[1]} pixels (after its EXIF orientation) but {ann_file} says "
            f"{expected_size[0]}x{expected_size[1]} (width x height)")


def _to_rgb(img: PIL.Image.Image, where: str) -> PIL.Image.Image:
    """8-bit RGB; 16-bit greyscale keeps its high byte (Pillow's ``convert`` would clip it to 255)."""
    if img.mode in SIXTEEN_BIT_MODES or img.mode == "I":
        values = np.asarray(img).astype(np.int64)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise BadImageError(f"{where} has {img.mode} pixels from {values.min()} to {values.max()}, outside the "
                                "16-bit range this reader scales to 8 bits")
        return PIL.Image.fromarray((values >> 8).astype(np.uint8)).convert("RGB")
    if img.mode == "F":
        raise BadImageError(f"{where} has 32-bit floating-point pixels; convert it to an 8- or 16-bit image")
    return img.convert("RGB")
