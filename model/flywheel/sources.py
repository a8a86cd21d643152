"""Where trajectories come from: the simulated annotator clicking toward a human's mask (from scratch,
or from the model's own prediction: a correction), and the real clicks a human placed."""
from __future__ import annotations

import numpy as np

from model.annotator.clicker import generate_trajectory
from model.core.clicks import Click
from model.core.masks import iou
from model.flywheel.trajectories import StepRecord, TrajectoryRecord
from model.tools import Segmenter, ToolResult


def simulated(segmenter: Segmenter, image: np.ndarray, target: np.ndarray, source: str, label: str, prompt: str,
              image_sha: str, initial: np.ndarray | None = None, max_clicks: int = 10,
              target_iou: float = 0.95) -> TrajectoryRecord:
    """The simulated annotator's clicks from `initial` (None: an empty mask) toward `target` with the tool;
    clicks that do not improve the IoU are dropped (human masks are noisy)."""
    encoded = segmenter.encode(image)
    last: list[ToolResult | np.ndarray | None] = [initial]

    def segment(clicks: list[Click], previous) -> np.ndarray:
        result = segmenter.predict(encoded, clicks, previous=last[0])
        last[0] = result
        return result.mask

    trajectory = generate_trajectory(segment, target, initial_mask=initial, target_iou=target_iou,
                                     max_clicks=max_clicks, drop_useless_clicks=True)
    steps = [StepRecord(s.click, s.mask_before, s.mask_after, s.iou) for s in trajectory.steps]
    return TrajectoryRecord(source, label, prompt, image_sha, target, steps)


def from_human_clicks(clicks_and_masks: list[tuple[Click, np.ndarray]], target: np.ndarray, label: str, prompt: str,
                      image_sha: str) -> TrajectoryRecord:
    """The clicks an annotator placed, in order, with the mask each produced, toward the mask they submitted."""
    steps, before = [], np.zeros_like(target)
    for click, mask in clicks_and_masks:
        if mask.shape != target.shape:
            continue
        steps.append(StepRecord(click, before, mask, iou(mask, target)))
        before = mask
    return TrajectoryRecord("human", label, prompt, image_sha, target, steps)
