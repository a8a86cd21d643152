"""The policy registry: every trained version of a scope with its metadata, which one is active, the history of
its changes and the state of training jobs; the project scorers' registry is the same machinery (kind "scorers").

Its state is rows in a database (store "registry"; SQLite in the root folder by default, or a PostgreSQL URL shared
by every backend and worker): versions, active, history and jobs, namespaced by kind. A version's files stay in the
root folder, a blob location every machine reaches:

    <root>/<scope>/versions/vN/             the version's files (a LoRA adapter/, a scorer's correction.json)
    <root>/<scope>/jobs/                    training jobs' logs and specs
    <root>/<scope>/train.lock               the scope's training lock on SQLite (PostgreSQL: an advisory lock)

A version is allocated (its number taken, its folder made) in a transaction, its files written, and only then
registered: its row gets its metadata. A killed job leaves an allocation without metadata, which is no version and
which the next allocation under the scope's lock removes. A scope is a Label Studio project ("project-3") or
"shared". A root written before the database is imported once, on first open (registry_legacy.py).
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from model.core.database import Database, Transaction
from model.core.exclusive import Held, exclusive
from model.flywheel.registry_legacy import has_legacy_files, insert_scope, read_legacy
from model.flywheel.scopes import BASE_VERSION, JOB, SCOPE_PATTERN, VERSION, RegistryError, job_scope

MIGRATIONS = Path(__file__).with_name("registry_migrations")
_SCOPE = re.compile(rf"^{SCOPE_PATTERN}$")
_HAS_ROWS = " UNION ALL ".join(f"SELECT 1 FROM registry_{table} WHERE kind = ?"
                               for table in ("versions", "active", "history", "jobs"))
_SCOPES = " UNION ".join(f"SELECT scope FROM registry_{table} WHERE kind = ?"
                         for table in ("versions", "active", "history", "jobs"))
log = logging.getLogger(__name__)


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
    """A training job's record: who started it and where it runs, its progress, its outcome. Fields no
    step has written yet are None and left out of the record and of the JSON answers."""

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


class Registry:
    def __init__(self, root: str | Path, database: str | Path | None = None, kind: str = "models"):
        """`database`: a SQLite file or a database URL (None or "": `root`/registry.sqlite3); `kind` namespaces
        the rows, so that the policies' and the scorers' registries share one database."""
        if not re.fullmatch(r"[a-z][a-z0-9_]{0,31}", kind):
            raise RegistryError(f"a registry's kind is a short lowercase name, not {kind!r}")
        self.root = Path(root)
        self.kind = kind
        self.db = Database(database or self.root / "registry.sqlite3", store="registry", migrations=MIGRATIONS)
        self._local = threading.local()  # the scopes whose training lock this thread holds through this object
        self._import_legacy()

    def scope_dir(self, scope: str) -> Path:
        if not _SCOPE.match(scope or ""):
            raise RegistryError(f"unknown scope {scope!r}: 'shared' or 'project-<id>'")
        return self.root / scope

    def scopes(self) -> list[str]:
        rows = self.db.fetchall(_SCOPES, (self.kind,) * 4)
        return sorted(scope for (scope,) in rows if _SCOPE.match(scope))

    # ------------------------------------------------------------ versions
    def version_dir(self, scope: str, name: str) -> Path:
        if not VERSION.match(name or "") or name == BASE_VERSION:
            raise RegistryError(f"{name!r} is not a trained version (v1, v2, ...)")
        return self.scope_dir(scope) / "versions" / name

    def versions(self, scope: str) -> list[dict]:
        """Every registered version of the scope, oldest first (an allocation without metadata was never
        registered: a job died while training it)."""
        self.scope_dir(scope)
        rows = self.db.fetchall("SELECT meta FROM registry_versions WHERE kind = ? AND scope = ? AND meta IS NOT NULL "
                                "ORDER BY version", (self.kind, scope))
        return [json.loads(meta) for (meta,) in rows]

    def version(self, scope: str, name: str) -> dict:
        self.version_dir(scope, name)
        row = self.db.fetchone("SELECT meta FROM registry_versions WHERE kind = ? AND scope = ? AND version = ? "
                               "AND meta IS NOT NULL", (self.kind, scope, int(name[1:])))
        if row is None:
            raise UnknownVersion(f"{scope} has no version {name}")
        return json.loads(row[0])

    def allocate(self, scope: str) -> tuple[str, Path]:
        """A new version number and its empty folder (call with the scope's lock held: what a killed job left,
        allocated and never registered, is removed then)."""
        versions = self.scope_dir(scope) / "versions"
        with self.db.transaction() as tx:
            if scope in self._held():
                orphans = tx.execute("DELETE FROM registry_versions WHERE kind = ? AND scope = ? AND meta IS NULL "
                                     "RETURNING version", (self.kind, scope)).fetchall()
                for (number,) in orphans:
                    shutil.rmtree(versions / f"v{number}", ignore_errors=True)
            number = tx.execute("SELECT COALESCE(MAX(version), 0) + 1 FROM registry_versions WHERE kind = ? AND "
                                "scope = ?", (self.kind, scope)).scalar_one()
            tx.execute("INSERT INTO registry_versions (kind, scope, version, meta, created) VALUES (?, ?, ?, NULL, ?)",
                       (self.kind, scope, number, time.time()))
            folder = versions / f"v{number}"
            shutil.rmtree(folder, ignore_errors=True)  # files no row owned (a killed job's, before the database)
            folder.mkdir(parents=True)
        return folder.name, folder

    def register(self, scope: str, name: str, meta: dict, promote_over: str | None = None, why: str = "") -> dict:
        """Record the version's metadata (again, when it changes), its files written: from now on it exists. With
        `promote_over` (the version it was gated against), one whose status is "promoted" is activated in the same
        transaction, if `promote_over` is still active; else it is recorded as rejected (a rollback, or another
        promotion, came while it was made)."""
        self.version_dir(scope, name)
        meta = {**meta, "name": name, "scope": scope}
        promote = promote_over is not None and meta.get("status") == "promoted"
        with self.db.transaction() as tx:
            self._write_meta(tx, scope, name, meta)
            if promote and not self._activate_if(tx, scope, name, promote_over or BASE_VERSION, why):
                current = tx.execute("SELECT version FROM registry_active WHERE kind = ? AND scope = ?",
                                     (self.kind, scope)).scalar_one()
                meta = {**meta, "status": "rejected", "reason": f"{current} became active while {name} was made"}
                self._write_meta(tx, scope, name, meta)
        return meta

    def _write_meta(self, tx: Transaction, scope: str, name: str, meta: dict) -> None:
        tx.execute("INSERT INTO registry_versions (kind, scope, version, meta, created) VALUES (?, ?, ?, ?, ?) "
                   "ON CONFLICT (kind, scope, version) DO UPDATE SET meta = excluded.meta",
                   (self.kind, scope, int(name[1:]), json.dumps(meta, sort_keys=True), time.time()))

    def _activate_if(self, tx: Transaction, scope: str, name: str, expected: str, reason: str) -> bool:
        """Activate `name` if `expected` is the active version, in one statement (so that a concurrent activation
        on PostgreSQL is waited for and seen); whether it was."""
        tx.execute("INSERT INTO registry_active (kind, scope, version) VALUES (?, ?, ?) ON CONFLICT (kind, scope) "
                   "DO NOTHING", (self.kind, scope, BASE_VERSION))  # a scope never activated serves the base
        swapped = tx.execute("UPDATE registry_active SET version = ? WHERE kind = ? AND scope = ? AND version = ?",
                             (name, self.kind, scope, expected)).rowcount
        if swapped:
            self._record(tx, scope, name, expected, reason)
        return bool(swapped)

    def _record(self, tx: Transaction, scope: str, name: str, previous: str, reason: str) -> None:
        entry = {"version": name, "previous": previous, "reason": reason, "at": time.time()}
        tx.execute("INSERT INTO registry_history (kind, scope, entry) VALUES (?, ?, ?)", (self.kind, scope,
                                                                                          json.dumps(entry)))

    def adapter_path(self, scope: str, name: str) -> Path:
        return self.version_dir(scope, name) / "adapter"

    # ------------------------------------------------------------ the active version
    def active(self, scope: str) -> str:
        self.scope_dir(scope)
        row = self.db.fetchone("SELECT version FROM registry_active WHERE kind = ? AND scope = ?", (self.kind, scope))
        return row[0] if row else BASE_VERSION

    def activate(self, scope: str, name: str, reason: str) -> None:
        if name != BASE_VERSION:
            self.version_dir(scope, name)
        self.scope_dir(scope)
        with self.db.transaction() as tx:
            if name != BASE_VERSION and tx.execute(
                    "SELECT 1 FROM registry_versions WHERE kind = ? AND scope = ? AND version = ? AND meta IS NOT NULL",
                    (self.kind, scope, int(name[1:]))).fetchone() is None:
                raise UnknownVersion(f"{scope} has no version {name}")
            row = tx.execute("SELECT version FROM registry_active WHERE kind = ? AND scope = ?",
                             (self.kind, scope)).fetchone()
            tx.execute("INSERT INTO registry_active (kind, scope, version) VALUES (?, ?, ?) "
                       "ON CONFLICT (kind, scope) DO UPDATE SET version = excluded.version", (self.kind, scope, name))
            self._record(tx, scope, name, row[0] if row else BASE_VERSION, reason)

    def rollback(self, scope: str, to: str | None = None) -> str:
        """Serve `to` (any registered version, or v0: the base) again; by default the active version's parent."""
        self.scope_dir(scope)
        if scope not in self.scopes():
            raise UnknownVersion(f"{scope} has never trained a version; there is nothing to roll back")
        current = self.active(scope)
        if to is None:
            if current == BASE_VERSION:
                raise RegistryError(f"{scope} serves the base policy already; there is nothing to roll back")
            to = self.version(scope, current).get("parent") or BASE_VERSION
        self.activate(scope, to, f"rollback from {current}")
        return to

    def history(self, scope: str) -> list[dict]:
        self.scope_dir(scope)
        rows = self.db.fetchall("SELECT entry FROM registry_history WHERE kind = ? AND scope = ? ORDER BY seq",
                                (self.kind, scope))
        return [json.loads(entry) for (entry,) in rows]

    # ------------------------------------------------------------ jobs
    def new_job_id(self, scope: str) -> str:
        self.scope_dir(scope)
        return f"{scope}_{int(time.time() * 1000)}_{os.urandom(3).hex()}"

    def job_path(self, job_id: str) -> Path:
        """Where the job's files go (its log, its spec) are named after: <root>/<scope>/jobs/<job id>.json; the
        record itself is a row."""
        if not JOB.match(job_id or ""):
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
        back, as one transaction against every other writer: the backend, the job's process and its heartbeat
        thread, on this machine or another sharing the database. `change` answering None writes nothing."""
        self.job_path(job_id).parent.mkdir(parents=True, exist_ok=True)  # for the job's log
        with self.db.transaction() as tx:
            row = tx.execute("SELECT record FROM registry_jobs WHERE kind = ? AND job_id = ?",
                             (self.kind, job_id)).fetchone()
            current = _job_from(row[0], job_id) if row else None
            fields = change(current)
            if fields is None:
                return current
            unknown = set(fields) - set(JobRecord.model_fields)
            if unknown:
                raise ValueError(f"a job record has no field {', '.join(sorted(unknown))}")
            now = time.time()
            base = current.model_dump() if current else {"id": job_id, "scope": job_scope(job_id), "created": now}
            job = JobRecord.model_validate({**base, **fields, "updated": now})
            tx.execute("INSERT INTO registry_jobs (kind, job_id, scope, record, updated) VALUES (?, ?, ?, ?, ?) "
                       "ON CONFLICT (kind, job_id) DO UPDATE SET record = excluded.record, updated = excluded.updated",
                       (self.kind, job_id, job.scope, json.dumps(job.to_json(), sort_keys=True), now))
        return job

    @contextmanager
    def heartbeat(self, job_id: str, every: float = 30.0) -> Iterator[None]:
        """Touch the job's record every so often while the block runs, so that a watcher on another machine
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
        self.job_path(job_id)
        row = self.db.fetchone("SELECT record FROM registry_jobs WHERE kind = ? AND job_id = ?", (self.kind, job_id))
        return _job_from(row[0], job_id) if row else None

    def jobs(self, scope: str) -> list[JobRecord]:
        self.scope_dir(scope)
        rows = self.db.fetchall("SELECT job_id, record FROM registry_jobs WHERE kind = ? AND scope = ?",
                                (self.kind, scope))
        jobs = [_job_from(record, job_id) for job_id, record in rows]
        return sorted((j for j in jobs if j), key=lambda j: j.created)

    def trained_through(self, scope: str) -> int:
        """The newest trajectory id a job of this scope has taken (or will take) into account."""
        return max((j.through_id or 0 for j in self.jobs(scope)), default=0)

    @contextmanager
    def lock(self, scope: str) -> Iterator[None]:
        """The scope's training lock, across processes (and machines sharing a PostgreSQL database), freed when
        its holder dies; Busy if held."""
        with ExitStack() as stack:
            try:
                stack.enter_context(exclusive(self.db, f"train:{self.kind}:{scope}",
                                              self.scope_dir(scope) / "train.lock"))
            except Held as exc:
                raise Busy(f"a training job of {scope} is running") from exc
            held = self._held()
            held.add(scope)
            try:
                yield
            finally:
                held.discard(scope)

    def trainer_gone(self, scope: str) -> bool:
        """Whether no process holds the scope's training lock (taken and let go at once): a job recorded running
        took that lock before saying so and keeps it until its outcome is written, so a running job whose lock is
        free lost its trainer (killed, its machine gone)."""
        try:
            with self.lock(scope):
                return True
        except Busy:
            return False

    def _held(self) -> set[str]:
        if not hasattr(self._local, "scopes"):
            self._local.scopes = set()
        return self._local.scopes

    # ------------------------------------------------------------ a root written before the database
    def _import_legacy(self) -> None:
        """A root whose state is still files (active.json, history.jsonl, jobs/*.json, versions/*/meta.json) is
        imported into a database that has no rows of this kind, once, in one transaction; the files stay."""
        if self.db.fetchone(_HAS_ROWS, (self.kind,) * 4) or not has_legacy_files(self.root):
            return
        with self.db.transaction() as tx:
            if tx.execute(_HAS_ROWS, (self.kind,) * 4).fetchone():
                return  # another process imported it meanwhile
            scopes = [state for state in read_legacy(self.root) if _SCOPE.match(state.scope)]
            for state in scopes:
                insert_scope(tx, self.kind, state)
        log.info("%s: imported %d scopes of the %s registry into its database", self.root, len(scopes), self.kind)


def _job_from(record: str, job_id: str) -> JobRecord | None:
    try:
        return JobRecord.model_validate_json(record)
    except ValidationError as exc:
        log.warning("the record of job %s is not a job record; left out: %s", job_id, exc)
        return None


def this_host() -> str:
    return socket.gethostname()
