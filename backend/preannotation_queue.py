"""The durable queue of project pre-annotation: one row per (project, task, model version), so a task is
predicted once per version however often it is asked for, and what was queued survives a restart.

Several queues may share the database (worker threads, RQ workers and web processes on one SEGAGENT_DATA_DIR, or on
several machines sharing SEGAGENT_DATABASE_URL), and a task is claimed by one of them at a time: claiming it leases
it, for LEASE_SECONDS (or SEGAGENT_PREANNOTATION_LEASE_SECONDS), to a token of that claim, and the claiming queue's
heartbeat renews its leases while its process lives. The heartbeats also queue again, counting an attempt, each
task whose lease has expired (its holder killed with `kill -9`, or frozen), and hand it to `on_expired` (the runner
hands it out); what a holder says about a task whose lease it lost (done, failed, later) changes nothing. A queue
closed cleanly hands back the tasks it still holds, so that the next start runs them at once."""
from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.exc import DBAPIError

from model.core.database import Database

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).with_name("migrations") / "preannotation"
MAX_ATTEMPTS = 3
RATE_WINDOW = 300.0  # seconds of finished tasks the rate is measured over
# How long a claimed task stays its holder's without a renewal: what a kill costs before the task runs
# elsewhere. The heartbeat renews every quarter of it, so a holder keeps its task through three missed beats.
LEASE_SECONDS = 60.0
KEY = "project = ? AND task_id = ? AND model_version = ?"


@dataclass(frozen=True)
class Item:
    project: str
    task_id: int
    model_version: str
    attempts: int
    lease: str = ""  # the token of the claim that holds it; empty for an item not claimed
    not_before: float = 0.0  # when a queued item may be tried again (a failed attempt's backoff), a Unix time

    @property
    def key(self) -> tuple[str, int, str]:
        return self.project, self.task_id, self.model_version


class PreannotationQueue:
    def __init__(self, target: str | Path, lease_seconds: float | None = None):
        """`target`: the SQLite file, or the database URL; `lease_seconds`: LEASE_SECONDS unless given."""
        self._db = Database(target, store="preannotation", migrations=MIGRATIONS)
        self.lease_seconds = lease_seconds or LEASE_SECONDS
        self._held: set[Item] = set()
        self._held_lock = threading.Lock()
        self._stop = threading.Event()
        self.on_expired: Callable[[list[Item]], None] | None = None  # hands out again what a stopped holder held
        self._heartbeat = threading.Thread(target=self._beat, daemon=True, name="preannotation-leases")
        self._heartbeat.start()

    def add(self, project: str, task_ids: list[int], model_version: str) -> list[Item]:
        """Queue tasks; those already queued, done or failed for this version are left as they are. The
        items newly queued."""
        now = time.time()
        with self._db.transaction() as db:
            return [Item(project, task_id, model_version, 0) for task_id in task_ids if db.execute(
                "INSERT INTO items (project, task_id, model_version, state, queued) VALUES (?, ?, ?, 'queued', ?) "
                "ON CONFLICT DO NOTHING",
                (project, task_id, model_version, now)).rowcount]

    def waiting(self) -> list[Item]:
        """Every queued item, oldest first (for a runner that hands them out elsewhere), with its backoff."""
        rows = self._db.fetchall("SELECT project, task_id, model_version, attempts, not_before FROM items "
                                 "WHERE state = 'queued' ORDER BY queued, task_id")
        return [Item(project, task_id, version, attempts, not_before=not_before)
                for project, task_id, version, attempts, not_before in rows]

    def claim(self, project: str, task_id: int, model_version: str) -> Item | None:
        """This item, leased to this claim, if it is queued (not done, failed for good, or held)."""
        with self._db.transaction() as db:
            row = db.execute(f"SELECT attempts FROM items WHERE {KEY} AND state = 'queued'",
                             (project, task_id, model_version)).fetchone()
            if row is None:
                return None
            item = Item(project, task_id, model_version, row[0], uuid.uuid4().hex)
            db.execute(f"UPDATE items SET state = 'running', lease = ?, lease_expires = ? WHERE {KEY}",
                       (item.lease, time.time() + self.lease_seconds, *item.key))
        with self._held_lock:  # once committed: the heartbeat renews the lease from now on
            self._held.add(item)
        return item

    def done(self, item: Item, note: str | None = None) -> None:
        self._finish(item, "done", note)

    def failed(self, item: Item, error: str) -> None:
        """A failed attempt: retried later, with backoff, until MAX_ATTEMPTS."""
        if item.attempts + 1 >= MAX_ATTEMPTS:
            self._finish(item, "failed", error, attempts=item.attempts + 1)
            return
        self._release(item, "attempts = attempts + 1, error = ?, not_before = ?",
                      (error[:500], time.time() + 2.0 ** (item.attempts + 1)))

    def later(self, item: Item, seconds: float, reason: str) -> None:
        """Not now, and not the task's fault (Label Studio not known yet): no attempt is counted."""
        self._release(item, "error = ?, not_before = ?", (reason[:500], time.time() + seconds))

    def _finish(self, item: Item, state: str, note: str | None, attempts: int | None = None) -> None:
        self._settle(item, "state = ?, lease = NULL, error = ?, finished = ?, attempts = COALESCE(?, attempts)",
                     (state, note[:500] if note else None, time.time(), attempts))

    def _release(self, item: Item, changes: str, values: tuple) -> None:
        self._settle(item, f"state = 'queued', lease = NULL, {changes}", values)

    def _settle(self, item: Item, changes: str, values: tuple) -> None:
        """Change the item's row if this claim still holds it; a holder whose lease ran out changes nothing."""
        with self._held_lock:  # before the write, so that the heartbeat never counts a settled item as lost
            self._held.discard(item)
        with self._db.transaction() as db:
            settled = db.execute(f"UPDATE items SET {changes} WHERE {KEY} AND state = 'running' AND lease = ?",
                                 (*values, *item.key, item.lease)).rowcount
        if not settled:
            log.warning("project %s, task %s: its lease ran out and it was queued again; what this worker found is "
                        "dropped", item.project, item.task_id)

    def _beat(self) -> None:
        """Every quarter lease until closed: renew the leases this queue holds, then, if it can hand them out,
        queue again the tasks whose lease expired (a queue that cannot leaves them to one that can)."""
        while not self._stop.wait(self.lease_seconds / 4):
            hand_out = self.on_expired
            try:
                self._renew()
                expired = self._requeue_expired() if hand_out is not None else []
            except DBAPIError as exc:  # busy past its timeout: the next beat tries again
                log.warning("pre-annotation leases: %s: %s", type(exc).__name__, exc)
                continue
            if expired and hand_out is not None:
                try:
                    hand_out(expired)
                except Exception as exc:  # they are queued: the next start hands them out
                    log.warning("pre-annotation: %d tasks whose holder stopped are queued but not handed out: %s: %s",
                                len(expired), type(exc).__name__, exc)

    def _renew(self) -> None:
        with self._held_lock:
            held = list(self._held)
        if not held:
            return
        with self._db.transaction() as db:
            expires = time.time() + self.lease_seconds
            lost = [item for item in held if not db.execute(
                f"UPDATE items SET lease_expires = ? WHERE {KEY} AND state = 'running' AND lease = ?",
                (expires, *item.key, item.lease)).rowcount]
        with self._held_lock:
            lost = [item for item in lost if item in self._held]
            self._held.difference_update(lost)
        for item in lost:
            log.warning("project %s, task %s: its lease ran out (this process stalled) and it was queued again",
                        item.project, item.task_id)

    def _requeue_expired(self) -> list[Item]:
        """Queue again the tasks whose holder stopped renewing, an attempt counted (a task that kills its worker
        fails for good after MAX_ATTEMPTS); the items queued again."""
        now = time.time()
        with self._db.transaction() as db:
            rows = db.execute("SELECT project, task_id, model_version, attempts FROM items WHERE state = 'running' "
                              "AND lease_expires < ?", (now,)).fetchall()
            expired = [Item(project, task_id, version, attempts + 1) for project, task_id, version, attempts in rows]
            for item in expired:
                final = item.attempts >= MAX_ATTEMPTS
                db.execute(f"UPDATE items SET state = ?, lease = NULL, attempts = ?, error = ?, finished = ? WHERE {KEY}",
                           ("failed" if final else "queued", item.attempts,
                            f"its worker stopped while running it (attempt {item.attempts})", now if final else None,
                            *item.key))
        requeued = [item for item in expired if item.attempts < MAX_ATTEMPTS]
        for item in requeued:
            log.warning("project %s, task %s: its worker stopped while running it; queued again", item.project,
                        item.task_id)
        return requeued

    def progress(self, project: str) -> dict:
        """done, total, failed (with reasons), rate (tasks a minute, lately) and the time left; of those done, how
        many got a prediction written (`written`) and how many were skipped, by the reason noted (`skipped`)."""
        counts = dict(self._db.fetchall("SELECT state, COUNT(*) FROM items WHERE project = ? GROUP BY state",
                                        (project,)))
        notes = self._db.fetchall("SELECT error, COUNT(*) FROM items WHERE project = ? AND state = 'done' "
                                  "GROUP BY error", (project,))
        recent = self._db.fetchall("SELECT COUNT(*), MIN(finished) FROM items WHERE project = ? AND finished >= ?",
                                   (project, time.time() - RATE_WINDOW))[0]
        reasons = self._db.fetchall("SELECT task_id, error FROM items WHERE project = ? AND state = 'failed' "
                                    "ORDER BY finished DESC LIMIT 10", (project,))
        done, failed = counts.get("done", 0), counts.get("failed", 0)
        remaining = counts.get("queued", 0) + counts.get("running", 0)
        elapsed = time.time() - recent[1] if recent[0] else 0.0
        rate = 60.0 * recent[0] / elapsed if elapsed > 1 else None
        return {"done": done, "failed": failed, "remaining": remaining, "total": done + failed + remaining,
                "written": sum(count for note, count in notes if note is None),
                "skipped": {note: count for note, count in notes if note is not None},
                "failures": [{"task": task, "reason": error} for task, error in reasons],
                "tasks_per_minute": round(rate, 1) if rate else None,
                "eta_seconds": round(60.0 * remaining / rate) if rate and remaining else (0 if not remaining else None)}

    def projects(self) -> list[str]:
        return [row[0] for row in self._db.fetchall("SELECT DISTINCT project FROM items ORDER BY project")]

    def close(self) -> None:
        """Stop renewing, and hand back what this queue still holds (a clean stop: the next start runs it)."""
        self._stop.set()
        self._heartbeat.join()
        with self._held_lock:
            held, self._held = list(self._held), set()
        with self._db.transaction() as db:
            for item in held:
                db.execute(f"UPDATE items SET state = 'queued', lease = NULL WHERE {KEY} AND state = 'running' "
                           "AND lease = ?", (*item.key, item.lease))
        self._db.close()
