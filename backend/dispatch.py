"""Where background work runs, decided here and nowhere else: in this process (a pool of low-priority threads
per kind of work), or in RQ workers when REDIS_URL is set (`segagent-worker`, backend/worker.py, which builds
the models once per process). Work is named by its kind and plain arguments, never by a function or an object,
so the same submission runs in either place: the composition root registers each kind's handler here, and a
worker registers the same handlers, built from the same settings.

Kinds: `preannotate` (one task of a project, for one model version), `annotation` (the derived work an
annotation owes: quality, write-back, trajectories), `train` (one training job). The durable stores stay the
record of what is owed (the pre-annotation queue, the annotation store, the registry's job files): a job that
finds its work done, taken or deleted does nothing, so a submission may be repeated safely."""
from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal, Protocol

log = logging.getLogger(__name__)

Kind = Literal["preannotate", "annotation", "train"]
KINDS: tuple[Kind, ...] = ("preannotate", "annotation", "train")
QUEUES: dict[Kind, str] = {"preannotate": "segagent-preannotation", "annotation": "segagent-annotations",
                           "train": "segagent-training"}
Handler = Callable[..., Any]
# Kinds run in a daemon thread each, never waited for: a training job waits for its own process, which runs in
# a session of its own and outlives this one, so neither a close nor the interpreter's exit may wait for it.
DETACHED: tuple[Kind, ...] = ("train",)
BACKGROUND_NICE = 10


def lower_this_thread_priority() -> None:
    """Background threads run at a lower CPU priority than request threads, so that learning from a burst of
    annotations does not slow the clicks (on Linux a thread has a nice value of its own, and a process it
    starts inherits it)."""
    with contextlib.suppress(OSError, AttributeError):  # not Linux, or not allowed: the thread runs as it is
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BACKGROUND_NICE)


@dataclass
class Counts:
    pending: int = 0
    done: int = 0
    failed: int = 0
    last_error: str | None = None

    def view(self) -> dict:
        return {"pending": self.pending, "done": self.done, "failed": self.failed, "last_error": self.last_error}


class Dispatcher(Protocol):
    name: str

    def register(self, kind: Kind, handler: Handler) -> None:
        """What runs a kind of work here (a worker process registers its own)."""

    def submit(self, kind: Kind, *args: Any, delay: float = 0.0, job_id: str | None = None,
               timeout: float | None = None) -> None:
        """Run the work now or after `delay` seconds; raises when it cannot be handed over."""

    def job_state(self, job_id: str) -> str | None:
        """What the runner says of a job submitted with that id ("gone" when it knows nothing of it), or None
        when it cannot tell."""

    def status(self) -> dict:
        """The runner's name and, per kind, what it knows of the work."""

    def close(self) -> None:
        """Let the work under way finish; drop what waits (the stores say what is still owed)."""


@dataclass
class InProcess:
    """Thread pools in this process, one per kind, at a lower CPU priority than the request threads (so learning
    from a burst of annotations does not slow the clicks). Annotation work runs one at a time, in order;
    a training job runs in a daemon thread of its own (DETACHED)."""

    workers: dict[Kind, int]
    name: str = "process"
    _handlers: dict[Kind, Handler] = field(default_factory=dict)
    _counts: dict[Kind, Counts] = field(default_factory=lambda: {kind: Counts() for kind in KINDS})
    _timers: set[threading.Timer] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _closed: bool = False

    def __post_init__(self) -> None:
        self._pools = {kind: ThreadPoolExecutor(self.workers.get(kind, 1), thread_name_prefix=kind,
                                                initializer=lower_this_thread_priority)
                       for kind in KINDS if kind not in DETACHED}

    def register(self, kind: Kind, handler: Handler) -> None:
        self._handlers[kind] = handler

    def submit(self, kind: Kind, *args: Any, delay: float = 0.0, job_id: str | None = None,
               timeout: float | None = None) -> None:
        with self._lock:
            if self._closed:
                return  # shutting down: the stores keep what is owed for the next start
            if delay > 0:
                timer = threading.Timer(delay, self._after_delay, args=(kind, args))
                timer.daemon = True
                self._timers.add(timer)
                timer.start()
                return
            self._counts[kind].pending += 1
            if kind in DETACHED:
                threading.Thread(target=self._run_detached, args=(kind, args), daemon=True, name=kind).start()
            else:
                self._pools[kind].submit(self._run, kind, args)  # under the lock: close() cannot come in between

    def _after_delay(self, kind: Kind, args: tuple) -> None:
        with self._lock:
            self._timers = {timer for timer in self._timers if timer.is_alive()}
        self.submit(kind, *args)

    def _run_detached(self, kind: Kind, args: tuple) -> None:
        lower_this_thread_priority()
        self._run(kind, args)

    def _run(self, kind: Kind, args: tuple) -> None:
        counts = self._counts[kind]
        try:
            self._handlers[kind](*args)
            with self._lock:
                counts.done += 1
        except Exception as exc:  # a failed job is counted and logged; the stores say whether it is owed still
            log.exception("%s job failed", kind)
            with self._lock:
                counts.failed += 1
                counts.last_error = f"{type(exc).__name__}: {exc}"
        finally:
            with self._lock:
                counts.pending -= 1

    def job_state(self, job_id: str) -> str | None:
        return None  # this process's jobs are known by their processes (training_runs.process_ended)

    def status(self) -> dict:
        with self._lock:
            return {"runner": self.name, **{kind: counts.view() for kind, counts in self._counts.items()}}

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for timer in self._timers:
                timer.cancel()
        for pool in self._pools.values():
            pool.shutdown(wait=True, cancel_futures=True)


class Rq:
    """RQ queues in Redis, one per kind, run by `segagent-worker` (backend/worker.py). A delayed job waits in
    RQ's scheduler, which the worker runs."""

    name = "rq"

    def __init__(self, redis_url: str, timeouts: dict[Kind, float]):
        from redis import Redis
        from rq import Queue

        connection = Redis.from_url(redis_url)
        self.queues = {kind: Queue(QUEUES[kind], connection=connection) for kind in KINDS}
        self.timeouts = timeouts

    def register(self, kind: Kind, handler: Handler) -> None:
        """Nothing runs here: the workers register their own handlers."""

    def submit(self, kind: Kind, *args: Any, delay: float = 0.0, job_id: str | None = None,
               timeout: float | None = None) -> None:
        options = {"job_id": job_id, "job_timeout": int(timeout or self.timeouts[kind]), "result_ttl": 86400,
                   "failure_ttl": 7 * 86400}
        queue = self.queues[kind]
        if delay > 0:
            queue.enqueue_in(timedelta(seconds=delay), "backend.worker.perform", kind, *args, **options)
        else:
            queue.enqueue("backend.worker.perform", kind, *args, **options)

    def job_state(self, job_id: str) -> str | None:
        """RQ's word for a job ("queued", "started", "failed", ...), "gone" when Redis no longer has it, None
        when Redis cannot be asked."""
        from redis.exceptions import RedisError
        from rq.exceptions import NoSuchJobError
        from rq.job import Job

        try:
            return str(Job.fetch(job_id, connection=self.queues["train"].connection).get_status().value)
        except NoSuchJobError:
            return "gone"
        except RedisError:
            return None

    def status(self) -> dict:
        from redis.exceptions import RedisError

        try:
            return {"runner": self.name, **{kind: {"queued": queue.count} for kind, queue in self.queues.items()}}
        except RedisError as exc:
            return {"runner": self.name, "error": f"Redis unreachable: {type(exc).__name__}"}

    def close(self) -> None:
        self.queues["train"].connection.close()
