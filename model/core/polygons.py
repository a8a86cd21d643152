"""Masks as polygons, for formats that want outlines (Label Studio's PolygonLabels, COCO, YOLO): one
simplified outline per connected part. Those polygons cannot have holes, so a part's holes are joined
to its outline through a zero-width cut (a "keyhole"): the outline runs in to the hole, around it the
other way, and back out along the same edge, which leaves the hole empty when it is filled, under the
even-odd and the non-zero rule alike."""
from __future__ import annotations

import cv2
import numpy as np

MIN_PART_PIXELS = 16  # smaller specks (and holes) are noise of the tool, not what an annotator outlines
RELATIVE_TOLERANCE = 0.05  # of the square root of a part's area: small parts keep their shape


def mask_to_polygons(mask: np.ndarray, tolerance: float) -> list[np.ndarray]:
    """One polygon per connected part of the mask, largest first, each an (N, 2) float array of (x, y)
    vertices in pixel coordinates (corners of pixels: pixel (r, c) spans [c, c + 1] x [r, r + 1]),
    simplified (Douglas-Peucker) so that no outline moves by more than `tolerance` pixels, nor, on a small
    part, by more than RELATIVE_TOLERANCE of its size (but half a pixel is always allowed)."""
    contours, hierarchy = cv2.findContours(_upsampled(mask), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if hierarchy is None:
        return []
    links = hierarchy[0]  # per contour: next, previous, first child, parent
    parts = []
    for index, contour in enumerate(contours):
        if links[index][3] != -1 or cv2.contourArea(contour) < 4 * MIN_PART_PIXELS:
            continue  # a hole (handled with its part), or a speck
        area = cv2.contourArea(contour) / 4.0
        allowed = min(tolerance, max(0.5, RELATIVE_TOLERANCE * float(np.sqrt(area))))
        outline = _simplified(contour, allowed)
        child = links[index][2]
        while child != -1:
            if cv2.contourArea(contours[child]) >= 4 * MIN_PART_PIXELS:
                outline = _keyhole(outline, _simplified(contours[child], allowed))
            child = links[child][0]
        if len(outline) >= 3:
            parts.append((area, outline / 2.0))
    return [outline for _, outline in sorted(parts, key=lambda part: part[0], reverse=True)]


def _simplified(contour: np.ndarray, tolerance: float) -> np.ndarray:
    return cv2.approxPolyDP(contour, 2.0 * max(tolerance, 0.0), closed=True).reshape(-1, 2).astype(np.float64)


def _keyhole(outline: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """The outline with the hole spliced in at their closest pair of vertices."""
    distances = np.linalg.norm(outline[:, None, :] - hole[None, :, :], axis=2)
    at, start = np.unravel_index(np.argmin(distances), distances.shape)
    ring = np.concatenate([hole[start:], hole[:start + 1]])  # around the hole, back to where it entered
    return np.concatenate([outline[:at + 1], ring, outline[at:]])


def _upsampled(mask: np.ndarray) -> np.ndarray:
    """The mask at twice the resolution, grown by half a pixel: its contour then runs along pixel corners
    (in half-pixel units) rather than through the centres of the boundary pixels, which would shave half
    a pixel off every side."""
    big = np.zeros((2 * mask.shape[0] + 1, 2 * mask.shape[1] + 1), np.uint8)
    doubled = np.repeat(np.repeat(mask.astype(np.uint8), 2, axis=0), 2, axis=1)
    for rows in (slice(None, -1), slice(1, None)):
        for columns in (slice(None, -1), slice(1, None)):
            big[rows, columns] |= doubled
    return big
