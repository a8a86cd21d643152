"""The registry as files, as it was before its state moved into the database, read once so that an upgrade keeps
every scope's versions, active version, history and job records:

    <root>/<scope>/versions/vN/meta.json    a registered version (a folder without one was never registered)
    <root>/<scope>/active.json              {"version": ..., "previous": ..., "reason": ..., "at": ...}
    <root>/<scope>/history.jsonl            one such entry a line
    <root>/<scope>/jobs/<job id>.json       a job's record
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from model.core.database import Transaction
from model.flywheel.scopes import BASE_VERSION, JOB, VERSION, job_scope

log = logging.getLogger(__name__)


@dataclass
class LegacyScope:
    scope: str
    versions: dict[str, dict] = field(default_factory=dict)  # folder name (vN): meta
    active: str | None = None
    history: list[dict] = field(default_factory=list)
    jobs: dict[str, dict] = field(default_factory=dict)  # job id: record

    def __bool__(self) -> bool:
        return bool(self.versions or self.active or self.history or self.jobs)


def has_legacy_files(root: Path) -> bool:
    """Whether the folder holds any of the files the registry wrote before the database (a cheap look)."""
    if not root.is_dir():
        return False
    return any((scope / "active.json").exists() or (scope / "history.jsonl").exists()
               or any(scope.glob("jobs/*.json")) or any(scope.glob("versions/*/meta.json"))
               for scope in root.iterdir() if scope.is_dir())


def read_legacy(root: Path) -> list[LegacyScope]:
    """Every scope folder's state; the caller checks the names. A file that does not parse is left out."""
    scopes = [_read_scope(folder) for folder in sorted(root.iterdir()) if folder.is_dir()] if root.is_dir() else []
    return [scope for scope in scopes if scope]


def _read_scope(folder: Path) -> LegacyScope:
    state = LegacyScope(folder.name)
    for meta_path in sorted(folder.glob("versions/*/meta.json")):
        meta = _read_json(meta_path)
        if meta is not None:
            state.versions[meta_path.parent.name] = meta
    pointer = _read_json(folder / "active.json")
    state.active = pointer.get("version") if pointer else None
    history = folder / "history.jsonl"
    if history.exists():
        for line in history.read_text().splitlines():
            entry = _parse(line, history)
            if entry is not None:
                state.history.append(entry)
    for job_path in sorted(folder.glob("jobs/*.json")):
        record = _read_json(job_path)
        if record is not None:
            state.jobs[job_path.stem] = record
    return state


def _read_json(path: Path) -> dict | None:
    try:
        return _parse(path.read_text(), path)
    except FileNotFoundError:
        return None


def _parse(text: str, path: Path) -> dict | None:
    if not text.strip():
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        log.warning("%s: not JSON; not imported into the registry's database", path)
        return None
    return data if isinstance(data, dict) else None


def insert_scope(tx: Transaction, kind: str, state: LegacyScope) -> None:
    """A scope's legacy state as the registry's rows (well-formed names only)."""
    scope = state.scope
    tx.executemany("INSERT INTO registry_versions (kind, scope, version, meta, created) VALUES (?, ?, ?, ?, ?)",
                   [(kind, scope, int(name[1:]), json.dumps(meta, sort_keys=True), _seconds(meta.get("created")))
                    for name, meta in state.versions.items() if VERSION.match(name) and name != BASE_VERSION])
    if state.active and VERSION.match(state.active):
        tx.execute("INSERT INTO registry_active (kind, scope, version) VALUES (?, ?, ?)", (kind, scope, state.active))
    tx.executemany("INSERT INTO registry_history (kind, scope, entry) VALUES (?, ?, ?)",
                   [(kind, scope, json.dumps(entry)) for entry in state.history])
    tx.executemany("INSERT INTO registry_jobs (kind, job_id, scope, record, updated) VALUES (?, ?, ?, ?, ?)",
                   [(kind, job_id, scope, json.dumps(record, sort_keys=True), _seconds(record.get("updated")))
                    for job_id, record in state.jobs.items() if JOB.match(job_id) and job_scope(job_id) == scope])


def _seconds(value: Any) -> float:
    return float(value) if isinstance(value, int | float) else 0.0
