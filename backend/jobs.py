"""Background work off the request path, in order: one worker thread, with counts /status can show."""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

log = logging.getLogger(__name__)


class BackgroundJobs:
    def __init__(self, name: str):
        self.name = name
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=name)
        self._lock = threading.Lock()
        self.pending = 0
        self.done = 0
        self.failed = 0
        self.last_error: str | None = None

    def submit(self, function: Callable, *args) -> Future:
        with self._lock:
            self.pending += 1
        return self._pool.submit(self._run, function, *args)

    def _run(self, function: Callable, *args) -> None:
        try:
            function(*args)
            with self._lock:
                self.done += 1
        except Exception as exc:  # a failed job is counted and logged; the server goes on
            log.exception("%s job failed", self.name)
            with self._lock:
                self.failed += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
        finally:
            with self._lock:
                self.pending -= 1

    def close(self) -> None:
        """Finish what is queued, then stop the thread."""
        self._pool.shutdown(wait=True)

    def status(self) -> dict:
        return {"pending": self.pending, "done": self.done, "failed": self.failed, "last_error": self.last_error}
