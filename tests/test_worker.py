"""`segagent-worker`, the one worker entry point: with REDIS_URL the web process hands an annotation's derived
work to Redis, and a real worker process (against a real redis-server on loopback) runs it with the backend's
components built once for all its jobs."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from model.settings import Settings
from tests.apps import App
from tests.test_backend import _annotation_for, _wait_for

WORKER = Path(sys.executable).with_name("segagent-worker")


def _worker(redis_url: str, data: Path, *kinds: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "SEGAGENT_DATA_DIR": str(data), "SEGAGENT_BANNED_SUBNETS": "169.254.0.0/16",
           "REDIS_URL": redis_url}
    return subprocess.run([str(WORKER), *kinds, "--burst"], env=env, capture_output=True, text=True, timeout=timeout)


def _results(redis_url: str, queue_name: str) -> list[dict]:
    from redis import Redis
    from rq import Queue
    from rq.job import Job

    queue = Queue(queue_name, connection=Redis.from_url(redis_url))
    ids = queue.finished_job_registry.get_job_ids()
    return [Job.fetch(job_id, connection=queue.connection).return_value() for job_id in ids]


def test_a_worker_runs_three_jobs_and_builds_the_backend_once(tmp_path, image_server, redis_url):
    app = App(Settings(data_dir=tmp_path, banned_subnets="169.254.0.0/16", redis_url=redis_url))
    for annotation_id in (61, 62, 63):
        payload = _annotation_for(image_server, annotation_id=annotation_id, task_id=annotation_id)
        assert app.client.post("/webhook", json=payload).json["status"] == "ok"
    status = app.client.get("/status").json
    assert status["background_jobs"]["runner"] == "rq" and status["background_jobs"]["annotation"]["queued"] == 3
    assert status["trajectories"]["total"] == 0  # nothing runs in the web process

    worker = _worker(redis_url, tmp_path, "annotation")
    assert worker.returncode == 0, worker.stderr[-3000:]
    results = _results(redis_url, "segagent-annotations")
    assert len(results) == 3
    assert {result["pid"] for result in results} == {results[0]["pid"]} and {r["built"] for r in results} == {1}
    assert worker.stderr.count("the backend is built") == 1
    assert _wait_for(lambda: app.client.get("/status").json["trajectories"]["total"] == 3)
    assert app.client.get("/status").json["derived_work"]["pending"] == 0


def test_the_worker_refuses_to_start_without_redis_or_with_an_unknown_kind():
    refused = subprocess.run([str(WORKER)], env={k: v for k, v in os.environ.items() if k != "REDIS_URL"},
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "REDIS_URL" in refused.stderr
    wrong = subprocess.run([str(WORKER), "painting"], capture_output=True, text=True, timeout=60)
    assert wrong.returncode == 2 and "unknown kinds of work painting" in wrong.stderr
