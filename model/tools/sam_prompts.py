"""How the SAM family (sam.py, sam2.py) is prompted, as SegAgent's evaluation prompts SAM: clicks, a box
and the previous step's low-resolution logits in, three masks asked for at every step, the best rated
kept, and its own logits fed back at the next step.

A mask that did not come from the tool (an annotator's, an episode's initial mask) starts SAM as SAM
was trained to be started, with mask logits alongside points: the mask is drawn into SAM's
low-resolution frame as logits, and its deepest interior point goes first among the clicks as a
positive click. Each predictor's frame differs, so each tool says how a mask maps into its own."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import cv2
import numpy as np

from model.core.clicks import Click
from model.tools.base import Box, ToolResult

# A mask's logits: this inside, minus this outside, in between where a low-resolution cell is partly
# covered. sigmoid(10) is 0.99995: as sure as SAM's own confident logits, well inside SAM 2's clamp of 32.
MASK_LOGIT = 10.0

# A bool mask at the image's size -> the share of each cell of the predictor's low-resolution frame it covers
Frame = Callable[[np.ndarray], np.ndarray]


def padded_frame(mask: np.ndarray, input_size: tuple[int, int], side: int, low_res: int) -> np.ndarray:
    """SAM's frame: the image resized so that its longest side is `side` (to `input_size`), padded at the
    bottom and right to a side x side square, which the low-resolution frame covers at low_res x low_res."""
    height, width = input_size
    square = np.zeros((side, side), np.float32)
    square[:height, :width] = cv2.resize(mask.astype(np.float32), (width, height), interpolation=cv2.INTER_AREA)
    cell = side // low_res
    return square.reshape(low_res, cell, low_res, cell).mean(axis=(1, 3))


def stretched_frame(mask: np.ndarray, low_res: int) -> np.ndarray:
    """SAM 2's frame: the image resized to a square, its aspect ratio not kept, nothing padded."""
    return cv2.resize(mask.astype(np.float32), (low_res, low_res), interpolation=cv2.INTER_AREA)


def anchor(mask: np.ndarray, clicks: Sequence[Click]) -> Click | None:
    """The positive click an annotator would have started the mask with: its pixel farthest from the mask's
    boundary (the image border counting as boundary), negative clicks counting as boundary too."""
    region = np.pad(mask, 1).astype(np.uint8)
    for click in clicks:
        if not click.positive:
            row, col = click.pixel
            region[row + 1, col + 1] = 0
    depth = cv2.distanceTransform(region, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]
    if depth.max() <= 0:
        return None
    deepest = np.unravel_index(int(np.argmax(depth)), depth.shape)
    return Click(float(deepest[1]), float(deepest[0]), True)


def prompts(clicks: Sequence[Click], box: Box | None, previous: ToolResult | np.ndarray | None,
            frame: Frame) -> dict[str, Any]:
    """The predictor's keyword arguments: always three masks (SegAgent's evaluation keeps the best of three
    at every step). The previous result's logits are the mask input; a previous mask alone is drawn into
    the predictor's `frame` as logits, its anchor click first."""
    logits = previous.state if isinstance(previous, ToolResult) else None
    if isinstance(previous, np.ndarray) and previous.any():
        mask = previous.astype(bool)  # 0/255 or 0/1 alike
        logits = (MASK_LOGIT * (2.0 * frame(mask) - 1.0))[None].astype(np.float32)
        start = anchor(mask, clicks)
        clicks = [start, *clicks] if start is not None else list(clicks)
    return {
        "point_coords": np.array([[c.x, c.y] for c in clicks], np.float32) if clicks else None,
        "point_labels": np.array([1 if c.positive else 0 for c in clicks], np.int32) if clicks else None,
        "box": np.asarray(box, np.float32) if box is not None else None,
        "mask_input": logits,
        "multimask_output": True,
    }


def best(masks: np.ndarray, scores: np.ndarray, low_res: np.ndarray) -> ToolResult:
    """The mask the model rates best, its rating as the score, its own logits for the next step."""
    index = int(np.argmax(scores))
    return ToolResult(mask=np.asarray(masks[index]) > 0, score=float(np.clip(scores[index], 0.0, 1.0)),
                      state=low_res[index][None])
