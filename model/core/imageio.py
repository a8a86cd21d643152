"""Turning whatever image arrives into RGB uint8, as a browser shows it, and hashing it.

`decode_image` is the one path from encoded bytes to pixels (task images, the benchmarks' datasets, the CLI):

- The size is read from the header and checked against the pixel limit before any pixel is decoded.
- The first frame is used (GIF, APNG, multi-page TIFF, MPO): what a browser shows before it animates.
- EXIF orientation is applied (PIL.ImageOps.exif_transpose), as browsers do for the editor: a click, a box, a
  prediction, an annotation and what is learned from it all refer to the image as the annotator saw it, and
  Label Studio's original_width/original_height are that upright image's size.
- Modes: 16-bit gray (I;16, I;16B, ...) is scaled from 0..65535 to 0..255 (rounded), as a browser shows a
  16-bit PNG; 32-bit integer (I) and float (F) images have no such range, so their finite minimum..maximum
  is stretched to 0..255 (NaN and -inf become 0, +inf 255); palette, CMYK, YCbCr and 1-bit images go through
  Pillow's conversion to RGB. Transparency (an alpha channel, or a palette's or gray/RGB PNG's transparent
  colour) is composited over white, the editor's page, which is what the annotator sees there; dropping alpha
  instead would show the model colours hidden under transparent pixels (often black, or leftovers) that the
  annotator never saw.
- Memory: the decoded frame in Pillow's own mode (at most 4 bytes a pixel; held twice for a moment while an
  EXIF-rotated frame is turned upright), then the RGB result (3 bytes a pixel), converted BAND_PIXELS at a
  time: about 8 bytes a pixel at the most, whatever the mode.

`image_digest` is the one content digest: of the decoded, upright RGB pixels (never of the encoded bytes), so
one picture has one digest however it is encoded or oriented, and caches keyed on it agree.
"""
from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

MAX_PIXELS = 80_000_000  # 8000 x 8000 and a little more; above this an image is refused
BAND_PIXELS = 1 << 20  # pixels converted at a time: the conversion's working memory, whatever the image's size
BACKGROUND = (255, 255, 255, 255)  # what transparent pixels are shown over in the editor
SIXTEEN_BIT = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
STRETCHED = frozenset({"I", "F"})  # no nominal range: their finite min..max is stretched to 0..255
WITH_ALPHA = frozenset({"LA", "La", "PA", "RGBA", "RGBa"})
SIXTEEN_TO_EIGHT = ((np.arange(1 << 16, dtype=np.uint32) * 255 + 32767) // 65535).astype(np.uint8)  # rounded

BandConverter = Callable[[Image.Image], np.ndarray]


class ImageError(ValueError):
    """The image cannot be used (not an image, empty, or too large)."""


class ImageTooLarge(ImageError):
    """The image has more pixels than allowed."""


def as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """Return a contiguous (H, W, 3) uint8 array for a gray, gray+alpha, RGB or RGBA array of any depth."""
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    if array.ndim != 3 or array.shape[2] not in (2, 3, 4):
        raise ImageError(f"expected an image of shape (H, W), (H, W, 3) or (H, W, 4), got {array.shape}")
    if array.shape[2] == 2:  # gray + alpha
        array = np.stack([array[:, :, 0]] * 3, axis=-1)
    array = array[:, :, :3]
    if array.shape[0] < 1 or array.shape[1] < 1:
        raise ImageError("the image is empty")
    if array.shape[0] * array.shape[1] > MAX_PIXELS:
        raise ImageTooLarge(f"the image has {array.shape[0] * array.shape[1]} pixels, more than {MAX_PIXELS}")
    if array.dtype == np.uint8:
        return np.ascontiguousarray(array)
    if array.dtype == np.bool_:
        return np.ascontiguousarray(array.astype(np.uint8) * 255)
    if np.issubdtype(array.dtype, np.integer):
        peak = float(np.iinfo(array.dtype).max) if array.max(initial=0) > 255 else 255.0
        return np.ascontiguousarray(np.clip(array.astype(np.float64) * (255.0 / peak), 0, 255).astype(np.uint8))
    finite = np.nan_to_num(array.astype(np.float64))
    scale = 255.0 if finite.max(initial=0.0) <= 1.0 else 1.0
    return np.ascontiguousarray(np.clip(finite * scale, 0, 255).astype(np.uint8))


def decode_image(data: bytes, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode encoded image bytes to upright RGB uint8 (module docstring), refusing images over max_pixels
    before decoding any pixel."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            if width < 1 or height < 1:
                raise ImageError("the image is empty")
            if width * height > max_pixels:
                raise ImageTooLarge(f"the image is {width} x {height} pixels, more than {max_pixels} in all")
            img.load()
            ImageOps.exif_transpose(img, in_place=True)
            return _rgb(img)
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:  # Pillow's own limit, should SEGAGENT_MAX_IMAGE_PIXELS exceed it
        raise ImageTooLarge(str(exc)) from exc
    except Exception as exc:  # PIL raises many types for bad data
        raise ImageError(f"not a readable image: {exc}") from exc


def pixels_in(data: bytes) -> int:
    """How many pixels decoding these bytes makes, from the header alone."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.width * img.height
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(str(exc)) from exc
    except Exception as exc:  # PIL raises many types for bad data
        raise ImageError(f"not a readable image: {exc}") from exc


def load_image(path: str | Path) -> np.ndarray:
    return decode_image(Path(path).read_bytes())


def image_digest(image: np.ndarray) -> str:
    """A content hash of an image array: equal pixels give equal digests."""
    digest = hashlib.sha1(str(image.shape).encode())
    digest.update(np.ascontiguousarray(image).data)
    return digest.hexdigest()


def _rgb(img: Image.Image) -> np.ndarray:
    """The loaded image as (H, W, 3) uint8, converted a band of rows at a time into the one result array."""
    width, height = img.size
    rows = max(1, BAND_PIXELS // width)
    convert = _band_converter(img, rows)
    out = np.empty((height, width, 3), np.uint8)
    for top in range(0, height, rows):
        bottom = min(height, top + rows)
        pixels = convert(img.crop((0, top, width, bottom)))
        if pixels.ndim == 2:  # gray
            np.stack([pixels] * 3, axis=-1, out=out[top:bottom])
        else:
            out[top:bottom] = pixels
    return out


def _band_converter(img: Image.Image, rows: int) -> BandConverter:
    """What turns a band of this image into (H, W, 3) RGB or (H, W) gray uint8 rows."""
    if img.mode in SIXTEEN_BIT:
        return _sixteen_bit
    if img.mode in STRETCHED:
        low, high = _finite_range(img, rows)
        return lambda band: _stretched(band, low, high)
    if img.mode in WITH_ALPHA or "transparency" in img.info:
        return _over_background
    return lambda band: np.asarray(band.convert("RGB"))


def _sixteen_bit(band: Image.Image) -> np.ndarray:
    return SIXTEEN_TO_EIGHT[np.asarray(band)]


def _finite_range(img: Image.Image, rows: int) -> tuple[float, float]:
    """The smallest and largest finite values of an I or F image, read a band at a time; (0, 0) if none."""
    width, height = img.size
    low, high = np.inf, -np.inf
    for top in range(0, height, rows):
        values = np.asarray(img.crop((0, top, width, min(height, top + rows))))
        finite = values[np.isfinite(values)]
        if finite.size:
            low, high = min(low, float(finite.min())), max(high, float(finite.max()))
    return (low, high) if low <= high else (0.0, 0.0)


def _stretched(band: Image.Image, low: float, high: float) -> np.ndarray:
    values = np.asarray(band).astype(np.float64)  # float32's extremes apart overflow float32
    scale = 255.0 / (high - low) if high > low else 0.0
    with np.errstate(invalid="ignore"):  # inf * 0 for a flat image: NaN, made 0 below like any NaN
        scaled = (values - low) * scale
    np.nan_to_num(scaled, copy=False, nan=0.0, posinf=255.0, neginf=0.0)
    return np.rint(np.clip(scaled, 0.0, 255.0)).astype(np.uint8)


def _over_background(band: Image.Image) -> np.ndarray:
    rgba = band.convert("RGBA")
    return np.asarray(Image.alpha_composite(Image.new("RGBA", rgba.size, BACKGROUND), rgba).convert("RGB"))
