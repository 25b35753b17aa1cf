"""Boxes, captions and masks drawn on an image (PIL), scaled to the image so that they stay readable from thumbnails
to photographs of tens of megapixels."""
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

# Distinct, saturated colours (RGB), cycled by category id.
PALETTE = ((230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255),
           (170, 110, 40), (255, 250, 200), (128, 0, 0), (170, 255, 195), (128, 128, 0), (255, 215, 180),
           (0, 0, 128), (128, 128, 128))
MASK_OPACITY = 0.45


def colour(index: int) -> tuple[int, int, int]:
    """The palette's colour for ``index`` (a category id, a segment number ...)."""
    return PALETTE[index % len(PALETTE)]


def image_from_normalized(image: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> Image.Image:
    """A normalised image ``[3, H, W]`` (``(x - mean) / std`` per channel, x in [0, 1]) back to 8-bit RGB."""
    mean_t = torch.tensor(mean, dtype=torch.float32)[:, None, None]
    std_t = torch.tensor(std, dtype=torch.float32)[:, None, None]
    pixels = (image.detach().float().cpu() * std_t + mean_t).clamp(0, 1).mul(255).round().byte()
    return Image.fromarray(np.ascontiguousarray(pixels.permute(1, 2, 0).numpy()))


def line_width(size: tuple[int, int]) -> int:
    """Box outline width in pixels for an image of ``size`` (width, height): 1 up to ~500 px, then growing."""
    return max(1, round(max(size) / 320))


def font_size(size: tuple[int, int]) -> int:
    """Caption height in pixels for an image of ``size`` (width, height)."""
    return max(8, round(max(size) / 45))


def blend_masks(image: Image.Image, masks: Sequence[np.ndarray], colours: Sequence[tuple[int, int, int]],
                opacity: float = MASK_OPACITY) -> Image.Image:
    """``image`` (RGB) with each boolean ``[H, W]`` mask filled in its colour at ``opacity``, later masks on top."""
    pixels = np.asarray(image, dtype=np.float32).copy()
    for mask, rgb in zip(masks, colours):
        pixels[mask] = pixels[mask] * (1 - opacity) + np.asarray(rgb, dtype=np.float32) * opacity
    return Image.fromarray(pixels.round().astype(np.uint8))


def draw_boxes(image: Image.Image, boxes: Sequence[Sequence[float]], captions: Sequence[str],
               colours: Sequence[tuple[int, int, int]]) -> Image.Image:
    """A copy of ``image`` (converted to RGB) with each box (x0, y0, x1, y1 in pixels, rounded) outlined in its
    colour and its caption on a filled label at the box's top-left corner (above the box, or inside it at the
    image's top)."""
    image = image.convert("RGB")  # a copy even when already RGB
    draw = ImageDraw.Draw(image)
    width = line_width(image.size)
    font = ImageFont.load_default(size=font_size(image.size))
    for box, caption, rgb in zip(boxes, captions, colours):
        x0, y0, x1, y1 = (round(float(v)) for v in box)  # the outline covers the pixels the box edges round to
        draw.rectangle((x0, y0, max(x0, x1), max(y0, y1)), outline=rgb, width=width)
        if not caption:
            continue
        left, top, right, bottom = draw.textbbox((0, 0), caption, font=font)
        label_w, label_h = right - left + 2 * width, bottom - top + 2 * width
        label_y = y0 - label_h if y0 - label_h >= 0 else y0
        draw.rectangle((x0, label_y, x0 + label_w, label_y + label_h), fill=rgb)
        text_rgb = (0, 0, 0) if sum(c * w for c, w in zip(rgb, (0.299, 0.587, 0.114))) > 140 else (255, 255, 255)
        draw.text((x0 + width - left, label_y + width - top), caption, fill=text_rgb, font=font)
    return image
