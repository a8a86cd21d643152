"""Geometry as Label Studio sends it (percentages of the image, its original size in pixels), checked while a
result is validated (labelstudio/results.py), before anything is allocated from it: finite, inside the image but
for a small margin; and, when a mask is made, the image within the pixel limit."""
from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, Field, Strict
from pydantic_core import PydanticCustomError

from ..errors import InvalidRequest

MARGIN = 1.0  # percent: clicks and outlines a hair outside the image are clipped, not refused


def _within_image(value: float) -> float:
    if not -MARGIN <= value <= 100.0 + MARGIN:
        raise PydanticCustomError("outside_image", f"{value:g}% lies outside the image")
    return value


def _a_size(value: float) -> float:
    if not 0.0 < value <= 100.0 + 2 * MARGIN:
        raise PydanticCustomError("not_a_size", f"{value:g}% is not a size within the image")
    return value


Number = Annotated[float, Strict(), Field(allow_inf_nan=False)]  # an int or a float, finite; never a bool or text
Percent = Annotated[Number, AfterValidator(_within_image)]  # a coordinate in percent of the image size
Extent = Annotated[Number, AfterValidator(_a_size)]  # a width or height in percent: positive, at most the image
Pixels = Annotated[int, Strict(), Field(ge=1)]  # an image's side


def image_size(width: int | None, height: int | None, kind: str, max_pixels: int) -> tuple[int, int]:
    """(width, height) a result says its image has, which a mask is about to be made at: both given, within
    the pixel limit."""
    if width is None or height is None:
        raise InvalidRequest(f"a {kind} result needs original_width and original_height")
    if width * height > max_pixels:
        raise InvalidRequest(f"a result on a {width} x {height} image: more than the {max_pixels} pixels allowed")
    return width, height
