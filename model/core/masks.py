"""Mask arithmetic: IoU, COCO RLE, connected components, boxes, overlays.

Masks are bool arrays of shape (H, W). A target may carry an ignore region (GrabCut's unknown band),
which IoU leaves out.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import cv2
import numpy as np
from pycocotools import mask as coco_mask

from model.core.clicks import Click


def iou(pred: np.ndarray, target: np.ndarray, ignore: np.ndarray | None = None) -> float:
    """Intersection over union of two masks, leaving out `ignore` pixels. Two empty masks give 1.0."""
    if pred.shape != target.shape:
        raise ValueError(f"mask shapes differ: {pred.shape} and {target.shape}")
    if ignore is not None:
        keep = ~ignore
        pred, target = pred & keep, target & keep
    union = np.count_nonzero(pred | target)
    if union == 0:
        return 1.0
    return np.count_nonzero(pred & target) / union


def rle_encode(mask: np.ndarray) -> dict:
    """COCO RLE (compressed counts as str) of a bool mask."""
    rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def rle_decode(rle: dict) -> np.ndarray:
    """A bool mask from COCO RLE, compressed (str or bytes) or uncompressed (list of counts)."""
    height, width = (int(s) for s in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, list):
        rle = coco_mask.frPyObjects({"size": [height, width], "counts": counts}, height, width)
    elif isinstance(counts, str):
        rle = {"size": [height, width], "counts": counts.encode("ascii")}
    return coco_mask.decode(rle).astype(bool)


def polygons_to_mask(polygons: Sequence[Sequence[float]], height: int, width: int) -> np.ndarray:
    """Rasterise COCO polygons ([x1, y1, x2, y2, ...] lists, pixel coordinates)."""
    rles = coco_mask.frPyObjects([list(map(float, p)) for p in polygons if len(p) >= 6], height, width)
    if not rles:
        return np.zeros((height, width), bool)
    return coco_mask.decode(coco_mask.merge(rles)).astype(bool)


def components_touching(mask: np.ndarray, clicks: Iterable[Click]) -> np.ndarray:
    """The connected components of `mask` that contain at least one of the clicks."""
    count, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    if count <= 1:
        return mask.copy()
    keep = {labels[c.pixel] for c in clicks} - {0}
    if not keep:
        return np.zeros_like(mask)
    return np.isin(labels, list(keep))


def fill_holes(mask: np.ndarray, max_area: int | None = None, keep_open: Iterable[Click] = ()) -> np.ndarray:
    """Fill holes of the mask (background regions not touching the border), those up to max_area only,
    except holes under any of the `keep_open` clicks."""
    background = (~mask).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(background, connectivity=4)
    height, width = mask.shape
    filled = mask.copy()
    open_labels = {labels[c.pixel] for c in keep_open}
    for label in range(1, count):
        if label in open_labels:
            continue
        x, y, w, h, area = stats[label]
        touches_border = x == 0 or y == 0 or x + w == width or y + h == height
        if not touches_border and (max_area is None or area <= max_area):
            filled[labels == label] = True
    return filled


def disk(shape: tuple[int, int], click: Click, radius: float) -> np.ndarray:
    """The pixels within `radius` of a click."""
    mask = np.zeros(shape, np.uint8)
    cv2.circle(mask, (round(click.x), round(click.y)), max(round(radius), 0), 1, -1)
    return mask.astype(bool)


def resize_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resize a bool mask to (H, W) with nearest-neighbour sampling."""
    if mask.shape == shape:
        return mask
    return cv2.resize(mask.astype(np.uint8), (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST).astype(bool)


def render_overlay(
    image: np.ndarray, mask: np.ndarray, color: tuple[int, int, int] = (0, 255, 0), alpha: float = 0.4
) -> np.ndarray:
    """The image with the mask drawn as a semi-transparent colour (RGB uint8 in, RGB uint8 out): inside the
    mask `pixel * (1 - alpha) + color * alpha` in float64, truncated to uint8, as SegAgent's evaluation code
    draws it (the released policy was trained on exactly these pixels)."""
    out = image.copy()
    out[mask] = (1 - alpha) * image[mask].astype(np.float64) + alpha * np.asarray(color, np.float64)
    return out
