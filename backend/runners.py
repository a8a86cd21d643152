"""Where training jobs run, behind one interface: a worker process of their own by default (`python -m
model.flywheel.job SPEC`), or an RQ queue in Redis when REDIS_URL is set (the compose file's `worker`
service runs them). Either way the job writes its state into the registry's job file; a runner only
starts jobs and says when one has ended without saying so."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from model.flywheel.job import JobSpec
from model.flywheel.registry import JobRecord, Registry, this_host

log = logging.getLogger(__name__)

QUEUE = "segagent-training"
ROOT = Path(__file__).resolve().parents[1]


class TrainingRunner(Protocol):
    name: str

    def start(self, job_id: str, spec: JobSpec) -> None:
        """Start (or enqueue) the job; raises when it cannot."""

    def ended(self, job: JobRecord) -> str | None:
        """Why an active job will never finish (its process is gone, RQ failed it), or None."""


class ProcessRunner:
    """A process per job, in its own session (it outlives a backend restart); a reaper thread reports a
    process that exits without finishing its job."""

    name = "process"

    def __init__(self, registry: Registry, on_died: Callable[[str, str], None]):
        self.registry = registry
        self.on_died = on_died
        self._processes: dict[str, subprocess.Popen] = {}
        self._lock = threading.Lock()

    def start(self, job_id: str, spec: JobSpec) -> None:
        folder = self.registry.job_path(job_id).parent
        spec_path = folder / f"{job_id}.spec.json"
        spec_path.write_text(json.dumps(spec.to_dict(), indent=1))
        with open(folder / f"{job_id}.log", "w") as log_file:
            process = subprocess.Popen([sys.executable, "-m", "model.flywheel.job", str(spec_path)],
                                       stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT)
        self.registry.write_job(job_id, pid=process.pid, log=str(folder / f"{job_id}.log"))
        with self._lock:
            self._processes[job_id] = process
        threading.Thread(target=self._reap, args=(job_id, process), daemon=True, name=f"reap-{job_id}").start()
        log.info("training job %s runs in process %d", job_id, process.pid)

    def _reap(self, job_id: str, process: subprocess.Popen) -> None:
        code = process.wait()
        with self._lock:
            self._processes.pop(job_id, None)
        how = f"killed by signal {-code}" if code < 0 else f"exited with code {code}"
        self.on_died(job_id, f"the training process {how} before it finished; the active version is unchanged")

    def ended(self, job: JobRecord) -> str | None:
        with self._lock:
            if job.id in self._processes:
                return None
        if job.host != this_host() or job.runner != "process":
            return None
        pid = job.pid  # the training process, once started
        if pid and not _alive(pid):
            return f"the training process {pid} is gone; the active version is unchanged"
        if not pid and not _alive(job.owner or 0):
            return "the backend that queued the job stopped before starting it"
        return None


class RqRunner:
    """Jobs enqueued in Redis for `rq worker segagent-training`."""

    name = "rq"

    def __init__(self, redis_url: str, timeout: float, registry: Registry):
        from redis import Redis
        from rq import Queue

        self.queue = Queue(QUEUE, connection=Redis.from_url(redis_url))
        self.timeout = timeout
        self.registry = registry

    def start(self, job_id: str, spec: JobSpec) -> None:
        self.queue.enqueue("model.flywheel.job.run_job", spec.to_dict(), job_id=job_id,
                           job_timeout=int(self.timeout), result_ttl=7 * 86400, failure_ttl=7 * 86400)
        self.registry.write_job(job_id, enqueued=time.time())
        log.info("training job %s sent to the RQ queue %s", job_id, QUEUE)

    def ended(self, job: JobRecord) -> str | None:
        """Why RQ will never run (or finish) the job, if it will not: gone from Redis, failed, stopped."""
        from redis.exceptions import RedisError
        from rq.exceptions import NoSuchJobError
        from rq.job import Job

        if job.runner != "rq" or not job.enqueued:
            return None
        try:
            status = Job.fetch(job.id, connection=self.queue.connection).get_status()
        except NoSuchJobError:
            return "the job is gone from the RQ queue; the active version is unchanged"
        except RedisError:
            return None  # Redis unreachable: nothing can be said yet
        if status.value in ("failed", "stopped", "canceled"):
            return f"RQ reports the job {status.value}; the active version is unchanged"
        return None


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
