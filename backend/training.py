"""Training jobs off the request path: a worker process of their own by default (`python -m
model.flywheel.job`), or an RQ queue in Redis when REDIS_URL is set (the compose file's `worker` service
runs them). Either way the job writes its state into the registry's job file, which is what /status
and /job_status read; a job that dies without saying so is reported as failed."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from model.flywheel.job import JobSpec
from model.flywheel.registry import Registry, this_host
from model.settings import Settings

log = logging.getLogger(__name__)

QUEUE = "segagent-training"
ACTIVE_STATES = ("queued", "running")
LOST_AFTER = 900.0  # seconds without a heartbeat before a job on another machine counts as lost


class TrainingLauncher:
    def __init__(self, settings: Settings, registry: Registry):
        self.settings = settings
        self.registry = registry
        self._processes: dict[str, subprocess.Popen] = {}
        self._lock = threading.RLock()  # queue() looks at the running jobs while it holds it
        self._queue = None
        if settings.redis_url:
            from redis import Redis
            from rq import Queue

            self._queue = Queue(QUEUE, connection=Redis.from_url(settings.redis_url))

    @property
    def runner(self) -> str:
        return "rq" if self._queue is not None else "process"

    def spec(self, scope: str, job_id: str) -> JobSpec:
        return JobSpec(scope=scope, job_id=job_id, settings=self.settings)

    def queue(self, scope: str, trigger: str, through_id: int) -> tuple[dict, bool]:
        """(the job, whether it is new): a scope's job already queued or running is answered instead of a second."""
        with self._lock:
            current = self.active_job(scope)
            if current is not None:
                return current, False
            job_id = self.registry.new_job_id(scope)
            job = self.registry.write_job(job_id, state="queued", trigger=trigger, through_id=through_id,
                                          runner=self.runner, host=this_host(), owner=os.getpid())
            log.info("training job %s queued (%s)", job_id, trigger)
            return job, True

    def start(self, job_id: str) -> None:
        spec = self.spec(self.registry.job(job_id)["scope"], job_id)
        if self._queue is not None:
            self._queue.enqueue("model.flywheel.job.run_job", spec.to_dict(), job_id=job_id,
                                job_timeout=int(self.settings.train_timeout), result_ttl=7 * 86400,
                                failure_ttl=7 * 86400)
            self.registry.write_job(job_id, enqueued=time.time())
            log.info("training job %s sent to the RQ queue %s", job_id, QUEUE)
            return
        folder = self.registry.job_path(job_id).parent
        spec_path = folder / f"{job_id}.spec.json"
        spec_path.write_text(json.dumps(spec.to_dict(), indent=1))
        with open(folder / f"{job_id}.log", "w") as log_file:
            process = subprocess.Popen([sys.executable, "-m", "model.flywheel.job", str(spec_path)],
                                       stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
                                       cwd=Path(__file__).resolve().parents[1])
        self.registry.write_job(job_id, pid=process.pid, log=str(folder / f"{job_id}.log"))
        with self._lock:
            self._processes[job_id] = process
        threading.Thread(target=self._reap, args=(job_id, process), daemon=True, name=f"reap-{job_id}").start()
        log.info("training job %s runs in process %d", job_id, process.pid)

    def _reap(self, job_id: str, process: subprocess.Popen) -> None:
        code = process.wait()
        with self._lock:
            self._processes.pop(job_id, None)
        job = self.registry.job(job_id) or {}
        if job.get("state") in ACTIVE_STATES:
            how = f"killed by signal {-code}" if code < 0 else f"exited with code {code}"
            self.fail(job_id, f"the training process {how} before it finished; the active version is unchanged")

    def fail(self, job_id: str, error: str) -> dict:
        log.error("training job %s: %s", job_id, error)
        return self.registry.write_job(job_id, state="failed", error=error, finished=time.time())

    def view(self, job: dict | None) -> dict | None:
        """The job as it stands: one that claims to run but whose process is gone is failed."""
        if not job or job.get("state") not in ACTIVE_STATES:
            return job
        with self._lock:
            ours = job["id"] in self._processes
        if ours:
            return job
        if job.get("host") == this_host() and job.get("runner") == "process":
            pid = job.get("pid")  # the training process, once started
            if pid and not _alive(pid):
                return self.fail(job["id"], f"the training process {pid} is gone; the active version is unchanged")
            if not pid and not _alive(job.get("owner") or 0):
                return self.fail(job["id"], "the backend that queued the job stopped before starting it")
        if job.get("runner") == "rq" and job.get("enqueued") and self._queue is not None:
            ended = self._rq_ended(job["id"])
            if ended:
                return self.fail(job["id"], f"{ended}; the active version is unchanged")
        if time.time() - job.get("updated", 0) > LOST_AFTER and job.get("state") == "running":
            return self.fail(job["id"], f"no heartbeat for {LOST_AFTER:.0f} s; the active version is unchanged")
        return job

    def _rq_ended(self, job_id: str) -> str | None:
        """Why RQ will never run (or finish) the job, if it will not: gone from Redis, failed, stopped."""
        from redis.exceptions import RedisError
        from rq.exceptions import NoSuchJobError
        from rq.job import Job

        try:
            status = Job.fetch(job_id, connection=self._queue.connection).get_status()
        except NoSuchJobError:
            return "the job is gone from the RQ queue"
        except RedisError:
            return None  # Redis unreachable: nothing can be said yet
        return f"RQ reports the job {status.value}" if status.value in ("failed", "stopped", "canceled") else None

    def active_job(self, scope: str) -> dict | None:
        for job in reversed(self.registry.jobs(scope)):
            viewed = self.view(job)
            if viewed and viewed.get("state") in ACTIVE_STATES:
                return viewed
        return None

    def last_job(self, scope: str) -> dict | None:
        jobs = self.registry.jobs(scope)
        return self.view(jobs[-1]) if jobs else None


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
