"""Our numpy brush RLE writes the very bytes label_studio_sdk's `brush.mask2rle` writes (Label Studio's editor
decodes them), for any mask: runs of every size class, each class's edges, and runs longer than 2^16 values."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from label_studio_sdk.converter import brush

from backend.labelstudio.brush_rle import mask_to_rle


def _sdk(mask: np.ndarray) -> list[int]:
    return brush.mask2rle(mask.astype(np.uint8) * 255)


@pytest.mark.parametrize("run", [1, 2, 4, 5, 16, 17, 64, 65, 16383, 16384, 16385, 32768, 32769, 49153])
def test_a_run_of_every_class_and_edge(run):
    line = np.zeros((1, run + 10), bool)
    line[0, 5:5 + run] = True  # 4 values a pixel: runs of 4 * run values
    assert mask_to_rle(line) == _sdk(line)
    assert mask_to_rle(~line) == _sdk(~line)


@pytest.mark.parametrize("shape", [(1, 1), (3, 3), (300, 300), (241, 333)])
def test_empty_and_full_masks(shape):
    for mask in (np.zeros(shape, bool), np.ones(shape, bool)):
        assert mask_to_rle(mask) == _sdk(mask)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 60), st.integers(1, 60), st.floats(0.0, 1.0), st.integers(0, 2 ** 31))
def test_random_masks(height, width, density, seed):
    mask = np.random.default_rng(seed).random((height, width)) < density
    assert mask_to_rle(mask) == _sdk(mask)


def test_it_decodes_back_to_the_mask():
    mask = np.zeros((240, 320), bool)
    mask[40:200, 60:300] = True
    decoded = brush.decode_rle(mask_to_rle(mask)).reshape(240, 320, 4)[:, :, 3] > 0
    assert np.array_equal(decoded, mask)
