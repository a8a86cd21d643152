"""Decoding task images holds memory for their pixels (up to about 8 bytes a pixel, tests/test_image_modes.py):
the fetcher decodes at most DECODING_BUDGET times the pixel limit at once, whatever number of requests and
background jobs fetch images, with real threads fetching from a loopback file server."""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from backend import images
from backend.errors import ImageUnavailable
from backend.images import DECODING_BUDGET, PixelBudget
from tests.synthetic import FileServer, png_bytes
from tests.test_backend import make_app


def test_no_more_pixels_are_decoded_at_once_than_the_budget(tmp_path, monkeypatch):
    (tmp_path / "photo.png").write_bytes(png_bytes(np.zeros((100, 100, 3), np.uint8)))
    decoding, most, lock = [0], [0], threading.Lock()
    real_decode = images.decode_image

    def observed_decode(data, max_pixels):
        with lock:
            decoding[0] += 100 * 100
            most[0] = max(most[0], decoding[0])
        time.sleep(0.2)  # long enough for the other threads to come
        try:
            return real_decode(data, max_pixels)
        finally:
            with lock:
                decoding[0] -= 100 * 100

    monkeypatch.setattr(images, "decode_image", observed_decode)
    fetcher = make_app(tmp_path / "data", max_image_pixels=100 * 100).backend.fetcher
    with FileServer(tmp_path) as server, ThreadPoolExecutor(6) as pool:
        # distinct URLs of one file: nothing is answered from the URL cache
        fetched = list(pool.map(lambda n: fetcher.fetch(f"{server.url}/photo.png?n={n}"), range(6)))
    assert all(image.shape == (100, 100, 3) for image in fetched)
    assert most[0] == DECODING_BUDGET * 100 * 100


def test_a_decode_that_never_fits_fails_after_the_fetch_timeout():
    budget = PixelBudget(100)
    with budget.reserve(80, 1.0, "first"):
        started = time.monotonic()
        with pytest.raises(ImageUnavailable, match="too many images being decoded"), budget.reserve(30, 0.3, "second"):
            pass
        assert 0.3 <= time.monotonic() - started < 2
        with budget.reserve(20, 0.3, "third"):  # what fits goes on
            assert budget.used == 100
    assert budget.used == 0
