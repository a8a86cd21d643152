"""Pre-annotation in RQ workers (REDIS_URL): the web process queues a task in its durable queue and hands
it to Redis; `rq worker segagent-preannotation` (the compose `worker` service listens to it too) builds
what predicting needs once per process, from the same settings (Label Studio's address and token come
from its environment: LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY), and runs the task. The durable queue,
on the shared data volume, stays the record of what is done: a job whose task is done, failed or taken
elsewhere does nothing."""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .preannotation import Preannotator
    from .preannotation_queue import Item

QUEUE = "segagent-preannotation"
JOB_TIMEOUT = 600
_worker: Preannotator | None = None  # built once per RQ worker process


def rq_queue(redis_url: str) -> Any:
    from redis import Redis
    from rq import Queue

    return Queue(QUEUE, connection=Redis.from_url(redis_url))


def enqueue(queue: Any, item: Item) -> None:
    queue.enqueue(run_task, item.project, item.task_id, item.model_version, job_timeout=JOB_TIMEOUT,
                  result_ttl=86400, failure_ttl=7 * 86400)


def run_task(project: str, task_id: int, model_version: str) -> str:
    """The RQ job: the task, tried up to MAX_ATTEMPTS times with growing waits."""
    from .preannotation_queue import MAX_ATTEMPTS

    worker = _preannotator()
    for _ in range(MAX_ATTEMPTS):
        item = worker.queue.claim(project, task_id, model_version)
        if item is None:
            return "not queued: done, failed or taken by another worker"
        if worker.run(item):
            return "finished"
        time.sleep(min(2.0 ** (item.attempts + 1), 30.0))
    return "left queued for a later attempt"


def _preannotator() -> Preannotator:
    global _worker
    if _worker is None:
        from model.settings import Settings

        from .container import Predicting
        from .metrics import Metrics

        settings = Settings()
        _worker = Predicting.build(settings, Metrics()).preannotator(settings, local_workers=False)
    return _worker
