"""Turning whatever image arrives (grayscale, RGBA, 16-bit, float) into RGB uint8, and hashing it."""
from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
from PIL import Image

MAX_PIXELS = 80_000_000  # 8000 x 8000 and a little more; above this an image is refused


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
    """Decode encoded image bytes to RGB uint8, refusing decompression bombs before decoding pixels."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            if width * height > max_pixels:
                raise ImageTooLarge(f"the image is {width} x {height} pixels, more than {max_pixels} in all")
            img.load()
            if img.mode in ("I;16", "I;16B", "I;16L", "I"):
                return as_rgb_uint8(np.array(img))
            return as_rgb_uint8(np.array(img.convert("RGBA" if "A" in img.mode else "RGB")))
    except ImageError:
        raise
    except Exception as exc:  # PIL raises many types for bad data
        raise ImageError(f"not a readable image: {exc}") from exc


def load_image(path: str | Path) -> np.ndarray:
    return decode_image(Path(path).read_bytes())


def image_digest(image: np.ndarray) -> str:
    """A content hash of an image array: equal pixels give equal digests."""
    digest = hashlib.sha1(str(image.shape).encode())
    digest.update(np.ascontiguousarray(image).data)
    return digest.hexdigest()
