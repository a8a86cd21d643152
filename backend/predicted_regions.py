"""The regions the backend predicted for each task (pre-annotation, Retrieve predictions, refine and auto mode),
kept so that an annotator's click on or next to one refines it. Label Studio 1.23 does not send them with an
interactive request: the editor sends only the smart keypoints (web/apps/labelstudio/src/pages/DataManager/
DataManager.jsx, `lsf:regionFinishedDrawing`), and Label Studio's server adds the task's predictions as ids
only (label_studio/data_export/serializers.py, BaseExportDataSerializer.predictions). An annotation made from a
prediction keeps each result's id as its region's id (web/libs/editor/src/stores/Annotation/store.js,
`addAnnotationFromPrediction`), so an answer with that id replaces the region.

Each mask is kept bit-packed and compressed, with its bounding box, so that a click reads only the masks it
may fall next to."""
from __future__ import annotations

import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model.core.database import Database

MIGRATIONS = Path(__file__).with_name("migrations") / "predicted_regions"


@dataclass(frozen=True)
class PredictedRegion:
    region_id: str
    label: str
    model_version: str
    score: float
    mask: np.ndarray  # bool (H, W)


KEPT_PER_TASK = 64  # regions of a task kept, the newest: several predictions of one task, even a concept mode's many
REPLACED = ("label", "model_version", "score", "height", "width", "top", "left_", "bottom", "right_", "mask", "created")


def _pack(mask: np.ndarray) -> bytes:
    return zlib.compress(np.packbits(mask.astype(bool)).tobytes(), 1)


def _unpack(blob: bytes, height: int, width: int) -> np.ndarray:
    bits = np.frombuffer(zlib.decompress(blob), np.uint8)
    return np.unpackbits(bits, count=height * width).reshape(height, width).astype(bool)


class PredictedRegions:
    def __init__(self, target: str | Path):
        """`target`: the SQLite file, or the database URL."""
        self._db = Database(target, store="predicted_regions", migrations=MIGRATIONS)

    def record(self, project: str, task_id: int, model_version: str,
               regions: list[tuple[str, str, np.ndarray, float]]) -> None:
        """Keep the (region id, label, mask, score) of each region a prediction of the task answered."""
        rows = []
        for region_id, label, mask, score in regions:
            rows_on, cols_on = np.nonzero(mask)
            if not len(rows_on):
                continue
            rows.append((project, task_id, region_id, label, model_version, float(score), *mask.shape,
                         int(rows_on.min()), int(cols_on.min()), int(rows_on.max()), int(cols_on.max()), _pack(mask),
                         time.time()))
        with self._db.transaction() as conn:
            conn.executemany(
                "INSERT INTO predicted_regions (project, task, region_id, label, model_version, score, "
                "height, width, top, left_, bottom, right_, mask, created) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (project, task, region_id) DO UPDATE SET "
                + ", ".join(f"{column} = excluded.{column}" for column in REPLACED), rows)
            conn.execute("DELETE FROM predicted_regions WHERE project = ? AND task = ? AND region_id NOT IN ("
                         "SELECT region_id FROM predicted_regions WHERE project = ? AND task = ? "
                         "ORDER BY created DESC LIMIT ?)", (project, task_id, project, task_id, KEPT_PER_TASK))

    def around(self, project: str, task_id: int, label: str, pixel: tuple[int, int], reach_share: float,
               shape: tuple[int, int]) -> list[PredictedRegion]:
        """The task's predicted regions of the label, on the image's shape, whose bounding box widened by
        `reach_share` of its size holds the pixel (row, column): those a click there may be on or next to,
        the newest first."""
        row, col = pixel
        found = []
        for region_id, label_, version, score, height, width, top, left, bottom, right, blob in self._db.fetchall(
                "SELECT region_id, label, model_version, score, height, width, top, left_, bottom, right_, mask "
                "FROM predicted_regions WHERE project = ? AND task = ? AND label = ? AND height = ? AND width = ? "
                "ORDER BY created DESC", (project, task_id, label, *shape)):
            reach = max(3, int(reach_share * np.sqrt((bottom - top + 1) * (right - left + 1))))
            if top - reach <= row <= bottom + reach and left - reach <= col <= right + reach:
                found.append(PredictedRegion(region_id, label_, version, score, _unpack(blob, height, width)))
        return found

    def for_task(self, project: str, task_id: int, pixel_budget: int) -> list[PredictedRegion]:
        """The regions predicted for the task, the newest first, as many as `pixel_budget` pixels of masks hold."""
        found: list[PredictedRegion] = []
        for region_id, label, version, score, height, width, blob in self._db.fetchall(
                "SELECT region_id, label, model_version, score, height, width, mask FROM predicted_regions "
                "WHERE project = ? AND task = ? ORDER BY created DESC", (project, task_id)):
            pixel_budget -= height * width
            if pixel_budget < 0:
                break
            found.append(PredictedRegion(region_id, label, version, score, _unpack(blob, height, width)))
        return found

    def close(self) -> None:
        self._db.close()
