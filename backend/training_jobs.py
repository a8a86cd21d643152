"""Training jobs as the registry's job records tell them: at most one active job per scope, handed to the
dispatcher as a `train` job (training_runs.py says what that job does). Reading them writes nothing; a job
that died without saying so is reported failed by a writer: the reaper thread, every so often, and queueing
the scope's next job."""
from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

from model.flywheel.job import JobSpec
from model.flywheel.registry import JobRecord, JobState, Registry, this_host
from model.settings import Settings

from .dispatch import Dispatcher
from .store import AnnotationStore
from .training_runs import process_ended, rq_ended, run_in_process

log = logging.getLogger(__name__)

LOST_AFTER = 900.0  # seconds without a heartbeat before a running job counts as lost
REAP_EVERY = 10.0  # seconds between the reaper's looks at the active jobs


class TrainingJobs:
    def __init__(self, settings: Settings, registry: Registry, dispatcher: Dispatcher, annotations: AnnotationStore,
                 reap_every: float = REAP_EVERY):
        self.settings = settings
        self.registry = registry
        self.dispatcher = dispatcher
        self.annotations = annotations
        self._running: set[str] = set()  # jobs whose training process this process waits for
        self._running_lock = threading.Lock()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._reaper = threading.Thread(target=self._reap_periodically, args=(reap_every,), daemon=True,
                                        name="training-reaper")
        self._reaper.start()

    def close(self) -> None:
        self._stop.set()
        self._reaper.join(timeout=5)

    def queue(self, scope: str, trigger: str, through_id: int) -> tuple[JobRecord, bool]:
        """(the job, whether it is new): a scope's job already queued or running is answered instead of a second."""
        with self._lock:
            self.reap(scope)
            current = self.active_job(scope)
            if current is not None:
                return current, False
            job_id = self.registry.new_job_id(scope)
            job = self.registry.write_job(job_id, state=JobState.queued, trigger=trigger, through_id=through_id,
                                          runner=self.dispatcher.name, host=this_host(), owner=os.getpid())
            log.info("training job %s queued (%s)", job_id, trigger)
            return job, True

    def start(self, job_id: str) -> None:
        """Hand a queued job to the dispatcher; a job that cannot be handed over is failed (the active version
        serves on)."""
        job = self.registry.job(job_id)
        assert job is not None  # queue() wrote it
        spec = JobSpec(scope=job.scope, job_id=job_id, settings=self.settings)
        try:
            self.dispatcher.submit("train", job_id, spec.to_dict(), job_id=job_id, timeout=self.settings.train_timeout)
        except Exception as exc:  # Redis down: the job is failed and the caller says so
            self.fail_if_active(job_id, f"could not start: {type(exc).__name__}: {exc}")
            raise
        if self.dispatcher.name == "rq":
            self.registry.write_job(job_id, enqueued=time.time())

    def run(self, job_id: str, spec: dict) -> None:
        """The `train` job in this process's dispatcher: the training process, waited for."""
        with self._running_lock:
            self._running.add(job_id)
        try:
            died = run_in_process(self.registry, self.annotations, job_id, spec)
        finally:
            with self._running_lock:
                self._running.discard(job_id)
        if died:
            self.fail_if_active(job_id, died)

    def ended(self, job: JobRecord) -> str | None:
        """Why an active job will never finish, or None."""
        if job.runner == "rq":
            return rq_ended(self.dispatcher.job_state(job.id)) if job.enqueued else None
        with self._running_lock:
            running = job.id in self._running
        return process_ended(job, running) if job.runner == "process" else None

    def fail_if_active(self, job_id: str, error: str) -> None:
        """Fail the job unless it has finished (a job that ended on its own keeps its outcome)."""
        self._fail(job_id, error, lambda job: job.state.active)

    def reap(self, scope: str) -> None:
        """Fail the scope's jobs that claim to be active but will never finish: their process is gone, RQ
        dropped them, their trainer no longer holds the scope's training lock, or they stopped beating."""
        for job in self.registry.jobs(scope):
            if not job.state.active:
                continue
            why = self.ended(job)
            if why is None and job.state is JobState.running and self.registry.trainer_gone(scope):
                why = "its trainer is gone (the training lock it held is free); the active version is unchanged"
            if why is None and job.state is JobState.running and time.time() - job.updated > LOST_AFTER:
                why = f"no heartbeat for {LOST_AFTER:.0f} s; the active version is unchanged"
            if why is not None:
                self._fail_unless_changed(job, why)

    def _fail_unless_changed(self, seen: JobRecord, error: str) -> None:
        """Fail the job as it was seen; one that wrote since spoke for itself and is left as it is."""
        self._fail(seen.id, error, lambda current: current == seen)

    def _fail(self, job_id: str, error: str, still_to_fail: Callable[[JobRecord], bool]) -> None:
        def failed(job: JobRecord | None) -> dict | None:
            if job is None or not still_to_fail(job):
                return None
            log.error("training job %s: %s", job_id, error)
            return {"state": JobState.failed, "error": error, "finished": time.time()}

        self.registry.update_job(job_id, failed)

    def _reap_periodically(self, every: float) -> None:
        while not self._stop.wait(every):
            for scope in self.registry.scopes():
                try:
                    self.reap(scope)
                except Exception:  # one scope's trouble does not stop the others' reaping
                    log.exception("reaping the training jobs of %s", scope)

    def active_job(self, scope: str) -> JobRecord | None:
        return next((job for job in reversed(self.registry.jobs(scope)) if job.state.active), None)

    def last_job(self, scope: str) -> JobRecord | None:
        jobs = self.registry.jobs(scope)
        return jobs[-1] if jobs else None
