"""The image evidence the offline quality scorer reads off a mask, at WORK_SIDE pixels a side.

Four groups of numbers (FEATURES names them, in order):
1. GrabCut started from the mask (how much of it survives), Felzenszwalb superpixels at four scales (how
   well the mask agrees with them), edge strength and colour contrast at its boundary, colour-histogram
   overlap inside and around it, and its shape.
2. The gradient along the mask's signed distance (is the strongest edge on the boundary or some pixels
   off it, and does it run along the boundary or across it), colour models of the mask against a ring
   around it, texture (gradient orientations) inside and around it, and more shape (convexity, parts,
   contact with the image border, thickness).
3. Where the evidence puts the boundary, as a fraction of the object's size: the offset contour with the
   strongest edges running along it, and the offset at which a colour model of the mask's core against
   a far ring stops calling pixels object; each read as the IoU the mask would have with that contour.
   And whether the boundary sits on stronger edges when moved by up to a third of the object's size.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from model.core.masks import iou

WORK_SIDE = 256
FEATURES = (
    "grabcut_keeps", "histogram_overlap", "ring_histogram_overlap", "edge_ratio", "compactness",
    "log_components", "area_fraction", "superpixels_25", "superpixels_50", "superpixels_200", "superpixels_800",
    "strong_edge_support", "canny_support", "boundary_contrast", "log_edge_ratio", "log_boundary_contrast",
    "edge_near_mean", "edge_peakness", "edge_peak_offset", "edge_near_far", "edge_in4", "edge_out4", "edge_in8",
    "edge_out8", "orientation_alignment", "normal_gradient", "relative_edge_05", "relative_edge_15",
    "colour_iou", "colour_inside", "colour_ring", "colour_inside_doubtful", "core_agreement", "core_overlap",
    "lab_distance", "texture_overlap", "texture_log_ratio", "convexity", "largest_component", "border_share",
    "bbox_fill", "thickness", "log_area", "border_mask_share",
    "edge_contour_iou", "edge_contours_iou", "edge_at_boundary_vs_peak", "edge_peak_strength",
    "edge_peak_position", "edge_at_boundary_strength", "colour_contour_iou", "colour_crossing", "core_colour_iou",
    "core_colour_contrast", "shift_ratio", "shift_iou", "shift_vs_mean")
# Bump when what quality_features computes changes: labels stored with another version were read by other code.
FEATURES_VERSION = 2
OFFSETS = np.linspace(-0.4, 0.4, 33)  # offset contours, in units of the square root of the mask's area


def _boundary(mask: np.ndarray) -> np.ndarray:
    return cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0


def _disk(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def _mean(values: np.ndarray, default: float) -> float:
    return float(values.mean()) if values.size else default


def _overlap(first: np.ndarray, second: np.ndarray) -> float:
    """Bhattacharyya coefficient of two histograms (normalised here)."""
    return float(np.sum(np.sqrt(first / first.sum() * second / second.sum())))


@dataclass
class _View:
    """The image and mask at the working size, with what several features read."""
    image: np.ndarray
    mask: np.ndarray
    signed: np.ndarray  # signed distance to the boundary, negative inside
    gx: np.ndarray
    gy: np.ndarray
    magnitude: np.ndarray
    lab: np.ndarray
    colour: np.ndarray  # Lab quantised to 8 levels a channel: 512 colours
    side: float  # the square root of the mask's area

    @classmethod
    def of(cls, small: np.ndarray, m: np.ndarray) -> _View:
        m8 = m.astype(np.uint8)
        inside = cv2.distanceTransform(m8, cv2.DIST_L2, 3)
        outside = cv2.distanceTransform(1 - m8, cv2.DIST_L2, 3)
        gray = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY).astype(np.float32)
        gx, gy = cv2.Sobel(gray, cv2.CV_32F, 1, 0), cv2.Sobel(gray, cv2.CV_32F, 0, 1)
        lab = cv2.cvtColor(small, cv2.COLOR_RGB2LAB)
        bins = (lab // 32).astype(np.int32)
        return cls(small, m, np.where(m, 0.5 - inside, outside - 0.5).astype(np.float32), gx, gy,
                   np.sqrt(gx * gx + gy * gy), lab, bins[..., 0] * 64 + bins[..., 1] * 8 + bins[..., 2],
                   float(np.sqrt(m.sum())))

    def normals(self, reach: float = np.inf) -> tuple[np.ndarray, np.ndarray]:
        """The direction across the offset contours (the smoothed signed distance's gradient), unit length;
        zero farther than `reach` pixels from the boundary."""
        smooth = cv2.GaussianBlur(np.clip(self.signed, -reach, reach), (5, 5), 0)
        nx, ny = cv2.Sobel(smooth, cv2.CV_32F, 1, 0), cv2.Sobel(smooth, cv2.CV_32F, 0, 1)
        norm = np.sqrt(nx * nx + ny * ny) + 1e-6
        return nx / norm, ny / norm


def _working_size(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    height, width = mask.shape
    scale = min(1.0, WORK_SIDE / max(height, width))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = cv2.resize(image, size, interpolation=cv2.INTER_AREA) if scale < 1 else image
    m = cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0 if scale < 1 else mask
    if not m.any():  # a sliver that vanished at the working size: read it at its own place
        m = cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_AREA) > 0
        if not m.any():
            m = np.zeros(small.shape[:2], bool)
            m[min(int(np.argmax(mask.any(axis=1)) * scale), size[1] - 1),
              min(int(np.argmax(mask.any(axis=0)) * scale), size[0] - 1)] = True
    return small, m


def quality_features(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The evidence the offline scorer reads, for a non-empty mask that is not the whole image."""
    small, m = _working_size(image, mask)
    view = _View.of(small, m)
    values = [*_region_features(small, m), *_edge_profile(view), *_colour_models(view), *_shape(view),
              *_offset_contours(view), *_shift_search(view)]
    return np.nan_to_num(np.asarray(values, np.float64))


def _region_features(small: np.ndarray, m: np.ndarray) -> list[float]:
    """Group 1: GrabCut, superpixels, boundary edges and contrast, histogram overlap, shape."""
    from skimage.segmentation import felzenszwalb

    area = int(m.sum())
    radius = max(2, int(0.15 * np.sqrt(area)))
    m8 = m.astype(np.uint8)
    dilated, eroded = cv2.dilate(m8, _disk(radius)) > 0, cv2.erode(m8, _disk(radius)) > 0
    ring, band = dilated & ~m, m & ~eroded

    lab = cv2.cvtColor(small, cv2.COLOR_RGB2LAB)
    bins = (lab // 32).astype(np.int32)
    index = bins[..., 0] * 64 + bins[..., 1] * 8 + bins[..., 2]

    def histogram(selection):
        counts = np.bincount(index[selection], minlength=512).astype(float)
        return counts / max(counts.sum(), 1.0)

    overlap = float(np.sum(np.sqrt(histogram(m) * histogram(~m)))) if (~m).any() else 1.0
    ring_overlap = float(np.sum(np.sqrt(histogram(band) * histogram(ring)))) if ring.any() and band.any() else 1.0

    gray = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY).astype(np.float32)
    gradient = np.asarray(cv2.magnitude(cv2.Sobel(gray, cv2.CV_32F, 1, 0), cv2.Sobel(gray, cv2.CV_32F, 0, 1)),
                          dtype=np.float32)
    on_boundary = _mean(gradient[_boundary(m)], 0.0)
    step = max(2, radius // 2)
    outside = _mean(gradient[_boundary(cv2.dilate(m8, _disk(step)) > 0)], on_boundary)
    inner = cv2.erode(m8, _disk(step)) > 0
    inside = _mean(gradient[_boundary(inner)], outside) if inner.any() else outside
    edge_ratio = on_boundary / (0.5 * (outside + inside) + 1e-3)

    keeps = _grabcut_keeps(small, m, dilated)
    contours, _ = cv2.findContours(m8, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    perimeter = cv2.arcLength(max(contours, key=cv2.contourArea), True) if contours else 0.0
    compactness = 4 * np.pi * area / max(perimeter ** 2, 1.0)
    components = cv2.connectedComponents(m8)[0] - 1

    superpixels = []
    for felzenszwalb_scale in (25, 50, 200, 800):
        segments = felzenszwalb(small, scale=felzenszwalb_scale, sigma=0.8, min_size=20)
        counts = np.bincount(segments.ravel())
        covered = np.bincount(segments.ravel(), weights=m.ravel().astype(float), minlength=len(counts))
        superpixels.append(iou((covered / np.maximum(counts, 1))[segments] > 0.5, m))

    boundary = _boundary(m)
    strong_support = _mean((gradient > np.percentile(gradient, 75))[boundary], 0.0)
    edges = cv2.Canny(gray.astype(np.uint8), 50, 150) > 0
    canny_support = _mean((cv2.dilate(edges.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0)[boundary], 0.0)
    blurred = cv2.blur(lab.astype(np.float32), (5, 5))
    inner_band = m & ~(cv2.erode(m8, np.ones((5, 5), np.uint8)) > 0)
    outer_band = (cv2.dilate(m8, np.ones((5, 5), np.uint8)) > 0) & ~m
    across = float(np.linalg.norm(blurred[inner_band].mean(0) - blurred[outer_band].mean(0))) \
        if inner_band.any() and outer_band.any() else 0.0
    texture = float(np.linalg.norm(np.diff(blurred, axis=1), axis=2).mean()) + 1e-3 if blurred.shape[1] > 1 else 1.0
    contrast = across / texture
    return [keeps, overlap, ring_overlap, edge_ratio, compactness, np.log(max(components, 1)), area / m.size,
            *superpixels, strong_support, canny_support, contrast, np.log(max(edge_ratio, 1e-3)),
            np.log(max(contrast, 1e-3))]


def _grabcut_keeps(image: np.ndarray, mask: np.ndarray, around: np.ndarray) -> float:
    """IoU of the mask with what GrabCut makes of it when started from it: a mask that follows the
    object's colours survives; one that does not is pulled toward what the colours say."""
    labels = np.full(mask.shape, cv2.GC_PR_BGD, np.uint8)
    labels[mask] = cv2.GC_PR_FGD
    x, y, w, h = cv2.boundingRect(around.astype(np.uint8))
    pad = int(0.3 * max(w, h)) + 4
    x1, y1 = max(0, x - pad), max(0, y - pad)
    x2, y2 = min(mask.shape[1], x + w + pad), min(mask.shape[0], y + h + pad)
    roi = np.ascontiguousarray(labels[y1:y2, x1:x2])
    if not (roi == cv2.GC_PR_BGD).any() or min(roi.shape) < 2:
        return 1.0
    cv2.setRNGSeed(0)
    # the rect is unused with GC_INIT_WITH_MASK: (0, 0, 0, 0) is the empty Rect that None stood for
    cv2.grabCut(np.ascontiguousarray(image[y1:y2, x1:x2]), roi, (0, 0, 0, 0), np.zeros((1, 65)), np.zeros((1, 65)),
                2, cv2.GC_INIT_WITH_MASK)
    kept = np.zeros_like(mask)
    kept[y1:y2, x1:x2] = (roi == cv2.GC_FGD) | (roi == cv2.GC_PR_FGD)
    return iou(kept, mask)


def _edge_profile(view: _View) -> list[float]:
    """Group 2, edges: the mean gradient at each signed distance from -12 to 12 pixels (is the boundary the
    strongest edge near it?), whether edges run along the boundary, and edges at offsets relative to size."""
    reach = 12
    k = np.round(view.signed).astype(np.int32) + reach
    valid = (k >= 0) & (k <= 2 * reach)
    counts = np.bincount(k[valid], minlength=2 * reach + 1).astype(float)
    profile = np.bincount(k[valid], weights=view.magnitude[valid], minlength=2 * reach + 1) / np.maximum(counts, 1)
    profile[counts == 0] = view.magnitude.mean()
    near = profile[reach - 1:reach + 2].max()
    far = np.r_[profile[:reach - 4], profile[reach + 5:]].mean()
    values = [near / (view.magnitude.mean() + 1e-3), near / (profile.max() + 1e-3),
              abs(int(np.argmax(profile)) - reach) / reach, near / (far + 1e-3),
              *(profile[reach + offset] / (near + 1e-3) for offset in (-4, 4, -8, 8))]
    nx, ny = view.normals(reach=6)
    along = np.abs(view.gx * nx + view.gy * ny)  # the gradient's component across the boundary
    band = np.abs(view.signed) <= 1.5
    values += [float(along[band].sum() / (view.magnitude[band].sum() + 1e-6)),
               _mean(along[band], 0.0) / (view.magnitude.mean() + 1e-3)]
    on = _mean(view.magnitude[band], 0.0)
    for fraction in (0.05, 0.15):
        offset = max(2.0, fraction * view.side)
        out = view.magnitude[np.abs(view.signed - offset) <= 1]
        inside = view.magnitude[np.abs(view.signed + offset) <= 1]
        outer = _mean(out, view.magnitude.mean() + 1e-3)
        values.append(float(np.log((on + 1e-3) / (0.5 * (outer + _mean(inside, outer)) + 1e-3))))
    return values


def _colour_models(view: _View) -> list[float]:
    """Group 2, colour and texture: a colour histogram of the mask against a ring around it (how much of the
    mask's surroundings its colours claim), the same from the core against a far ring judging the band
    between, Lab distance, and gradient-orientation histograms inside and around."""
    m, signed, colour = view.mask, view.signed, view.colour
    ring = (signed > 0) & (signed <= max(4.0, 0.4 * view.side))
    inside_hist = np.bincount(colour[m], minlength=512) + 0.5
    ring_hist = np.bincount(colour[ring], minlength=512) + 0.5
    posterior = _posterior(inside_hist, ring_hist)[colour]
    claimed = (posterior > 0.5) & (m | ring)
    values = [float((claimed & m).sum() / max((claimed | m).sum(), 1)), float(posterior[m].mean()),
              _mean(posterior[ring], 0.5), float(np.mean(posterior[m] < 0.5))]
    reach = max(2.0, 0.15 * view.side)
    core, far = signed < -reach, (signed > reach) & (signed <= max(6.0, 0.5 * view.side))
    if core.sum() > 5 and far.sum() > 5:
        core_hist, far_hist = np.bincount(colour[core], minlength=512) + 0.5, np.bincount(colour[far], minlength=512) + 0.5
        between = np.abs(signed) <= reach
        values += [float(np.mean((_posterior(core_hist, far_hist)[colour][between] > 0.5) == m[between])),
                   _overlap(core_hist, far_hist)]
    else:
        values += [0.5, 1.0]
    lab = view.lab.astype(np.float32)

    def stats(selection):
        if selection.sum() <= 2:
            return lab.reshape(-1, 3).mean(0), 50.0
        return lab[selection].mean(0), lab[selection].std(0).mean() + 1.0

    (inside_mean, inside_spread), (ring_mean, ring_spread) = stats(signed < 0), stats(ring)
    values.append(float(np.linalg.norm(inside_mean - ring_mean) / (inside_spread + ring_spread)))
    orientation = np.clip(((np.arctan2(view.gy, view.gx) % np.pi) / np.pi * 8).astype(np.int32), 0, 7)
    inside_texture = np.bincount(orientation[m], weights=view.magnitude[m], minlength=8) + 1e-3
    ring_texture = np.bincount(orientation[ring], weights=view.magnitude[ring], minlength=8) + 1e-3
    ratio = (view.magnitude[m].mean() + 1) / (view.magnitude[ring].mean() + 1) if ring.any() else 1.0
    return [*values, _overlap(inside_texture, ring_texture), float(np.log(ratio))]


def _posterior(foreground: np.ndarray, background: np.ndarray) -> np.ndarray:
    """P(object | colour) from two colour histograms, equal priors."""
    foreground, background = foreground / foreground.sum(), background / background.sum()
    return foreground / (foreground + background)


def _shape(view: _View) -> list[float]:
    """Group 2, shape: convexity, the largest part's share, contact with the image's border, how much of its
    bounding box it fills, its thickness, its size."""
    m = view.mask
    area = int(m.sum())
    m8 = m.astype(np.uint8)
    contours, _ = cv2.findContours(m8, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    hull = cv2.contourArea(cv2.convexHull(np.concatenate(contours))) if contours else 1.0
    count, _, stats, _ = cv2.connectedComponentsWithStats(m8)
    largest = stats[1:, cv2.CC_STAT_AREA].max() / area if count > 1 else 1.0
    border = np.zeros_like(m)
    border[0, :] = border[-1, :] = border[:, 0] = border[:, -1] = True
    ys, xs = np.nonzero(m)
    box = (xs.max() - xs.min() + 1) * (ys.max() - ys.min() + 1)
    boundary = int((np.abs(view.signed) <= 0.5).sum())
    return [area / max(hull, 1.0), largest, float(m[border].sum()) / max(boundary, 1), area / box,
            float(-view.signed.min() + 0.5) / max(view.side, 1.0), float(np.log(area / m.size + 1e-6)),
            float(m[border].mean())]


def _implied(view: _View, position: int) -> float:
    """IoU of the mask with its offset contour at OFFSETS[position]."""
    area = (view.signed < OFFSETS[position] * max(view.side, 2.0)).sum()
    return float(min(area, view.mask.sum()) / max(area, view.mask.sum(), 1))


def _offset_profile(values: np.ndarray, relative: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    k = np.round((relative - OFFSETS[0]) / (OFFSETS[1] - OFFSETS[0])).astype(np.int32)
    valid = (k >= 0) & (k < len(OFFSETS))
    counts = np.bincount(k[valid], minlength=len(OFFSETS)).astype(float)
    return np.bincount(k[valid], weights=values[valid], minlength=len(OFFSETS)) / np.maximum(counts, 1), counts >= 4


def _offset_contours(view: _View) -> list[float]:
    """Group 3: where the edges that run along the contours, and where a colour model, put the boundary."""
    relative = view.signed / max(view.side, 2.0)
    nx, ny = view.normals()
    profile, valid = _offset_profile(np.abs(view.gx * nx + view.gy * ny), relative)
    profile = np.where(valid, profile, 0.0)
    middle = float(np.median(profile[valid])) if valid.any() else 0.0
    centre, peak = len(OFFSETS) // 2, int(np.argmax(profile))
    weights = np.maximum(profile - middle, 0) ** 2
    weights = weights / weights.sum() if weights.sum() > 0 else np.full(len(weights), 1 / len(weights))
    at_boundary = profile[centre - 1:centre + 2].max()
    implied = [_implied(view, position) for position in range(len(OFFSETS))]
    values = [implied[peak], float(weights @ implied), at_boundary / (profile.max() + 1e-3),
              (profile.max() - middle) / (middle + 1e-3), float(OFFSETS[peak]), (at_boundary - middle) / (middle + 1e-3)]
    core, far = relative < -0.2, (relative > 0.25) & (relative < 0.6)
    if core.sum() < 5:
        core = relative < -0.05
    if core.sum() < 3 or far.sum() < 3:
        return [*values, 1.0, 0.0, 0.5, 0.0]
    posterior = _posterior(np.bincount(view.colour[core], minlength=512) + 0.5,
                           np.bincount(view.colour[far], minlength=512) + 0.5)[view.colour]
    profile, valid = _offset_profile(posterior, relative)
    claimed = np.where(valid, profile, 0.5) > 0.5
    crossing = len(OFFSETS) - 1 - int(np.argmax(claimed[::-1])) if claimed.any() else 0  # the last offset claimed
    m, object_like = view.mask, posterior > 0.5
    near = np.abs(relative) < 0.1
    contrast = float(posterior[near & m].mean() - posterior[near & ~m].mean()) if (near & ~m).any() else 0.0
    return [*values, implied[crossing], float(OFFSETS[crossing]),
            float((object_like & m).sum() / max((object_like & (relative < 0.6) | m).sum(), 1)), contrast]


def _shift_search(view: _View) -> list[float]:
    """Group 3: the boundary's edge strength (across it) where it is, against the boundary moved by 5-35% of
    the object's size in eight directions; and the IoU of the mask with its best-placed copy."""
    ys, xs = np.nonzero(np.abs(view.signed) <= 0.5)
    nx, ny = view.normals()
    nx, ny = nx[ys, xs], ny[ys, xs]
    height, width = view.mask.shape

    def strength(dx: int, dy: int) -> float:
        yy, xx = ys + dy, xs + dx
        inside = (yy >= 0) & (yy < height) & (xx >= 0) & (xx < width)
        if inside.sum() < 0.5 * len(ys):
            return 0.0
        across = view.gx[yy[inside], xx[inside]] * nx[inside] + view.gy[yy[inside], xx[inside]] * ny[inside]
        return float(np.abs(across).mean())

    here = strength(0, 0)
    side = max(view.side, 2.0)
    moves = [(round(r * side * np.cos(a)), round(r * side * np.sin(a)))
             for r in (0.05, 0.1, 0.2, 0.35) for a in np.arange(8) * np.pi / 4]
    strengths = [strength(dx, dy) for dx, dy in moves]
    best = int(np.argmax(strengths))
    dx, dy = moves[best] if strengths[best] > here else (0, 0)
    moved = np.zeros_like(view.mask)
    moved[max(dy, 0):height + min(dy, 0), max(dx, 0):width + min(dx, 0)] = \
        view.mask[max(-dy, 0):height + min(-dy, 0), max(-dx, 0):width + min(-dx, 0)]
    return [here / (max(here, strengths[best]) + 1e-3), iou(moved, view.mask), float(here / (np.mean(strengths) + 1e-3))]
