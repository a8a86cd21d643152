"""A data folder with something of every figure the flywheel page draws, written through the stores themselves,
and the figures a reader of the page should find (tests/test_page.py, tests/e2e/test_page_in_browser.py)."""
from __future__ import annotations

import sqlite3
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from backend.preannotation_queue import PreannotationQueue
from backend.quality_labels import Label, QualityLabels
from backend.store import AnnotationStore
from model.flywheel.registry import Registry
from model.flywheel.trajectories import TrajectoryRecord, TrajectoryStore
from model.quality.project_scorer import FEATURES_VERSION, prior_digest

PROJECT = "3"
EVIL = '<script>alert("x")</script>'
# trajectories a day, by source, over the last seven days (the last one today)
DAILY = {"human": [3, 0, 2, 4, 1, 0, 5], "correction": [1, 2, 0, 0, 3, 1, 2], "scratch": [0, 0, 4, 0, 0, 2, 0]}
QUALITIES = [0.05, 0.12, 0.31, 0.48, 0.55, 0.62, 0.71, 0.78, 0.83, 0.88, 0.91, 0.97]
UNSCORED = 2
PREANNOTATION = {"written": 5, "skipped": 2, "failed": 1}
GATES = {  # version: (status, candidate's figures, active's figures)
    "v1": ("promoted", {"episode_miou": 0.612, "action_accuracy": 0.418, "parse_rate": 0.9, "click_distance": 120.5},
           {"episode_miou": 0.55, "action_accuracy": 0.3, "parse_rate": 0.8, "click_distance": 160.0}),
    "v2": ("rejected", {"episode_miou": 0.574, "action_accuracy": 0.44, "parse_rate": 0.95, "click_distance": 118.0},
           {"episode_miou": 0.612, "action_accuracy": 0.418, "parse_rate": 0.9, "click_distance": 120.5}),
    "v3": ("promoted", {"episode_miou": 0.701, "action_accuracy": 0.52, "parse_rate": 1.0, "click_distance": 90.25},
           {"episode_miou": 0.612, "action_accuracy": 0.418, "parse_rate": 0.9, "click_distance": 120.5}),
}
ACTIVE = "v3"
# the quality scorer's labels a day, by source, over the same seven days
LABELS_DAILY = {"prediction": [0, 2, 1, 0, 3, 0, 4], "interactive": [1, 0, 0, 2, 0, 1, 1]}
SCORERS = {  # version: (status, candidate's figures, active's figures)
    "v1": ("promoted", {"pearson": 0.623, "mae": 0.141}, {"pearson": 0.412, "mae": 0.187}),
    "v2": ("rejected", {"pearson": 0.587, "mae": 0.152}, {"pearson": 0.623, "mae": 0.141}),
}


def days(today: datetime | None = None) -> list[str]:
    today = today or datetime.now(UTC)
    return [(today - timedelta(days=6 - offset)).strftime("%Y-%m-%d") for offset in range(7)]


def seed(data_dir: Path, annotations: AnnotationStore, trajectories: TrajectoryStore, queue: PreannotationQueue,
         registry: Registry, labels: QualityLabels, scorers: Registry) -> None:
    """Project 3's annotations (scored, the worst labelled with markup), trajectories and quality labels over
    seven days, a pre-annotation run part done, three policy versions (v3 active) and two scorer versions (v1
    active)."""
    mask = np.zeros((8, 8), bool)
    mask[2:5, 2:5] = True
    for index, quality in enumerate([*QUALITIES, *[None] * UNSCORED]):
        annotation, version = 100 + index, "2026-01-01T00:00:00"
        label = EVIL if index == 0 else "Cat"
        annotations.replace(PROJECT, 10 + index, annotation, version, [(label, None, "human", mask, None)])
        if quality is not None:
            annotations.set_quality(annotation, version, [quality])
    _seed_trajectories(data_dir, trajectories, mask)
    _seed_preannotation(queue)
    _seed_labels(data_dir, labels)
    _seed_scorers(scorers)
    for name, (status, candidate, active) in GATES.items():
        allocated, _ = registry.allocate("project-3")
        assert allocated == name
        registry.register("project-3", name, {"status": status, "created": time.time(), "parent": "v0",
                                              "reason": f"{status} by the gate",
                                              "gate": {"candidate": candidate, "active": active, "tolerance": 0.0}})
        if status == "promoted":
            registry.activate("project-3", name, "seeded")


def _seed_trajectories(data_dir: Path, trajectories: TrajectoryStore, mask: np.ndarray) -> None:
    annotation = 1000
    created: dict[int, float] = {}
    for source, counts in DAILY.items():
        for day, count in zip(days(), counts, strict=True):
            if not count:
                continue
            annotation += 1
            records = [TrajectoryRecord(source, "Cat", "cat", "0" * 64, mask) for _ in range(count)]
            trajectories.replace_annotation(PROJECT, 1, annotation, "v", records)
            created[annotation] = datetime.fromisoformat(f"{day}T12:00:00+00:00").timestamp()
    with sqlite3.connect(data_dir / "trajectories" / "trajectories.sqlite3") as db:
        db.executemany("UPDATE trajectories SET created = ? WHERE annotation_id = ?",
                       [(moment, annotation) for annotation, moment in created.items()])


def _seed_labels(data_dir: Path, labels: QualityLabels) -> None:
    annotation = 5000
    created: dict[int, float] = {}
    for source, counts in LABELS_DAILY.items():
        for day, count in zip(days(), counts, strict=True):
            if not count:
                continue
            annotation += 1
            labels.replace_annotation(PROJECT, 1, annotation, "v", [
                Label(source, f"p{n}", "Cat", "segagent-v1", 0.8, np.zeros(4)) for n in range(count)])
            created[annotation] = datetime.fromisoformat(f"{day}T12:00:00+00:00").timestamp()
    with sqlite3.connect(data_dir / "quality_labels.sqlite3") as db:
        db.executemany("UPDATE quality_labels SET created = ? WHERE annotation_id = ?",
                       [(moment, annotation) for annotation, moment in created.items()])


def _seed_scorers(scorers: Registry) -> None:
    for name, (status, candidate, active) in SCORERS.items():
        allocated, folder = scorers.allocate("project-3")
        assert allocated == name
        (folder / "correction.json").write_text('{"scale": 1.0, "shift": 0.0, "weights": []}')  # no correction
        scorers.register("project-3", name, {
            "kind": "scorer", "parent": "v0", "created": time.time(), "labels": 16, "status": status,
            "features_version": FEATURES_VERSION, "prior": prior_digest(),
            "gate": {"candidate": candidate, "active": active, "train": 12, "held_out": 4, "held_out_tasks": 2,
                     "reason": f"{status} by the scorer's gate"}})
        if status == "promoted":
            scorers.activate("project-3", name, "seeded")


def _seed_preannotation(queue: PreannotationQueue) -> None:
    """Eight tasks finished: five written, two skipped (one for a reason with markup), one failed for good."""
    items = queue.add(PROJECT, list(range(1, 9)), "segagent-v1")
    for number, item in enumerate(items):
        claimed = queue.claim(*item.key)
        assert claimed is not None
        if number < PREANNOTATION["written"]:
            queue.done(claimed)
        elif number < PREANNOTATION["written"] + PREANNOTATION["skipped"]:
            queue.done(claimed, "already annotated" if number % 2 else f"reason {EVIL}")
        else:
            for attempt in range(3):
                queue.failed(claimed, f"the image does not decode {EVIL}")
                claimed = queue.claim(*item.key) if attempt < 2 else None
                if claimed is None:
                    break


def seed_folder(data_dir: Path) -> None:
    """The stores opened on the folder, seeded and closed, as a backend started later finds them."""
    annotations = AnnotationStore(data_dir / "annotations.sqlite3")
    trajectories = TrajectoryStore(data_dir / "trajectories")
    queue = PreannotationQueue(data_dir / "preannotation.sqlite3")
    labels = QualityLabels(data_dir / "quality_labels.sqlite3")
    try:
        seed(data_dir, annotations, trajectories, queue, Registry(data_dir / "models"), labels,
             Registry(data_dir / "scorers", kind="scorers"))
    finally:
        annotations.close()
        trajectories.close()
        queue.close()
        labels.close()
