"""What the backend keeps, in its database (model/core/database.py: SQLite or PostgreSQL), masks as COCO RLE:
- the annotations Label Studio sent through its webhook, one row per region. An update replaces the
  annotation's rows; a replay of the same version (same annotation id and updated_at), or an older version
  arriving late, changes nothing; a delete removes them;
- the agent's episodes (its own predictions: clicks, final mask, score), for the flywheel;
- the interactive requests (the clicks an annotator placed so far and the mask they gave), so that the
  real human clicks can be joined to the annotation finally submitted;
- the derived work an annotation still owes (its quality scores, the write-back, its trajectories),
  written in the same transaction as the annotation, so that work acknowledged with a 2xx survives a
  crash and is resumed at the next start.
"""
from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from sqlalchemy.exc import DBAPIError

from model.core.database import Database
from model.core.masks import rle_decode, rle_encode

from .errors import Conflict, StorageFull, out_of_space

MIGRATIONS = Path(__file__).with_name("migrations") / "annotations"


@dataclass(frozen=True)
class PendingWork:
    """What an annotation's derived work needs beyond its stored regions."""

    annotation_id: int
    updated_at: str
    project: str
    task_id: int
    image: str  # the task's image reference
    task_data: dict  # written back with the quality score
    attempts: int = 0


class AnnotationStore:
    def __init__(self, target: str | Path):
        """`target`: the SQLite file, or the database URL."""
        self._db = Database(target, store="annotations", migrations=MIGRATIONS)

    @property
    def schema_version(self) -> int:
        return self._db.revision

    def replace(self, project: str, task_id: int, annotation_id: int, updated_at: str,
                regions: list[tuple[str, str | None, str, np.ndarray, str | None]],
                work: PendingWork | None = None) -> bool:
        """Keep an annotation's regions (label, prompt, source, mask, region id) and the derived work it owes,
        in one transaction; False when this version, or a newer one, is already kept."""
        now = time.time()
        rows = [(project, task_id, annotation_id, updated_at, index, label, prompt, source,
                 json.dumps(rle_encode(mask)), now, region_id)
                for index, (label, prompt, source, mask, region_id) in enumerate(regions)]
        with self._storing("annotation", annotation_id), self._db.transaction() as db:
            row = db.execute("SELECT updated_at, project FROM annotation_regions WHERE annotation_id = ? LIMIT 1",
                             (annotation_id,)).fetchone()
            if row is not None and row[1] != project:
                raise Conflict(f"annotation {annotation_id} is kept for project {row[1] or '(none)'}, not "
                               f"{project or '(none)'}: one backend serves one Label Studio, whose annotation ids "
                               "are unique")
            if row is not None and not is_newer(updated_at, row[0]):
                return False
            db.execute("DELETE FROM annotation_regions WHERE annotation_id = ?", (annotation_id,))
            db.execute("DELETE FROM derived_work WHERE annotation_id = ?", (annotation_id,))
            db.executemany("INSERT INTO annotation_regions (project, task_id, annotation_id, updated_at, region_index, "
                           "label, prompt, source, mask_rle, received, region_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                           rows)
            if work is not None:
                db.execute("INSERT INTO derived_work (annotation_id, updated_at, project, task_id, image, task_data, "
                           "queued) VALUES (?, ?, ?, ?, ?, ?, ?)",
                           (annotation_id, updated_at, project, task_id, work.image, json.dumps(work.task_data), now))
            return True

    def of_other_projects(self, annotation_ids: list[int], project: str) -> set[int]:
        """Those of the annotations that are kept for another project than this one."""
        found: set[int] = set()
        for start in range(0, len(annotation_ids), 500):  # SQLite binds 32,766 values at most
            chunk = annotation_ids[start:start + 500]
            found |= {row[0] for row in self._db.fetchall(
                f"SELECT DISTINCT annotation_id FROM annotation_regions WHERE annotation_id IN "
                f"({', '.join('?' * len(chunk))}) AND project <> ?", [*chunk, project])}
        return found

    def delete(self, annotation_ids: list[int]) -> int:
        with self._storing("annotation", annotation_ids), self._db.transaction() as db:
            for annotation_id in annotation_ids:
                db.execute("DELETE FROM derived_work WHERE annotation_id = ?", (annotation_id,))
            return sum(db.execute("DELETE FROM annotation_regions WHERE annotation_id = ?", (annotation_id,)).rowcount
                       for annotation_id in annotation_ids)

    def is_current(self, annotation_id: int, updated_at: str) -> bool:
        """Whether the annotation is kept at this version (not deleted, not updated since)."""
        return self._db.fetchone("SELECT 1 FROM annotation_regions WHERE annotation_id = ? AND updated_at = ? LIMIT 1",
                                 (annotation_id, updated_at)) is not None

    def pending_work(self, annotation_id: int | None = None, max_attempts: int | None = None) -> list[PendingWork]:
        """The derived work still owed: of one annotation, or of all, oldest first (those that failed
        max_attempts times or more left out)."""
        conditions, args = ["1 = 1"], []
        if annotation_id is not None:
            conditions.append("annotation_id = ?")
            args.append(annotation_id)
        if max_attempts is not None:
            conditions.append("attempts < ?")
            args.append(max_attempts)
        rows = self._db.fetchall(
            "SELECT annotation_id, updated_at, project, task_id, image, task_data, attempts FROM derived_work "
            f"WHERE {' AND '.join(conditions)} ORDER BY queued", args)
        return [PendingWork(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]), r[6]) for r in rows]

    def finish_work(self, annotation_id: int, updated_at: str) -> None:
        """The work of this version is done (a newer version's stays owed)."""
        with self._db.transaction() as db:
            db.execute("DELETE FROM derived_work WHERE annotation_id = ? AND updated_at = ?", (annotation_id, updated_at))

    def work_failed(self, annotation_id: int, updated_at: str, error: str) -> None:
        with self._db.transaction() as db:
            db.execute("UPDATE derived_work SET attempts = attempts + 1, last_error = ? WHERE annotation_id = ? "
                       "AND updated_at = ?", (error[:500], annotation_id, updated_at))

    def unlearned_before(self, moment: float) -> int:
        """How many annotations acknowledged before `moment` owe work that has not run yet (work that failed
        waits for a replay or a restart, so it is not counted)."""
        return int(self._db.fetchall("SELECT COUNT(*) FROM derived_work WHERE queued <= ? AND attempts = 0",
                                     (moment,))[0][0])

    def work_counts(self, max_attempts: int) -> dict:
        pending, failed = self._db.fetchall(
            "SELECT COUNT(*) FILTER (WHERE attempts < ?), COUNT(*) FILTER (WHERE attempts >= ?) FROM derived_work",
            (max_attempts, max_attempts))[0]
        return {"pending": pending, "failed": failed}

    def regions(self, annotation_id: int) -> list[dict]:
        rows = self._db.fetchall(
            "SELECT label, prompt, source, mask_rle, quality, region_id FROM annotation_regions WHERE annotation_id = ? "
            "ORDER BY region_index", (annotation_id,))
        return [{"label": r[0], "prompt": r[1], "source": r[2], "mask": rle_decode(json.loads(r[3])), "quality": r[4],
                 "region_id": r[5]} for r in rows]

    def set_quality(self, annotation_id: int, updated_at: str, scores: list[float]) -> bool:
        """Store the regions' quality scores, unless the annotation changed meanwhile (False then)."""
        with self._db.transaction() as db:
            changed = sum(db.execute(
                "UPDATE annotation_regions SET quality = ? WHERE annotation_id = ? AND region_index = ? "
                "AND updated_at = ?", (score, annotation_id, index, updated_at)).rowcount
                for index, score in enumerate(scores))
            return changed == len(scores)

    def lowest_quality(self, project: str, limit: int) -> list[dict]:
        """Scored annotations of a project, worst first: each annotation's worst region."""
        rows = self._db.fetchall(
            f"SELECT annotation_id, task_id, MIN(quality), COUNT(*), {self._db.joined('label', ', ')} "
            "FROM annotation_regions WHERE project = ? AND quality IS NOT NULL GROUP BY annotation_id, task_id "
            "ORDER BY MIN(quality), annotation_id LIMIT ?",
            (project, limit))
        return [{"annotation_id": r[0], "task_id": r[1], "quality": round(r[2], 4), "regions": r[3], "labels": r[4]}
                for r in rows]

    def annotation_qualities(self, project: str) -> list[float | None]:
        """Each annotation of a project as lowest_quality ranks it (its worst region's score), None for one not
        scored yet."""
        return [row[0] for row in self._db.fetchall(
            "SELECT MIN(quality) FROM annotation_regions WHERE project = ? GROUP BY annotation_id", (project,))]

    def projects(self) -> list[str]:
        return [row[0] for row in self._db.fetchall("SELECT DISTINCT project FROM annotation_regions ORDER BY project")]

    def record_episode(self, project: str, task_id: int, label: str, description: str, model_version: str,
                       steps: list[dict], mask: np.ndarray, score: float, stop_reason: str) -> None:
        """One agent episode: steps are {"action": text, "x", "y", "positive", "score"} in pixels."""
        with self._db.transaction() as db:
            db.execute(
                "INSERT INTO agent_episodes (project, task_id, label, description, model_version, steps, mask_rle,"
                " score, stop_reason, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (project, task_id, label, description, model_version, json.dumps(steps), json.dumps(rle_encode(mask)),
                 score, stop_reason, time.time()))

    def episodes(self, project: str, task_id: int) -> list[dict]:
        rows = self._db.fetchall(
            "SELECT label, description, model_version, steps, mask_rle, score, stop_reason FROM agent_episodes "
            "WHERE project = ? AND task_id = ? ORDER BY id", (project, task_id))
        return [{"label": r[0], "description": r[1], "model_version": r[2], "steps": json.loads(r[3]),
                 "mask": rle_decode(json.loads(r[4])), "score": r[5], "stop_reason": r[6]} for r in rows]

    def record_interactive(self, project: str, task_id: int, label: str, clicks: list[tuple[float, float, bool]],
                           mask: np.ndarray, region_id: str | None = None) -> None:
        with self._db.transaction() as db:
            db.execute(
                "INSERT INTO interactive_steps (project, task_id, label, clicks, mask_rle, created, region_id) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)", (project, task_id, label, json.dumps(clicks),
                                                 json.dumps(rle_encode(mask)), time.time(), region_id))

    def interactive_steps(self, project: str, task_id: int, label: str,
                          region_id: str | None = None) -> list[tuple[list, np.ndarray]]:
        """(clicks so far, mask) of each interactive request on one object, oldest first: the requests of
        that region when it has an id they carry, else every request of the label on the task."""
        rows = self._db.fetchall(
            "SELECT clicks, mask_rle, region_id FROM interactive_steps WHERE project = ? AND task_id = ? AND label = ? "
            "ORDER BY id", (project, task_id, label))
        if region_id is not None and any(row[2] == region_id for row in rows):
            rows = [row for row in rows if row[2] == region_id]
        return [(json.loads(clicks), rle_decode(json.loads(mask))) for clicks, mask, _ in rows]

    def interactive_objects(self, project: str, task_id: int) -> list[tuple[str, str | None, np.ndarray]]:
        """(label, region id, last mask) of each interactive object of the task: the last answer per region id,
        and per label for the requests that carry no id."""
        last: dict[tuple[str, str | None], str] = {}
        for label, region_id, mask in self._db.fetchall(
                "SELECT label, region_id, mask_rle FROM interactive_steps WHERE project = ? AND task_id = ? ORDER BY id",
                (project, task_id)):
            last[(label, region_id)] = mask
        return [(label, region_id, rle_decode(json.loads(mask))) for (label, region_id), mask in last.items()]

    def prune(self, before: float) -> int:
        """Forget agent episodes and interactive requests older than `before` (a time): what they could
        still become, a correction or a human trajectory, needed an annotation that never came."""
        with self._db.transaction() as db:
            return sum(db.execute(f"DELETE FROM {table} WHERE created < ?", (before,)).rowcount
                       for table in ("agent_episodes", "interactive_steps"))

    @staticmethod
    @contextmanager
    def _storing(what: str, which: object) -> Iterator[None]:
        """A write that failed for lack of space as StorageFull (507): the request is not acknowledged."""
        try:
            yield
        except DBAPIError as exc:
            if not out_of_space(exc):
                raise
            raise StorageFull(f"{what} {which} not kept: the backend's data folder is full ({exc})") from exc

    def close(self) -> None:
        self._db.close()

    def counts(self) -> dict:
        annotations, regions = self._db.fetchall(
            "SELECT COUNT(DISTINCT annotation_id), COUNT(*) FROM annotation_regions")[0]
        (episodes,) = self._db.fetchall("SELECT COUNT(*) FROM agent_episodes")[0]
        return {"annotations": annotations, "regions": regions, "episodes": episodes}


def is_newer(version: str, kept: str) -> bool:
    """Whether an annotation's version (Label Studio's updated_at) is newer than the one kept. Compared as
    times, since one text may carry more digits of a second than another; texts that are not times differ or not."""
    try:
        return _moment(version) > _moment(kept)
    except ValueError:
        return version != kept


def _moment(version: str) -> datetime:
    moment = datetime.fromisoformat(version)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
