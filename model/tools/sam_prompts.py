"""How the SAM family (sam.py, sam2.py) is prompted: clicks, a box and the previous step's logits in,
the best of its masks out. Both predictors take the same arguments and answer the same way."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from model.core.clicks import Click
from model.tools.base import Box, ToolResult


def prompts(clicks: Sequence[Click], box: Box | None, previous: ToolResult | np.ndarray | None) -> dict[str, Any]:
    """The predictor's keyword arguments. One click alone is ambiguous (a part or the whole?): three masks,
    of which the best is kept. With more clicks, a box or the previous logits (the mask input), one."""
    logits = previous.state if isinstance(previous, ToolResult) and previous.state is not None else None
    return {
        "point_coords": np.array([[c.x, c.y] for c in clicks], np.float32) if clicks else None,
        "point_labels": np.array([1 if c.positive else 0 for c in clicks], np.int32) if clicks else None,
        "box": np.asarray(box, np.float32) if box is not None else None,
        "mask_input": logits,
        "multimask_output": len(clicks) == 1 and box is None and logits is None,
    }


def best(masks: np.ndarray, scores: np.ndarray, low_res: np.ndarray) -> ToolResult:
    """The mask the model rates best, its rating as the score, its logits for the next step."""
    index = int(np.argmax(scores))
    return ToolResult(mask=np.asarray(masks[index]) > 0, score=float(np.clip(scores[index], 0.0, 1.0)),
                      state=low_res[index][None])
