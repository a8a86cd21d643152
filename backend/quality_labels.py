"""Labels for the quality scorer, learned from the annotators' corrections: each region of a submitted annotation
that is the same object as one of the backend's predictions for the task gives that prediction's true IoU (with the
human's final mask), kept with the features the scorer read off the predicted mask.

What counts as a prediction: the regions the backend predicted for the task (predicted_regions.py: pre-annotation,
Retrieve predictions, refine and auto mode), and each interactive object's last answer (the mask the annotator
accepted) when the annotator edited it afterwards (an answer kept as it was says only that the annotator stopped
clicking there). Matching a region to a prediction, per kind: the same region id first (Label Studio keeps a
prediction's result id as its region's id, and an interactive object's id is the region's), then, among those
left, the same label and the best IoU at or above a floor, one to one, best pairs first.

Durable and idempotent: labels are written in the annotation's derived work (before it is struck off), one row per
annotation and prediction: a replayed webhook or a resumed job writes the same rows again, an update replaces
them, a delete removes them. SQLite, migrations as the other stores."""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from model.core.database import Database
from model.core.masks import iou
from model.quality.project_scorer import FEATURES_VERSION
from model.quality.scorers import FEATURES, quality_features

from .inputs import AnnotationInput
from .predicted_regions import PredictedRegions
from .store import AnnotationStore

MIGRATIONS = Path(__file__).with_name("migrations") / "quality_labels"

SOURCES = ("prediction", "interactive")


@dataclass(frozen=True)
class Candidate:
    """A mask the backend answered for the task: a predicted region or an interactive object's last answer."""

    source: str  # prediction or interactive
    prediction_id: str
    label: str
    model_version: str
    mask: np.ndarray


@dataclass(frozen=True)
class Label:
    source: str
    prediction_id: str
    label: str
    model_version: str
    iou: float
    features: np.ndarray


def match(regions: list[tuple[str | None, str, np.ndarray]], candidates: list[Candidate], floor: float
          ) -> list[tuple[int, Candidate]]:
    """(region index, candidate) pairs, one to one per source: same id first, then same label by best IoU >= floor."""
    pairs: list[tuple[int, Candidate]] = []
    for source in SOURCES:
        left = [c for c in candidates if c.source == source]
        free = set(range(len(regions)))
        for index, (region_id, label, _) in enumerate(regions):
            same = next((c for c in left if region_id is not None and c.prediction_id == region_id
                         and c.label == label), None)
            if same is not None:
                pairs.append((index, same))
                left.remove(same)
                free.discard(index)
        scored = sorted(((iou(regions[i][2], c.mask), i, k) for i in free for k, c in enumerate(left)
                         if regions[i][1] == c.label and regions[i][2].shape == c.mask.shape), reverse=True)
        taken: set[int] = set()
        for overlap, index, k in scored:
            if overlap >= floor and index in free and k not in taken:
                pairs.append((index, left[k]))
                free.discard(index)
                taken.add(k)
    return pairs


class QualityLabels:
    def __init__(self, target: str | Path):
        """`target`: the SQLite file, or the database URL."""
        self._db = Database(target, store="quality_labels", migrations=MIGRATIONS)

    def replace_annotation(self, project: str, task_id: int, annotation_id: int, version: str,
                           labels: list[Label], still_current: Callable[[], bool] = lambda: True) -> bool:
        """The annotation's labels, replacing those of its earlier versions (a label kept again keeps its place
        in the order, so a replay is not counted as new); False, writing nothing, when not still_current."""
        now = time.time()
        with self._db.transaction() as db:
            if not still_current():
                return False
            keys = {(label.source, label.prediction_id) for label in labels}
            for source, prediction_id in db.execute("SELECT source, prediction_id FROM quality_labels "
                                                    "WHERE annotation_id = ?", (annotation_id,)).fetchall():
                if (source, prediction_id) not in keys:
                    db.execute("DELETE FROM quality_labels WHERE annotation_id = ? AND source = ? AND prediction_id = ?",
                               (annotation_id, source, prediction_id))
            db.executemany(
                "INSERT INTO quality_labels (project, task_id, annotation_id, annotation_version, source, "
                "prediction_id, label, model_version, iou, features, features_version, created) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (annotation_id, source, prediction_id) "
                "DO UPDATE SET annotation_version = excluded.annotation_version, iou = excluded.iou, "
                "features = excluded.features, features_version = excluded.features_version",
                [(project, task_id, annotation_id, version, label.source, label.prediction_id, label.label,
                  label.model_version, float(label.iou), json.dumps([round(float(v), 6) for v in label.features]),
                  FEATURES_VERSION, now) for label in labels])
        return True

    def delete_annotations(self, annotation_ids: list[int]) -> None:
        with self._db.transaction() as db:
            db.executemany("DELETE FROM quality_labels WHERE annotation_id = ?", [(i,) for i in annotation_ids])

    def training_set(self, project: str) -> tuple[np.ndarray, np.ndarray, list[int], int]:
        """(features, IoUs, task ids, newest seq) of the project's labels of the current features version."""
        rows = self._db.fetchall("SELECT features, iou, task_id, seq FROM quality_labels WHERE project = ? "
                                 "AND features_version = ? ORDER BY seq", (project, FEATURES_VERSION))
        features = np.array([json.loads(r[0]) for r in rows], np.float64).reshape(len(rows), len(FEATURES))
        return features, np.array([r[1] for r in rows]), [r[2] for r in rows], max((r[3] for r in rows), default=0)

    def count_after(self, project: str, seq: int) -> int:
        return int(self._db.fetchall("SELECT COUNT(*) FROM quality_labels WHERE project = ? AND seq > ? "
                                     "AND features_version = ?", (project, seq, FEATURES_VERSION))[0][0])

    def projects(self) -> list[str]:
        return [r[0] for r in self._db.fetchall("SELECT DISTINCT project FROM quality_labels ORDER BY project")]

    def counts(self, project: str) -> dict:
        """The project's labels by source, and those of another features version (stale: not fitted on)."""
        rows = self._db.fetchall("SELECT source, features_version, COUNT(*) FROM quality_labels WHERE project = ? "
                                 "GROUP BY source, features_version", (project,))
        by_source = {source: 0 for source in SOURCES}
        stale = 0
        for source, version, count in rows:
            if version == FEATURES_VERSION:
                by_source[source] = by_source.get(source, 0) + count
            else:
                stale += count
        return {"labels": sum(by_source.values()), "by_source": by_source, "stale": stale}

    def daily_counts(self, project: str) -> list[dict]:
        """Labels made per day (UTC) and source: [{"day": "YYYY-MM-DD", "source", "count"}], oldest first."""
        counts: dict[tuple[str, str], int] = {}
        for created, source in self._db.fetchall("SELECT created, source FROM quality_labels WHERE project = ?",
                                                 (project,)):
            day = datetime.fromtimestamp(created, UTC).strftime("%Y-%m-%d")
            counts[(day, source)] = counts.get((day, source), 0) + 1
        return [{"day": day, "source": source, "count": count} for (day, source), count in sorted(counts.items())]

    def close(self) -> None:
        self._db.close()


class CorrectionLabels:
    """Makes an annotation's labels from the task's predictions (called by the annotation's derived work)."""

    def __init__(self, labels: QualityLabels, predicted: PredictedRegions, annotations: AnnotationStore,
                 floor: float, pixel_budget: int):
        """`pixel_budget`: the predicted masks read for one annotation, at most (a byte each), the newest first."""
        self.labels, self.predicted, self.annotations, self.floor = labels, predicted, annotations, floor
        self.pixel_budget = pixel_budget

    def learn(self, annotation: AnnotationInput, image: np.ndarray) -> int:
        """Store the annotation's labels (replacing its earlier ones); how many, or -1 if it changed meanwhile."""
        regions = [(r.region_id, r.label, r.mask) for r in annotation.regions]
        candidates = self.candidates(annotation.project, annotation.task_id, regions)
        labels = []
        for index, candidate in match(regions, candidates, self.floor):
            mask = candidate.mask
            if not mask.any() or mask.all() or mask.shape != image.shape[:2]:
                continue  # the scorer answers 0 for these without reading any feature
            labels.append(Label(candidate.source, candidate.prediction_id, candidate.label, candidate.model_version,
                                round(iou(mask, regions[index][2]), 6), quality_features(image, mask)))
        kept = self.labels.replace_annotation(
            annotation.project, annotation.task_id, annotation.annotation_id, annotation.version, labels,
            still_current=lambda: self.annotations.is_current(annotation.annotation_id, annotation.version))
        return len(labels) if kept else -1

    def candidates(self, project: str, task_id: int, regions: list[tuple[str | None, str, np.ndarray]]
                   ) -> list[Candidate]:
        found = [Candidate("prediction", p.region_id, p.label, p.model_version, p.mask)
                 for p in self.predicted.for_task(project, task_id, self.pixel_budget)]
        for label, region_id, last in self.annotations.interactive_objects(project, task_id):
            if any(label == kept_label and last.shape == mask.shape and np.array_equal(last, mask)
                   for _, kept_label, mask in regions):
                continue  # accepted as answered, never edited
            found.append(Candidate("interactive", region_id or f"{label}:last", label, "interactive", last))
        return found
