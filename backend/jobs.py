"""Background work off the request path, in order: one worker thread, with counts /status can show.
Background threads run at a lower CPU priority than request threads, so that learning from a burst of
annotations does not slow the clicks (on Linux a thread has a nice value of its own)."""
from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

log = logging.getLogger(__name__)
BACKGROUND_NICE = 10


def lower_this_thread_priority() -> None:
    with contextlib.suppress(OSError, AttributeError):  # not Linux, or not allowed: the thread runs as it is
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BACKGROUND_NICE)


class BackgroundJobs:
    def __init__(self, name: str):
        self.name = name
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=name, initializer=lower_this_thread_priority)
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
        """Let the job under way finish; drop the rest (what must not be lost is owed in the store and
        resumed at the next start)."""
        self._pool.shutdown(wait=True, cancel_futures=True)

    def status(self) -> dict:
        return {"pending": self.pending, "done": self.done, "failed": self.failed, "last_error": self.last_error}
