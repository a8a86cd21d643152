"""The simulated human annotator, and the click trajectories it produces.

Next click (the RITM / SimpleClick / SegAgent protocol): among the error pixels (missed object:
false negatives; wrongly included: false positives), the one farthest from the boundary of its error
region, by the distance transform, with the image border counting as boundary. The click is positive
when that pixel is missed object, negative when it is wrongly included.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np

from model.core.clicks import Click
from model.core.masks import disk, iou

USELESS_CLICK_RADIUS = 5  # pixels around a dropped click that the annotator stops looking at


def _inner_distance(region: np.ndarray) -> np.ndarray:
    padded = np.pad(region, 1).astype(np.uint8)
    return cv2.distanceTransform(padded, cv2.DIST_L2, 0)[1:-1, 1:-1]


def next_click(pred: np.ndarray, target: np.ndarray, ignore: np.ndarray | None = None) -> Click | None:
    """The click a careful annotator places next, or None when there is no error left to correct."""
    if pred.shape != target.shape:
        raise ValueError(f"mask shapes differ: {pred.shape} and {target.shape}")
    valid = ~ignore if ignore is not None else np.ones_like(target)
    missed = target & ~pred & valid
    extra = ~target & pred & valid
    missed_dt = _inner_distance(missed)
    extra_dt = _inner_distance(extra)
    missed_max, extra_max = float(missed_dt.max()), float(extra_dt.max())
    if max(missed_max, extra_max) <= 0:
        return None
    positive = missed_max > extra_max
    dt = missed_dt if positive else extra_dt
    row, col = np.unravel_index(int(np.argmax(dt)), dt.shape)
    return Click(float(col), float(row), positive)


@dataclass
class Step:
    """One step of a trajectory: the mask before, the action taken, the mask after, and its IoU."""

    mask_before: np.ndarray
    click: Click
    mask_after: np.ndarray
    iou: float


@dataclass
class Trajectory:
    """Clicks leading from an initial mask toward a target mask."""

    initial_mask: np.ndarray
    initial_iou: float
    steps: list[Step] = field(default_factory=list)

    @property
    def clicks(self) -> list[Click]:
        return [s.click for s in self.steps]



# predict(clicks, previous mask) -> mask: the tool, bound to one image
Segment = Callable[[list[Click], np.ndarray | None], np.ndarray]


def generate_trajectory(
    segment: Segment,
    target: np.ndarray,
    initial_mask: np.ndarray | None = None,
    ignore: np.ndarray | None = None,
    target_iou: float = 0.95,
    max_clicks: int = 20,
    drop_useless_clicks: bool = False,
) -> Trajectory:
    """Click toward `target` as the simulated annotator would, one record per step.

    Stops when the IoU reaches `target_iou`, when `max_clicks` clicks were placed, or when no error is
    left. With `drop_useless_clicks`, a click that does not raise the IoU is not kept (SegAgent's
    filtering for noisy ground truth): the state stays as it was and the annotator moves on to the
    next error instead, up to `max_clicks` attempts in all.
    """
    mask = np.zeros_like(target) if initial_mask is None else initial_mask.astype(bool)
    trajectory = Trajectory(initial_mask=mask, initial_iou=iou(mask, target, ignore))
    clicks: list[Click] = []
    current_iou = trajectory.initial_iou
    previous: np.ndarray | None = None if initial_mask is None else mask
    skipped = np.zeros_like(target) if ignore is None else ignore.copy()
    for _ in range(max_clicks):
        if current_iou >= target_iou:
            break
        click = next_click(mask, target, skipped)
        if click is None:
            break
        new_mask = segment([*clicks, click], previous)
        new_iou = iou(new_mask, target, ignore)
        if drop_useless_clicks and new_iou <= current_iou:
            # Leave this error for good: a human would not keep a click that makes nothing better.
            skipped |= disk(target.shape, click, USELESS_CLICK_RADIUS)
            continue
        clicks.append(click)
        trajectory.steps.append(Step(mask, click, new_mask, new_iou))
        mask, previous, current_iou = new_mask, new_mask, new_iou
    return trajectory
