"""Training and versions: the triggers (Label Studio's START_TRAINING and legacy /train, every
SEGAGENT_TRAIN_EVERY new trajectories, every SEGAGENT_TRAIN_INTERVAL seconds), Label Studio's
/job_status and /versions, rollback, and the training part of /status."""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from model.flywheel.registry import BASE_VERSION, JobRecord, JobState, Registry
from model.flywheel.scopes import is_project_id, project_of
from model.flywheel.trajectories import TrajectoryStore
from model.settings import Settings

from .errors import CapabilityOff, Gone, InvalidRequest
from .metrics import Metrics
from .serving import VersionServer
from .training_jobs import TrainingJobs

log = logging.getLogger(__name__)

# how Label Studio's /job_status names a job's state
JOB_STATUS = {JobState.queued: "queued", JobState.running: "started", JobState.failed: "failed"}


class Training:
    def __init__(self, settings: Settings, registry: Registry, trajectories: TrajectoryStore, server: VersionServer,
                 jobs: TrainingJobs, metrics: Metrics, refit_scorer: Callable[[str, str], dict] | None = None):
        self.settings = settings
        self.registry = registry
        self.trajectories = trajectories
        self.server = server
        self.jobs = jobs
        self.metrics = metrics
        self.refit_scorer = refit_scorer  # without a policy, Start training refits the project's quality scorer
        self.last_skipped: dict | None = None
        self._stop = threading.Event()
        self._periodic: threading.Thread | None = None
        if settings.train_interval > 0:
            self._periodic = threading.Thread(target=self._train_periodically, daemon=True, name="train-interval")
            self._periodic.start()

    def close(self) -> None:
        self._stop.set()
        if self._periodic is not None:
            self._periodic.join(timeout=5)
        self.jobs.close()

    def start(self, project: str, kind: str, trigger: str) -> dict:
        """Queue a job for the project's scope (kind: request, every or interval; trigger: why, in words). Training
        that is off is refused (CapabilityOff, a 503), so that Label Studio's Start Training shows an error, not a
        success; Label Studio does not retry it, and its project webhooks ignore the answer."""
        reason = self.server.trainable
        if reason:
            refitted = self.refit_scorer(project, "Start training without a policy") \
                if self.refit_scorer is not None and is_project_id(project) else None
            if refitted is not None and refitted["status"] != "skipped":
                return {"status": "scorer refitted", "scorer": refitted, "reason": f"training is off: {reason}"}
            if refitted is not None:
                reason = f"{reason}; no scorer refit: {refitted['reason']}"
            self.last_skipped = {"state": "skipped", "reason": reason, "at": time.time()}
            raise CapabilityOff(f"training is off: {reason}")
        if not project and self.settings.policy_scope != "shared":
            raise InvalidRequest("training needs the project")
        scope = self.server.scope(project)
        job, new = self.jobs.queue(scope, trigger, self.trajectories.newest_id(project_of(scope)))
        if new:
            self.metrics.training_jobs.labels(kind).inc()
            self.jobs.start(job.id)  # the job itself waits for the annotation work acknowledged before it
        return {"status": "queued" if new else "running", "job": job.id, "scope": scope}

    def after_new_trajectories(self, project: str) -> None:
        """Every SEGAGENT_TRAIN_EVERY new trajectories of a scope, a job."""
        if self.settings.train_every <= 0 or self.server.trainable or not project:
            return
        scope = self.server.scope(project)
        fresh = self.trajectories.count_after(self.registry.trained_through(scope), project_of(scope))
        if fresh >= self.settings.train_every:
            self.start(project, "every", f"{fresh} new trajectories (SEGAGENT_TRAIN_EVERY={self.settings.train_every})")

    def _train_periodically(self) -> None:
        """SEGAGENT_TRAIN_INTERVAL: every so many seconds, a job for each scope with new trajectories."""
        while not self._stop.wait(self.settings.train_interval):
            if self.server.trainable:
                continue
            projects = ["shared"] if self.settings.policy_scope == "shared" else self.trajectories.projects()
            for project in projects:
                try:
                    scope = self.server.scope(project)
                    if self.trajectories.count_after(self.registry.trained_through(scope), project_of(scope)):
                        self.start(project, "interval", f"interval of {self.settings.train_interval:g} s")
                except Exception:  # one project's trouble does not stop the others' training
                    log.exception("periodic training of project %s", project)

    def job_status(self, job_id: str) -> dict:
        """Label Studio's /job_status: queued, started, finished or failed, with our details."""
        job = self.registry.job(job_id)
        if job is None:
            raise Gone(f"no training job {job_id}")
        return {"job_status": JOB_STATUS.get(job.state, "finished"), **job.to_json()}

    def versions(self, project: str) -> dict:
        """Label Studio's /versions: the base version and every version promoted since, of one project or
        (Label Studio sends no project there) of all."""
        scopes = [self.server.scope(project)] if project else self.registry.scopes()
        names = [self.server.base_version]
        for scope in scopes:
            active = self.registry.active(scope)
            names += [self.server.version_name(scope, m["name"]) for m in self.registry.versions(scope)
                      if m["status"] == "promoted" or m["name"] == active]
        return {"versions": names}

    def rollback(self, project: str, version: str | None) -> dict:
        """Serve an earlier version of a project again: `version` (v0 is the base; a full model_version
        works too), by default the active version's parent."""
        scope = self.server.scope(project)
        if version and version.startswith("segagent-"):
            version = version.rsplit("-", 1)[1]
        self.registry.rollback(scope, version or None)
        log.warning("%s: rolled back, %s is active", scope, self.registry.active(scope))
        return {"status": "ok", "scope": scope, "active_version": self.server.serving(project).version}

    def status(self, project: str) -> dict:
        scopes = [self.server.scope(project)] if project else self.registry.scopes()
        last_jobs = {scope: self.jobs.last_job(scope) for scope in scopes}
        by_scope = {scope: self._scope_status(scope, last_jobs[scope]) for scope in scopes}
        jobs = [job for job in last_jobs.values() if job is not None]
        last = max(jobs, key=lambda j: j.created).to_json() if jobs else self.last_skipped
        return {"state": (last or {}).get("state", "idle"), "last_job": last,
                "available": self.server.trainable is None, "reason": self.server.trainable,
                "runner": self.jobs.dispatcher.name, "policy_scope": self.settings.policy_scope,
                "triggers": {"webhook": "START_TRAINING", "every_trajectories": self.settings.train_every,
                             "interval_seconds": self.settings.train_interval},
                "scopes": by_scope}

    def _scope_status(self, scope: str, last_job: JobRecord | None) -> dict:
        active = self.registry.active(scope)
        return {
            "active_version": self.server.version_name(scope, active) if active != BASE_VERSION
            else self.server.base_version,
            "versions": len(self.registry.versions(scope)),
            "new_trajectories": self.trajectories.count_after(self.registry.trained_through(scope),
                                                              project_of(scope)),
            "last_job": last_job.to_json() if last_job else None,
            "serving_error": self.server.errors.get(scope),
        }
