"""Label Studio's webhook events: annotations kept, updated and deleted; training started; the rest
counted and ignored. Unknown actions are counted as one "other", never by the name a request made up."""
from __future__ import annotations

import logging
import threading

from model.settings import Settings

from .errors import Conflict, InvalidRequest
from .ingest import AnnotationIngest
from .labelstudio.parsing import annotation_input
from .metrics import Metrics
from .preannotation import Preannotator
from .projects import ProjectConfigs
from .schemas import AnnotationBody, ExportedTask, TaskData, Unreadable, WebhookBody
from .training import Training

log = logging.getLogger(__name__)

ANNOTATION_EVENTS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED")
DELETE_EVENTS = ("ANNOTATION_DELETED", "ANNOTATIONS_DELETED")
TRAINING_EVENTS = ("START_TRAINING",)
IMPORT_EVENTS = ("TASKS_CREATED",)
OTHER_KNOWN = ("ANNOTATIONS_CREATED", "TASKS_DELETED", "PROJECT_CREATED", "PROJECT_UPDATED",
               "PROJECT_DELETED", "LABEL_LINK_CREATED", "LABEL_LINK_UPDATED", "LABEL_LINK_DELETED",
               "REVIEW_CREATED", "REVIEW_UPDATED", "REVIEWS_DELETED")
KNOWN_ACTIONS = ANNOTATION_EVENTS + DELETE_EVENTS + TRAINING_EVENTS + IMPORT_EVENTS + OTHER_KNOWN


class Webhooks:
    def __init__(self, settings: Settings, ingest: AnnotationIngest, training: Training, preannotator: Preannotator,
                 configs: ProjectConfigs, metrics: Metrics):
        self.settings = settings
        self.ingest = ingest
        self.training = training
        self.preannotator = preannotator
        self.configs = configs
        self.metrics = metrics
        self.events: dict[str, int] = {}
        self._lock = threading.Lock()

    def handle(self, body: WebhookBody) -> dict:
        action = body.action if body.action in KNOWN_ACTIONS else "other"
        with self._lock:
            self.events[action] = self.events.get(action, 0) + 1
        self.metrics.events.labels(action).inc()
        if action in ANNOTATION_EVENTS:
            if body.annotation is None or body.task is None:
                raise InvalidRequest("an annotation event needs 'annotation' and 'task' objects")
            if not body.project.id:  # Label Studio always says: without one, the page would show "project "
                raise InvalidRequest("an annotation event needs its project ('project': {'id': ...})")
            return self.keep(body.project.id, body.project.label_config, body.task, body.annotation)
        if action in DELETE_EVENTS:
            ids = [ref.id for ref in body.annotations or []] + ([body.annotation.id] if body.annotation else [])
            return {"status": "ok", "deleted_regions": self.ingest.delete(ids, body.project.id)}
        if action in TRAINING_EVENTS:
            return self.training.start(body.project.id, "request", "requested by Label Studio")
        if action in IMPORT_EVENTS:
            if body.project.label_config:
                self.configs.remember(body.project.id, body.project.label_config)
            try:
                return self.preannotator.request(body.project.id, [task.id for task in body.tasks or []])
            except InvalidRequest as exc:  # Label Studio sent it, but did not say where it is: nothing to retry
                log.warning("webhook TASKS_CREATED: no pre-annotation: %s", exc.message)
                return {"status": "skipped", "reason": exc.message}
        log.info("webhook %s ignored", action)
        return {"status": "ignored", "action": action}

    def keep(self, project: str, label_config: str | None, task: TaskData, annotation: AnnotationBody) -> dict:
        schema = self.configs.schema(project, label_config)
        return self.ingest.keep(annotation_input(project, task, annotation, schema, self.settings.prompt_fields,
                                                 self.settings.max_image_pixels, self.settings.max_mask_pixels))

    def keep_exported(self, project: str, label_config: str | None, tasks: list[ExportedTask]) -> int:
        """Legacy /train carries the project's tasks with their annotations: keep those not seen before. One
        that cannot be kept is logged and skipped: the export is the project's history, not this request."""
        kept = 0
        for task in tasks:
            for annotation in task.annotations:
                try:
                    if isinstance(annotation, Unreadable):
                        raise InvalidRequest(annotation.problem)
                    kept += self.keep(project, label_config, task, annotation)["status"] == "ok"
                except (InvalidRequest, Conflict) as exc:
                    log.warning("training request: an annotation of task %s not kept: %s", task.id, exc.message[:200])
        log.info("training request: %d annotations not seen before are kept", kept)
        return kept
