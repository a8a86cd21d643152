"""End to end: a project of 50 tasks with rectangles is imported into Label Studio 1.23, which tells the
connected backend (TASKS_CREATED); the backend pre-annotates every task in the background, without
anyone pressing "Retrieve predictions". The backend is killed with SIGKILL half-way and started again: it finishes,
with exactly one prediction of its version per task."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from label_studio_sdk import LabelStudio

from tests.e2e.conftest import make_serve
from tests.e2e.test_label_studio import CONFIG, _bbox_percent

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
TASKS = 50


def _ours(client, project_id: int) -> dict[int, int]:
    """Per task, how many predictions of the backend's it has."""
    counts: dict[int, int] = {}
    for task in client.tasks.list(project=project_id, fields="all"):
        full = client.tasks.get(id=task.id)
        counts[task.id] = sum(str(p.model_version or "").startswith("segagent-") for p in full.predictions or [])
    return counts


def _wait(condition, timeout: float, every: float = 1.0) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return True
        time.sleep(every)
    return False


def test_imported_tasks_are_preannotated_once_each_across_a_kill(label_studio, image_server, tmp_path):
    client = LabelStudio(base_url=label_studio["url"], api_key=label_studio["token"])
    env = {"LABEL_STUDIO_URL": label_studio["url"], "LABEL_STUDIO_API_KEY": label_studio["token"],
           "SEGAGENT_PREANNOTATE_WORKERS": "1"}
    data = tmp_path / "backend"
    data.mkdir()
    with make_serve(data, **env) as backend:
        project = client.projects.create(title="segagent pre-annotation", label_config=CONFIG)
        client.ml.create(project=project.id, url=backend["url"], is_interactive=True, title="SegAgent")
        box = {"from_name": "box", "to_name": "image", "type": "rectanglelabels",
               "value": {**_bbox_percent(image_server.mask), "rectanglelabels": ["Object"]}}
        client.projects.import_tasks(id=project.id, request=[
            {"data": {"image": f"{image_server.url}/object.png?n={n}"},
             "predictions": [{"model_version": "detector", "result": [box]}]} for n in range(TASKS)])
        progress = lambda: requests.get(f"{backend['url']}/status", timeout=10).json()["preannotation"].get(  # noqa: E731
            str(project.id), {})
        assert _wait(lambda: 5 <= progress().get("done", 0) < TASKS, timeout=120, every=0.2), progress()
        os.killpg(backend["process"].pid, signal.SIGKILL)  # make serve and gunicorn, mid-way
        backend["process"].wait(timeout=30)
    done_before = sum(1 for count in _ours(client, project.id).values() if count)
    assert done_before < TASKS

    with make_serve(data, **env) as backend:
        status = lambda: requests.get(f"{backend['url']}/status?project={project.id}", timeout=10).json()  # noqa: E731
        assert _wait(lambda: status()["preannotation"][str(project.id)]["remaining"] == 0, timeout=300), status()
        final = status()["preannotation"][str(project.id)]
    assert final["failed"] == 0 and final["total"] == TASKS
    counts = _ours(client, project.id)
    assert len(counts) == TASKS and set(counts.values()) == {1}  # one prediction per task, none twice


def test_with_redis_rq_workers_preannotate_once_each(label_studio, image_server, redis_url, tmp_path):
    """With REDIS_URL the web process hands tasks to `segagent-worker preannotate` (what the compose `worker`
    service runs), which predicts them with the same settings; handing them out again after a
    restart adds no second prediction."""
    from model.settings import Settings
    from tests.apps import App, close_all

    client = LabelStudio(base_url=label_studio["url"], api_key=label_studio["token"])
    project = client.projects.create(title="segagent pre-annotation by rq", label_config=CONFIG)
    box = {"from_name": "box", "to_name": "image", "type": "rectanglelabels",
           "value": {**_bbox_percent(image_server.mask), "rectanglelabels": ["Object"]}}
    client.projects.import_tasks(id=project.id, request=[
        {"data": {"image": f"{image_server.url}/object.png?n={n}"},
         "predictions": [{"model_version": "detector", "result": [box]}]} for n in range(6)])
    env = {"LABEL_STUDIO_URL": label_studio["url"], "LABEL_STUDIO_API_KEY": label_studio["token"],
           "REDIS_URL": redis_url, "SEGAGENT_DATA_DIR": str(tmp_path), "SEGAGENT_BANNED_SUBNETS": "169.254.0.0/16"}
    settings = Settings(data_dir=tmp_path, label_studio_url=env["LABEL_STUDIO_URL"],
                        label_studio_api_key=env["LABEL_STUDIO_API_KEY"], redis_url=redis_url,
                        banned_subnets="169.254.0.0/16")
    web = App(settings).client
    answer = web.post("/preannotate", json={"project": project.id})
    assert answer.status_code == 202 and answer.json["runner"] == "rq" and answer.json["queued"] == 6

    def burst_worker() -> None:
        worker = subprocess.run([str(Path(sys.executable).with_name("segagent-worker")), "preannotate", "--burst"],
                                cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=300)
        assert worker.returncode == 0, worker.stderr[-2000:]

    burst_worker()
    progress = web.get("/status").json["preannotation"][str(project.id)]
    assert progress["done"] == 6 and progress["remaining"] == 0, progress
    close_all()
    App(settings)  # a restart hands out what is still queued: nothing
    burst_worker()
    assert set(_ours(client, project.id).values()) == {1}
