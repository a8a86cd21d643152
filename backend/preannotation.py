"""Pre-annotating a whole project in the background: on TASKS_CREATED, on POST /preannotate and from
`python -m model preannotate`. Tasks are listed and read through Label Studio's API (connection.py's client,
which retries reads with backoff), predicted as /predict would (refine from the rectangles they carry, or auto
with a policy), and the predictions written back through Label Studio's predictions API with the model version,
outside any request of Label Studio's, so its ML timeout never applies. Each task is a `preannotate` job of the
dispatcher (threads of this process, SEGAGENT_PREANNOTATE_WORKERS of them, or RQ workers when REDIS_URL is set);
a task is predicted once per model version, also after a retry or a restart (its predictions are read first).
With an interactive tool that encodes images (SAM), each task's image is encoded on the way, so that its first
click is decoder-only."""
from __future__ import annotations

import logging
import time

from model.settings import Settings

from .capabilities import Capabilities
from .connection import LabelStudio, LabelStudioConnection
from .dispatch import Dispatcher
from .errors import CapabilityOff, InvalidRequest
from .images import ImageFetcher
from .preannotation_queue import MAX_ATTEMPTS, Item, PreannotationQueue
from .prediction import Predictor
from .projects import ProjectConfigs
from .schemas import TaskBody
from .serving import VersionServer
from .task_predictions import predict_task

log = logging.getLogger(__name__)

UNKNOWN_WAIT = 30.0  # seconds before a task of a project whose Label Studio is not known yet is looked at again


class Preannotator:
    def __init__(self, settings: Settings, capabilities: Capabilities, connection: LabelStudioConnection,
                 fetcher: ImageFetcher, configs: ProjectConfigs, server: VersionServer, predictor: Predictor,
                 queue: PreannotationQueue, dispatcher: Dispatcher):
        self.settings = settings
        self.capabilities = capabilities
        self.connection = connection
        self.fetcher = fetcher
        self.configs = configs
        self.server = server
        self.predictor = predictor
        self.queue = queue
        self.dispatcher = dispatcher
        queue.on_expired = self._hand_out  # a task whose holder stopped (kill -9) runs again after its lease

    @property
    def runner(self) -> str:
        return self.dispatcher.name

    def resume(self) -> None:
        """Hand out again what is queued (a stop may have come between queueing a task and running it), a task
        still in a failed attempt's backoff when that backoff ends."""
        now = time.time()
        try:
            for item in self.queue.waiting():
                self._hand_out([item], delay=max(0.0, item.not_before - now))
        except CapabilityOff as exc:
            log.error("pre-annotation: %s", exc.message)

    def request(self, project: str, task_ids: list[int] | None) -> dict:
        """Queue a project's tasks (all of them, or those named) for pre-annotation."""
        if not project:
            raise InvalidRequest("pre-annotation needs the project")
        label_studio = self._label_studio(project)
        if task_ids is None:
            task_ids = label_studio.task_ids(project)
        version = self.server.serving(project).version
        queued = self.queue.add(project, task_ids, version)
        self._hand_out(queued)
        log.info("project %s: %d tasks queued for pre-annotation with %s (%d asked for, runner %s)", project,
                 len(queued), version, len(task_ids), self.runner)
        return {"status": "queued", "project": project, "queued": len(queued), "asked": len(task_ids),
                "model_version": version, "runner": self.runner, "progress": self.queue.progress(project)}

    def _hand_out(self, items: list[Item], delay: float = 0.0) -> None:
        from redis.exceptions import RedisError

        try:
            for item in items:
                self.dispatcher.submit("preannotate", item.project, item.task_id, item.model_version, delay=delay)
        except RedisError as exc:  # the tasks stay queued here: the next start hands them out
            raise CapabilityOff(f"the RQ queue is unreachable ({type(exc).__name__}); the tasks are queued and are "
                                "handed to the workers when the backend starts again") from exc

    def status(self) -> dict:
        return {project: self.queue.progress(project) for project in self.queue.projects()}

    def _label_studio(self, project: str) -> LabelStudio:
        label_studio = self.connection.for_project(project)
        if not label_studio.known:
            raise InvalidRequest(f"pre-annotating project {project} needs Label Studio's address and a token: set "
                                 "LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY, or connect the backend to the project "
                                 "in Label Studio (its /setup brings them)")
        return label_studio

    def run_task(self, project: str, task_id: int, model_version: str) -> str:
        """The `preannotate` job: the task, if it is still queued here (a job repeated, or for a task done, failed
        for good or taken by another worker, does nothing). A failed attempt is handed out again after its
        backoff; a task of a project whose Label Studio is not known yet, after UNKNOWN_WAIT."""
        item = self.queue.claim(project, task_id, model_version)
        if item is None:
            return "not queued: done, failed or taken by another worker"
        try:
            note = self._preannotate(item)
        except InvalidRequest as exc:  # after a restart, until the project's /setup or the environment says where
            self.queue.later(item, UNKNOWN_WAIT, exc.message)
            self._hand_out([item], delay=UNKNOWN_WAIT)
            return f"waiting: {exc.message}"
        except Exception as exc:  # Label Studio down, a bad image: the task is tried again later
            log.warning("project %s, task %s: pre-annotation failed: %s: %s", project, task_id, type(exc).__name__,
                        str(exc)[:300])
            self.queue.failed(item, f"{type(exc).__name__}: {exc}")
            if item.attempts + 1 >= MAX_ATTEMPTS:
                return "failed for good"
            self._hand_out([item], delay=2.0 ** (item.attempts + 1))  # the queue's backoff
            return "failed; tried again later"
        self.queue.done(item, note)
        return note or "done"

    def _preannotate(self, item: Item) -> str | None:
        """Predict one task and write the prediction; a note when there was nothing to write."""
        label_studio = self._label_studio(item.project)
        raw = label_studio.task(item.task_id)
        if any(p.get("model_version") == item.model_version for p in label_studio.predictions(item.task_id)):
            return "predicted already"
        if not self.configs.known(item.project):
            self.configs.remember(item.project, label_studio.label_config(item.project))
        schema = self.configs.schema(item.project, None)
        task = TaskBody.model_validate(raw)
        serving = self.server.serving(item.project)
        prediction = predict_task(self.settings, self.predictor, task, schema, serving)
        image = task.data.get(schema.image_key)
        if self.capabilities.tool.on and isinstance(image, str):  # the embedding a first click will need
            self.capabilities.tool.get().encode(self.fetcher.fetch(image, task.id, project=item.project))
        if prediction is None:
            return f"nothing to predict from: no rectangles to refine, and no policy ({serving.agent.reason})"
        if not prediction["result"]:
            return "no regions found"
        label_studio.create_prediction(item.task_id, prediction)
        return None
