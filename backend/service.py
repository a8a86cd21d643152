"""Predict and fit: the only place where backend/ calls into model/.

Modes of /predict, per task:
- interactive: the context holds smart keypoints and/or a rectangle -> the tool makes the mask;
- refine: the task already has rectangles (imported predictions, annotations) -> box -> mask, which
  the policy's episode then refines when a policy is configured (which can start from masks too);
- auto: nothing to start from -> the policy's episode, one per object prompt (off without a policy).
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import numpy as np

from model.agent.loop import Agent, AgentConfig, Episode, EpisodeTask
from model.core.clicks import Click
from model.policies import Policy, PolicyError, make_policy
from model.quality.scorers import OfflineScorer, PolicyScorer
from model.settings import Settings
from model.flywheel.registry import BASE_VERSION, Registry, RegistryError, project_of, scope_for
from model.tools import Segmenter, make_segmenter
from model.flywheel.trajectories import TrajectoryStore
from model.flywheel.sources import from_human_clicks, simulated

from . import labelstudio as ls
from .errors import ApiError
from .images import ImageFetcher, LabelStudioConnection
from .jobs import BackgroundJobs
from .metrics import Metrics
from .sessions import Sessions
from .store import AnnotationStore
from .training import TrainingLauncher

log = logging.getLogger(__name__)

QUALITY_FIELD = "segagent_quality"  # the task data field reviewers sort and filter by in the Data Manager
ANNOTATION_EVENTS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED")
DELETE_EVENTS = ("ANNOTATION_DELETED", "ANNOTATIONS_DELETED")
TRAINING_EVENTS = ("START_TRAINING",)


@dataclass
class Serving:
    """What answers one project's requests: its active policy version (and the agent acting with it)."""
    project: str
    version: str
    agent: Agent | None


@dataclass
class Capabilities:
    tool: str | None
    tool_error: str | None
    policy: str | None
    policy_error: str | None
    scorer: str | None
    scorer_error: str | None


class Service:
    def __init__(self, settings: Settings, metrics: Metrics):
        self.settings = settings
        self.metrics = metrics
        self.connection = LabelStudioConnection(settings)
        self.fetcher = ImageFetcher(settings, self.connection)
        self.sessions = Sessions(settings.interactive_ttl)
        self.store = AnnotationStore(settings.data_dir / "annotations.sqlite3")
        self.trajectories = TrajectoryStore(settings.data_dir / "trajectories")
        self.segmenter, tool_error = self._build_segmenter()
        self.policy, policy_error = self._build_policy()
        self.scorer, scorer_error = self._build_scorer()
        self.agent = self._build_agent()
        self.annotation_jobs = BackgroundJobs("annotations")
        self.registry = Registry(settings.data_dir / "models")
        self.launcher = TrainingLauncher(settings, self.registry)
        self._agents: dict[tuple[str, str], Agent] = {}  # (scope, version) -> the agent serving it
        self.serving_errors: dict[str, str] = {}
        self.capabilities = Capabilities(
            tool=self.segmenter.name if self.segmenter else None, tool_error=tool_error,
            policy=self.policy.name if self.policy else None, policy_error=policy_error,
            scorer=type(self.scorer).__name__ if self.scorer else None, scorer_error=scorer_error)
        caches = {"images": self.fetcher}
        if self.segmenter:
            caches["tool"] = self.segmenter.cache
        metrics.watch_caches(caches)
        self.schemas: dict[str, ls.Schema] = {}
        self.events: dict[str, int] = {}
        self.last_training: dict | None = None
        self._pruned = 0.0  # when old episodes and interactive requests were last forgotten
        self._lock = threading.Lock()
        self.started = time.time()
        if settings.train_interval > 0:
            threading.Thread(target=self._train_periodically, daemon=True, name="train-interval").start()

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

    def _build_policy(self) -> tuple[Policy | None, str | None]:
        if not self.settings.policy:
            log.info("auto mode is off: no policy configured (SEGAGENT_POLICY)")
            return None, "no policy configured"
        try:
            policy = make_policy(self.settings.policy, adapter=self.settings.policy_adapter or None,
                                 answer_format=self.settings.policy_format, model=self.settings.policy_model or None)
            log.info("policy: %s", policy.name)
            return policy, None
        except Exception as exc:  # a policy that does not load turns auto mode off, not the server
            log.error("policy %r is off: %s", self.settings.policy, exc)
            return None, f"{type(exc).__name__}: {exc}"

    def _build_scorer(self):
        """The quality scorer: the policy asked for the IoU (SEGAGENT_PRM=policy), else the offline scorer."""
        if self.policy is not None and self.settings.prm == "policy":
            return PolicyScorer(self.policy), None
        try:
            return OfflineScorer(), None
        except Exception as exc:
            log.error("the offline quality scorer is off: %s", exc)
            return None, f"{type(exc).__name__}: {exc}"

    def _build_agent(self) -> Agent | None:
        if self.policy is None or self.segmenter is None:
            return None
        config = AgentConfig(max_steps=self.settings.agent_steps, samples=self.settings.agent_samples)
        return Agent(self.segmenter, self.policy, config, self.scorer if self.settings.prm == "policy" else None)

    def estimate(self, image: np.ndarray, mask: np.ndarray, description: str, fallback: float) -> float:
        """A mask's estimated IoU: the score of every prediction and of every submitted region."""
        if self.scorer is None:
            return fallback
        try:
            return float(self.scorer(image, mask, description))
        except (PolicyError, ValueError) as exc:
            log.warning("quality scorer failed, using the tool's score: %s", exc)
            return fallback

    @property
    def base_version(self) -> str:
        """The model_version of what the settings alone serve (v0), before any training."""
        return self._version_name("", BASE_VERSION)

    def _version_name(self, scope: str, version: str) -> str:
        policy = "" if self.policy is None else "-agent"
        return f"segagent-{self.capabilities.tool or 'none'}{policy}-{scope + '-' if scope else ''}{version}"

    def _scope(self, project: str) -> str:
        """The registry scope of a project: its own, or the shared one (SEGAGENT_POLICY_SCOPE=shared)."""
        return scope_for(project, shared=self.settings.policy_scope == "shared")

    @property
    def trainable(self) -> str | None:
        """None when training can run, else why not."""
        if self.policy is None:
            return f"no policy to fine-tune ({self.capabilities.policy_error})"
        if not hasattr(self.policy, "with_adapter"):
            return "fine-tuning needs a local policy (a path or hub id), not a remote endpoint; use `python -m model export`"
        if self.segmenter is None:
            return f"the interactive tool is off ({self.capabilities.tool_error})"
        return None

    def serving(self, project: str) -> Serving:
        """The project's active version, read from the registry on every call: a promotion or a rollback
        (by any process) is served from the next request on, without a restart."""
        base = Serving(project, self.base_version, self.agent)
        if self.agent is None or self.trainable:
            return base
        try:
            scope = self._scope(project)
        except RegistryError:
            return base  # a request without a project: the base version
        version = self.registry.active(scope)
        if version == BASE_VERSION:
            return base
        key = (scope, version)
        if key not in self._agents:
            try:
                meta = self.registry.version(scope, version)
                if meta.get("base") != self.settings.policy:
                    raise PolicyError(f"{version} was trained for {meta.get('base')}, not for {self.settings.policy}")
                policy = self.policy.with_adapter(f"{scope}_{version}".replace("-", "_"),
                                                  str(self.registry.adapter_path(scope, version)))
            except (PolicyError, RegistryError) as exc:
                if self.serving_errors.get(scope) != str(exc):
                    log.error("%s: cannot serve %s, serving the base version: %s", scope, version, exc)
                self.serving_errors[scope] = str(exc)
                return base
            config = AgentConfig(max_steps=self.settings.agent_steps, samples=self.settings.agent_samples)
            self._agents[key] = Agent(self.segmenter, policy, config, self.agent.scorer)
            self.serving_errors.pop(scope, None)
            log.info("%s: serving %s", scope, version)
        return Serving(project, self._version_name(scope, version), self._agents[key])

    # ---------------------------------------------------------------- status
    def health(self) -> dict:
        caps = self.capabilities
        return {
            "status": "UP",
            "model_class": "SegAgentBackend",
            "model_version": self.base_version,
            "capabilities": {
                "tool": {"on": caps.tool is not None, "name": caps.tool, "error": caps.tool_error},
                "policy": {"on": caps.policy is not None, "name": caps.policy, "reason": caps.policy_error},
                "quality": {"on": caps.scorer is not None, "name": caps.scorer, "error": caps.scorer_error},
                "training": {"on": self.trainable is None, "runner": self.launcher.runner, "reason": self.trainable},
            },
        }

    def status(self, project=None) -> dict:
        project = _project_id(project)
        return {
            "policy": self.capabilities.policy,
            "policy_reason": self.capabilities.policy_error,
            "tool": self.capabilities.tool,
            "active_version": self.serving(project).version,
            "annotations": self.store.counts(),
            "trajectories": self.trajectories.counts(project or None),
            "webhook_events": dict(self.events),
            "training": self.training_status(project),
            "quality": {"scorer": self.capabilities.scorer},
            "annotation_jobs": self.annotation_jobs.status(),
            "label_studio": {"url": self.connection.url or None, "token": bool(self.connection.key)},
            "uptime_seconds": round(time.time() - self.started, 1),
        }

    # ---------------------------------------------------------------- setup
    def setup(self, payload: dict) -> dict:
        self.connection.remember_setup(payload.get("hostname"), payload.get("access_token"))
        schema = payload.get("schema")
        if schema:
            self.schemas[_project_id(payload.get("project"))] = ls.Schema.from_config(schema)
        return {"model_version": self.serving(_project_id(payload.get("project"))).version}

    def _schema(self, payload: dict) -> ls.Schema:
        config = payload.get("label_config")
        if config:
            return ls.Schema.from_config(config)
        known = self.schemas.get(_project_id(payload.get("project")))
        if known:
            return known
        raise ApiError("the request has no label_config and its project was not set up")

    # ---------------------------------------------------------------- predict
    def predict(self, payload: dict) -> dict:
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
        serving = self.serving(_project_id(payload.get("project")))
        return {"results": [self._predict_task(task, schema, context, serving) for task in tasks],
                "model_version": serving.version}

    def _predict_task(self, task: dict, schema: ls.Schema, context, serving: Serving) -> list | dict:
        data = task.get("data")
        if not isinstance(data, dict):
            raise ApiError(f"task {task.get('id')} has no 'data' object")
        has_context = isinstance(context, dict) and bool(context.get("result"))
        refinable = ls.has_starts(task, schema, with_masks=serving.agent is not None)
        if not has_context and not refinable and serving.agent is None:
            log.info("task %s: no prediction: %s, and no clicks or boxes to start from", task.get("id"),
                     self.capabilities.policy_error or self.capabilities.tool_error)
            return []
        if self.segmenter is None:
            raise ApiError(f"the interactive tool is off: {self.capabilities.tool_error}", 503)
        image = self.fetcher.fetch(data.get(schema.image_key), task.get("id"))
        height, width = image.shape[:2]
        if has_context:
            interaction = ls.parse_context(context, schema, width, height)
            if not interaction.empty:
                return self._interactive(task, schema, interaction, image, serving)
        try:
            if refinable:
                return self._refine(task, schema, image, serving)
            return self._auto(task, schema, image, serving)
        except PolicyError as exc:
            raise ApiError(f"the policy is unavailable: {exc}", 503) from exc

    def _refine(self, task: dict, schema: ls.Schema, image: np.ndarray, serving: Serving) -> dict:
        """Each rectangle (or, with a policy, mask) the task has becomes a refined mask: a box through the
        tool, then the agent's episode when there is a policy."""
        height, width = image.shape[:2]
        agent = serving.agent
        starts = ls.task_starts(task, schema, width, height, agent is not None, self.settings.max_image_pixels)
        if not starts and agent is not None:
            return self._auto(task, schema, image, serving)  # nothing usable to start from
        prompt = ls.task_prompt(task, self.settings.prompt_fields)
        labels = [ls.choose_label(schema, start.label) for start in starts]
        if agent is not None:
            episodes = agent.run_many([EpisodeTask(image, prompt or label, initial_mask=start.mask, box=start.box)
                                       for label, start in zip(labels, starts)])
            regions = self._episode_regions(serving, task, schema, image, labels, episodes)
        else:
            regions = []
            for label, start in zip(labels, starts):
                result = self.segmenter.predict(image, box=start.box)
                score = self.estimate(image, result.mask, prompt or label, result.score)
                regions.append(ls.brush_region(result.mask, schema, label, score))
        self.metrics.predictions.labels("refine").inc(len(labels))
        return self._prediction(regions, serving)

    def _auto(self, task: dict, schema: ls.Schema, image: np.ndarray, serving: Serving) -> dict:
        """One episode per object prompt: the task's description, else one per label (the label is the prompt)."""
        prompt = ls.task_prompt(task, self.settings.prompt_fields)
        if prompt:
            named = [label for label in schema.labels if label.lower() in prompt.lower()]
            objects = [(named[0] if named else schema.labels[0], prompt)]
        else:
            objects = [(label, label) for label in schema.labels]
        episodes = serving.agent.run_many([EpisodeTask(image, description) for _, description in objects])
        for episode in episodes:
            log.info("task %s: episode for %r: %d steps, stopped by %s, score %.3f", task.get("id"),
                     episode.description, len(episode.steps), episode.stop_reason, episode.score)
        self.metrics.predictions.labels("auto").inc(len(objects))
        labels = [label for label, _ in objects]
        return self._prediction(self._episode_regions(serving, task, schema, image, labels, episodes), serving)

    def _episode_regions(self, serving: Serving, task: dict, schema: ls.Schema, image: np.ndarray, labels: list[str],
                         episodes: list[Episode]) -> list[dict]:
        """Brush regions (and, if asked, the clicks) of the episodes, each episode recorded for the flywheel."""
        regions = []
        for label, episode in zip(labels, episodes):
            self.store.record_episode(
                serving.project, int(task.get("id") or 0), label, episode.description, serving.version,
                [{"action": s.text, "x": s.click.x, "y": s.click.y, "positive": s.click.positive, "score": s.score}
                 for s in episode.steps], episode.mask, episode.score, episode.stop_reason)
            if not episode.mask.any():
                continue
            score = self.estimate(image, episode.mask, episode.description, episode.score)
            regions.append(ls.brush_region(episode.mask, schema, label, score))
            if self.settings.return_clicks and schema.keypoint_names:
                regions += ls.keypoint_regions(episode.clicks, episode.mask.shape, schema, label)
        return regions

    def _interactive(self, task: dict, schema: ls.Schema, interaction: ls.Interaction, image: np.ndarray,
                     serving: Serving) -> dict:
        label = ls.choose_label(schema, interaction.label)
        key = (serving.project, task.get("id"), schema.brush_name, label)
        clicks, previous = self.sessions.resolve(key, interaction.clicks, interaction.box)
        try:
            result = self.segmenter.predict(image, clicks, box=interaction.box, previous=previous)
        except ValueError as exc:
            raise ApiError(str(exc)) from exc
        self.sessions.remember(key, clicks, interaction.box, result)
        self.store.record_interactive(serving.project, int(task.get("id") or 0), label,
                                      [(c.x, c.y, c.positive) for c in clicks], result.mask)
        self.metrics.predictions.labels("interactive").inc()
        log.info("task %s: interactive mask for %r from %d clicks%s, %d pixels", task.get("id"), label,
                 len(clicks), " and a box" if interaction.box else "", int(result.mask.sum()))
        score = self.estimate(image, result.mask, interaction.text or label, result.score)
        return self._prediction([ls.brush_region(result.mask, schema, label, score)], serving)

    def _prediction(self, regions: list[dict], serving: Serving) -> dict:
        scores = [r["score"] for r in regions if r["type"] == "brushlabels"]
        score = float(np.mean(scores)) if scores else 0.0
        return {"result": regions, "score": round(score, 4), "model_version": serving.version}

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
            self.trajectories.delete_annotations([annotation["id"]])
            return {"status": "skipped", "reason": "the annotation was cancelled"}
        project = payload.get("project") or {}
        config = project.get("label_config") if isinstance(project, dict) else None
        schema = ls.Schema.from_config(config) if config else self._schema(payload)
        regions = ls.annotation_regions(annotation.get("result"), schema, self.settings.max_image_pixels)
        prompt = ls.task_prompt(task, self.settings.prompt_fields)
        project_id = _project_id(project)
        version = str(annotation.get("updated_at") or annotation.get("created_at") or "")
        changed = self.store.replace(project_id, int(task.get("id") or 0), annotation["id"], version,
                                     [(r.label, prompt, r.source, r.mask) for r in regions])
        log.info("annotation %s of task %s: %d regions %s", annotation["id"], task.get("id"), len(regions),
                 "kept" if changed else "already kept")
        if changed and regions:
            self.annotation_jobs.submit(self._learn_from_annotation, project_id, schema, task, annotation, version,
                                        regions, prompt)
        return {"status": "ok" if changed else "unchanged", "regions": len(regions)}

    def _prune_hourly(self) -> None:
        if time.time() - self._pruned < 3600:
            return
        self._pruned = time.time()
        removed = self.store.prune(time.time() - self.settings.retention_days * 86400)
        if removed:
            log.info("forgot %d agent episodes and interactive requests older than %g days", removed,
                     self.settings.retention_days)

    def _learn_from_annotation(self, project: str, schema: ls.Schema, task: dict, annotation: dict, version: str,
                               regions: list, prompt) -> None:
        """In the background: score each region (quality), turn each into trajectories (the flywheel's
        data), and write the worst score into the task's data (QUALITY_FIELD), where the Data Manager
        sorts and filters by it."""
        self._prune_hourly()
        image = self.fetcher.fetch((task.get("data") or {}).get(schema.image_key), task.get("id"))
        for region in regions:
            if region.mask.shape != image.shape[:2]:
                raise ValueError(f"annotation {annotation['id']}: a region of {region.mask.shape} on an image of "
                                 f"{image.shape[:2]}")
        scores = [round(self.estimate(image, r.mask, prompt or r.label, 0.0), 4) for r in regions]
        if not self.store.set_quality(annotation["id"], version, scores):
            log.info("annotation %s changed while it was scored: its newer version is scored instead", annotation["id"])
            return
        if self.segmenter is not None:
            self._record_trajectories(project, task, annotation, version, regions, prompt, image)
        if self.scorer is None:
            return
        data = {**(task.get("data") or {}), QUALITY_FIELD: min(scores)}
        self.connection.api(self.fetcher.session, "PATCH", f"/api/tasks/{int(task['id'])}",
                            self.settings.fetch_timeout, json={"data": data})
        log.info("annotation %s of task %s: quality %s", annotation["id"], task.get("id"), scores)

    def _record_trajectories(self, project: str, task: dict, annotation: dict, version: str, regions: list, prompt,
                             image: np.ndarray) -> None:
        """Per region: from scratch, from our own last prediction (a correction), and the real clicks."""
        task_id = int(task.get("id") or 0)
        sha = self.trajectories.put_image(image)
        ours = {e["label"]: e["mask"] for e in self.store.episodes(project, task_id)}  # the latest per label
        records = []
        for region in regions:
            description = prompt or region.label
            records.append(simulated(self.segmenter, image, region.mask, "scratch", region.label, description, sha))
            predicted = ours.get(region.label)
            if predicted is not None and predicted.shape == region.mask.shape:
                records.append(simulated(self.segmenter, image, region.mask, "correction", region.label, description,
                                         sha, initial=predicted))
            steps = self.store.interactive_steps(project, task_id, region.label)
            if steps:
                clicks = [(Click(*clicked[-1]), mask) for clicked, mask in steps if clicked]
                records.append(from_human_clicks(clicks, region.mask, region.label, description, sha))
        records = [r for r in records if r.steps]
        if self.trajectories.replace_annotation(project, task_id, annotation["id"], version, records):
            log.info("annotation %s: %d trajectories (%s)", annotation["id"], len(records),
                     ", ".join(r.source for r in records))
            self._maybe_train(project)

    def quality(self, project, limit: int) -> dict:
        """The lowest-scored annotations of a project, with links to their tasks."""
        project_id = _project_id(project)
        if not project_id:
            raise ApiError("give the project: /quality?project=ID")
        rows = self.store.lowest_quality(project_id, limit)
        for row in rows:
            row["link"] = f"{self.connection.url}/projects/{project_id}/data?task={row['task_id']}" \
                if self.connection.url else None
        return {"project": project_id, "field": QUALITY_FIELD, "annotations": rows}

    def _delete_annotations(self, payload: dict) -> dict:
        ids = []
        if isinstance(payload.get("annotation"), dict):
            ids.append(payload["annotation"].get("id"))
        for item in payload.get("annotations") or []:
            ids.append(item.get("id") if isinstance(item, dict) else item)
        ids = [i for i in ids if isinstance(i, int)]
        removed = self.store.delete(ids)
        self.trajectories.delete_annotations(ids)
        return {"status": "ok", "deleted_regions": removed}

    # ---------------------------------------------------------------- training and versions
    def train(self, payload: dict) -> dict:
        """START_TRAINING (the webhook Label Studio 1.23 sends for "Start training") and the legacy /train,
        whose annotations are kept first (those the webhook never brought become trajectories too).
        Answers at once; the job runs after the annotation work already queued, in its own process."""
        project = _project_id(payload.get("project"))
        if isinstance(payload.get("annotations"), list):
            self._keep_exported_tasks(payload["annotations"], payload.get("label_config"), project)
        return self._start_training(project, "request", "requested by Label Studio")

    def _start_training(self, project: str, kind: str, trigger: str) -> dict:
        """Queue a job for the project's scope (kind: request, every or interval; trigger: why, in words)."""
        reason = self.trainable
        if reason:
            self.last_training = {"state": "skipped", "reason": reason, "at": time.time()}
            log.info("training requested: skipped (%s)", reason)
            return {"status": "skipped", "reason": reason}
        try:
            scope = self._scope(project)
        except RegistryError as exc:
            raise ApiError(f"training needs the project: {exc}") from exc
        job, new = self.launcher.queue(scope, trigger, self.trajectories.newest_id(project_of(scope)))
        if new:
            self.metrics.training_jobs.labels(kind).inc()
            self.annotation_jobs.submit(self._launch, job["id"])
        return {"status": "queued" if new else "running", "job": job["id"], "scope": scope}

    def _launch(self, job_id: str) -> None:
        try:
            self.launcher.start(job_id)
        except Exception as exc:  # Redis down, no process: the job is failed, the active version serves on
            self.launcher.fail(job_id, f"could not start: {type(exc).__name__}: {exc}")
            raise

    def _keep_exported_tasks(self, tasks: list, label_config, project: str) -> None:
        kept = 0
        for task in tasks:
            if not isinstance(task, dict):
                continue
            for annotation in task.get("annotations") or []:
                event = {"annotation": annotation, "task": task, "project": {"id": project, "label_config": label_config}}
                try:
                    kept += self._keep_annotation(event)["status"] == "ok"
                except ApiError as exc:
                    log.warning("training request: annotation %s of task %s not kept: %s",
                                annotation.get("id") if isinstance(annotation, dict) else None, task.get("id"), exc)
        log.info("training request: %d annotations not seen before are kept", kept)

    def _maybe_train(self, project: str) -> None:
        """Every SEGAGENT_TRAIN_EVERY new trajectories of a scope, a job."""
        if self.settings.train_every <= 0 or self.trainable:
            return
        try:
            scope = self._scope(project)
        except RegistryError:
            return  # annotations of no known project train nothing
        fresh = self.trajectories.count_after(self.registry.trained_through(scope), project_of(scope))
        if fresh >= self.settings.train_every:
            self._start_training(project, "every",
                                 f"{fresh} new trajectories (SEGAGENT_TRAIN_EVERY={self.settings.train_every})")

    def _train_periodically(self) -> None:
        """SEGAGENT_TRAIN_INTERVAL: every so many seconds, a job for each scope with new trajectories."""
        while True:
            time.sleep(self.settings.train_interval)
            if self.trainable:
                continue
            projects = ["shared"] if self.settings.policy_scope == "shared" else self.trajectories.projects()
            for project in projects:
                try:
                    scope = self._scope(project)
                    if self.trajectories.count_after(self.registry.trained_through(scope), project_of(scope)):
                        self._start_training(project, "interval", f"interval of {self.settings.train_interval:g} s")
                except Exception:  # one project's trouble does not stop the others' training
                    log.exception("periodic training of project %s", project)

    def job_status(self, payload: dict) -> dict:
        """Label Studio's /job_status: queued, started, finished or failed, with our details."""
        try:
            job = self.launcher.view(self.registry.job(str(payload.get("job") or "")))
        except RegistryError as exc:
            raise ApiError(str(exc)) from exc
        if job is None:
            raise ApiError(f"no training job {payload.get('job')}", 410)
        state = job["state"]
        label = {"queued": "queued", "running": "started", "failed": "failed"}.get(state, "finished")
        return {"job_status": label, **job}

    def training_status(self, project: str = "") -> dict:
        scopes = self.registry.scopes()
        if project:
            try:
                scopes = [self._scope(project)]
            except RegistryError as exc:
                raise ApiError(str(exc)) from exc
        by_scope = {}
        for scope in scopes:
            active = self.registry.active(scope)
            by_scope[scope] = {
                "active_version": self._version_name("" if active == BASE_VERSION else scope, active),
                "versions": len(self.registry.versions(scope)),
                "new_trajectories": self.trajectories.count_after(self.registry.trained_through(scope),
                                                                  project_of(scope)),
                "last_job": self.launcher.last_job(scope),
                "serving_error": self.serving_errors.get(scope),
            }
        jobs = [s["last_job"] for s in by_scope.values() if s["last_job"]]
        last = max(jobs, key=lambda j: j["created"]) if jobs else self.last_training
        return {"state": (last or {}).get("state", "idle"), "last_job": last, "available": self.trainable is None,
                "reason": self.trainable, "runner": self.launcher.runner, "policy_scope": self.settings.policy_scope,
                "triggers": {"webhook": "START_TRAINING", "every_trajectories": self.settings.train_every,
                             "interval_seconds": self.settings.train_interval},
                "scopes": by_scope}

    def versions(self, project=None) -> dict:
        """Label Studio's /versions: the base version and every version promoted since, of one project or
        (Label Studio sends no project there) of all."""
        project = _project_id(project)
        try:
            scopes = [self._scope(project)] if project else self.registry.scopes()
        except RegistryError as exc:
            raise ApiError(str(exc)) from exc
        names = [self.base_version]
        for scope in scopes:
            active = self.registry.active(scope)
            names += [self._version_name(scope, m["name"]) for m in self.registry.versions(scope)
                      if m["status"] == "promoted" or m["name"] == active]
        return {"versions": names}

    def rollback(self, payload: dict) -> dict:
        """Serve an earlier version of a project again: `version` (v0 is the base; a full model_version
        works too), by default the active version's parent."""
        project = _project_id(payload.get("project"))
        version = payload.get("version")
        if version is not None and not isinstance(version, str):
            raise ApiError("'version' must be a string such as v1")
        try:
            scope = self._scope(project)
            if version and version.startswith("segagent-"):
                version = version.rsplit("-", 1)[1]
            active = self.registry.rollback(scope, version or None)
        except RegistryError as exc:
            raise ApiError(str(exc), 404 if "has no version" in str(exc) else 400) from exc
        log.warning("%s: rolled back, %s is active", scope, active)
        return {"status": "ok", "scope": scope, "active_version": self.serving(project).version}


def _project_id(project) -> str:
    """Label Studio sends a project as "id.timestamp", a number, or an object with an id."""
    if isinstance(project, dict):
        project = project.get("id")
    return str(project).split(".")[0] if project is not None else ""
