"""The CPU tool: click-driven GrabCut with click regions sized from the current mask. No weights.

How a prediction is made, at a working resolution of at most `work_size` pixels a side:
1. Every pixel starts as probable background, or as probable object where the previous mask (or the
   box) says so.
2. Each click claims a region around itself: for a click that corrects the mask, a disk whose radius is
   a fraction of the click's distance to the mask's other side (the error the annotator saw is at least
   that thick); for a first click, a disk the size of a typical object. The inner part of the disk is
   sure (a hard seed), the rest probable. Click regions are kept from step to step in the result's
   state, so every correction keeps its effect.
3. GrabCut (colour GMMs and a contrast-sensitive graph cut) runs on the whole image for a first click,
   and on a region of interest around the mask and the clicks afterwards.
4. Only the connected parts under positive clicks are kept, and small holes are filled.

A box alone is answered with the object's part inside it, from two GrabCut runs on the whole image:
- enclosed: sure background outside the box (classic GrabCut), for an object the box encloses;
- crossing: sure background only beyond a ring of half the box's size around it, the ring probable
  background, so that an object going on past the box's sides is followed there.
When the enclosed run finds (almost) nothing in the box, the box's colours are those around it: the box
lies inside one region and is the answer, unless the crossing run found an object crossing one or two of
the box's sides (a box across the object's edge), whose part in the box is the answer then. When the
crossing run fills the box and crosses all its sides, the box lies inside the object too (the enclosed
run cuts out only some part of it then), and the crossing run's part in the box is the answer. Otherwise
the enclosed run's object is.

A flat image (at most `flat_colours` distinct colours at the working scale: one colour, near-flat noise of a
level or two, a few flat areas) gets no GrabCut: its colour models collapse onto single colours, and the graph
cut on their extreme costs took seconds a click. A click there answers its connected flat region (colours
within `flat_tolerance` of the click's), added for a positive click and removed for a negative one; a box
alone answers the box.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from model.core.clicks import Click
from model.core.masks import components_touching, disk, fill_holes, resize_mask
from model.tools.base import Box, Encoded, ToolResult

BGD, FGD, PR_BGD, PR_FGD = cv2.GC_BGD, cv2.GC_FGD, cv2.GC_PR_BGD, cv2.GC_PR_FGD


@dataclass(frozen=True)
class ClickRegion:
    click: Click  # at the working scale
    radius: float  # of the probable region
    hard_radius: float  # of the sure seed


@dataclass
class ClassicalState:
    regions: tuple[ClickRegion, ...]  # one per click consumed so far, in order


class ClassicalTool:
    name = "classical"

    def __init__(self, work_size: int = 400, iterations: int = 2, seed_radius: float = 0.01,
                 prior_radius: float = 0.08, roi_margin: float = 0.3, correction_reach: float = 0.75,
                 hard_fraction: float = 0.5, box_iterations: int = 3, box_ring: float = 0.5,
                 box_empty: float = 0.1, box_filled: float = 0.9, box_crossed: float = 0.3, flat_colours: int = 32,
                 flat_tolerance: int = 2):
        self.work_size = work_size
        self.iterations = iterations
        self.seed_radius = seed_radius  # of the working image's diagonal: the smallest sure seed
        self.prior_radius = prior_radius  # of the diagonal: the object a lone first click implies
        self.roi_margin = roi_margin  # of the region's own size, added on each side
        self.correction_reach = correction_reach  # of the distance from a click to the mask's other side
        self.hard_fraction = hard_fraction  # of a correction region that is sure rather than probable
        self.box_iterations = box_iterations  # GrabCut's, for a box alone
        self.box_ring = box_ring  # of the box's size on each side: the crossing run's probable background
        self.box_empty = box_empty  # of the box: an enclosed object smaller than this is none
        self.box_filled = box_filled  # of the box: a crossing object filling this much of it fills it
        self.box_crossed = box_crossed  # of a strip outside a side: an object covering this much crosses it
        self.flat_colours = flat_colours  # distinct colours at most, at the working scale, of a flat image
        self.flat_tolerance = flat_tolerance  # levels per channel from the click's colour, of its flat region

    def encode(self, image: np.ndarray) -> Encoded:
        height, width = image.shape[:2]
        scale = min(1.0, self.work_size / max(height, width))
        small = image if scale == 1.0 else cv2.resize(
            image, (max(1, round(width * scale)), max(1, round(height * scale))), interpolation=cv2.INTER_AREA)
        small = np.ascontiguousarray(small)
        return Encoded(shape=(height, width), data=(small, scale, _colours(small) <= self.flat_colours),
                       nbytes=small.nbytes)

    def predict(self, encoded: Encoded, clicks: Sequence[Click], box: Box | None = None,
                previous: ToolResult | np.ndarray | None = None) -> ToolResult:
        small, scale, flat = encoded.data
        if box is not None and not clicks and previous is None:
            return self._predict_box(encoded, box)
        shape = small.shape[:2]
        diagonal = float(np.hypot(*shape))
        scaled = [Click(c.x * scale, c.y * scale, c.positive).clipped(shape[1], shape[0]) for c in clicks]

        previous_mask = previous.mask if isinstance(previous, ToolResult) else previous
        current = resize_mask(previous_mask, shape) if previous_mask is not None else np.zeros(shape, bool)
        if flat:
            mask = self._flat_regions(small, scaled, current)
            return ToolResult(mask=_upsample(mask, encoded.shape), score=_edge_score(small, mask),
                              state=ClassicalState(()))
        labels = np.full(shape, PR_BGD, np.uint8)
        if current.any():
            labels[current] = PR_FGD
        elif box is not None:
            x1, y1, x2, y2 = (round(v * scale) for v in box)
            labels[:] = BGD
            labels[max(y1, 0):max(y2, 0), max(x1, 0):max(x2, 0)] = PR_FGD

        known = previous.state.regions if isinstance(previous, ToolResult) and isinstance(
            previous.state, ClassicalState) else ()
        if [r.click for r in known] != scaled[:len(known)]:
            known = ()  # another click sequence: start the regions afresh
        regions = list(known) + self._new_regions(scaled[len(known):], current, box is not None, diagonal)
        for region in regions:
            positive = region.click.positive
            labels[disk(shape, region.click, region.radius)] = PR_FGD if positive else PR_BGD
        for region in regions:
            labels[disk(shape, region.click, region.hard_radius)] = FGD if region.click.positive else BGD

        restrict = bool(current.any()) or box is not None
        mask = self._grabcut(small, labels, restrict)
        anchors = [c for c in scaled if c.positive and mask[c.pixel]]
        if anchors:
            mask = components_touching(mask, anchors)
        mask = fill_holes(mask, max_area=int(0.01 * mask.size), keep_open=[c for c in scaled if not c.positive])
        full = _upsample(mask, encoded.shape)
        return ToolResult(mask=full, score=_edge_score(small, mask), state=ClassicalState(tuple(regions)))

    def _predict_box(self, encoded: Encoded, box: Box) -> ToolResult:
        """The object's part inside a box given alone (the module's docstring says how)."""
        small, scale, flat = encoded.data
        shape = small.shape[:2]
        rect = _box_rect(box, scale, shape)
        x1, y1, x2, y2 = rect
        inside = np.zeros(shape, bool)
        inside[y1:y2, x1:x2] = True
        if flat:
            return ToolResult(mask=_upsample(inside, encoded.shape), score=0.0, state=ClassicalState(()))
        area = inside.sum()
        labels = np.where(inside, PR_FGD, BGD).astype(np.uint8)
        enclosed = self._grabcut(small, labels.copy(), restrict=False, iterations=self.box_iterations) & inside
        rx1, ry1, rx2, ry2 = _grow(rect, self.box_ring, shape)
        labels[ry1:ry2, rx1:rx2] = PR_BGD
        labels[inside] = PR_FGD
        crossing = self._grabcut(small, labels, restrict=False, iterations=self.box_iterations)
        strip = max(2, round(0.1 * max(x2 - x1, y2 - y1)))
        crossed = [covered >= self.box_crossed for covered in _outer_strips(crossing, rect, strip)]
        crossing &= inside
        if enclosed.sum() < self.box_empty * area:
            across_edge = crossing.sum() >= self.box_empty * area and 1 <= sum(crossed) <= 2
            mask = crossing if across_edge else inside
        elif crossing.sum() >= self.box_filled * area and crossed and all(crossed):
            mask = crossing
        else:
            mask = enclosed
        mask = fill_holes(mask, max_area=int(0.01 * mask.size))
        return ToolResult(mask=_upsample(mask, encoded.shape), score=_edge_score(small, mask), state=ClassicalState(()))

    def _flat_regions(self, image: np.ndarray, clicks: list[Click], current: np.ndarray) -> np.ndarray:
        mask = current.copy()
        for click in clicks:
            filled = np.zeros((image.shape[0] + 2, image.shape[1] + 2), np.uint8)
            tolerance = (self.flat_tolerance,) * 3
            cv2.floodFill(image, filled, (int(click.x), int(click.y)), 0, tolerance, tolerance,
                          4 | cv2.FLOODFILL_MASK_ONLY | cv2.FLOODFILL_FIXED_RANGE | (1 << 8))
            region = filled[1:-1, 1:-1] > 0
            mask = mask | region if click.positive else mask & ~region
        return mask

    def _new_regions(self, clicks: list[Click], current: np.ndarray, has_box: bool,
                     diagonal: float) -> list[ClickRegion]:
        seed = max(1.0, self.seed_radius * diagonal)
        regions = []
        mask = current.copy()
        for click in clicks:
            if not mask.any() and click.positive and not has_box:
                radius = self.prior_radius * diagonal
                regions.append(ClickRegion(click, radius, seed))
            else:
                # distance from the click to the nearest pixel on the mask's other side
                other_side = ~mask if not click.positive else mask
                reach = _distance_to(other_side, click) if other_side.any() else self.prior_radius * diagonal
                radius = max(seed, self.correction_reach * reach)
                regions.append(ClickRegion(click, radius, max(seed, self.hard_fraction * radius)))
            mask |= disk(mask.shape, click, regions[-1].radius) if click.positive else False
            if not click.positive:
                mask &= ~disk(mask.shape, click, regions[-1].radius)
        return regions

    def _grabcut(self, image: np.ndarray, labels: np.ndarray, restrict: bool,
                 iterations: int | None = None) -> np.ndarray:
        objectish = (labels == FGD) | (labels == PR_FGD)
        if not objectish.any():
            return np.zeros(labels.shape, bool)
        if restrict and self.roi_margin > 0:
            x1, y1, x2, y2 = _expand(cv2.boundingRect(objectish.astype(np.uint8)), self.roi_margin, labels.shape)
        else:
            x1, y1, x2, y2 = 0, 0, labels.shape[1], labels.shape[0]
        roi_labels = np.ascontiguousarray(labels[y1:y2, x1:x2])
        roi_image = np.ascontiguousarray(image[y1:y2, x1:x2])
        has_background = np.isin(roi_labels, (BGD, PR_BGD)).any()
        if has_background and min(roi_labels.shape) >= 2:
            cv2.setRNGSeed(0)  # GrabCut's GMM initialisation is random: keep results reproducible
            bgd_model = np.zeros((1, 65), np.float64)
            fgd_model = np.zeros((1, 65), np.float64)
            # the rect is unused with GC_INIT_WITH_MASK: (0, 0, 0, 0) is the empty Rect that None stood for
            cv2.grabCut(roi_image, roi_labels, (0, 0, 0, 0), bgd_model, fgd_model, iterations or self.iterations,
                        cv2.GC_INIT_WITH_MASK)
        mask = np.zeros(labels.shape, bool)
        mask[y1:y2, x1:x2] = (roi_labels == FGD) | (roi_labels == PR_FGD)
        return mask


def _colours(image: np.ndarray) -> int:
    """How many distinct colours an RGB image has."""
    packed = image.reshape(-1, 3).astype(np.uint32)
    return len(np.unique(packed[:, 0] << 16 | packed[:, 1] << 8 | packed[:, 2]))


def _distance_to(region: np.ndarray, click: Click) -> float:
    """Euclidean distance from a click to the nearest pixel of a non-empty region."""
    ys, xs = np.nonzero(region)
    return float(np.sqrt(np.min((xs - click.x) ** 2 + (ys - click.y) ** 2)))


def _expand(rect: Sequence[int], margin: float, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    x, y, w, h = rect
    pad = int(margin * max(w, h)) + 8
    return max(0, x - pad), max(0, y - pad), min(shape[1], x + w + pad), min(shape[0], y + h + pad)


def _box_rect(box: Box, scale: float, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """A box at the working scale, in whole pixels inside the image, at least one pixel a side."""
    height, width = shape
    x1 = min(max(round(box[0] * scale), 0), width - 1)
    y1 = min(max(round(box[1] * scale), 0), height - 1)
    return x1, y1, min(max(round(box[2] * scale), x1 + 1), width), min(max(round(box[3] * scale), y1 + 1), height)


def _grow(rect: tuple[int, int, int, int], fraction: float, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    x1, y1, x2, y2 = rect
    pad_x, pad_y = round(fraction * (x2 - x1)) + 4, round(fraction * (y2 - y1)) + 4
    return max(0, x1 - pad_x), max(0, y1 - pad_y), min(shape[1], x2 + pad_x), min(shape[0], y2 + pad_y)


def _outer_strips(mask: np.ndarray, rect: tuple[int, int, int, int], width: int) -> list[float]:
    """The fraction of the mask in a strip `width` wide just outside each side of the box, for the sides with
    that much room before the image's edge."""
    x1, y1, x2, y2 = rect
    height, image_width = mask.shape
    strips = [mask[y1:y2, x1 - width:x1] if x1 >= width else None,
              mask[y1:y2, x2:x2 + width] if x2 + width <= image_width else None,
              mask[y1 - width:y1, x1:x2] if y1 >= width else None,
              mask[y2:y2 + width, x1:x2] if y2 + width <= height else None]
    return [float(strip.mean()) for strip in strips if strip is not None]


def _upsample(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if mask.shape == shape:
        return mask
    soft = cv2.resize(mask.astype(np.float32), (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
    return soft >= 0.5


def _edge_score(image: np.ndarray, mask: np.ndarray) -> float:
    """How strongly the mask's boundary follows image edges, in [0, 1]: a cheap confidence."""
    if not mask.any() or mask.all():
        return 0.0
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)
    gradient = cv2.magnitude(cv2.Sobel(gray, cv2.CV_32F, 1, 0), cv2.Sobel(gray, cv2.CV_32F, 0, 1))
    boundary = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0
    ratio = float(gradient[boundary].mean()) / (float(gradient.mean()) + 1e-6)
    return float(1.0 - np.exp(-ratio / 2.0))
