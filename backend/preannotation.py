"""Pre-annotating a whole project in the background: on TASKS_CREATED, on POST /preannotate and from
`python -m model preannotate`. Tasks are listed and read through Label Studio's API, predicted as
/predict would (refine from the rectangles they carry, or auto with a policy), and the predictions
written back through Label Studio's predictions API with the model version, outside any request of
Label Studio's, so its ML timeout never applies. Local worker threads (SEGAGENT_PREANNOTATE_WORKERS)
run the tasks, or RQ workers when REDIS_URL is set; reads are retried with backoff on 429 and 5xx; a
task is predicted once per model version, also after a retry or a restart (its predictions are read
first). With an interactive tool that encodes images (SAM), each task's image is encoded on the way,
so that its first click is decoder-only."""
from __future__ import annotations

import logging
import threading

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from model.settings import Settings

from .capabilities import Capabilities
from .connection import LabelStudio, LabelStudioConnection
from .errors import CapabilityOff, InvalidRequest, LabelStudioFailed
from .images import ImageFetcher
from .jobs import lower_this_thread_priority
from .labelstudio import formatting, parsing
from .preannotation_queue import MAX_ATTEMPTS, Item, PreannotationQueue
from .preannotation_rq import enqueue, rq_queue
from .prediction import Predictor
from .projects import ProjectConfigs
from .schemas import TaskBody
from .serving import VersionServer

log = logging.getLogger(__name__)

PAGE_SIZE = 100
IDLE_WAIT = 1.0  # seconds a worker waits for work before looking again
UNKNOWN_WAIT = 30.0  # seconds before a task of a project whose Label Studio is not known yet is looked at again


class Preannotator:
    def __init__(self, settings: Settings, capabilities: Capabilities, connection: LabelStudioConnection,
                 fetcher: ImageFetcher, configs: ProjectConfigs, server: VersionServer, predictor: Predictor,
                 queue: PreannotationQueue, local_workers: bool):
        self.settings = settings
        self.capabilities = capabilities
        self.connection = connection
        self.fetcher = fetcher
        self.configs = configs
        self.server = server
        self.predictor = predictor
        self.queue = queue
        self.session = requests.Session()
        self.session.trust_env = False
        retries = Retry(total=3, backoff_factor=0.5, status_forcelist=(429, 500, 502, 503, 504),
                        allowed_methods=frozenset({"GET"}), respect_retry_after_header=True)
        self.session.mount("http://", HTTPAdapter(max_retries=retries))
        self.session.mount("https://", HTTPAdapter(max_retries=retries))
        self._wake = threading.Event()
        self._stop = threading.Event()
        # Local threads take tasks from the queue; with REDIS_URL, RQ workers run them (preannotation_rq.py).
        self._rq = None if local_workers else rq_queue(settings.redis_url)
        self._workers = [threading.Thread(target=self._work, daemon=True, name=f"preannotate-{n}")
                         for n in range(settings.preannotate_workers if local_workers else 0)]
        for worker in self._workers:
            worker.start()

    @property
    def runner(self) -> str:
        return "process" if self._rq is None else "rq"

    def resume(self) -> None:
        """With RQ, hand out again what is queued here (a stop may have come between queueing a task and
        handing it out); local workers take it from the queue by themselves."""
        if self._rq is not None:
            try:
                self._hand_out(self.queue.waiting())
            except CapabilityOff as exc:
                log.error("pre-annotation: %s", exc.message)

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        for worker in self._workers:
            worker.join(timeout=30)
        self.session.close()

    def request(self, project: str, task_ids: list[int] | None) -> dict:
        """Queue a project's tasks (all of them, or those named) for pre-annotation."""
        if not project:
            raise InvalidRequest("pre-annotation needs the project")
        label_studio = self._label_studio(project)
        if task_ids is None:
            task_ids = self._task_ids(label_studio, project)
        version = self.server.serving(project).version
        queued = self.queue.add(project, task_ids, version)
        if self._rq is not None:
            self._hand_out(queued)
        self._wake.set()
        log.info("project %s: %d tasks queued for pre-annotation with %s (%d asked for, runner %s)", project,
                 len(queued), version, len(task_ids), self.runner)
        return {"status": "queued", "project": project, "queued": len(queued), "asked": len(task_ids),
                "model_version": version, "runner": self.runner, "progress": self.queue.progress(project)}

    def _hand_out(self, items: list[Item]) -> None:
        from redis.exceptions import RedisError

        try:
            for item in items:
                enqueue(self._rq, item)
        except RedisError as exc:  # the tasks stay queued here: the next start hands them out
            raise CapabilityOff(f"the RQ queue is unreachable ({type(exc).__name__}); the tasks are queued and are "
                                "handed to the workers when the backend starts again") from exc

    def status(self) -> dict:
        return {project: self.queue.progress(project) for project in self.queue.projects()}

    def _label_studio(self, project: str) -> LabelStudio:
        label_studio = self.connection.for_project(project)
        if not (label_studio.url and label_studio.key):
            raise InvalidRequest(f"pre-annotating project {project} needs Label Studio's address and a token: set "
                                 "LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY, or connect the backend to the project "
                                 "in Label Studio (its /setup brings them)")
        return label_studio

    def _call(self, label_studio: LabelStudio, method: str, path: str, **kwargs) -> dict:
        try:
            return label_studio.api(self.session, method, path, self.settings.fetch_timeout, **kwargs)
        except requests.RequestException as exc:
            raise LabelStudioFailed(f"Label Studio at {label_studio.url}: {method} {path.split('?')[0]} failed: "
                                    f"{type(exc).__name__}: {str(exc)[:200]}") from exc

    def _task_ids(self, label_studio: LabelStudio, project: str) -> list[int]:
        """Every task id of the project, page by page (Label Studio says how many there are)."""
        ids: list[int] = []
        page = 1
        while True:
            body = self._call(label_studio, "GET", f"/api/tasks/?project={int(project)}&page={page}"
                              f"&page_size={PAGE_SIZE}&fields=task_only")
            tasks = body.get("tasks", []) if isinstance(body, dict) else body
            ids += [int(task["id"]) for task in tasks]
            total = body.get("total") if isinstance(body, dict) else None
            if len(tasks) < PAGE_SIZE or (isinstance(total, int) and len(ids) >= total):
                return ids
            page += 1

    def _work(self) -> None:
        lower_this_thread_priority()
        while not self._stop.is_set():
            item = self.queue.take()
            if item is None:
                self._wake.wait(IDLE_WAIT)
                self._wake.clear()
                continue
            self.run(item)

    def run(self, item: Item) -> bool:
        """Pre-annotate one task taken from the queue; True when it is finished with (done, or failed for the
        last time), False when it waits for another attempt."""
        try:
            note = self._preannotate(item)
        except InvalidRequest as exc:  # after a restart, until the project's /setup or the environment says where
            self.queue.later(item, UNKNOWN_WAIT, exc.message)
            return False
        except Exception as exc:  # Label Studio down, a bad image: the task is tried again later
            log.warning("project %s, task %s: pre-annotation failed: %s: %s", item.project, item.task_id,
                        type(exc).__name__, str(exc)[:300])
            self.queue.failed(item, f"{type(exc).__name__}: {exc}")
            return item.attempts + 1 >= MAX_ATTEMPTS
        self.queue.done(item, note)
        return True

    def _preannotate(self, item: Item) -> str | None:
        """Predict one task and write the prediction; a note when there was nothing to write."""
        label_studio = self._label_studio(item.project)
        raw = self._call(label_studio, "GET", f"/api/tasks/{item.task_id}")
        if any(p.get("model_version") == item.model_version for p in self._predictions(label_studio, item.task_id)):
            return "predicted already"
        schema = self.configs.schema(item.project, None) if self.configs.known(item.project) else None
        if schema is None:
            project = self._call(label_studio, "GET", f"/api/projects/{int(item.project)}")
            self.configs.remember(item.project, project["label_config"])
            schema = self.configs.schema(item.project, None)
        serving = self.server.serving(item.project)
        task = parsing.task_input(TaskBody.model_validate(raw), schema, None, self.settings.prompt_fields,
                                  serving.agent.on, self.settings.max_image_pixels)
        if self.capabilities.tool.on:  # the embedding a first click will need (cached by content)
            self.capabilities.tool.get().encode(self.fetcher.fetch(task.image, task.id, project=item.project))
        regions = self.predictor.predict(task, schema, serving)
        if not regions:
            return "nothing to predict from"
        body = formatting.prediction(regions, schema, item.model_version, self.settings.return_clicks,
                                     self.settings.polygon_tolerance)
        self._call(label_studio, "POST", "/api/predictions/", json={**body, "task": item.task_id})
        return None

    def _predictions(self, label_studio: LabelStudio, task_id: int) -> list[dict]:
        body = self._call(label_studio, "GET", f"/api/predictions/?task={task_id}")
        return body if isinstance(body, list) else body.get("results", [])
