"""How SAM and SAM 2 are prompted (model/tools/sam_prompts.py), without a model: three masks at every step,
the best rated kept with its own logits, and a mask that did not come from the tool drawn into each
predictor's low-resolution frame at full size (SAM: 1024 / 256, padded; SAM 2: stretched)."""
from __future__ import annotations

import numpy as np
import pytest
from segment_anything.utils.transforms import ResizeLongestSide

from model.core.clicks import Click
from model.tools.base import ToolResult
from model.tools.sam_prompts import MASK_LOGIT, anchor, best, padded_frame, prompts, stretched_frame

HEIGHT, WIDTH = 300, 500  # not square: a frame stretched where it should be padded shows
RECT = (60, 240, 100, 400)  # rows, then columns, of a mask's rectangle: [top, bottom), [left, right)


def rectangle(height: int = HEIGHT, width: int = WIDTH, rect: tuple[int, int, int, int] = RECT) -> np.ndarray:
    top, bottom, left, right = rect
    mask = np.zeros((height, width), bool)
    mask[top:bottom, left:right] = True
    return mask


def expected_cells(cells: int, per_cell: tuple[float, float],
                   rect: tuple[int, int, int, int] = RECT) -> tuple[np.ndarray, np.ndarray]:
    """Which cells of a cells x cells low-resolution frame the rectangle surely covers, and which it surely
    misses, when each cell stands for per_cell (rows, columns) pixels of the image from its top-left corner
    on. One pixel of margin either way: the cells the rectangle's edges cross are left undecided."""
    top, bottom, left, right = rect
    rows, cols = np.arange(cells) * per_cell[0], np.arange(cells) * per_cell[1]
    row_in = (rows >= top + 1) & (rows + per_cell[0] <= bottom - 1)
    col_in = (cols >= left + 1) & (cols + per_cell[1] <= right - 1)
    row_out = (rows + per_cell[0] <= top - 1) | (rows >= bottom + 1)
    col_out = (cols + per_cell[1] <= left - 1) | (cols >= right + 1)
    return row_in[:, None] & col_in[None, :], row_out[:, None] | col_out[None, :]


def assert_drawn(mask_input: np.ndarray, cells: int, per_cell: tuple[float, float]) -> None:
    assert mask_input.shape == (1, cells, cells) and mask_input.dtype == np.float32
    inside, outside = expected_cells(cells, per_cell)
    assert inside.sum() > 4 and outside.sum() > 4
    assert (mask_input[0][inside] > 0).all() and (mask_input[0][outside] < 0).all()
    assert np.abs(mask_input).max() == pytest.approx(MASK_LOGIT)


def sam_frame(side: int = 1024, low_res: int = 256):
    input_size = ResizeLongestSide.get_preprocess_shape(HEIGHT, WIDTH, side)
    cell = side // low_res
    per_cell = (cell * HEIGHT / input_size[0], cell * WIDTH / input_size[1])
    return (lambda mask: padded_frame(mask, input_size, side, low_res)), per_cell


def test_every_step_asks_for_three_masks():
    logits = ToolResult(np.zeros((HEIGHT, WIDTH), bool), 0.5, np.full((1, 256, 256), 3.0, np.float32))
    frame, _ = sam_frame()
    steps = {
        "a lone click": prompts([Click(10, 10, True)], None, None, frame),
        "several clicks": prompts([Click(10, 10, True), Click(50, 60, False)], None, None, frame),
        "a box": prompts([], (20, 15, 70, 60), None, frame),
        "the previous logits": prompts([Click(10, 10, True), Click(50, 60, False)], None, logits, frame),
        "a previous mask": prompts([Click(10, 10, False)], None, rectangle(), frame),
    }
    assert {kind: kwargs["multimask_output"] for kind, kwargs in steps.items()} == dict.fromkeys(steps, True)
    assert steps["the previous logits"]["mask_input"] is logits.state
    assert steps["a box"]["box"].tolist() == [20, 15, 70, 60] and steps["a box"]["point_coords"] is None


def test_the_best_rated_mask_is_kept_with_its_own_logits():
    masks = np.stack([np.full((4, 6), value) for value in (-1.0, 2.0, 0.0)])
    masks[1, 0, 0] = -5.0
    scores = np.array([0.3, 0.9, 0.6], np.float32)
    low_res = np.stack([np.full((8, 8), value, np.float32) for value in (1.0, 2.0, 3.0)])
    kept = best(masks, scores, low_res)
    assert kept.score == pytest.approx(0.9) and kept.state.shape == (1, 8, 8) and (kept.state == 2.0).all()
    assert kept.mask.sum() == 23 and not kept.mask[0, 0]
    assert best(masks, np.array([0.1, 0.2, 1.3]), low_res).score == 1.0  # a rating above 1 is clipped


def test_a_mask_is_drawn_into_sam_s_padded_square():
    frame, per_cell = sam_frame()
    as_image = prompts([], None, rectangle().astype(np.uint8) * 255, frame)["mask_input"]
    assert as_image is not None and np.abs(as_image).max() == pytest.approx(MASK_LOGIT)  # 0/255 reads as 0/1
    assert per_cell == pytest.approx((4 * HEIGHT / 614, 4 * WIDTH / 1024))  # 300 x 500 -> 614 x 1024, padded
    mask_input = prompts([Click(120, 80, True)], None, rectangle(), frame)["mask_input"]
    assert_drawn(mask_input, 256, per_cell)
    assert (mask_input[0, 154:] == -MASK_LOGIT).all()  # the padding below the image: nothing there
    assert mask_input[0, 153, 0] == -MASK_LOGIT and mask_input[0, 100, 100] == MASK_LOGIT


def test_a_mask_is_stretched_into_sam2_s_square():
    frame = lambda mask: stretched_frame(mask, 256)  # noqa: E731
    mask_input = prompts([Click(120, 80, True)], None, rectangle(), frame)["mask_input"]
    assert_drawn(mask_input, 256, (HEIGHT / 256, WIDTH / 256))
    assert mask_input[0, 200, 128] == MASK_LOGIT  # row 234 of 300: SAM's padded frame has it at row 114


def test_a_previous_mask_brings_its_deepest_point_as_the_first_click():
    mask = rectangle(rect=(60, 241, 159, 340))  # a square of 181 pixels
    assert anchor(mask, []) == Click(249.0, 150.0, True)  # its centre
    moved = anchor(mask, [Click(249, 150, False)])  # a negative click there counts as the mask's boundary
    assert moved is not None and moved.positive and mask[moved.pixel] and moved != Click(249.0, 150.0, True)
    assert anchor(np.zeros((HEIGHT, WIDTH), bool), []) is None
    frame, _ = sam_frame()
    kwargs = prompts([Click(10, 10, False)], None, mask, frame)
    assert kwargs["point_coords"].tolist() == [[249, 150], [10, 10]] and kwargs["point_labels"].tolist() == [1, 0]
    empty = prompts([Click(10, 10, True)], None, np.zeros((HEIGHT, WIDTH), bool), frame)
    assert empty["mask_input"] is None and empty["point_labels"].tolist() == [1]  # nothing to start from
