"""The policy registry on disk: every trained version of a scope with its metadata, which one is
active, and the state of training jobs.

    models/<scope>/versions/vN/adapter/     the LoRA adapter (peft)
    models/<scope>/versions/vN/meta.json    base, parent, data counts, metrics, time, status
    models/<scope>/active.json              the version serving now ("v0" or missing: the base policy)
    models/<scope>/history.jsonl            every change of the active version, and why
    models/<scope>/jobs/<job id>.json       one training job's record (JobRecord): state, progress, outcome
    models/<scope>/jobs.lock                held while a job's record is read, changed and written again
    models/<scope>/train.lock               held by the one training job of the scope

A scope is a Label Studio project ("project-3") or "shared". Every file is replaced atomically (write
then rename), so a reader never sees half of one and a killed job leaves the active version as it was.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shutil
import socket
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

BASE_VERSION = "v0"
SHARED_SCOPE = "shared"
_SCOPE = re.compile(r"^(shared|project-\d{1,12})$")
_VERSION = re.compile(r"^v\d{1,6}$")
_JOB = re.compile(r"^(shared|project-\d{1,12})_\d+_[0-9a-f]{6}$")  # also a valid RQ job id
_JOB_WRITES = threading.Lock()
log = logging.getLogger(__name__)


class RegistryError(ValueError):
    """A scope, version or job that does not exist or is not well-formed."""


class UnknownVersion(RegistryError):
    """A well-formed version that the scope does not have."""


class Busy(RuntimeError):
    """Another training job of the scope holds its lock."""


class JobState(StrEnum):
    queued = "queued"  # written by the backend, not started yet
    running = "running"
    skipped = "skipped"  # nothing to train (too little data, no trainer): no version
    failed = "failed"
    promoted = "promoted"  # a version that passed the gate and serves now
    rejected = "rejected"  # a version kept but not served

    @property
    def active(self) -> bool:
        """Whether the job may still change the registry."""
        return self in (JobState.queued, JobState.running)


class JobRecord(BaseModel):
    """A training job's file: who started it and where it runs, its progress, its outcome. Fields no
    step has written yet are None and left out of the file and of the JSON answers."""

    model_config = ConfigDict(frozen=True)

    id: str
    scope: str
    created: float
    updated: float
    state: JobState = JobState.queued
    trigger: str | None = None  # why it was queued, in words
    through_id: int | None = None  # the newest trajectory it takes into account
    runner: str | None = None  # process or rq
    host: str | None = None
    owner: int | None = None  # the backend process that queued it
    pid: int | None = None  # the training process
    log: str | None = None
    enqueued: float | None = None  # sent to RQ
    started: float | None = None
    stage: str | None = None  # data, training, gate, done
    progress: float | None = None
    loss: float | None = None
    data: dict[str, Any] | None = None
    version: str | None = None
    parent: str | None = None
    training: dict[str, Any] | None = None
    gate: dict[str, Any] | None = None
    reason: str | None = None
    error: str | None = None
    finished: float | None = None
    seconds: float | None = None

    def to_json(self) -> dict:
        return self.model_dump(mode="json", exclude_none=True)


def scope_for(project: str, shared: bool = False) -> str:
    if shared:
        return SHARED_SCOPE
    if not str(project).isdigit():
        raise RegistryError(f"a project id is a number, not {project!r}")
    return f"project-{int(project)}"


def project_of(scope: str) -> str | None:
    """The Label Studio project of a scope; None for the shared scope."""
    return None if scope == SHARED_SCOPE else scope.split("-", 1)[1]


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.part")
    partial.write_text(json.dumps(data, indent=1, sort_keys=True))
    partial.replace(path)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


class Registry:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def scope_dir(self, scope: str) -> Path:
        if not _SCOPE.match(scope or ""):
            raise RegistryError(f"unknown scope {scope!r}: 'shared' or 'project-<id>'")
        return self.root / scope

    def scopes(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and _SCOPE.match(p.name))

    # ------------------------------------------------------------ versions
    def version_dir(self, scope: str, name: str) -> Path:
        if not _VERSION.match(name or "") or name == BASE_VERSION:
            raise RegistryError(f"{name!r} is not a trained version (v1, v2, ...)")
        return self.scope_dir(scope) / "versions" / name

    def versions(self, scope: str) -> list[dict]:
        """Every registered version of the scope, oldest first (a folder without meta.json was never
        registered: a job died while training it)."""
        folder = self.scope_dir(scope) / "versions"
        if not folder.is_dir():
            return []
        metas = [_read_json(p / "meta.json") for p in folder.iterdir() if _VERSION.match(p.name)]
        return sorted((m for m in metas if m), key=lambda m: int(m["name"][1:]))

    def version(self, scope: str, name: str) -> dict:
        meta = _read_json(self.version_dir(scope, name) / "meta.json")
        if meta is None:
            raise UnknownVersion(f"{scope} has no version {name}")
        return meta

    def allocate(self, scope: str) -> tuple[str, Path]:
        """A new, empty version folder (call with the scope's lock held)."""
        folder = self.scope_dir(scope) / "versions"
        folder.mkdir(parents=True, exist_ok=True)
        for orphan in folder.iterdir():  # what a killed job left half-written
            if _VERSION.match(orphan.name) and not (orphan / "meta.json").exists():
                shutil.rmtree(orphan, ignore_errors=True)
        taken = [int(p.name[1:]) for p in folder.iterdir() if _VERSION.match(p.name)]
        name = f"v{max(taken, default=0) + 1}"
        (folder / name).mkdir()
        return name, folder / name

    def register(self, scope: str, name: str, meta: dict) -> dict:
        meta = {**meta, "name": name, "scope": scope}
        _write_json(self.version_dir(scope, name) / "meta.json", meta)
        return meta

    def adapter_path(self, scope: str, name: str) -> Path:
        return self.version_dir(scope, name) / "adapter"

    # ------------------------------------------------------------ the active version
    def active(self, scope: str) -> str:
        pointer = _read_json(self.scope_dir(scope) / "active.json")
        return pointer["version"] if pointer else BASE_VERSION

    def activate(self, scope: str, name: str, reason: str) -> None:
        if name != BASE_VERSION:
            self.version(scope, name)  # must exist
        previous = self.active(scope)
        entry = {"version": name, "previous": previous, "reason": reason, "at": time.time()}
        _write_json(self.scope_dir(scope) / "active.json", entry)
        with open(self.scope_dir(scope) / "history.jsonl", "a") as history:
            history.write(json.dumps(entry) + "\n")

    def rollback(self, scope: str, to: str | None = None) -> str:
        """Serve `to` (any registered version, or v0: the base) again; by default the active version's parent."""
        if not self.scope_dir(scope).is_dir():
            raise UnknownVersion(f"{scope} has never trained a version; there is nothing to roll back")
        current = self.active(scope)
        if to is None:
            if current == BASE_VERSION:
                raise RegistryError(f"{scope} serves the base policy already; there is nothing to roll back")
            to = self.version(scope, current).get("parent") or BASE_VERSION
        self.activate(scope, to, f"rollback from {current}")
        return to

    def history(self, scope: str) -> list[dict]:
        path = self.scope_dir(scope) / "history.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    # ------------------------------------------------------------ jobs
    def new_job_id(self, scope: str) -> str:
        self.scope_dir(scope)
        return f"{scope}_{int(time.time() * 1000)}_{os.urandom(3).hex()}"

    def job_path(self, job_id: str) -> Path:
        if not _JOB.match(job_id or ""):
            raise RegistryError(f"{job_id!r} is not a training job id")
        return self.scope_dir(job_scope(job_id)) / "jobs" / f"{job_id}.json"

    def write_job(self, job_id: str, **fields: Any) -> JobRecord:
        """Set these fields of the job's record (created with them if it has none); ValueError for a field
        or value a record cannot hold."""
        written = self.update_job(job_id, lambda job: fields)
        assert written is not None  # fields, even none, are always written
        return written

    def update_job(self, job_id: str,
                   change: Callable[[JobRecord | None], dict[str, Any] | None]) -> JobRecord | None:
        """Read the job's record (None if it has none), set the fields `change` returns for it and write it
        back, as one step against every other writer: the backend, the job's process and its heartbeat
        thread, on this machine or another sharing the folder. `change` answering None writes nothing."""
        path = self.job_path(job_id)
        with self._jobs_locked(job_scope(job_id)):
            current = self.job(job_id)
            fields = change(current)
            if fields is None:
                return current
            unknown = set(fields) - set(JobRecord.model_fields)
            if unknown:
                raise ValueError(f"a job record has no field {', '.join(sorted(unknown))}")
            now = time.time()
            base = current.model_dump() if current else {"id": job_id, "scope": job_scope(job_id), "created": now}
            job = JobRecord.model_validate({**base, **fields, "updated": now})
            _write_json(path, job.to_json())
        return job

    @contextmanager
    def _jobs_locked(self, scope: str):
        # flock excludes other processes (and other open files of this one); the thread lock covers a
        # folder on NFS, where flock is emulated with per-process POSIX locks
        path = self.scope_dir(scope) / "jobs.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        with _JOB_WRITES, open(path, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    @contextmanager
    def heartbeat(self, job_id: str, every: float = 30.0):
        """Touch the job's file every so often while the block runs, so that a watcher on another machine
        can tell a long step (the gate's episodes) from a dead worker."""
        done = threading.Event()

        def beat() -> None:
            while not done.wait(every):
                self.write_job(job_id)

        thread = threading.Thread(target=beat, daemon=True, name=f"heartbeat-{job_id}")
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()

    def job(self, job_id: str) -> JobRecord | None:
        return _read_job(self.job_path(job_id))

    def jobs(self, scope: str) -> list[JobRecord]:
        folder = self.scope_dir(scope) / "jobs"
        if not folder.is_dir():
            return []
        jobs = [_read_job(p) for p in folder.glob("*.json") if _JOB.match(p.stem)]
        return sorted((j for j in jobs if j), key=lambda j: j.created)

    def trained_through(self, scope: str) -> int:
        """The newest trajectory id a job of this scope has taken (or will take) into account."""
        return max((j.through_id or 0 for j in self.jobs(scope)), default=0)

    @contextmanager
    def lock(self, scope: str):
        """The scope's training lock, across processes and machines sharing the folder; Busy if held."""
        path = self.scope_dir(scope) / "train.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as exc:
                raise Busy(f"a training job of {scope} is running") from exc
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def _read_job(path: Path) -> JobRecord | None:
    data = _read_json(path)
    if data is None:
        return None
    try:
        return JobRecord.model_validate(data)
    except ValidationError as exc:
        log.warning("the job file %s is not a job record; left out: %s", path, exc)
        return None


def job_scope(job_id: str) -> str:
    return job_id.rsplit("_", 2)[0]


def this_host() -> str:
    return socket.gethostname()
