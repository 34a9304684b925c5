"""The measurement drawn on the film: three outlines, both diameters with their endpoints, the
ratio, and the research-use banner. What a reader needs to check the number with a ruler."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from .ctr import Diameter, Measurement

#: Outline colours: heart red, the patient's right lung (image left) cyan, left lung yellow.
COLOURS = {"heart": (255, 70, 70), "right_lung": (60, 220, 255), "left_lung": (255, 220, 40)}
DIAMETER = {"heart": (255, 70, 70), "thorax": (80, 255, 120)}
BANNER = "RESEARCH USE ONLY - not for diagnosis"
#: The AP caveat (ctr.AP_NOTE), in lines that fit the drawing.
AP_LINES = "\nAP film: it magnifies the heart; a ratio over 0.5\nis not cardiomegaly by itself"


def outline(mask: np.ndarray, thickness: int = 1) -> np.ndarray:
    """The boundary pixels of a boolean mask."""
    inner = ndimage.binary_erosion(mask, iterations=thickness, border_value=0)
    return mask & ~inner


def draw_measurement(
    image: np.ndarray,
    masks: dict[str, np.ndarray],
    measurement: Measurement,
    view: str = "",
    size: int = 512,
) -> Image.Image:
    """The film (float in [0, 1], the model's square) at ``size`` pixels with the outlines, the
    heart (red) and thorax (green) diameters as lines between their endpoints, and the ratio."""
    scale = size / image.shape[0]
    grey = Image.fromarray(np.round(np.clip(image, 0, 1) * 255).astype(np.uint8))
    picture = np.asarray(grey.resize((size, size), Image.BILINEAR).convert("RGB")).copy()
    for organ, mask in masks.items():
        big = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((size, size))) > 127
        picture[outline(big, max(1, size // 256))] = COLOURS[organ]
    canvas = Image.fromarray(picture)
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=max(12, size // 30))
    width = max(2, size // 200)
    thorax_y = None
    if measurement.thorax is not None:
        thorax_y = _diameter(draw, measurement.thorax, scale, DIAMETER["thorax"], width)
    if measurement.heart is not None:  # kept clear of the thorax line, so that both show
        _diameter(draw, measurement.heart, scale, DIAMETER["heart"], width, avoid=thorax_y)
    if measurement.ctr is not None:
        text = (
            f"CTR {measurement.ctr:.2f}  (heart {measurement.heart_width_px} / thorax "
            f"{measurement.thorax_width_px} px)"
        )
        if view == "AP":
            text += AP_LINES
    else:
        text = f"no ratio: {measurement.quality.removeprefix('flagged: ')}"
    _label(draw, (8, 8), text, font)
    _label(draw, (8, size - font.size - 16), BANNER, font, fill=(139, 28, 28))
    return canvas


def _diameter(
    draw: ImageDraw.ImageDraw,
    d: Diameter,
    scale: float,
    colour,
    width: int,
    avoid: float | None = None,
) -> float:
    """A horizontal line between the two endpoints' columns, at their mean height (moved up
    from a line at ``avoid`` when it would cover it), a tick from the line to each endpoint, and
    a dot on each endpoint. Returns the line's height."""
    (x0, y0), (x1, y1) = ((v * scale for v in p) for p in (d.left, d.right))
    x1 += scale  # the last column is inside the mask
    y = (y0 + y1) / 2
    gap = 6 * width
    if avoid is not None and abs(y - avoid) < gap:
        y = avoid - gap
    draw.line([(x0, y), (x1, y)], fill=colour, width=width)
    tick = 4 * width
    for x, y_end in ((x0, y0), (x1, y1)):
        draw.line([(x, min(y, y_end) - tick), (x, max(y, y_end) + tick)], fill=colour, width=width)
        draw.ellipse([x - 2 * width, y_end - 2 * width, x + 2 * width, y_end + 2 * width],
                     fill=colour)  # fmt: skip
    return y


def _label(draw, xy, text, font, fill=(0, 0, 0)) -> None:
    left, top, right, bottom = draw.multiline_textbbox(xy, text, font=font)
    draw.rectangle([left - 5, top - 5, right + 5, bottom + 5], fill=fill)
    draw.multiline_text(xy, text, fill=(255, 255, 255), font=font)
