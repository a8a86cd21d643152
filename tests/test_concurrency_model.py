"""Concurrency in model/: requests that miss the tool's image cache together encode an image once, and
loading one LoRA adapter holds up neither the versions already loaded nor a second request for it.
Real threads through the real classes, each bounded in time."""
from __future__ import annotations

import threading
import time
from collections.abc import Callable

from model.core.clicks import Click
from model.tools import ImageCache, Segmenter
from model.tools.classical import ClassicalTool
from tests.synthetic import scene

THREADS = 8


def run_together(call: Callable[[int], object], count: int = THREADS, timeout: float = 30) -> list:
    """`call(i)` in `count` threads released at once; what each returned or raised."""
    start = threading.Barrier(count)
    outcomes: list = [None] * count

    def one(index: int) -> None:
        start.wait(timeout)
        try:
            outcomes[index] = call(index)
        except Exception as exc:
            outcomes[index] = exc

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    assert not any(thread.is_alive() for thread in threads), f"still waiting after {timeout} s"
    return outcomes


class SlowEncoder(ClassicalTool):
    """The CPU tool, with an encoder as slow as SAM's that counts its calls (and can fail its first)."""

    def __init__(self, seconds: float = 0.3, fail_first: bool = False, meet: threading.Barrier | None = None):
        super().__init__()
        self.seconds, self.fail_first, self.meet = seconds, fail_first, meet
        self.calls = 0
        self._count = threading.Lock()

    def encode(self, image):
        with self._count:
            self.calls += 1
            first = self.calls == 1
        if self.meet is not None:
            self.meet.wait(10)  # broken (an error) unless the other image encodes at the same time
        time.sleep(self.seconds)
        if first and self.fail_first:
            raise RuntimeError("the encoder ran out of memory")
        return super().encode(image)


def test_requests_missing_one_image_together_encode_it_once():
    tool = SlowEncoder()
    segmenter = Segmenter(tool, ImageCache(64 << 20))
    image, _ = scene(160, 120, seed=1)
    results = run_together(lambda i: segmenter.predict(image.copy(), [Click(80, 60, True)]))
    assert tool.calls == 1, f"{tool.calls} encodings of one image"
    assert all(r.mask.shape == (120, 160) for r in results)
    assert (segmenter.cache.misses, segmenter.cache.hits) == (1, THREADS - 1)


def test_different_images_encode_at_the_same_time():
    tool = SlowEncoder(seconds=0, meet=threading.Barrier(2))
    segmenter = Segmenter(tool, ImageCache(64 << 20))
    images = [scene(160, 120, seed=seed)[0] for seed in (1, 2)]
    encoded = run_together(lambda i: segmenter.encode(images[i]), count=2)
    assert [e.shape for e in encoded] == [(120, 160), (120, 160)], encoded
    assert tool.calls == 2


def test_a_failed_encoding_is_not_kept_and_the_waiters_do_not_hang():
    tool = SlowEncoder(fail_first=True)
    segmenter = Segmenter(tool, ImageCache(64 << 20))
    image, _ = scene(160, 120, seed=3)
    outcomes = run_together(lambda i: segmenter.encode(image))
    errors = [o for o in outcomes if isinstance(o, Exception)]
    assert errors and all(isinstance(e, RuntimeError) and "out of memory" in str(e) for e in errors)
    assert all(o.shape == (120, 160) for o in outcomes if o not in errors)
    assert tool.calls == 1 + (len(errors) < THREADS)  # one failed encoding, then at most one that worked
    assert segmenter.encode(image).shape == (120, 160)  # the failure was not cached
    assert len(segmenter.cache) == 1


def test_an_encoding_larger_than_the_whole_cache_answers_but_is_not_kept():
    segmenter = Segmenter(SlowEncoder(seconds=0), ImageCache(max_bytes=10))
    image, _ = scene(160, 120, seed=4)
    assert segmenter.predict(image, [Click(80, 60, True)]).mask.shape == (120, 160)
    assert segmenter.cache.size_bytes <= 10 and len(segmenter.cache) == 0  # the bound holds
