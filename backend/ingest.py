"""What the backend learns from submitted annotations. Keeping an annotation is synchronous: it is in
the store, with the derived work it owes, when the webhook is answered. The derived work runs in the
background: each region's quality score, the task's worst score written back into its data
(QUALITY_FIELD, which the Data Manager sorts by), and the region's click trajectories for the flywheel.
Work owed is struck off only when done, so a crash loses none of it: the next start resumes it, and a
replayed annotation whose work is still owed has it queued again. Work that failed for lack of space is
not counted as an attempt: it is tried again after a delay that doubles up to SPACE_RETRY_LONGEST, one
annotation at a time, and once that one is done, all the work owed is queued again."""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import numpy as np

from model.core.clicks import Click
from model.flywheel.sources import from_human_clicks, simulated
from model.flywheel.trajectories import TrajectoryRecord, TrajectoryStore
from model.settings import Settings

from .capabilities import Capabilities
from .connection import LabelStudioConnection
from .dispatch import Dispatcher
from .errors import out_of_space
from .images import ImageFetcher
from .inputs import AnnotationInput, Region
from .quality_labels import CorrectionLabels
from .store import AnnotationStore, PendingWork

log = logging.getLogger(__name__)

QUALITY_FIELD = "segagent_quality"  # the task data field reviewers sort and filter by in the Data Manager
PRUNE_EVERY = 3600.0
MAX_ATTEMPTS = 3  # a derived job that failed this often (an image gone for good) is no longer resumed
SPACE_RETRY_FIRST = 5.0  # seconds before work that failed for lack of space is tried again; doubled each time
SPACE_RETRY_LONGEST = 300.0


class AnnotationIngest:
    def __init__(self, settings: Settings, capabilities: Capabilities, store: AnnotationStore,
                 trajectories: TrajectoryStore, fetcher: ImageFetcher, connection: LabelStudioConnection,
                 dispatcher: Dispatcher, on_trajectories: Callable[[str], None], corrections: CorrectionLabels,
                 on_labels: Callable[[str], object]):
        self.settings = settings
        self.capabilities = capabilities
        self.store = store
        self.trajectories = trajectories
        self.fetcher = fetcher
        self.connection = connection
        self.dispatcher = dispatcher
        self.on_trajectories = on_trajectories  # the training triggers count new trajectories
        self.corrections = corrections  # the quality scorer's labels from corrections of our predictions
        self.on_labels = on_labels  # the project scorer's refit counts new labels
        self._pruned = 0.0
        self._space_lock = threading.Lock()
        self._waiting_for_space = False  # a retry of work that failed for lack of space is scheduled

    def keep(self, annotation: AnnotationInput) -> dict:
        if annotation.cancelled:
            self.delete([annotation.annotation_id], annotation.project)
            return {"status": "skipped", "reason": "the annotation was cancelled"}
        work = PendingWork(annotation.annotation_id, annotation.version, annotation.project, annotation.task_id,
                           annotation.image, annotation.task_data) if annotation.regions else None
        regions = [(r.label, annotation.prompt, r.source, r.mask, r.region_id) for r in annotation.regions]
        changed = self.store.replace(annotation.project, annotation.task_id, annotation.annotation_id,
                                     annotation.version, regions, work)
        log.info("annotation %s of task %s: %d regions %s", annotation.annotation_id, annotation.task_id,
                 len(annotation.regions), "kept" if changed else "already kept")
        owed = changed or bool(self.store.pending_work(annotation.annotation_id, MAX_ATTEMPTS))
        if owed and annotation.regions:
            self._queue(annotation.annotation_id)
        return {"status": "ok" if changed else "unchanged", "regions": len(annotation.regions)}

    def resume(self) -> int:
        """Queue the derived work a previous run acknowledged but did not finish."""
        owed = self.store.pending_work(max_attempts=MAX_ATTEMPTS)
        for work in owed:
            self._queue(work.annotation_id)
        if owed:
            log.info("resuming the derived work of %d annotations", len(owed))
        return len(owed)

    def _queue(self, annotation_id: int) -> None:
        # A job submitted twice (a replayed webhook) finds its work struck off and does nothing: the store, not
        # this process's memory, says what is owed, since with RQ the job runs in a worker process.
        self.dispatcher.submit("annotation", annotation_id)

    def do_owed_work(self, annotation_id: int, space_retry: float = 0.0) -> None:
        """The `annotation` job: the work the store says the annotation owes, for its newest version; struck off
        when done. space_retry: the delay after which this job was submitted again, the disk having been full."""
        try:
            self._do_owed_work(annotation_id)
        except Exception as exc:
            if out_of_space(exc):
                self._retry_when_space_returns(annotation_id, space_retry)
            else:
                self._space_returned(space_retry)
            raise  # counted and logged by the background queue
        self._space_returned(space_retry)

    def _retry_when_space_returns(self, annotation_id: int, previous_delay: float) -> None:
        """One job of this process at a time waits for space; the others stay owed until it is done."""
        with self._space_lock:
            if self._waiting_for_space and not previous_delay:
                return
            self._waiting_for_space = True
        delay = min(max(2 * previous_delay, SPACE_RETRY_FIRST), SPACE_RETRY_LONGEST)
        log.warning("annotation %s: its work failed for lack of space; tried again in %g s", annotation_id, delay)
        self.dispatcher.submit("annotation", annotation_id, delay, delay=delay)

    def _space_returned(self, space_retry: float) -> None:
        if not space_retry:
            return
        with self._space_lock:
            self._waiting_for_space = False
        log.info("annotation work no longer fails for lack of space: the derived work owed is queued again")
        self.resume()

    def _do_owed_work(self, annotation_id: int) -> None:
        owed = self.store.pending_work(annotation_id)
        if not owed:
            return  # deleted, or done by an earlier run of this job
        work = owed[0]
        stored = self.store.regions(annotation_id)
        annotation = AnnotationInput(
            project=work.project, task_id=work.task_id, annotation_id=annotation_id, version=work.updated_at,
            image=work.image, prompt=stored[0]["prompt"] if stored else None,
            regions=[Region(r["label"], r["mask"], r["source"], r["region_id"]) for r in stored], task_data=work.task_data)
        try:
            self._learn(annotation)
        except Exception as exc:
            # a lack of space is no fault of the work's: not counted as an attempt (nor could it be written)
            if not out_of_space(exc):
                self.store.work_failed(annotation_id, work.updated_at, f"{type(exc).__name__}: {exc}")
            raise
        self.store.finish_work(annotation_id, work.updated_at)

    def work_status(self) -> dict:
        return {**self.store.work_counts(MAX_ATTEMPTS), "max_attempts": MAX_ATTEMPTS}

    def delete(self, annotation_ids: list[int], project: str = "") -> int:
        """Forget the annotations (of this project, when it is given: the ids another project's annotations have
        are left, and logged)."""
        if project:
            others = self.store.of_other_projects(annotation_ids, project)
            if others:
                log.warning("project %s: annotations %s are kept for another project; not deleted", project,
                            sorted(others))
            annotation_ids = [each for each in annotation_ids if each not in others]
        # In this order: a trajectory write under way either sees the annotation gone or is undone here
        # (TrajectoryStore.replace_annotation).
        removed = self.store.delete(annotation_ids)
        self.trajectories.delete_annotations(annotation_ids)
        self.corrections.labels.delete_annotations(annotation_ids)
        return removed

    def _learn(self, annotation: AnnotationInput) -> None:
        self._prune_hourly()
        image = self.fetcher.fetch(annotation.image, annotation.task_id, project=annotation.project)
        for region in annotation.regions:
            if region.mask.shape != image.shape[:2]:
                raise ValueError(f"annotation {annotation.annotation_id}: a region of {region.mask.shape} on an "
                                 f"image of {image.shape[:2]}")
        scores = [round(self.capabilities.estimate(image, r.mask, annotation.prompt or r.label, 0.0,
                                                   annotation.project), 4)
                  for r in annotation.regions]
        if not self.store.set_quality(annotation.annotation_id, annotation.version, scores):
            log.info("annotation %s changed while it was scored: its newer version is scored instead",
                     annotation.annotation_id)
            return
        self._learn_labels(annotation, image)
        if self.capabilities.tool.on:
            self._record_trajectories(annotation, image)
        if not self.capabilities.scorer.on:
            return
        label_studio = self.connection.for_project(annotation.project)
        if not label_studio.known:  # nothing to retry until Label Studio is known
            log.warning("annotation %s of task %s: quality %s kept, not written to the task: no Label Studio is "
                        "known for project %s (LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY, or /setup)",
                        annotation.annotation_id, annotation.task_id, scores, annotation.project)
            return
        if not self.store.is_current(annotation.annotation_id, annotation.version):
            log.info("annotation %s was deleted or updated while its work ran: its quality is not written to task "
                     "%s", annotation.annotation_id, annotation.task_id)
            return
        label_studio.set_task_field(annotation.task_id, QUALITY_FIELD, min(scores))
        log.info("annotation %s of task %s: quality %s", annotation.annotation_id, annotation.task_id, scores)

    def _learn_labels(self, annotation: AnnotationInput, image: np.ndarray) -> None:
        """The true IoU of each of our predictions the annotation corrected: labels for the project's scorer,
        kept before the work is struck off; a refit when enough have come (its failure fails nothing else)."""
        made = self.corrections.learn(annotation, image)
        if made <= 0:
            return
        log.info("annotation %s: %d labels for the quality scorer", annotation.annotation_id, made)
        try:
            self.on_labels(annotation.project)
        except Exception:
            log.exception("project %s: the quality scorer's refit failed", annotation.project)

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
            steps = self.store.interactive_steps(project, task_id, region.label, region.region_id)
            if steps:
                clicks = [(Click(*clicked[-1]), mask) for clicked, mask in steps if clicked]
                records.append(from_human_clicks(clicks, region.mask, region.label, description, sha))
        records = [r for r in records if r.steps]
        if self.trajectories.replace_annotation(
                project, task_id, annotation.annotation_id, annotation.version, records,
                still_current=lambda: self.store.is_current(annotation.annotation_id, annotation.version)):
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
