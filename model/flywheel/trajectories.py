"""Trajectories: click sequences that lead to a mask, the training data of the policy.

The rows are in the store's database (model/core/database.py: SQLite in WAL mode beside the images, or
PostgreSQL), its schema brought up to date by the Alembic revisions in migrations/; masks are COCO RLE; images
are kept once, by content hash, as PNG files in the store's folder, so that training does not depend
on Label Studio being up. An annotation's trajectories are replaced as a whole: a replay of the same
version stores nothing new, an update replaces what the earlier version produced.
"""
from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from model.core.clicks import Click
from model.core.database import Database
from model.core.imageio import image_digest
from model.core.masks import rle_decode, rle_encode

SOURCES = ("correction", "scratch", "human")

MIGRATIONS = Path(__file__).with_name("migrations")


@dataclass
class StepRecord:
    click: Click  # pixels
    mask_before: np.ndarray
    mask_after: np.ndarray
    iou: float


@dataclass
class TrajectoryRecord:
    source: str
    label: str
    prompt: str
    image_sha: str
    target: np.ndarray
    steps: list[StepRecord] = field(default_factory=list)
    project: str = ""
    task_id: int = 0
    annotation_id: int = 0
    id: int | None = None


@dataclass(frozen=True)
class TrajectorySummary:
    id: int
    project: str
    task_id: int
    source: str
    steps: int
    label: str = ""


class TrajectoryStore:
    def __init__(self, data_dir: str | Path, database: str | Path | None = None):
        """Images under `data_dir`; the rows in `database` (a SQLite file or a database URL), by default the
        SQLite file in `data_dir`."""
        self.root = Path(data_dir)
        self.images_dir = self.root / "images"
        self.images_dir.mkdir(parents=True, exist_ok=True)
        self._db = Database(database or self.root / "trajectories.sqlite3", store="trajectories", migrations=MIGRATIONS)

    @property
    def schema_version(self) -> int:
        return self._db.revision

    # ------------------------------------------------------------ images
    def put_image(self, image: np.ndarray) -> str:
        """Keep an RGB image once, by content; returns its hash, the name to read it back by. (Images
        kept before the store used `image_digest` are named by an older hash: rows keep the name.)"""
        sha = image_digest(image)
        path = self.images_dir / f"{sha}.png"
        if not path.exists():
            partial = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.part")
            Image.fromarray(image).save(partial, format="PNG")
            partial.replace(path)  # atomic: a reader never sees half a file
        return sha

    def image(self, sha: str) -> np.ndarray:
        return np.array(Image.open(self.images_dir / f"{sha}.png").convert("RGB"))

    # ------------------------------------------------------------ trajectories
    def replace_annotation(self, project: str, task_id: int, annotation_id: int, version: str,
                           records: list[TrajectoryRecord], still_current: Callable[[], bool] = lambda: True) -> bool:
        """Keep what one version of an annotation produced; False when that version is kept already, or when
        `still_current` (asked while this store's write lock is held) says the annotation was deleted or updated
        while its trajectories were made. A delete that removes the annotation from its own store first, and its
        trajectories after, therefore always wins: either the check sees it, or the delete's removal of the
        trajectories waits for this write and removes what it wrote. The same holds for an update, whose own
        trajectories are written after it is kept."""
        with self._db.transaction() as db:
            if not still_current():
                return False
            row = db.execute("SELECT annotation_version FROM trajectories WHERE annotation_id = ? LIMIT 1",
                             (annotation_id,)).fetchone()
            if row is not None and row[0] == version:
                return False
            db.execute("DELETE FROM trajectories WHERE annotation_id = ?", (annotation_id,))
            for record in records:
                trajectory_id = db.execute(
                    "INSERT INTO trajectories (project, task_id, annotation_id, annotation_version, source, label,"
                    " prompt, image_sha, target_rle, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                    (project, task_id, annotation_id, version, record.source, record.label, record.prompt,
                     record.image_sha, json.dumps(rle_encode(record.target)), time.time())).scalar_one()
                db.executemany(
                    "INSERT INTO steps VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [(trajectory_id, position, s.click.x, s.click.y, int(s.click.positive),
                      json.dumps(rle_encode(s.mask_before)), json.dumps(rle_encode(s.mask_after)), s.iou)
                     for position, s in enumerate(record.steps)])
            return True

    def delete_annotations(self, annotation_ids: list[int]) -> int:
        with self._db.transaction() as db:
            return sum(db.execute("DELETE FROM trajectories WHERE annotation_id = ?", (i,)).rowcount
                       for i in annotation_ids)

    def close(self) -> None:
        self._db.close()

    def counts(self, project: str | None = None) -> dict:
        where, args = ("WHERE project = ?", (project,)) if project else ("", ())
        rows = self._db.fetchall(f"SELECT source, COUNT(*) FROM trajectories {where} GROUP BY source", args)
        counts = {source: 0 for source in SOURCES} | dict(rows)
        return {"total": sum(counts.values()), **counts}

    def daily_counts(self, project: str) -> list[dict]:
        """How many trajectories of a project each day (UTC, "YYYY-MM-DD") brought, by source, oldest first."""
        rows = self._db.fetchall(
            f"SELECT {self._db.utc_day('created')} AS day, source, COUNT(*) FROM trajectories WHERE project = ? "
            "GROUP BY day, source ORDER BY day, source", (project,))
        return [{"day": day, "source": source, "count": count} for day, source, count in rows]

    def summaries(self, project: str | None = None) -> list[TrajectorySummary]:
        """What training needs to plan (split, count, order) without decoding a single mask."""
        where, args = ("WHERE t.project = ?", (project,)) if project else ("", ())
        rows = self._db.fetchall(
            "SELECT t.id, t.project, t.task_id, t.source, COUNT(s.position), t.label FROM trajectories t "
            f"LEFT JOIN steps s ON s.trajectory_id = t.id {where} "
            "GROUP BY t.id ORDER BY t.id", args)
        return [TrajectorySummary(*row) for row in rows]

    def count_after(self, trajectory_id: int, project: str | None = None) -> int:
        where, args = ("AND project = ?", (project,)) if project else ("", ())
        row = self._db.fetchone(f"SELECT COUNT(*) FROM trajectories WHERE id > ? {where}", (trajectory_id, *args))
        assert row is not None  # an aggregate without GROUP BY always answers one row
        return row[0]

    def newest_id(self, project: str | None = None) -> int:
        where, args = ("WHERE project = ?", (project,)) if project else ("", ())
        row = self._db.fetchone(f"SELECT COALESCE(MAX(id), 0) FROM trajectories {where}", args)
        assert row is not None  # an aggregate without GROUP BY always answers one row
        return row[0]

    def projects(self) -> list[str]:
        return [row[0] for row in self._db.fetchall("SELECT DISTINCT project FROM trajectories ORDER BY project")]

    def record(self, trajectory_id: int) -> TrajectoryRecord:
        return next(self._records("WHERE id = ?", (trajectory_id,)))

    def records(self, project: str | None = None) -> Iterator[TrajectoryRecord]:
        where, args = ("WHERE project = ?", (project,)) if project else ("", ())
        return self._records(where, args)

    def _records(self, where: str, args: tuple) -> Iterator[TrajectoryRecord]:
        for row in self._db.fetchall(
                "SELECT id, project, task_id, annotation_id, source, label, prompt, image_sha, target_rle "
                f"FROM trajectories {where} ORDER BY id", args):
            steps = [StepRecord(Click(x, y, bool(positive)), rle_decode(json.loads(before)),
                                rle_decode(json.loads(after)), value)
                     for x, y, positive, before, after, value in self._db.fetchall(
                         "SELECT x, y, positive, mask_before_rle, mask_after_rle, iou FROM steps "
                         "WHERE trajectory_id = ? ORDER BY position", (row[0],))]
            yield TrajectoryRecord(row[4], row[5], row[6], row[7], rle_decode(json.loads(row[8])), steps,
                                   row[1], row[2], row[3], row[0])
