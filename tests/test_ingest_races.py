"""What arrives while an annotation's derived work runs in the background: a delete wins over that work (none
of its trajectories remain to feed training), a newer version's trajectories are never replaced by an older
version's work finishing last, and the quality write-back changes only its own field of the task as the task
is then, keeping what a reviewer edited meanwhile. Real backends, stores, threads and HTTP servers on loopback;
the work is held mid-way, in the interactive tool, until the test lets it go on."""
from __future__ import annotations

import queue
import threading

import numpy as np

from model.settings import Settings
from tests.apps import App
from tests.synthetic import LabelStudioTasks
from tests.test_backend import _annotation_for, _wait_for


def _settings(data, **overrides) -> Settings:
    return Settings(data_dir=data, banned_subnets="169.254.0.0/16", **overrides)


class Gate:
    """Holds a backend's annotation work in its interactive tool (the trajectories under way) until opened."""

    def __init__(self, app: App, monkeypatch):
        segmenter = app.backend.capabilities.tool.get()
        self.entered, self.opened = threading.Event(), threading.Event()
        encode = segmenter.encode

        def held(image):
            self.entered.set()
            assert self.opened.wait(30)
            return encode(image)

        monkeypatch.setattr(segmenter, "encode", held)


def _trajectory_writes(app: App, monkeypatch) -> queue.Queue:
    """What each write of an annotation's trajectories answered, as it returns."""
    store = app.backend.trajectories
    answers: queue.Queue = queue.Queue()
    replace = store.replace_annotation

    def recorded(*args, **kwargs):
        answer = replace(*args, **kwargs)
        answers.put(answer)
        return answer

    monkeypatch.setattr(store, "replace_annotation", recorded)
    return answers


def test_a_delete_during_the_annotation_s_work_leaves_none_of_its_trajectories(tmp_path, image_server, monkeypatch):
    app = App(_settings(tmp_path))
    gate, writes = Gate(app, monkeypatch), _trajectory_writes(app, monkeypatch)
    assert app.client.post("/webhook", json=_annotation_for(image_server, annotation_id=61)).json["status"] == "ok"
    assert gate.entered.wait(30)
    app.client.post("/webhook", json={"action": "ANNOTATION_DELETED", "annotation": {"id": 61}})
    gate.opened.set()
    writes.get(timeout=60)
    assert app.backend.trajectories.counts()["total"] == 0
    assert app.backend.annotations.pending_work() == []


def test_an_older_version_s_work_finishing_last_leaves_the_newer_version_s_trajectories(tmp_path, image_server,
                                                                                        monkeypatch):
    first, second = App(_settings(tmp_path)), App(_settings(tmp_path))  # two processes on one SEGAGENT_DATA_DIR
    gate = Gate(first, monkeypatch)
    first_writes, second_writes = _trajectory_writes(first, monkeypatch), _trajectory_writes(second, monkeypatch)
    newer = np.roll(image_server.mask, 40, axis=1)
    first.client.post("/webhook", json=_annotation_for(image_server, annotation_id=62))
    assert gate.entered.wait(30)
    updated = {**_annotation_for(image_server, annotation_id=62, updated="2026-02-01T00:00:00Z", mask=newer),
               "action": "ANNOTATION_UPDATED"}
    assert second.client.post("/webhook", json=updated).json["status"] == "ok"
    assert second_writes.get(timeout=60) is True
    gate.opened.set()
    first_writes.get(timeout=60)
    targets = [record.target for record in second.backend.trajectories.records()]
    assert targets and all(np.array_equal(target, newer) for target in targets)


def test_the_quality_write_back_keeps_what_was_edited_in_the_task_meanwhile(tmp_path, image_server, monkeypatch):
    image = f"{image_server.url}/object.png"
    with LabelStudioTasks({7: {"image": image, "source": "s3://bucket/object.tif"}}) as label_studio:
        app = App(_settings(tmp_path, label_studio_url=label_studio.url, label_studio_api_key="key"))
        gate = Gate(app, monkeypatch)
        payload = _annotation_for(image_server, annotation_id=71)
        payload["task"]["data"] = dict(label_studio.tasks[7])  # the task as the webhook saw it
        app.client.post("/webhook", json=payload)
        assert gate.entered.wait(30)
        label_studio.tasks[7] = {**label_studio.tasks[7], "reviewed": "yes"}  # a reviewer's edit, meanwhile
        gate.opened.set()
        assert _wait_for(lambda: "segagent_quality" in label_studio.tasks[7])
        assert label_studio.tasks[7]["reviewed"] == "yes"
        assert {key: label_studio.tasks[7][key] for key in ("image", "source")} == {
            "image": image, "source": "s3://bucket/object.tif"}  # the stored URI, not the proxy link a GET resolves
        assert ("PATCH", "/api/tasks/7", "Token key") in label_studio.requests
