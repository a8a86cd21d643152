"""Interactive sessions: the clicks placed on one object, remembered across predict requests.

Label Studio sends either every smart keypoint of the object with each request, or only the newest.
Both refine the same mask: a request whose clicks extend the remembered ones continues the session,
and a request with a single new click is appended to it. A session ends after a time without clicks.

Each session keeps its last mask (and the tool's state), which on a large image is tens of megabytes:
the sessions live within a byte budget, the least recently used evicted first.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np
from cachetools import TLRUCache

from model.core.clicks import Click
from model.tools import ToolResult

Key = tuple[str, int | None, str, str]  # project, task, brush tag, label


@dataclass
class Session:
    clicks: list[Click] = field(default_factory=list)
    box: tuple[float, float, float, float] | None = None
    result: ToolResult | None = None

    @property
    def nbytes(self) -> int:
        held = 256 + 32 * len(self.clicks)
        if self.result is not None:
            held += self.result.mask.nbytes
            state = self.result.state
            held += state.nbytes if isinstance(state, np.ndarray) else 0
        return held


class Sessions:
    def __init__(self, ttl: float, max_bytes: int):
        self.ttl = ttl
        self._items: TLRUCache[Key, Session] = TLRUCache(
            maxsize=max(max_bytes, 1), ttu=lambda _key, _session, now: now + ttl,
            getsizeof=lambda session: session.nbytes)
        self._lock = threading.Lock()
        self.hits = 0  # requests that continued a session
        self.misses = 0

    @property
    def size_bytes(self) -> int:
        with self._lock:
            return int(self._items.currsize)

    def __len__(self) -> int:
        with self._lock:
            self._items.expire()
            return len(self._items)

    def resolve(self, key: Key, clicks: list[Click], box) -> tuple[list[Click], ToolResult | None]:
        """All clicks of the object so far, and the previous result to refine (None to start afresh)."""
        with self._lock:
            session = self._items.get(key)
            if session is None or session.box != box:
                self.misses += 1
                return clicks, None
            self.hits += 1
        known = session.clicks
        if clicks[:len(known)] == known:
            return clicks, session.result  # the request carries the whole history
        if len(clicks) == 1 and clicks[0] not in known:
            return known + clicks, session.result  # only the newest click came
        return clicks, None

    def remember(self, key: Key, clicks: list[Click], box, result: ToolResult) -> None:
        session = Session(list(clicks), box, result)
        with self._lock:
            self._items.pop(key, None)
            if session.nbytes <= self._items.maxsize:  # a session larger than the whole budget is not kept
                self._items[key] = session
