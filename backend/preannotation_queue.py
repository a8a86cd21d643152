"""The durable queue of project pre-annotation: one row per (project, task, model version), so a task is
predicted once per version however often it is asked for, and what was queued survives a restart
(`kill -9` included: a task taken but not finished is taken again at the next start)."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from model.core.sqlite import Database

MIGRATIONS = ["""
CREATE TABLE items (
    project TEXT NOT NULL,
    task_id INTEGER NOT NULL,
    model_version TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    not_before REAL NOT NULL DEFAULT 0,
    queued REAL NOT NULL,
    finished REAL,
    PRIMARY KEY (project, task_id, model_version)
);
CREATE INDEX items_by_state ON items (state, not_before);
"""]
MAX_ATTEMPTS = 3
RATE_WINDOW = 300.0  # seconds of finished tasks the rate is measured over


@dataclass(frozen=True)
class Item:
    project: str
    task_id: int
    model_version: str
    attempts: int


class PreannotationQueue:
    def __init__(self, path: Path):
        self._db = Database(path, MIGRATIONS)
        with self._db.transaction() as db:  # what a stopped process had taken is waiting again
            db.execute("UPDATE items SET state = 'queued' WHERE state = 'running'")

    def add(self, project: str, task_ids: list[int], model_version: str) -> list[Item]:
        """Queue tasks; those already queued, done or failed for this version are left as they are. The
        items newly queued."""
        now = time.time()
        with self._db.transaction() as db:
            return [Item(project, task_id, model_version, 0) for task_id in task_ids if db.execute(
                "INSERT OR IGNORE INTO items (project, task_id, model_version, state, queued) VALUES (?, ?, ?, 'queued', ?)",
                (project, task_id, model_version, now)).rowcount]

    def waiting(self) -> list[Item]:
        """Every queued item, oldest first (for a runner that hands them out elsewhere)."""
        rows = self._db.fetchall("SELECT project, task_id, model_version, attempts FROM items WHERE state = 'queued' "
                                 "ORDER BY queued, task_id")
        return [Item(*row) for row in rows]

    def claim(self, project: str, task_id: int, model_version: str) -> Item | None:
        """This item, marked running, if it is queued (not done, failed for good, or running elsewhere)."""
        with self._db.transaction() as db:
            row = db.execute("SELECT attempts FROM items WHERE project = ? AND task_id = ? AND model_version = ? "
                             "AND state = 'queued'", (project, task_id, model_version)).fetchone()
            if row is None:
                return None
            db.execute("UPDATE items SET state = 'running' WHERE project = ? AND task_id = ? AND model_version = ?",
                       (project, task_id, model_version))
            return Item(project, task_id, model_version, row[0])

    def take(self) -> Item | None:
        """The oldest queued task that may run now, marked running."""
        with self._db.transaction() as db:
            row = db.execute("SELECT project, task_id, model_version, attempts FROM items WHERE state = 'queued' "
                             "AND not_before <= ? ORDER BY queued, task_id LIMIT 1", (time.time(),)).fetchone()
            if row is None:
                return None
            db.execute("UPDATE items SET state = 'running' WHERE project = ? AND task_id = ? AND model_version = ?",
                       row[:3])
            return Item(*row)

    def done(self, item: Item, note: str | None = None) -> None:
        self._finish(item, "done", note)

    def failed(self, item: Item, error: str) -> None:
        """A failed attempt: retried later, with backoff, until MAX_ATTEMPTS."""
        if item.attempts + 1 >= MAX_ATTEMPTS:
            self._finish(item, "failed", error, attempts=item.attempts + 1)
            return
        with self._db.transaction() as db:
            db.execute("UPDATE items SET state = 'queued', attempts = attempts + 1, error = ?, not_before = ? "
                       "WHERE project = ? AND task_id = ? AND model_version = ?",
                       (error[:500], time.time() + 2.0 ** (item.attempts + 1), item.project, item.task_id,
                        item.model_version))

    def later(self, item: Item, seconds: float, reason: str) -> None:
        """Not now, and not the task's fault (Label Studio not known yet): no attempt is counted."""
        with self._db.transaction() as db:
            db.execute("UPDATE items SET state = 'queued', error = ?, not_before = ? WHERE project = ? AND task_id = ? "
                       "AND model_version = ?", (reason[:500], time.time() + seconds, item.project, item.task_id,
                                                 item.model_version))

    def _finish(self, item: Item, state: str, note: str | None, attempts: int | None = None) -> None:
        with self._db.transaction() as db:
            db.execute("UPDATE items SET state = ?, error = ?, finished = ?, attempts = COALESCE(?, attempts) "
                       "WHERE project = ? AND task_id = ? AND model_version = ?",
                       (state, note[:500] if note else None, time.time(), attempts, item.project, item.task_id,
                        item.model_version))

    def progress(self, project: str) -> dict:
        """done, total, failed (with reasons), rate (tasks a minute, lately) and the time left."""
        counts = dict(self._db.fetchall("SELECT state, COUNT(*) FROM items WHERE project = ? GROUP BY state",
                                        (project,)))
        recent = self._db.fetchall("SELECT COUNT(*), MIN(finished) FROM items WHERE project = ? AND finished >= ?",
                                   (project, time.time() - RATE_WINDOW))[0]
        reasons = self._db.fetchall("SELECT task_id, error FROM items WHERE project = ? AND state = 'failed' "
                                    "ORDER BY finished DESC LIMIT 10", (project,))
        done, failed = counts.get("done", 0), counts.get("failed", 0)
        remaining = counts.get("queued", 0) + counts.get("running", 0)
        elapsed = time.time() - recent[1] if recent[0] else 0.0
        rate = 60.0 * recent[0] / elapsed if elapsed > 1 else None
        return {"done": done, "failed": failed, "remaining": remaining, "total": done + failed + remaining,
                "failures": [{"task": task, "reason": error} for task, error in reasons],
                "tasks_per_minute": round(rate, 1) if rate else None,
                "eta_seconds": round(60.0 * remaining / rate) if rate and remaining else (0 if not remaining else None)}

    def projects(self) -> list[str]:
        return [row[0] for row in self._db.fetchall("SELECT DISTINCT project FROM items ORDER BY project")]

    def close(self) -> None:
        self._db.close()
