"""What the dispatcher's `train` job does, wherever the dispatcher runs it (backend/dispatch.py decides that).
The job first lets the annotation work acknowledged before it was queued run, so that what Start training (or a
legacy /train carrying annotations) follows is learned from; then it trains:
- in this process's dispatcher: in a process of its own (`python -m model.flywheel.job SPEC`, its own session,
  so it outlives a backend restart), waited for by the dispatcher's thread, and reported failed when it exits
  without finishing;
- in an RQ trainer (`segagent-worker train --fork`): `run_job` in the worker's forked work horse.
A job that claims to be active but whose process or RQ job is gone is found by `ended` (the reaper asks it)."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from model.flywheel.job import JobSpec, run_job
from model.flywheel.registry import JobRecord, Registry, this_host
from model.flywheel.stores import policy_registry
from model.settings import Settings

from .store import AnnotationStore

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
LEARN_FIRST_WAIT = 600.0  # seconds a job waits, at most, for the annotation work acknowledged before it


def learn_first(annotations: AnnotationStore, queued_at: float, wait: float = LEARN_FIRST_WAIT) -> None:
    """Wait until the annotation work acknowledged before `queued_at` has run (or failed), `wait` at most."""
    deadline = time.time() + wait
    while annotations.unlearned_before(queued_at) and time.time() < deadline:
        time.sleep(0.5)


def run_in_process(registry: Registry, annotations: AnnotationStore, job_id: str, spec: dict) -> str | None:
    """The job in a process of its own, waited for; why it failed when it exited without finishing."""
    job = registry.job(job_id)
    if job is None or not job.state.active:
        return None  # failed or finished already (a job handed out twice)
    learn_first(annotations, job.created)
    folder = registry.job_path(job_id).parent
    spec_path = folder / f"{job_id}.spec.json"
    spec_path.write_text(json.dumps(spec, indent=1))
    with open(folder / f"{job_id}.log", "w") as log_file:
        process = subprocess.Popen([sys.executable, "-m", "model.flywheel.job", str(spec_path)],
                                   stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT)
    registry.write_job(job_id, pid=process.pid, log=str(folder / f"{job_id}.log"))
    log.info("training job %s runs in process %d", job_id, process.pid)
    code = process.wait()
    if code == 0:
        return None
    how = f"killed by signal {-code}" if code < 0 else f"exited with code {code}"
    return f"the training process {how} before it finished; the active version is unchanged"


def run_here(job_id: str, spec: dict) -> JobRecord:
    """The job in this process (an RQ trainer's work horse), after the annotation work acknowledged before it."""
    local = on_this_machine(JobSpec.model_validate(spec))
    job = policy_registry(local.settings).job(job_id)
    if job is not None:
        annotations = AnnotationStore(local.settings.store("annotations"))
        try:
            learn_first(annotations, job.created)
        finally:
            annotations.close()
    return run_job(local)


def on_this_machine(spec: JobSpec) -> JobSpec:
    """With stores in a shared database, the data and blob folders as this trainer's own settings name them: the
    machine that queued the job may mount them elsewhere. On SQLite the job's data folder is where its stores are."""
    if not spec.settings.database_url:
        return spec
    local = Settings()
    return spec.model_copy(update={"settings": spec.settings.model_copy(
        update={"data_dir": local.data_dir.resolve(), "blob_dir": local.blob_dir})})


def process_ended(job: JobRecord, running: bool) -> str | None:
    """Why a job of this host's process runner will never finish (its process, or the backend that queued it, is
    gone), or None; `running` says whether this process is waiting for it right now."""
    if running or job.host != this_host():
        return None
    if job.pid and not _alive(job.pid):
        return f"the training process {job.pid} is gone; the active version is unchanged"
    if not job.pid and not _alive(job.owner or 0):
        return "the backend that queued the job stopped before starting it"
    return None


def rq_ended(state: str | None) -> str | None:
    """Why RQ will never run (or finish) a job in that state ("gone": no longer in Redis), or None."""
    if state == "gone":
        return "the job is gone from the RQ queue; the active version is unchanged"
    if state in ("failed", "stopped", "canceled"):
        return f"RQ reports the job {state}; the active version is unchanged"
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
