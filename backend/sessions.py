"""Interactive sessions: the clicks placed on one object, remembered across predict requests.

Label Studio sends either every smart keypoint of the object with each request, or only the newest.
Both refine the same mask: a request whose clicks extend the remembered ones continues the session,
and a request with a single new click is appended to it. A session ends after a time without clicks.
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from model.core.clicks import Click
from model.tools import ToolResult

MAX_SESSIONS = 1000


@dataclass
class Session:
    clicks: list[Click] = field(default_factory=list)
    box: tuple | None = None
    result: ToolResult | None = None
    touched: float = 0.0


class Sessions:
    def __init__(self, ttl: float):
        self.ttl = ttl
        self._items: OrderedDict[tuple, Session] = OrderedDict()
        self._lock = threading.Lock()

    def resolve(self, key: tuple, clicks: list[Click], box) -> tuple[list[Click], ToolResult | None]:
        """All clicks of the object so far, and the previous result to refine (None to start afresh)."""
        with self._lock:
            session = self._items.get(key)
            if session is None or session.touched + self.ttl < time.time() or session.box != box:
                return clicks, None
            known = session.clicks
            if clicks[:len(known)] == known:
                return clicks, session.result  # the request carries the whole history
            if len(clicks) == 1 and clicks[0] not in known:
                return known + clicks, session.result  # only the newest click came
            return clicks, None

    def remember(self, key: tuple, clicks: list[Click], box, result: ToolResult) -> None:
        with self._lock:
            self._items[key] = Session(list(clicks), box, result, time.time())
            self._items.move_to_end(key)
            while len(self._items) > MAX_SESSIONS:
                self._items.popitem(last=False)
