"""Predict and fit: the only place where backend/ calls into model/.

Modes of /predict, per task:
- interactive: the context holds smart keypoints and/or a rectangle -> the tool makes the mask;
- refine: the task already has rectangles (imported predictions, annotations) -> box -> mask;
- auto: nothing to start from -> the policy's episode (off until a policy is configured).
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import numpy as np

from model.tools import Segmenter, make_segmenter

from . import labelstudio as ls
from .errors import ApiError
from .images import ImageFetcher, LabelStudioConnection
from .metrics import Metrics
from .sessions import Sessions
from .settings import Settings
from .store import AnnotationStore

log = logging.getLogger(__name__)

ANNOTATION_EVENTS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED")
DELETE_EVENTS = ("ANNOTATION_DELETED", "ANNOTATIONS_DELETED")
TRAINING_EVENTS = ("START_TRAINING",)


@dataclass
class Capabilities:
    tool: str | None
    tool_error: str | None
    policy: str | None
    policy_error: str | None


class Service:
    def __init__(self, settings: Settings, metrics: Metrics):
        self.settings = settings
        self.metrics = metrics
        self.connection = LabelStudioConnection(settings)
        self.fetcher = ImageFetcher(settings, self.connection)
        self.sessions = Sessions(settings.interactive_ttl)
        self.store = AnnotationStore(settings.data_dir / "annotations.sqlite3")
        self.segmenter, tool_error = self._build_segmenter()
        self.capabilities = Capabilities(
            tool=self.segmenter.name if self.segmenter else None, tool_error=tool_error,
            policy=None, policy_error="no policy configured" if not settings.policy else
            f"policy {settings.policy!r} is set but policies are not supported by this version")
        caches = {"images": self.fetcher}
        if self.segmenter:
            caches["tool"] = self.segmenter.cache
        metrics.watch_caches(caches)
        self.schemas: dict[str, ls.Schema] = {}
        self.events: dict[str, int] = {}
        self.last_training: dict | None = None
        self._lock = threading.Lock()
        self.started = time.time()

    def _build_segmenter(self) -> tuple[Segmenter | None, str | None]:
        try:
            segmenter = make_segmenter(self.settings.tool, cache_bytes=self.settings.tool_cache_bytes,
                                       sam_checkpoint=self.settings.sam_checkpoint or None,
                                       data_dir=self.settings.data_dir, sam_sha256=self.settings.sam_sha256 or None)
            log.info("interactive tool: %s", segmenter.name)
            return segmenter, None
        except Exception as exc:  # a missing checkpoint turns the capability off, not the server
            log.error("interactive tool %r is off: %s", self.settings.tool, exc)
            return None, f"{type(exc).__name__}: {exc}"

    @property
    def model_version(self) -> str:
        return f"segagent-{self.capabilities.tool or 'none'}-v0"

    # ---------------------------------------------------------------- status
    def health(self) -> dict:
        caps = self.capabilities
        return {
            "status": "UP",
            "model_class": "SegAgentBackend",
            "model_version": self.model_version,
            "capabilities": {
                "tool": {"on": caps.tool is not None, "name": caps.tool, "error": caps.tool_error},
                "policy": {"on": caps.policy is not None, "name": caps.policy, "reason": caps.policy_error},
            },
        }

    def status(self) -> dict:
        return {
            "policy": self.capabilities.policy,
            "policy_reason": self.capabilities.policy_error,
            "tool": self.capabilities.tool,
            "active_version": self.model_version,
            "annotations": self.store.counts(),
            "trajectories": {"total": 0},
            "webhook_events": dict(self.events),
            "training": self.last_training or {"state": "idle"},
            "label_studio": {"url": self.connection.url or None, "token": bool(self.connection.key)},
            "uptime_seconds": round(time.time() - self.started, 1),
        }

    # ---------------------------------------------------------------- setup
    def setup(self, payload: dict) -> dict:
        self.connection.remember_setup(payload.get("hostname"), payload.get("access_token"))
        schema = payload.get("schema")
        if schema:
            self.schemas[_project_id(payload.get("project"))] = ls.Schema.from_config(schema)
        return {"model_version": self.model_version}

    def _schema(self, payload: dict) -> ls.Schema:
        config = payload.get("label_config")
        if config:
            return ls.Schema.from_config(config)
        known = self.schemas.get(_project_id(payload.get("project")))
        if known:
            return known
        raise ApiError("the request has no label_config and its project was not set up")

    # ---------------------------------------------------------------- predict
    def predict(self, payload: dict) -> list:
        tasks = payload.get("tasks")
        if not isinstance(tasks, list):
            raise ApiError("'tasks' must be a list of task objects")
        if not all(isinstance(t, dict) for t in tasks):
            raise ApiError("every task must be an object")
        schema = self._schema(payload)
        params = payload.get("params") or {}
        if not isinstance(params, dict):
            raise ApiError("'params' must be an object")
        context = params.get("context")
        project = _project_id(payload.get("project"))
        return [self._predict_task(task, schema, context, project) for task in tasks]

    def _predict_task(self, task: dict, schema: ls.Schema, context, project: str) -> list | dict:
        data = task.get("data")
        if not isinstance(data, dict):
            raise ApiError(f"task {task.get('id')} has no 'data' object")
        has_context = isinstance(context, dict) and bool(context.get("result"))
        boxes_possible = any(
            r.get("type") == "rectanglelabels" for item in (task.get("predictions") or []) + (task.get("annotations") or [])
            if isinstance(item, dict) for r in (item.get("result") or []) if isinstance(r, dict))
        if not has_context and not boxes_possible:
            log.info("task %s: no prediction: no policy configured, and no clicks or boxes to start from",
                     task.get("id"))
            return []
        if self.segmenter is None:
            raise ApiError(f"the interactive tool is off: {self.capabilities.tool_error}", 503)
        image = self.fetcher.fetch(data.get(schema.image_key), task.get("id"))
        height, width = image.shape[:2]
        if has_context:
            interaction = ls.parse_context(context, schema, width, height)
            if not interaction.empty:
                return self._interactive(task, schema, interaction, image, project)
        regions = []
        for label, box in ls.task_boxes(task, schema, width, height):
            result = self.segmenter.predict(image, box=box)
            regions.append(ls.brush_region(result.mask, schema, ls.choose_label(schema, label), result.score))
        self.metrics.predictions.labels("refine").inc(len(regions))
        return self._prediction(regions)

    def _interactive(self, task: dict, schema: ls.Schema, interaction: ls.Interaction, image: np.ndarray,
                     project: str) -> dict:
        label = ls.choose_label(schema, interaction.label)
        key = (project, task.get("id"), schema.brush_name, label)
        clicks, previous = self.sessions.resolve(key, interaction.clicks, interaction.box)
        try:
            result = self.segmenter.predict(image, clicks, box=interaction.box, previous=previous)
        except ValueError as exc:
            raise ApiError(str(exc)) from exc
        self.sessions.remember(key, clicks, interaction.box, result)
        self.metrics.predictions.labels("interactive").inc()
        log.info("task %s: interactive mask for %r from %d clicks%s, %d pixels", task.get("id"), label,
                 len(clicks), " and a box" if interaction.box else "", int(result.mask.sum()))
        return self._prediction([ls.brush_region(result.mask, schema, label, result.score)])

    def _prediction(self, regions: list[dict]) -> dict:
        score = float(np.mean([r["score"] for r in regions])) if regions else 0.0
        return {"result": regions, "score": round(score, 4), "model_version": self.model_version}

    # ---------------------------------------------------------------- webhook / fit
    def webhook(self, payload: dict) -> dict:
        action = payload.get("action")
        if not isinstance(action, str):
            raise ApiError("a webhook event needs an 'action'")
        with self._lock:
            self.events[action] = self.events.get(action, 0) + 1
        self.metrics.events.labels(action if action.isupper() and len(action) < 40 else "other").inc()
        if action in ANNOTATION_EVENTS:
            return self._keep_annotation(payload)
        if action in DELETE_EVENTS:
            return self._delete_annotations(payload)
        if action in TRAINING_EVENTS:
            return self.train(payload)
        log.info("webhook %s ignored", action)
        return {"status": "ignored", "action": action}

    def _keep_annotation(self, payload: dict) -> dict:
        annotation, task = payload.get("annotation"), payload.get("task")
        if not isinstance(annotation, dict) or not isinstance(task, dict):
            raise ApiError("an annotation event needs 'annotation' and 'task' objects")
        if not isinstance(annotation.get("id"), int):
            raise ApiError("the annotation has no integer id")
        if annotation.get("was_cancelled"):
            self.store.delete([annotation["id"]])
            return {"status": "skipped", "reason": "the annotation was cancelled"}
        project = payload.get("project") or {}
        config = project.get("label_config") if isinstance(project, dict) else None
        schema = ls.Schema.from_config(config) if config else self._schema(payload)
        regions = ls.annotation_regions(annotation.get("result"), schema, self.settings.max_image_pixels)
        prompt = ls.task_prompt(task, self.settings.prompt_fields)
        changed = self.store.replace(
            str(project.get("id") if isinstance(project, dict) else ""), int(task.get("id") or 0), annotation["id"],
            str(annotation.get("updated_at") or annotation.get("created_at") or ""),
            [(r.label, prompt, r.source, r.mask) for r in regions])
        log.info("annotation %s of task %s: %d regions %s", annotation["id"], task.get("id"), len(regions),
                 "kept" if changed else "already kept")
        return {"status": "ok" if changed else "unchanged", "regions": len(regions)}

    def _delete_annotations(self, payload: dict) -> dict:
        ids = []
        if isinstance(payload.get("annotation"), dict):
            ids.append(payload["annotation"].get("id"))
        for item in payload.get("annotations") or []:
            ids.append(item.get("id") if isinstance(item, dict) else item)
        ids = [i for i in ids if isinstance(i, int)]
        removed = self.store.delete(ids)
        return {"status": "ok", "deleted_regions": removed}

    def train(self, payload: dict) -> dict:
        """START_TRAINING and the legacy /train: nothing to fine-tune until a policy is configured."""
        reason = self.capabilities.policy_error or "training is not available"
        self.last_training = {"state": "skipped", "reason": reason, "at": time.time()}
        log.info("training requested: skipped (%s)", reason)
        return {"status": "skipped", "reason": reason}

    def versions(self) -> dict:
        return {"versions": [self.model_version]}


def _project_id(project) -> str:
    """Label Studio sends a project as "id.timestamp", a number, or an object with an id."""
    if isinstance(project, dict):
        project = project.get("id")
    return str(project).split(".")[0] if project is not None else ""
