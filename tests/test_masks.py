import numpy as np
import pytest

from model.core.clicks import Click
from model.core.imageio import ImageError, as_rgb_uint8, decode_image, image_digest
from model.core.masks import (
    components_touching,
    fill_holes,
    iou,
    polygons_to_mask,
    render_overlay,
    rle_decode,
    rle_encode,
)
from tests.synthetic import png_bytes


def test_iou_ignores_the_unknown_band():
    target = np.zeros((10, 10), bool)
    target[2:8, 2:8] = True
    pred = np.zeros_like(target)
    pred[2:8, 2:9] = True  # one extra column
    band = np.zeros_like(target)
    band[:, 8] = True
    assert iou(pred, target) == pytest.approx(36 / 42)
    assert iou(pred, target, band) == 1.0
    assert iou(np.zeros_like(target), np.zeros_like(target)) == 1.0


def test_rle_round_trip_and_uncompressed_counts():
    rng = np.random.default_rng(0)
    mask = rng.random((37, 53)) > 0.6
    assert (rle_decode(rle_encode(mask)) == mask).all()
    uncompressed = {"size": [2, 3], "counts": [1, 2, 3]}  # column-major: 1 off, 2 on, 3 off
    decoded = rle_decode(uncompressed)
    assert decoded.T.ravel().tolist() == [False, True, True, False, False, False]


def test_polygons_boxes_and_components():
    square = polygons_to_mask([[10, 10, 30, 10, 30, 30, 10, 30]], 40, 40)
    assert square.sum() == 400 and square[10:30, 10:30].all()
    two = np.zeros((20, 20), bool)
    two[1:5, 1:5] = True
    two[10:15, 10:15] = True
    kept = components_touching(two, [Click(12, 12, True)])
    assert kept.sum() == 25 and not kept[2, 2]


def test_fill_holes_keeps_holes_under_negative_clicks():
    ring = np.ones((30, 30), bool)
    ring[10:20, 10:20] = False
    assert fill_holes(ring).all()
    kept_open = fill_holes(ring, keep_open=[Click(15, 15, False)])
    assert not kept_open[15, 15]


def test_overlay_tints_only_the_mask():
    image = np.full((4, 4, 3), 100, np.uint8)
    mask = np.zeros((4, 4), bool)
    mask[0, 0] = True
    out = render_overlay(image, mask, (0, 255, 0), 0.5)
    assert tuple(out[0, 0]) == (50, 177, 50)  # 177.5 truncated, as SegAgent draws it and tuple(out[1, 1]) == (100, 100, 100)


@pytest.mark.parametrize("array", [
    np.zeros((5, 6), np.uint8),  # grayscale
    np.zeros((5, 6, 4), np.uint8),  # RGBA
    np.full((5, 6, 3), 65535, np.uint16),  # 16-bit
    np.ones((5, 6), np.float32),  # float in [0, 1]
    np.zeros((5, 6, 2), np.uint8),  # gray + alpha
])
def test_any_image_becomes_rgb_uint8(array):
    rgb = as_rgb_uint8(array)
    assert rgb.shape == (5, 6, 3) and rgb.dtype == np.uint8
    if array.dtype == np.uint16:
        assert rgb.max() == 255


def test_decode_refuses_bombs_and_garbage():
    with pytest.raises(ImageError, match="not a readable image"):
        decode_image(b"garbage")
    with pytest.raises(ImageError, match="more than"):
        decode_image(png_bytes(np.zeros((100, 100), np.uint8)), max_pixels=5000)
    gray16 = decode_image(png_bytes(np.zeros((3, 3), np.uint8)))
    assert gray16.shape == (3, 3, 3)


def test_digest_depends_on_content_only():
    a = np.zeros((3, 3, 3), np.uint8)
    assert image_digest(a) == image_digest(a.copy())
    b = a.copy()
    b[0, 0, 0] = 1
    assert image_digest(a) != image_digest(b)
