"""A seeded corruption protocol that imitates annotator errors, for measuring quality scorers.

Each object gets one mask of each kind: untouched; a sloppy boundary (dilated, eroded, or polygon
simplification); a missed part (cut off along a random line); an extra blob; a shifted mask; and the
wrong object (another sample's mask, resized to this image). Strengths are drawn per object from a
generator seeded by (seed, object index), so the same seed gives the same masks.
"""
from __future__ import annotations

import cv2
import numpy as np

KINDS = ("untouched", "dilated", "eroded", "simplified", "missed_part", "extra_blob", "shifted", "wrong_object")


def _disk_kernel(radius: int) -> np.ndarray:
    size = 2 * max(radius, 1) + 1
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))


def corrupt(mask: np.ndarray, kind: str, rng: np.random.Generator, other: np.ndarray | None = None) -> np.ndarray:
    """One corrupted copy of a non-empty bool mask."""
    height, width = mask.shape
    area = max(int(mask.sum()), 1)
    scale = np.sqrt(area)
    m8 = mask.astype(np.uint8)
    if kind == "untouched":
        return mask.copy()
    if kind == "dilated":
        return cv2.dilate(m8, _disk_kernel(int(rng.uniform(0.04, 0.3) * scale))) > 0
    if kind == "eroded":
        return cv2.erode(m8, _disk_kernel(int(rng.uniform(0.04, 0.25) * scale))) > 0
    if kind == "simplified":
        contours, _ = cv2.findContours(m8, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        out = np.zeros_like(m8)
        for contour in contours:
            epsilon = rng.uniform(0.02, 0.12) * cv2.arcLength(contour, True)
            cv2.fillPoly(out, [cv2.approxPolyDP(contour, epsilon, True)], 1)
        return out > 0
    if kind == "missed_part":
        ys, xs = np.nonzero(mask)
        angle = rng.uniform(0, 2 * np.pi)
        projection = xs * np.cos(angle) + ys * np.sin(angle)
        cut = np.quantile(projection, 1 - rng.uniform(0.1, 0.5))
        out = mask.copy()
        out[ys[projection > cut], xs[projection > cut]] = False
        return out
    if kind == "extra_blob":
        ys, xs = np.nonzero(cv2.morphologyEx(m8, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)))
        pick = rng.integers(len(xs))
        radius = rng.uniform(0.2, 0.6) * scale
        axes = (max(1, int(radius * rng.uniform(0.6, 1.4))), max(1, int(radius * rng.uniform(0.6, 1.4))))
        offset = rng.normal(0, radius / 2, 2)
        blob = np.zeros_like(m8)
        cv2.ellipse(blob, (int(xs[pick] + offset[0]), int(ys[pick] + offset[1])), axes, rng.uniform(0, 180), 0, 360,
                    1, -1)
        return mask | (blob > 0)
    if kind == "shifted":
        ys, xs = np.nonzero(mask)
        size = max(xs.max() - xs.min(), ys.max() - ys.min(), 1)
        angle = rng.uniform(0, 2 * np.pi)
        distance = rng.uniform(0.05, 0.5) * size
        matrix = np.array([[1, 0, distance * np.cos(angle)], [0, 1, distance * np.sin(angle)]], dtype=np.float32)
        return cv2.warpAffine(m8, matrix, (width, height), flags=cv2.INTER_NEAREST) > 0
    if kind == "wrong_object":
        if other is None:
            raise ValueError("the wrong object needs another mask")
        return cv2.resize(other.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST) > 0
    raise ValueError(f"unknown corruption {kind!r}; choose from {KINDS}")


def corruptions(mask: np.ndarray, index: int, seed: int, other: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """Every kind of corruption of one object's mask (the empty results dropped)."""
    rng = np.random.default_rng([seed, index])
    out = []
    for kind in KINDS:
        corrupted = corrupt(mask, kind, rng, other)
        if corrupted.any():
            out.append((kind, corrupted))
    return out
