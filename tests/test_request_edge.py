"""Bad input at the edge: every body is checked against its schema, every geometry is checked before
anything is allocated from it, and what Label Studio may send in a context gets a sane answer. The
worst of it is also sent to a real server (gunicorn on loopback, its memory capped), which must answer
400s and keep serving."""
from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from model.settings import Settings
from tests.apps import App
from tests.synthetic import free_port
from tests.test_backend import CONFIG, brush_annotation, decode, predict

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def client(tmp_path):
    return App(Settings(data_dir=tmp_path, banned_subnets="169.254.0.0/16")).client


def polygon_event(points, width=100, height=100):
    payload = brush_annotation(np.zeros((4, 4), bool))
    payload["annotation"]["result"] = [{"type": "polygonlabels", "to_name": "image", "original_width": width,
                                        "original_height": height,
                                        "value": {"points": points, "polygonlabels": ["Object"]}}]
    return payload


HOSTILE_POLYGONS = [
    ([[1e12, 10], [50, 10], [50, 50]], "outside the image"),
    ([[-1e12, 10], [50, 10], [50, 50]], "outside the image"),
    ([[float("nan"), 10], [50, 10], [50, 50]], "finite number"),
    ([[float("inf"), 10], [50, 10], [50, 50]], "finite number"),
    ([[10, 10], [50, 10]], "at least 3"),
    ([[10, 10, 3], [50, 10], [50, 50]], "[x, y]"),
]


@pytest.mark.parametrize("points, message", HOSTILE_POLYGONS)
def test_hostile_polygons_are_400(client, points, message):
    response = client.post("/webhook", json=polygon_event(points))
    assert response.status_code == 400 and message in response.json["error"], response.json


def test_a_polygon_on_an_image_over_the_pixel_limit_is_400(client):
    response = client.post("/webhook", json=polygon_event([[10, 10], [50, 10], [50, 50]], 12000, 12000))
    assert response.status_code == 400 and "pixels allowed" in response.json["error"]


@pytest.mark.parametrize("body, where", [
    ({"tasks": [{"id": [1], "data": {}}]}, "tasks.0.id"),
    ({"tasks": [{"id": {"a": 1}, "data": {}}]}, "tasks.0.id"),
    ({"tasks": [{"id": "abc", "data": {}}]}, "tasks.0.id"),
    ({"tasks": [{"id": 2**70, "data": {}}]}, "tasks.0.id"),
    ({"tasks": [], "project": "²"}, "project"),
    ({"tasks": [], "project": "1" * 30}, "project"),
    ({"tasks": [], "project": 10**12}, "project"),  # 13 digits: no registry scope could name it
])
def test_wrong_types_in_predict_are_400(client, body, where):
    response = client.post("/predict", json={"label_config": CONFIG, **body})
    assert response.status_code == 400 and response.json["error"].startswith(where), response.json


@pytest.mark.parametrize("body", [
    {"action": "ANNOTATION_CREATED", "annotation": {"id": 2**70, "result": []}, "task": {"id": 1, "data": {}}},
    {"action": "ANNOTATION_CREATED", "annotation": {"id": 1, "result": 5}, "task": {"id": 1, "data": {}}},
    {"action": "ANNOTATIONS_DELETED", "annotations": 5},
    {"action": "ANNOTATIONS_DELETED", "annotations": [2**70]},
    {"action": "X" * 10_000},
    {"action": "ANNOTATION_UPDATED", "project": {"id": 1}, "annotation": {"id": 1, "result": [],
                                                                    "updated_at": "2" * 100_000},
     "task": {"id": 1, "data": {}}},
    {"action": "ANNOTATION_CREATED", "project": {"id": None}, "annotation": {"id": 1, "result": []},
     "task": {"id": 1, "data": {}}},
    {"action": "ANNOTATION_CREATED", "project": {"id": 10**12}, "annotation": {"id": 1, "result": []},
     "task": {"id": 1, "data": {}}},
])
def test_wrong_types_in_webhooks_are_400(client, body):
    assert client.post("/webhook", json=body).status_code == 400


@pytest.mark.parametrize("path", ["/status?project=²", f"/status?project={'1' * 30}", "/versions?project=abc",
                                  "/quality?project=3&limit=x", f"/versions?project={10**12}"])
def test_wrong_query_parameters_are_400(client, path):
    assert client.get(path).status_code == 400


def test_the_longest_project_id_is_served(client):
    for path in ("/status", "/versions", "/quality"):
        assert client.get(f"{path}?project={10**12 - 1}").status_code == 200, path


def test_rollback_checks_its_body(client, tmp_path):
    assert client.post("/rollback", json={"project": "²"}).status_code == 400
    assert client.post("/rollback", json={"project": 3, "version": 5}).status_code == 400
    assert client.post("/rollback", json={"project": 77, "version": "v0"}).status_code == 404
    assert not (tmp_path / "models" / "project-77").exists()  # no folders for a project that never trained


def test_a_label_given_as_a_string_is_refused_not_cut_to_its_first_letter(client):
    payload = brush_annotation(np.ones((4, 4), bool))
    payload["annotation"]["result"][0]["value"]["brushlabels"] = "Object"
    response = client.post("/webhook", json=payload)
    assert response.status_code == 400 and "list of label names" in response.json["error"]


def test_rectangles_are_range_checked(client, image_server):
    url = f"{image_server.url}/object.png"
    box = {"type": "rectanglelabels", "value": {"x": 10, "y": 10, "width": 1e9, "height": 20,
                                                  "rectanglelabels": ["Object"]}}
    assert predict(client, url, {"result": [box]}).status_code == 400
    box["value"].update(width=-5)
    assert predict(client, url, {"result": [box]}).status_code == 400


def test_unknown_webhook_actions_are_counted_as_other(client):
    for action in ["SOMETHING_NEW", "line\nbreak", "Z" * 150]:
        assert client.post("/webhook", json={"action": action}).json["status"] == "ignored"
    assert client.get("/status").json["webhook_events"] == {"other": 3}
    metrics = client.get("/metrics").data.decode()
    assert 'segagent_webhook_events_total{action="other"} 3.0' in metrics and "SOMETHING_NEW" not in metrics


@pytest.mark.parametrize("result", [
    {"type": "textarea", "value": {"text": ["the red blob"]}},
    {"type": "ellipselabels", "value": {"x": 10, "y": 10, "radiusX": 5, "radiusY": 5, "ellipselabels": ["Object"]}},
    {"type": "polygonlabels", "value": {"points": [[1, 1], [5, 1], [5, 5]], "polygonlabels": ["Object"]}},
    {"type": "choices", "value": {"choices": ["Object"]}},
])
def test_contexts_without_clicks_or_boxes_give_an_empty_answer_without_a_policy(client, image_server, result):
    response = predict(client, f"{image_server.url}/object.png", {"result": [result]})
    assert response.status_code == 200 and response.json["results"] == [[]]


def test_a_textarea_prompt_drives_auto_mode_with_a_policy(tmp_path, image_server, taught_vlm):
    app = App(Settings(data_dir=tmp_path, policy=str(taught_vlm), banned_subnets="169.254.0.0/16"))
    context = {"result": [{"type": "textarea", "value": {"text": ["the round thing"]}}]}
    response = predict(app.client, f"{image_server.url}/object.png", context)
    assert response.status_code == 200 and response.json["results"][0]["result"]
    [episode] = app.backend.annotations.episodes("3", 7)
    assert episode["description"] == "the round thing"


def test_boxes_never_give_empty_regions(client, image_server):
    """A box wholly inside the object, and one across its edge: each gives a region of the object there."""
    mask = image_server.mask
    rows, cols = np.nonzero(mask)
    cx, cy = cols.mean() * 100 / 320, rows.mean() * 100 / 240
    inside = {"x": cx - 5, "y": cy - 5, "width": 10, "height": 10}
    across = {"x": cx, "y": 100 * (rows.min() - 20) / 240, "width": 100 * (cols.max() + 20) / 320 - cx,
              "height": 100 * (np.ptp(rows) + 40) / 240}
    for value in (inside, across):
        box = {"type": "rectanglelabels", "value": {**value, "rectanglelabels": ["Object"]}}
        response = predict(client, f"{image_server.url}/object.png", {"result": [box]})
        regions = response.json["results"][0]["result"]
        [region] = regions
        predicted = decode(region)
        assert region["score"] > 0 and predicted.any()
        assert (predicted & mask).sum() >= 0.9 * predicted.sum()  # the object's part, not the background


def _capped(limit_bytes: int):
    def apply():
        resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))
    return apply


def test_a_real_server_with_capped_memory_survives_the_hostile_webhooks(tmp_path):
    port = free_port()
    env = {**os.environ, "SEGAGENT_DATA_DIR": str(tmp_path), "PYTHONUNBUFFERED": "1"}
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen([sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", "1",
                               "--threads", "2", "backend.wsgi:app"], cwd=ROOT, env=env, stdout=log,
                              stderr=subprocess.STDOUT, preexec_fn=_capped(6 << 30))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if requests.get(f"{url}/health", timeout=2).ok:
                    break
            except requests.RequestException:
                time.sleep(0.5)
        for points, _ in HOSTILE_POLYGONS:
            body = polygon_event(points)
            text = requests.models.complexjson.dumps(body, allow_nan=True)
            answer = requests.post(f"{url}/webhook", data=text, headers={"Content-Type": "application/json"},
                                   timeout=30)
            assert answer.status_code == 400, answer.text
        assert requests.get(f"{url}/health", timeout=5).ok and server.poll() is None
    finally:
        server.terminate()
        server.wait(timeout=20)
        log.close()
