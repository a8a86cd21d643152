"""Geometry as Label Studio sends it (percentages of the image, its original size in pixels), checked
before anything is allocated from it: finite, inside the image but for a small margin, the image within
the pixel limit."""
from __future__ import annotations

import math

from ..errors import InvalidRequest

MARGIN = 1.0  # percent: clicks and outlines a hair outside the image are clipped, not refused


def number(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidRequest(f"{what} must be a finite number, got {str(value)[:40]!r}")
    return float(value)


def percent(value: object, what: str) -> float:
    """A coordinate in percent of the image size, within the image (and its margin)."""
    result = number(value, what)
    if not -MARGIN <= result <= 100.0 + MARGIN:
        raise InvalidRequest(f"{what} = {result:g}% lies outside the image")
    return result


def extent(value: object, what: str) -> float:
    """A width or height in percent: positive, at most the image."""
    result = number(value, what)
    if not 0.0 < result <= 100.0 + 2 * MARGIN:
        raise InvalidRequest(f"{what} = {result:g}% is not a size within the image")
    return result


def image_size(result: dict, max_pixels: int) -> tuple[int, int]:
    """(width, height) a result says its image has: positive integers within the pixel limit."""
    width, height = result.get("original_width"), result.get("original_height")
    for value, what in ((width, "original_width"), (height, "original_height")):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidRequest(f"a {result.get('type', 'result')} result needs a positive integer {what}")
    assert isinstance(width, int) and isinstance(height, int)
    if width * height > max_pixels:
        raise InvalidRequest(f"a result on a {width} x {height} image: more than the {max_pixels} pixels allowed")
    return width, height
