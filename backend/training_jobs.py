"""Training jobs as the registry's job files tell them: at most one active job per scope, started by a
runner, and reported failed when it died without saying so."""
from __future__ import annotations

import logging
import os
import threading
import time

from model.flywheel.job import JobSpec
from model.flywheel.registry import Registry, this_host
from model.settings import Settings

from .runners import ProcessRunner, RqRunner, TrainingRunner

log = logging.getLogger(__name__)

ACTIVE_STATES = ("queued", "running")
LOST_AFTER = 900.0  # seconds without a heartbeat before a running job counts as lost


class TrainingJobs:
    def __init__(self, settings: Settings, registry: Registry):
        self.settings = settings
        self.registry = registry
        self.runner: TrainingRunner = (
            RqRunner(settings.redis_url, settings.train_timeout, registry) if settings.redis_url
            else ProcessRunner(registry, self.fail_if_active))
        self._lock = threading.Lock()

    def queue(self, scope: str, trigger: str, through_id: int) -> tuple[dict, bool]:
        """(the job, whether it is new): a scope's job already queued or running is answered instead of a second."""
        with self._lock:
            current = self.active_job(scope)
            if current is not None:
                return current, False
            job_id = self.registry.new_job_id(scope)
            job = self.registry.write_job(job_id, state="queued", trigger=trigger, through_id=through_id,
                                          runner=self.runner.name, host=this_host(), owner=os.getpid())
            log.info("training job %s queued (%s)", job_id, trigger)
            return job, True

    def start(self, job_id: str) -> None:
        """Hand a queued job to the runner; a job that cannot start is failed (the active version serves on)."""
        job = self.registry.job(job_id)
        assert job is not None  # queue() wrote it
        spec = JobSpec(scope=job["scope"], job_id=job_id, settings=self.settings)
        try:
            self.runner.start(job_id, spec)
        except Exception as exc:  # Redis down, no process: the job is failed and the caller's queue counts it
            self.fail(job_id, f"could not start: {type(exc).__name__}: {exc}")
            raise

    def fail(self, job_id: str, error: str) -> dict:
        log.error("training job %s: %s", job_id, error)
        return self.registry.write_job(job_id, state="failed", error=error, finished=time.time())

    def fail_if_active(self, job_id: str, error: str) -> None:
        if (self.registry.job(job_id) or {}).get("state") in ACTIVE_STATES:
            self.fail(job_id, error)

    def view(self, job: dict | None) -> dict | None:
        """The job as it stands: one that claims to be active but will never finish is failed."""
        if not job or job.get("state") not in ACTIVE_STATES:
            return job
        ended = self.runner.ended(job)
        if ended:
            return self.fail(job["id"], ended)
        if job.get("state") == "running" and time.time() - job.get("updated", 0) > LOST_AFTER:
            return self.fail(job["id"], f"no heartbeat for {LOST_AFTER:.0f} s; the active version is unchanged")
        return job

    def active_job(self, scope: str) -> dict | None:
        for job in reversed(self.registry.jobs(scope)):
            viewed = self.view(job)
            if viewed and viewed.get("state") in ACTIVE_STATES:
                return viewed
        return None

    def last_job(self, scope: str) -> dict | None:
        jobs = self.registry.jobs(scope)
        return self.view(jobs[-1]) if jobs else None
