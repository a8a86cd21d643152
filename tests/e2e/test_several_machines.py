"""End to end, several machines simulated on one: machines A and B each run a backend (`make serve`), a worker
(`segagent-worker preannotate annotation`) and a trainer (`segagent-worker train --fork`), each with a data folder
of its own, and share only PostgreSQL (SEGAGENT_DATABASE_URL), Redis (REDIS_URL) and the blob folder
(SEGAGENT_BLOB_DIR). Label Studio 1.23 talks to backend A only. A project is pre-annotated with A's worker killed
with SIGKILL mid-task: B's worker finishes it, every task predicted once. Annotations are learned once each, also
with backend A killed with SIGKILL right after Label Studio's webhooks were answered. Training requested on B is
run by a trainer, promoted, and served by both backends."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
import requests
from label_studio_sdk import LabelStudio

from backend.preannotation_queue import MIGRATIONS
from model.core.database import Database
from tests.e2e.conftest import make_serve
from tests.e2e.test_preannotation import _ours, _wait
from tests.e2e.test_training import CONFIG, _brush
from tests.synthetic import png_bytes, scene

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
WORKER = str(Path(sys.executable).with_name("segagent-worker"))
TASKS = 8
ANNOTATED = 3  # the tasks annotated (and trained on), as tests/e2e/test_training.py does
LEASE = 5  # SEGAGENT_PREANNOTATION_LEASE_SECONDS: how long the task of a killed worker waits to run elsewhere


@contextmanager
def _process(args: list[str], log: Path, env: dict):
    """A process in a session of its own (killed with its group at the end, whatever happened)."""
    process = subprocess.Popen(args, cwd=ROOT, env=env, stdout=open(log, "a"), stderr=subprocess.STDOUT,
                               start_new_session=True)
    try:
        yield process
    finally:
        _kill(process)


def _kill(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(timeout=30)


class Machine:
    """One machine's data folder, settings and processes."""

    def __init__(self, name: str, folder: Path, env: dict, stack: ExitStack):
        self.name, self.folder, self.stack = name, folder, stack
        folder.mkdir()
        self.env = {**env, "SEGAGENT_DATA_DIR": str(folder)}
        self.process_env = {k: v for k, v in os.environ.items() if k not in ("LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY")}
        self.process_env.update(self.env)

    def serve(self) -> dict:
        return self.stack.enter_context(make_serve(self.folder, **self.env))

    def worker(self, *kinds: str) -> subprocess.Popen:
        log = self.folder / f"{'-'.join(k.strip('-') for k in kinds)}.log"  # appended to by a restarted one
        return self.stack.enter_context(_process([WORKER, *kinds], log, self.process_env))

    def logs(self) -> str:
        return "\n".join(f"--- {self.name} {log.name}\n{log.read_text()[-2500:]}" for log in self.folder.glob("*.log"))


def _get(server: dict, path: str, project: int) -> dict:
    return requests.get(f"{server['url']}{path}", params={"project": project}, timeout=10).json()


def _running_tasks(database_url: str) -> list[tuple[int, int]]:
    """(task, attempts) of every pre-annotation task a worker holds right now, read in the shared database."""
    db = Database(database_url, store="preannotation", migrations=MIGRATIONS)
    try:
        return [tuple(row) for row in db.fetchall("SELECT task_id, attempts FROM items WHERE state = 'running'")]
    finally:
        db.close()


def _frozen_holding_a_task(worker: subprocess.Popen, database_url: str) -> list[tuple[int, int]]:
    """The worker frozen (SIGSTOP) at a moment it holds a task, so that the kill that follows lands mid-task, not
    between two tasks; the tasks it holds (it is the only worker)."""
    for _ in range(50):
        os.killpg(worker.pid, signal.SIGSTOP)
        held = _running_tasks(database_url)
        if held:
            return held
        os.killpg(worker.pid, signal.SIGCONT)
        time.sleep(0.05)
    return []


def _attempts(database_url: str, task_id: int) -> tuple[str, int]:
    db = Database(database_url, store="preannotation", migrations=MIGRATIONS)
    try:
        return tuple(db.fetchall("SELECT state, attempts FROM items WHERE task_id = ?", (task_id,))[0])
    finally:
        db.close()


def test_two_machines_preannotate_learn_train_and_serve_once_each_across_kills(
        label_studio, image_server, taught_vlm, redis_url, postgres_url, tmp_path):
    shared = {"SEGAGENT_DATABASE_URL": postgres_url, "REDIS_URL": redis_url,
              "SEGAGENT_BLOB_DIR": str(tmp_path / "blobs"), "SEGAGENT_PREANNOTATION_LEASE_SECONDS": str(LEASE),
              "LABEL_STUDIO_URL": label_studio["url"], "LABEL_STUDIO_API_KEY": label_studio["token"],
              "SEGAGENT_BANNED_SUBNETS": "169.254.0.0/16",
              "SEGAGENT_POLICY": str(taught_vlm), "SEGAGENT_AGENT_STEPS": "2", "SEGAGENT_TRAIN_EVERY": "0",
              "SEGAGENT_TRAIN_EPOCHS": "20", "SEGAGENT_TRAIN_LR": "0.01", "SEGAGENT_GATE_EPISODES": "4"}
    client = LabelStudio(base_url=label_studio["url"], api_key=label_studio["token"])
    masks = {}
    for seed in range(21, 21 + TASKS):  # objects in the top-left corner, where the base policy never clicks
        image, mask = scene(160, 120, seed=seed, center=(40, 30), axes=(30, 22))
        (image_server.folder / f"machines-{seed}.png").write_bytes(png_bytes(image))
        masks[f"{image_server.url}/machines-{seed}.png"] = mask
    with ExitStack() as stack:
        a = Machine("A", tmp_path / "machine-a", shared, stack)
        b = Machine("B", tmp_path / "machine-b", shared, stack)
        try:
            _run(client, label_studio, postgres_url, masks, a, b)
        except BaseException:
            print(a.logs(), b.logs(), sep="\n")
            raise


def _run(client, label_studio: dict, postgres_url: str, masks: dict, a: Machine, b: Machine) -> None:
    backend_a, backend_b = a.serve(), b.serve()
    worker_a = a.worker("preannotate", "annotation")
    project = client.projects.create(title="segagent on two machines", label_config=CONFIG)
    # imported before the model is connected, so that the pre-annotation starts with POST /preannotate below
    client.projects.import_tasks(id=project.id, request=[{"data": {"image": url, "prompt": "a red blob"}}
                                                         for url in masks])
    client.ml.create(project=project.id, url=backend_a["url"], is_interactive=False, title="SegAgent")
    tasks = list(client.tasks.list(project=project.id))
    assert len(tasks) == TASKS

    # 1. pre-annotation: A's worker killed with SIGKILL while it holds a task; B's worker finishes
    answer = requests.post(f"{backend_a['url']}/preannotate", json={"project": project.id}, timeout=60)
    assert answer.status_code == 202 and answer.json()["runner"] == "rq", answer.text
    progress = lambda server: _get(server, "/status", project.id)["preannotation"].get(str(project.id), {})  # noqa: E731
    assert _wait(lambda: progress(backend_a).get("done", 0) >= 1, timeout=120, every=0.1), progress(backend_a)
    held = _frozen_holding_a_task(worker_a, postgres_url)
    _kill(worker_a)
    done_before = progress(backend_a)["done"]
    assert held and done_before < TASKS, (held, done_before)
    worker_b = b.worker("preannotate", "annotation")
    assert _wait(lambda: progress(backend_b).get("remaining") == 0, timeout=120), progress(backend_b)
    counted = ("done", "failed", "remaining", "total", "written")
    final = progress(backend_b)
    assert {k: progress(backend_a)[k] for k in counted} == {k: final[k] for k in counted}
    assert (final["done"], final["failed"], final["total"]) == (TASKS, 0, TASKS), final
    for task_id, attempts in held:  # run again elsewhere once its lease ran out, an attempt counted
        assert _attempts(postgres_url, task_id) == ("done", attempts + 1)
    counts = _ours(client, project.id)
    assert len(counts) == TASKS and set(counts.values()) == {1}, counts  # one prediction per task, none twice

    # 2. annotations, with no worker running: Label Studio's webhooks go to A, which keeps each annotation and the
    # work it owes before answering; A is then killed with SIGKILL, and Redis loses the queued work (a Redis without
    # persistence restarted): A's next start queues it again from the store, and both machines' workers learn it
    _kill(worker_b)
    for task in tasks[:ANNOTATED]:
        client.annotations.create(id=task.id, result=[_brush(masks[task.data["image"]])], was_cancelled=False)
    assert _get(backend_b, "/status", project.id)["derived_work"]["pending"] == ANNOTATED
    _kill(backend_a["process"])
    _annotation_queue(a.env["REDIS_URL"]).empty()
    backend_a = a.serve()  # the same data folder
    a.worker("preannotate", "annotation")
    b.worker("preannotate", "annotation")
    expected = {"scratch": ANNOTATED, "correction": ANNOTATED}
    learned = lambda server: {k: _get(server, "/status", project.id)["trajectories"][k] for k in expected}  # noqa: E731
    assert _wait(lambda: learned(backend_b) == expected and
                 _get(backend_b, "/status", project.id)["derived_work"]["pending"] == 0, timeout=180), (
        _get(backend_b, "/status", project.id)["derived_work"], learned(backend_b))
    status_a, status_b = _get(backend_a, "/status", project.id), _get(backend_b, "/status", project.id)
    assert status_a["trajectories"] == status_b["trajectories"] and learned(backend_a) == expected
    assert status_a["annotations"] == status_b["annotations"]
    assert status_b["derived_work"] == {"pending": 0, "failed": 0, "max_attempts": 3}

    # 3. training requested on B, run by a trainer, served by A and B
    trainers = {"A": a.worker("train", "--fork"), "B": b.worker("train", "--fork")}
    started = requests.post(f"{backend_b['url']}/train", json={"project": str(project.id)}, timeout=60)
    assert started.status_code == 200 and started.json()["status"] == "queued", started.text
    new_version = f"segagent-classical-agent-project-{project.id}-v1"
    training = lambda: _get(backend_b, "/status", project.id)["training"]  # noqa: E731
    assert _wait(lambda: training()["state"] not in ("queued", "running"), timeout=300, every=2), training()
    job = training()["last_job"]
    assert job["state"] == "promoted" and job["version"] == "v1", job
    trained_on = _trained_on(redis_url=a.env["REDIS_URL"], job_id=job["id"], trainers=trainers)
    print(f"training job {job['id']}: trained by machine {trained_on}'s trainer")
    for server in (backend_a, backend_b):
        assert _get(server, "/status", project.id)["active_version"] == new_version
        assert new_version in requests.get(f"{server['url']}/versions", timeout=10).json()["versions"]
    task = tasks[0]
    predicted = requests.post(f"{backend_a['url']}/predict", json={
        "tasks": [{"id": task.id, "data": task.data}], "project": f"{project.id}.1", "label_config": CONFIG},
        timeout=120).json()
    assert predicted["model_version"] == new_version and predicted["results"][0], predicted


def _annotation_queue(redis_url: str):
    from redis import Redis
    from rq import Queue

    from backend.dispatch import QUEUES

    return Queue(QUEUES["annotation"], connection=Redis.from_url(redis_url))


def _trained_on(redis_url: str, job_id: str, trainers: dict[str, subprocess.Popen]) -> str:
    """Which machine's trainer ran the RQ job: the worker RQ names in the job, found by its process id."""
    from redis import Redis
    from rq import Worker
    from rq.job import Job

    connection = Redis.from_url(redis_url)
    name = Job.fetch(job_id, connection=connection).worker_name
    pids = {worker.name: worker.pid for worker in Worker.all(connection=connection)}
    [machine] = [machine for machine, process in trainers.items() if pids.get(name) == process.pid]
    return machine

