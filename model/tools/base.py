"""The protocol every interactive segmentation tool follows, and the image cache they share.

A tool first encodes an image (the expensive part: an image embedding for SAM, colour statistics for
the CPU tool), then turns clicks, an optional box and the previous step's output into a mask (cheap).
`Segmenter` puts the two together behind an LRU cache keyed by image content, so interactive requests
and agent steps on one image encode it once.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from model.core.clicks import Click
from model.core.imageio import as_rgb_uint8, image_digest

Box = tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels


@dataclass
class ToolResult:
    mask: np.ndarray  # bool (H, W)
    score: float  # the tool's own confidence in [0, 1]
    state: Any = None  # what the next step can reuse (SAM's low-resolution logits)


@dataclass
class Encoded:
    """An encoded image: what a tool computed once per image, and how many bytes it holds."""

    shape: tuple[int, int]
    data: Any
    nbytes: int


class Tool(Protocol):
    name: str

    def encode(self, image: np.ndarray) -> Encoded: ...

    def predict(
        self,
        encoded: Encoded,
        clicks: Sequence[Click],
        box: Box | None = None,
        previous: ToolResult | np.ndarray | None = None,
    ) -> ToolResult: ...


class ImageCache:
    """A thread-safe LRU of encoded images, bounded in bytes, with hit and miss counts."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.hits = 0
        self.misses = 0
        self._items: OrderedDict[str, Encoded] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)

    def get_or_compute(self, key: str, compute: Callable[[], Encoded]) -> Encoded:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                self.hits += 1
                return self._items[key]
            self.misses += 1
        encoded = compute()  # outside the lock: encoding can take seconds
        with self._lock:
            if key not in self._items:
                self._items[key] = encoded
                self._bytes += encoded.nbytes
            while self._bytes > self.max_bytes and len(self._items) > 1:
                _, evicted = self._items.popitem(last=False)
                self._bytes -= evicted.nbytes
        return encoded


class ToolInputError(ValueError):
    """What the tool was asked cannot be done: clicks outside the image, nothing to start from."""


def validate_clicks(clicks: Sequence[Click], shape: tuple[int, int]) -> list[Click]:
    """Refuse clicks outside the image: a click there is a bug upstream, not something to guess at."""
    height, width = shape
    outside = [c for c in clicks if not c.inside(width, height)]
    if outside:
        raise ToolInputError(f"clicks outside the {width} x {height} image: {outside}")
    return list(clicks)


class Segmenter:
    """A tool with its image cache: what the backend and the agent call."""

    def __init__(self, tool: Tool, cache: ImageCache):
        self.tool = tool
        self.cache = cache

    @property
    def name(self) -> str:
        return self.tool.name

    def encode(self, image: np.ndarray) -> Encoded:
        image = as_rgb_uint8(image)
        return self.cache.get_or_compute(f"{self.tool.name}:{image_digest(image)}", lambda: self.tool.encode(image))

    def predict(
        self,
        image: np.ndarray | Encoded,
        clicks: Sequence[Click] = (),
        box: Box | None = None,
        previous: ToolResult | np.ndarray | None = None,
    ) -> ToolResult:
        encoded = image if isinstance(image, Encoded) else self.encode(image)
        clicks = validate_clicks(clicks, encoded.shape)
        if not clicks and box is None:
            raise ToolInputError("a prediction needs at least one click or a box")
        if isinstance(previous, np.ndarray) and previous.shape != encoded.shape:
            raise ToolInputError(f"previous mask is {previous.shape}, image is {encoded.shape}")
        return self.tool.predict(encoded, clicks, box, previous)
