"""The images a tool is pointed at: files, folders (their images, sorted by name) and glob patterns, each read as an
upright 8-bit RGB image (EXIF orientation applied; greyscale, palette, RGBA and 16-bit images converted as the
datasets read them, ``datasets.image_file``)."""
import glob
from pathlib import Path

import PIL.Image

from datasets.image_file import BadImageError, read_image
from util.user_error import UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def expand_inputs(inputs: list[str], flag: str = "--input") -> list[Path]:
    """The image files ``inputs`` name, in order and without repeats: a file as it is, a folder's files with an
    image suffix (not recursing), a glob pattern's matches (``**`` recurses). One that names nothing is an error."""
    found: dict[Path, None] = {}
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            matches = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            matches = [path]
        elif glob.has_magic(item):
            matches = sorted(Path(p) for p in glob.glob(item, recursive=True) if Path(p).is_file())
        else:
            raise UserError(f"{flag} {item}: no such file or folder")
        if not matches:
            raise UserError(f"{flag} {item}: no image found there")
        found.update(dict.fromkeys(matches))
    return list(found)


def read_input_image(path: Path) -> PIL.Image.Image:
    """``path`` as an upright RGB image; BadImageError (an OSError naming the file) when it cannot be read."""
    try:
        return read_image(path, image_id=0, ann_file="")
    except BadImageError as exc:  # the dataset reader names an image id, which an input does not have
        raise BadImageError(str(exc).replace(" (image id 0)", "")) from None
