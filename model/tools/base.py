"""The protocol every interactive segmentation tool follows, and the image cache they share.

A tool first encodes an image (the expensive part: an image embedding for SAM, colour statistics for
the CPU tool), then turns clicks, an optional box and the previous step's output into a mask (cheap).
`Segmenter` puts the two together behind an LRU cache keyed by image content, so interactive requests
and agent steps on one image encode it once; a deep tool's encoding is also kept on disk (embedding_store.py),
for the other processes and the next start.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
from cachetools import LRUCache, cached

from model.core.clicks import Click
from model.core.imageio import as_rgb_uint8, image_digest

if TYPE_CHECKING:
    from model.tools.embedding_store import EmbeddingStore

Box = tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels


@dataclass
class ToolResult:
    mask: np.ndarray  # bool (H, W)
    score: float  # the tool's own confidence in [0, 1]
    state: Any = None  # what the next step can reuse (SAM's low-resolution logits)


@dataclass
class Instance:
    """One instance of a phrase a concept tool (SAM 3) found: its mask, its score and its box."""

    mask: np.ndarray  # bool (H, W), at the image's size
    score: float  # in [0, 1]: SAM 3's presence score times this instance's detection probability
    box: Box  # in pixels


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


@runtime_checkable
class StorableTool(Protocol):
    """A tool whose encodings the embedding store can keep: its model's identity (what changes when its weights
    or its config change) and its encoding as plain arrays, and back on the tool's device."""

    name: str
    model_id: str

    def encoded_arrays(self, encoded: Encoded) -> dict[str, np.ndarray]: ...

    def encoded_from_arrays(self, arrays: dict[str, np.ndarray], shape: tuple[int, int]) -> Encoded: ...


class ImageCache:
    """A thread-safe LRU of encoded images, bounded in bytes, with hit and miss counts. Requests that miss
    one image together wait for one encoding (cachetools' single flight: a key is pending while it encodes);
    different images encode at the same time. An encoding that fails is not kept: its caller gets the
    error and the next caller waiting encodes again. One encoding larger than the bound is not kept."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._items: LRUCache[str, Encoded] = LRUCache(max_bytes, getsizeof=lambda encoded: encoded.nbytes)
        self._get = cached(self._items, key=lambda key, compute: key, condition=threading.Condition(), info=True)(
            lambda key, compute: compute())  # the lock is held only around the cache, never while encoding

    @property
    def hits(self) -> int:
        return self._get.cache_info().hits

    @property
    def misses(self) -> int:
        return self._get.cache_info().misses

    @property
    def size_bytes(self) -> int:
        return int(self._items.currsize)

    def __len__(self) -> int:
        return len(self._items)

    def get_or_compute(self, key: str, compute: Callable[[], Encoded]) -> Encoded:
        return self._get(key, compute)


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
    """A tool with its image cache, and for a storable tool the embedding store: what the backend and the agent
    call. An image's encoding comes from memory, else from the store, else from the tool (then kept in both)."""

    def __init__(self, tool: Tool, cache: ImageCache, store: EmbeddingStore | None = None):
        self.tool = tool
        self.cache = cache
        self.store = store if isinstance(tool, StorableTool) else None

    @property
    def name(self) -> str:
        return self.tool.name

    def encode(self, image: np.ndarray) -> Encoded:
        image = as_rgb_uint8(image)
        digest = image_digest(image)
        return self.cache.get_or_compute(f"{self.tool.name}:{digest}", lambda: self._stored_or_encoded(image, digest))

    def _stored_or_encoded(self, image: np.ndarray, digest: str) -> Encoded:
        tool, store = self.tool, self.store
        if store is None or not isinstance(tool, StorableTool):
            return self.tool.encode(image)
        key = store.key(tool.name, tool.model_id, digest)
        stored = store.load(key, lambda arrays: tool.encoded_from_arrays(arrays, image.shape[:2]))
        if stored is not None:
            return stored
        encoded = self.tool.encode(image)
        store.put(key, tool.encoded_arrays(encoded))
        return encoded

    @property
    def supports_concepts(self) -> bool:
        """Whether the tool finds every instance of a phrase (find_instances)."""
        return callable(getattr(self.tool, "find_instances", None))

    def find_instances(self, image: np.ndarray | Encoded, phrase: str, threshold: float = 0.5) -> list[Instance]:
        """Every instance of the phrase the tool scores above threshold, the highest scored first."""
        find: Callable[[Encoded, str, float], list[Instance]] | None = getattr(self.tool, "find_instances", None)
        if find is None:
            raise ToolInputError(f"the {self.name} tool finds no instances of a phrase (sam3 does)")
        if not phrase.strip():
            raise ToolInputError("the phrase to look for is empty")
        if not 0.0 <= threshold <= 1.0:
            raise ToolInputError(f"the threshold is {threshold}, not within [0, 1]")
        encoded = image if isinstance(image, Encoded) else self.encode(image)
        return find(encoded, phrase.strip(), threshold)

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
