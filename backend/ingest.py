"""What the backend learns from submitted annotations. Keeping an annotation is synchronous (it is in
the store when the webhook is answered); the derived work runs in the background: each region's
quality score, the task's worst score written back into its data (QUALITY_FIELD, which the Data
Manager sorts by), and the region's click trajectories for the flywheel."""
from __future__ import annotations

import logging
import time
from collections.abc import Callable

import numpy as np

from model.core.clicks import Click
from model.flywheel.sources import from_human_clicks, simulated
from model.flywheel.trajectories import TrajectoryRecord, TrajectoryStore
from model.settings import Settings

from .capabilities import Capabilities
from .connection import LabelStudioConnection
from .images import ImageFetcher
from .inputs import AnnotationInput
from .jobs import BackgroundJobs
from .store import AnnotationStore

log = logging.getLogger(__name__)

QUALITY_FIELD = "segagent_quality"  # the task data field reviewers sort and filter by in the Data Manager
PRUNE_EVERY = 3600.0


class AnnotationIngest:
    def __init__(self, settings: Settings, capabilities: Capabilities, store: AnnotationStore,
                 trajectories: TrajectoryStore, fetcher: ImageFetcher, connection: LabelStudioConnection,
                 jobs: BackgroundJobs, on_trajectories: Callable[[str], None]):
        self.settings = settings
        self.capabilities = capabilities
        self.store = store
        self.trajectories = trajectories
        self.fetcher = fetcher
        self.connection = connection
        self.jobs = jobs
        self.on_trajectories = on_trajectories  # the training triggers count new trajectories
        self._pruned = 0.0

    def keep(self, annotation: AnnotationInput) -> dict:
        if annotation.cancelled:
            self.delete([annotation.annotation_id])
            return {"status": "skipped", "reason": "the annotation was cancelled"}
        changed = self.store.replace(annotation.project, annotation.task_id, annotation.annotation_id,
                                     annotation.version,
                                     [(r.label, annotation.prompt, r.source, r.mask) for r in annotation.regions])
        log.info("annotation %s of task %s: %d regions %s", annotation.annotation_id, annotation.task_id,
                 len(annotation.regions), "kept" if changed else "already kept")
        if changed and annotation.regions:
            self.jobs.submit(self._learn, annotation)
        return {"status": "ok" if changed else "unchanged", "regions": len(annotation.regions)}

    def delete(self, annotation_ids: list[int]) -> int:
        removed = self.store.delete(annotation_ids)
        self.trajectories.delete_annotations(annotation_ids)
        return removed

    def _learn(self, annotation: AnnotationInput) -> None:
        self._prune_hourly()
        image = self.fetcher.fetch(annotation.image, annotation.task_id, project=annotation.project)
        for region in annotation.regions:
            if region.mask.shape != image.shape[:2]:
                raise ValueError(f"annotation {annotation.annotation_id}: a region of {region.mask.shape} on an "
                                 f"image of {image.shape[:2]}")
        scores = [round(self.capabilities.estimate(image, r.mask, annotation.prompt or r.label, 0.0), 4)
                  for r in annotation.regions]
        if not self.store.set_quality(annotation.annotation_id, annotation.version, scores):
            log.info("annotation %s changed while it was scored: its newer version is scored instead",
                     annotation.annotation_id)
            return
        if self.capabilities.tool.on:
            self._record_trajectories(annotation, image)
        if not self.capabilities.scorer.on:
            return
        data = {**annotation.task_data, QUALITY_FIELD: min(scores)}
        label_studio = self.connection.for_project(annotation.project)
        label_studio.api(self.fetcher.session, "PATCH", f"/api/tasks/{annotation.task_id}", self.settings.fetch_timeout,
                         json={"data": data})
        log.info("annotation %s of task %s: quality %s", annotation.annotation_id, annotation.task_id, scores)

    def _record_trajectories(self, annotation: AnnotationInput, image: np.ndarray) -> None:
        """Per region: from scratch, from our own last prediction (a correction), and the real clicks."""
        segmenter = self.capabilities.tool.get()
        project, task_id = annotation.project, annotation.task_id
        sha = self.trajectories.put_image(image)
        ours = {e["label"]: e["mask"] for e in self.store.episodes(project, task_id)}  # the latest per label
        records: list[TrajectoryRecord] = []
        for region in annotation.regions:
            description = annotation.prompt or region.label
            records.append(simulated(segmenter, image, region.mask, "scratch", region.label, description, sha))
            predicted = ours.get(region.label)
            if predicted is not None and predicted.shape == region.mask.shape:
                records.append(simulated(segmenter, image, region.mask, "correction", region.label, description,
                                         sha, initial=predicted))
            steps = self.store.interactive_steps(project, task_id, region.label)
            if steps:
                clicks = [(Click(*clicked[-1]), mask) for clicked, mask in steps if clicked]
                records.append(from_human_clicks(clicks, region.mask, region.label, description, sha))
        records = [r for r in records if r.steps]
        if self.trajectories.replace_annotation(project, task_id, annotation.annotation_id, annotation.version,
                                                records):
            log.info("annotation %s: %d trajectories (%s)", annotation.annotation_id, len(records),
                     ", ".join(r.source for r in records))
            self.on_trajectories(project)

    def _prune_hourly(self) -> None:
        if time.time() - self._pruned < PRUNE_EVERY:
            return
        self._pruned = time.time()
        removed = self.store.prune(time.time() - self.settings.retention_days * 86400)
        if removed:
            log.info("forgot %d agent episodes and interactive requests older than %g days", removed,
                     self.settings.retention_days)

    def quality(self, project: str, limit: int) -> dict:
        """The lowest-scored annotations of a project, with links to their tasks."""
        rows = self.store.lowest_quality(project, limit)
        url = self.connection.for_project(project).url
        for row in rows:
            row["link"] = f"{url}/projects/{project}/data?task={row['task_id']}" if url else None
        return {"project": project, "field": QUALITY_FIELD, "annotations": rows}
