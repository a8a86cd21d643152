"""The backend's HTTP protocol through Flask's test client, with a local image server."""
from __future__ import annotations

import base64
import logging
import time
from pathlib import Path

import numpy as np
import pytest
from label_studio_sdk.converter import brush
from sqlalchemy.engine import make_url

from model.core.clicks import Click
from model.core.masks import iou
from model.settings import Settings
from tests.apps import App
from tests.synthetic import LabelStudioTasks, RecordingServer, free_port

CONFIG = """<View>
  <Image name="image" value="$image"/>
  <BrushLabels name="tag" toName="image"><Label value="Object"/><Label value="Other"/></BrushLabels>
  <KeyPointLabels name="kp" toName="image" smart="true"><Label value="Object" smart="true"/></KeyPointLabels>
  <RectangleLabels name="box" toName="image" smart="true"><Label value="Object"/></RectangleLabels>
  <TextArea name="prompt" toName="image"/>
</View>"""
ONE_LABEL = CONFIG.replace('<Label value="Other"/>', "")


def make_app(tmp_path: Path, **overrides) -> App:
    return App(Settings(data_dir=tmp_path, banned_subnets="169.254.0.0/16", **overrides))


def make_client(tmp_path: Path, **overrides):
    return make_app(tmp_path, **overrides).client


@pytest.fixture
def app(tmp_path):
    return make_app(tmp_path)


@pytest.fixture
def client(app):
    return app.client


def keypoint(x, y, positive=True, label="Object"):
    return {"type": "keypointlabels", "from_name": "kp", "to_name": "image", "is_positive": positive,
            "original_width": 320, "original_height": 240,
            "value": {"x": x, "y": y, "width": 1, "keypointlabels": [label]}}


def rectangle_around(mask, pad=6):
    rows, cols = np.nonzero(mask)
    height, width = mask.shape
    return {"type": "rectanglelabels", "from_name": "box", "to_name": "image",
            "value": {"x": 100 * (cols.min() - pad) / width, "y": 100 * (rows.min() - pad) / height,
                      "width": 100 * (np.ptp(cols) + 2 * pad) / width, "height": 100 * (np.ptp(rows) + 2 * pad) / height,
                      "rectanglelabels": ["Object"]}}


def predict(client, image_url, context=None, config=CONFIG, task_extra=None):
    task = {"id": 7, "data": {"image": image_url}, **(task_extra or {})}
    return client.post("/predict", json={"tasks": [task], "label_config": config, "project": "3.1700000000",
                                         "params": {"context": context}})


def decode(region):
    return brush.decode_rle(region["value"]["rle"]).reshape(
        region["original_height"], region["original_width"], 4)[:, :, 3] > 0


def test_health_status_and_root(client):
    health = client.get("/health").json
    assert health["status"] == "UP" and health["model_class"]
    assert health["capabilities"]["tool"] == {"on": True, "name": "classical", "error": None}
    assert health["capabilities"]["policy"]["on"] is False
    assert health["capabilities"]["policy"]["reason"] == "no policy configured"
    assert health["capabilities"]["quality"] == {"on": True, "name": "OfflineScorer", "error": None}
    assert client.get("/").json == health
    status = client.get("/status").json
    assert {"policy", "tool", "active_version", "trajectories", "training"} <= set(status)
    assert client.get("/versions").json == {"versions": [health["model_version"]], "scorers": {}}


def test_status_says_where_the_stores_are_without_the_database_password(tmp_path):
    app = make_app(tmp_path)
    storage = app.client.get("/status").json["storage"]
    url = app.backend.settings.database_url  # set under --database postgresql (make test's second run)
    if url:
        password = make_url(url).password
        assert password and password not in storage["database"] and storage["database"].startswith("postgresql://")
    else:
        assert storage["database"] == f"sqlite ({tmp_path})"
    assert storage["blobs"] == str(tmp_path)
    blobs = make_app(tmp_path / "other", blob_dir=tmp_path / "shared").client.get("/status").json["storage"]["blobs"]
    assert blobs == str(tmp_path / "shared")


def test_setup_answers_the_version_and_keeps_label_studio(client):
    body = client.post("/setup", json={"project": "3.1700000000", "schema": CONFIG,
                                       "hostname": "http://ls.example:8080", "access_token": "abc"}).json
    assert body["model_version"] == client.get("/health").json["model_version"]
    shown = client.get("/status?project=3").json["label_studio"]
    assert shown.items() >= {"url": "http://ls.example:8080", "token": True}.items()


def test_interactive_click_gives_the_object(client, image_server):
    response = predict(client, f"{image_server.url}/object.png", {"result": [keypoint(50, 50)]})
    assert response.status_code == 200, response.json
    [prediction] = response.json["results"]
    [region] = prediction["result"]
    assert region["type"] == "brushlabels" and region["value"]["brushlabels"] == ["Object"]
    assert region["from_name"] == "tag" and region["to_name"] == "image"
    assert (region["original_width"], region["original_height"]) == (320, 240)
    assert 0 <= region["score"] <= 1 and prediction["model_version"] == "segagent-classical-v0"
    assert iou(decode(region), image_server.mask) >= 0.9


def test_clicks_across_requests_refine_one_mask(client, image_server):
    url = f"{image_server.url}/object.png"
    first = decode(predict(client, url, {"result": [keypoint(50, 50)]}).json["results"][0]["result"][0])
    # only the newest click comes: a negative one inside the object must carve into the same mask
    second = predict(client, url, {"result": [keypoint(62.5, 50, positive=False)]})
    assert second.status_code == 200
    mask = decode(second.json["results"][0]["result"][0])
    assert first[120, 200] and not mask[120, 200]
    assert mask[120, 160] and mask.sum() > 0.5 * first.sum()  # the positive click still holds


def test_rectangle_context_and_prompt(client, image_server):
    box = rectangle_around(image_server.mask)
    text = {"type": "textarea", "from_name": "prompt", "to_name": "image", "value": {"text": ["the red blob"]}}
    response = predict(client, f"{image_server.url}/object.png", {"result": [box, text]})
    assert iou(decode(response.json["results"][0]["result"][0]), image_server.mask) >= 0.85


def test_refine_mode_turns_task_boxes_into_masks(client, image_server):
    rect = rectangle_around(image_server.mask)
    response = predict(client, f"{image_server.url}/object.png",
                       task_extra={"predictions": [{"model_version": "detector", "result": [rect]}]})
    [region] = response.json["results"][0]["result"]
    assert iou(decode(region), image_server.mask) >= 0.85


def test_auto_mode_without_policy_gives_no_prediction(client, image_server, caplog):
    caplog.set_level(logging.INFO)
    response = predict(client, f"{image_server.url}/object.png")
    assert response.status_code == 200 and response.json["results"] == [[]]
    assert "no policy configured" in caplog.text


@pytest.mark.parametrize("body, message", [
    ("not json", "JSON object"),
    ([1, 2], "JSON object"),
    ({"tasks": "x", "label_config": CONFIG}, "tasks: Input should be a valid list"),
    ({"tasks": [1], "label_config": CONFIG}, "tasks.0: Input should be a valid dictionary"),
    ({"tasks": [], "label_config": "<View><Image name='i' value='$i'/></View>"}, "no <BrushLabels>"),
    ({"tasks": [], "label_config": "<View><BrushLabels name='b' toName='i'/></View>"}, "no <Image>"),
    ({"tasks": [], "label_config": "<View"}, "not valid XML"),
    ({"tasks": []}, "no label_config"),
])
def test_malformed_predict_requests_are_4xx(client, body, message):
    response = client.post("/predict", json=body) if not isinstance(body, str) else client.post(
        "/predict", data=body, content_type="application/json")
    assert 400 <= response.status_code < 500
    assert message in response.json["error"]
    assert client.get("/health").status_code == 200


@pytest.mark.parametrize("name, status, message", [
    ("file:///etc/passwd", 400, "only http(s)"),
    ("ftp://example.com/a.png", 400, "only http(s)"),
    ("/data/upload/1/a.png", 400, "Label Studio path"),
    ("s3://bucket/key.png", 400, "cloud storage"),
    ("http://169.254.169.254/latest/meta-data", 403, "banned subnet"),
    ("http://no-such-host.invalid/a.png", 422, "does not resolve"),
    ("{server}/missing.png", 422, "HTTP 404"),
    ("{server}/not_an_image.png", 422, "not a readable image"),
    ("{server}/huge.png", 413, "more than"),
])
def test_bad_images_are_4xx(tmp_path, image_server, name, status, message):
    client = make_client(tmp_path, max_image_pixels=50_000_000)
    url = name.replace("{server}", image_server.url)
    response = predict(client, url, {"result": [keypoint(50, 50)]})
    assert response.status_code == status, response.json
    assert message in response.json["error"]


def test_image_byte_limit(tmp_path, image_server):
    client = make_client(tmp_path, max_image_mb=1000 / (1 << 20))
    response = predict(client, f"{image_server.url}/object.png", {"result": [keypoint(50, 50)]})
    assert response.status_code == 413 and "bytes" in response.json["error"]


def test_label_studio_paths_get_the_token_only_there(tmp_path, image_server):
    """An upload path and a cloud URI are fetched from Label Studio with its token; another host never
    sees the token."""
    body = (image_server.folder / "object.png").read_bytes()
    with RecordingServer(body) as label_studio, RecordingServer(body) as other_host:
        client = make_client(tmp_path)
        client.post("/setup", json={"project": "3", "schema": CONFIG, "hostname": label_studio.url,
                                    "access_token": "tok"})
        assert predict(client, "/data/upload/3/object.png", {"result": [keypoint(50, 50)]}).status_code == 200
        assert label_studio.seen["/data/upload/3/object.png"][0] == "Token tok"
        assert predict(client, "s3://bucket/object.png", {"result": [keypoint(40, 50)]}).status_code == 200
        resolve = [p for p in label_studio.seen if p.startswith("/tasks/7/resolve/?fileuri=")]
        assert resolve and base64.urlsafe_b64decode(resolve[0].split("=", 1)[1]) == b"s3://bucket/object.png"
        assert predict(client, f"{other_host.url}/object.png", {"result": [keypoint(30, 50)]}).status_code == 200
        assert other_host.seen["/object.png"][0] is None


def test_bad_contexts_are_4xx(client, image_server):
    url = f"{image_server.url}/object.png"
    assert predict(client, url, {"result": "x"}).status_code == 400
    assert predict(client, url, {"result": [{"type": "keypointlabels"}]}).status_code == 400
    bad_x = keypoint(50, 50)
    bad_x["value"]["x"] = "left"
    assert predict(client, url, {"result": [bad_x]}).status_code == 400
    outside = keypoint(150, 50)
    assert "outside the image" in predict(client, url, {"result": [outside]}).json["error"]
    unknown_label = keypoint(50, 50, label="Nope")
    assert "not one of the BrushLabels" in predict(client, url, {"result": [unknown_label]}).json["error"]


def brush_annotation(mask, annotation_id=11, updated="2026-01-01T00:00:00Z", **extra):
    result = {"id": "r1", "type": "brushlabels", "from_name": "tag", "to_name": "image",
              "original_width": mask.shape[1], "original_height": mask.shape[0],
              "value": {"format": "rle", "rle": brush.mask2rle(mask.astype(np.uint8) * 255),
                        "brushlabels": ["Object"]}}
    return {"action": "ANNOTATION_CREATED", "project": {"id": 3, "label_config": CONFIG},
            "task": {"id": 7, "data": {"image": "x", "prompt": "a red blob"}},
            "annotation": {"id": annotation_id, "updated_at": updated, "result": [result], **extra}}


def test_webhook_keeps_replays_updates_and_deletes(app, client):
    backend = app.backend
    mask = np.zeros((24, 32), bool)
    mask[5:15, 8:20] = True
    assert client.post("/webhook", json=brush_annotation(mask)).json["status"] == "ok"
    assert client.post("/webhook", json=brush_annotation(mask)).json["status"] == "unchanged"
    assert client.get("/status").json["annotations"] == {"annotations": 1, "regions": 1, "episodes": 0}
    [kept] = backend.annotations.regions(11)
    assert (kept["mask"] == mask).all() and kept["label"] == "Object" and kept["prompt"] == "a red blob"

    moved = np.roll(mask, 3, axis=1)
    update = brush_annotation(moved, updated="2026-01-02T00:00:00Z")
    update["action"] = "ANNOTATION_UPDATED"
    assert client.post("/webhook", json=update).json["status"] == "ok"
    assert (backend.annotations.regions(11)[0]["mask"] == moved).all()

    assert client.post("/webhook", json={"action": "ANNOTATIONS_DELETED", "annotations": [{"id": 11}]}).json[
        "deleted_regions"] == 1
    assert client.get("/status").json["annotations"]["annotations"] == 0
    cancelled = brush_annotation(mask, annotation_id=12, was_cancelled=True)
    assert client.post("/webhook", json=cancelled).json["status"] == "skipped"
    assert client.get("/status").json["webhook_events"]["ANNOTATION_CREATED"] == 3


def test_an_annotation_id_another_project_has_is_refused_and_its_deletion_leaves_it(app, client):
    """Two Label Studio instances (per-project /setup hosts) number annotations alike: the second one's annotation
    51 gets a 409, never erases the first one's, and its deletion deletes nothing of project 3."""
    mask = np.zeros((24, 32), bool)
    mask[5:15, 8:20] = True
    assert client.post("/webhook", json=brush_annotation(mask, annotation_id=51)).json["status"] == "ok"
    other = brush_annotation(np.roll(mask, 3, axis=1), annotation_id=51, updated="2026-01-02T00:00:00Z")
    other["project"]["id"] = 5
    refused = client.post("/webhook", json=other)
    assert refused.status_code == 409 and "project 3, not 5" in refused.json["error"]
    deleted = client.post("/webhook", json={"action": "ANNOTATIONS_DELETED", "project": {"id": 5},  # a bulk delete
                                            "annotations": [{"id": n} for n in range(40_000)]})
    assert deleted.json["deleted_regions"] == 0
    assert (app.backend.annotations.regions(51)[0]["mask"] == mask).all()
    later = brush_annotation(mask, annotation_id=51, updated="2026-01-01T10:00:00Z")
    assert client.post("/webhook", json=later).json["status"] == "ok"  # project 3's own update still lands
    assert client.post("/webhook", json={"action": "ANNOTATIONS_DELETED", "project": {"id": 3},
                                         "annotations": [{"id": 51}]}).json["deleted_regions"] == 1


def test_webhook_bad_input(client):
    assert client.post("/webhook", json={"action": "PROJECT_UPDATED", "project": {"id": 1}}).json["status"] == "ignored"
    imported = client.post("/webhook", json={"action": "TASKS_CREATED", "project": {"id": 1}, "tasks": [{"id": 5}]})
    assert imported.json["status"] == "skipped" and "LABEL_STUDIO_URL" in imported.json["reason"]
    assert client.post("/webhook", json={"action": "SOMETHING_NEW"}).status_code == 200
    assert client.post("/webhook", json={"project": 1}).status_code == 400
    bad = brush_annotation(np.ones((4, 4), bool))
    bad["annotation"]["result"][0]["value"]["rle"] = [1, 2, 3]
    assert "rle" in client.post("/webhook", json=bad).json["error"]
    lying = brush_annotation(np.ones((4, 4), bool))
    lying["annotation"]["result"][0]["original_width"] = 4000
    assert "declares" in client.post("/webhook", json=lying).json["error"]
    assert client.post("/webhook", json={"action": "ANNOTATION_CREATED", "annotation": 3, "task": {}}).status_code == 400


def test_polygon_annotations_are_rasterised(app, client):
    backend = app.backend
    payload = brush_annotation(np.zeros((4, 4), bool))
    payload["annotation"]["result"] = [{"type": "polygonlabels", "from_name": "poly", "to_name": "image",
                                        "original_width": 100, "original_height": 100,
                                        "value": {"points": [[10, 10], [50, 10], [50, 50], [10, 50]],
                                                  "polygonlabels": ["Object"]}}]
    assert client.post("/webhook", json=payload).json["regions"] == 1
    mask = backend.annotations.regions(11)[0]["mask"]
    assert 1500 <= mask.sum() <= 1700


def test_training_without_policy_is_answered(client):
    assert client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 3}}).status_code == 503
    assert client.post("/train", json={"annotations": [], "project": "3.1"}).json["error"] == \
        "training is off: no policy to fine-tune (no policy configured); no scorer refit: the project has no " \
        "quality labels yet"
    assert client.get("/status").json["training"]["state"] == "skipped"
    training = client.get("/health").json["capabilities"]["training"]
    assert training == {"on": False, "runner": "process", "reason": "no policy to fine-tune (no policy configured)"}


def test_basic_auth_guards_everything_but_health(tmp_path, caplog):
    client = make_client(tmp_path, basic_auth_user="ls", basic_auth_pass="s3cret")
    assert client.get("/health").status_code == 200
    assert client.post("/webhook", json={"action": "ANNOTATION_CREATED"}).status_code == 401
    assert "add the header Authorization: Basic" in caplog.text  # Label Studio's webhook comes without it
    assert client.get("/status").status_code == 401
    assert client.post("/predict", json={}).status_code == 401
    wrong = base64.b64encode(b"ls:nope").decode()
    assert client.get("/status", headers={"Authorization": f"Basic {wrong}"}).status_code == 401
    right = base64.b64encode(b"ls:s3cret").decode()
    assert client.get("/status", headers={"Authorization": f"Basic {right}"}).status_code == 200


def test_metrics_count_requests_errors_and_cache(client, image_server):
    predict(client, f"{image_server.url}/object.png", {"result": [keypoint(50, 50)]})
    predict(client, f"{image_server.url}/object.png", {"result": [keypoint(40, 50)]})
    client.post("/predict", data="x", content_type="application/json")
    text = client.get("/metrics").data.decode()
    assert 'segagent_requests_total{method="POST",route="/predict",status="200"} 2.0' in text
    assert 'segagent_errors_total{kind="InvalidRequest",route="/predict"} 1.0' in text
    assert 'segagent_cache_hits_total{cache="tool"} 1.0' in text
    assert "segagent_request_seconds_bucket" in text


def test_validate_checks_the_config(client):
    assert client.post("/validate", json={"config": CONFIG}).status_code == 200
    assert client.post("/validate", json={"config": "<View></View>"}).status_code == 422


def test_one_label_config_needs_no_selection(client, image_server):
    point = keypoint(50, 50)
    point["value"].pop("keypointlabels")
    response = predict(client, f"{image_server.url}/object.png", {"result": [point]}, config=ONE_LABEL)
    assert response.json["results"][0]["result"][0]["value"]["brushlabels"] == ["Object"]


def test_request_size_limit(tmp_path):
    client = make_client(tmp_path, max_request_mb=1000 / (1 << 20))
    response = client.post("/predict", data="x" * 5000, content_type="application/json")
    assert response.status_code == 413 and "error" in response.json


# ---------------------------------------------------------------- with a policy

def test_auto_mode_with_a_policy_segments_the_centre_object(tmp_path, image_server, taught_vlm):
    app = make_app(tmp_path, policy=str(taught_vlm), return_clicks=True)
    client, backend = app.client, app.backend
    health = client.get("/health").json
    assert health["capabilities"]["policy"]["on"] is True
    response = predict(client, f"{image_server.url}/object.png", config=ONE_LABEL)
    assert response.status_code == 200, response.json
    prediction = response.json["results"][0]
    brushes = [r for r in prediction["result"] if r["type"] == "brushlabels"]
    points = [r for r in prediction["result"] if r["type"] == "keypointlabels"]
    assert len(brushes) == 1 and brushes[0]["value"]["brushlabels"] == ["Object"]
    assert iou(decode(brushes[0]), image_server.mask) >= 0.5
    assert points and points[0]["value"]["x"] == pytest.approx(50.0) and points[0]["is_positive"] is True
    assert prediction["model_version"] == "segagent-classical-agent-v0"
    [episode] = backend.annotations.episodes("3", 7)
    assert episode["label"] == "Object" and episode["steps"][0]["action"] == "Positive point: (500, 500)"
    assert (episode["mask"] == decode(brushes[0])).all()
    assert client.get("/status").json["annotations"]["episodes"] == 1


def test_auto_mode_runs_one_episode_per_label(tmp_path, image_server, taught_vlm):
    client = make_client(tmp_path, policy=str(taught_vlm))
    regions = predict(client, f"{image_server.url}/object.png").json["results"][0]["result"]
    assert sorted(r["value"]["brushlabels"][0] for r in regions) == ["Object", "Other"]
    prompted = predict(client, f"{image_server.url}/object.png",
                       task_extra={"data": {"image": f"{image_server.url}/object.png", "prompt": "the Other one"}})
    [region] = prompted.json["results"][0]["result"]
    assert region["value"]["brushlabels"] == ["Other"]


def test_policy_that_does_not_load_leaves_the_server_up(tmp_path, image_server):
    client = make_client(tmp_path, policy=str(tmp_path / "no-such-model"))
    policy = client.get("/health").json["capabilities"]["policy"]
    assert policy["on"] is False and "cannot load policy" in policy["reason"]
    assert predict(client, f"{image_server.url}/object.png", {"result": [keypoint(50, 50)]}).status_code == 200


def test_unreachable_remote_policy_is_503(tmp_path, image_server):
    client = make_client(tmp_path, policy=f"http://127.0.0.1:{free_port()}/v1", policy_model="m")
    response = predict(client, f"{image_server.url}/object.png")
    assert response.status_code == 503 and "policy is unavailable" in response.json["error"]


def test_refine_mode_with_a_policy_starts_from_an_earlier_mask(tmp_path, image_server, taught_vlm):
    app = make_app(tmp_path, policy=str(taught_vlm))
    client, backend = app.client, app.backend
    rough = np.zeros_like(image_server.mask)
    rough[100:140, 140:180] = True  # an earlier, rough mask around the centre
    earlier = {"model_version": "segagent-classical-v0", "result": [{
        "type": "brushlabels", "from_name": "tag", "to_name": "image", "original_width": 320,
        "original_height": 240, "value": {"format": "rle", "rle": brush.mask2rle(rough.astype(np.uint8) * 255),
                                          "brushlabels": ["Object"]}}]}
    response = predict(client, f"{image_server.url}/object.png", task_extra={"predictions": [earlier]})
    [region] = response.json["results"][0]["result"]
    assert iou(decode(region), image_server.mask) > iou(rough, image_server.mask)
    [episode] = backend.annotations.episodes("3", 7)
    assert episode["steps"]  # the agent refined it


def test_malformed_starts_are_skipped_not_fatal(tmp_path, image_server, taught_vlm):
    client = make_client(tmp_path, policy=str(taught_vlm))
    broken = {"result": [{"type": "brushlabels", "to_name": "image", "original_width": 10, "original_height": 10,
                          "value": {"rle": [1, 2, 3], "brushlabels": ["Object"]}},
                         {"type": "rectanglelabels", "to_name": "image", "value": {"x": "a"}}]}
    response = predict(client, f"{image_server.url}/object.png", task_extra={"predictions": [broken]},
                       config=ONE_LABEL)
    assert response.status_code == 200
    [region] = response.json["results"][0]["result"]  # auto mode instead
    assert iou(decode(region), image_server.mask) >= 0.5


# ---------------------------------------------------------------- quality

def _wait_for(condition, timeout=30.0):
    import time

    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return False


def test_prediction_scores_are_the_scorers_estimates(tmp_path, image_server):
    from model.quality.scorers import OfflineScorer

    client = make_client(tmp_path, interactive_score="quality")
    region = predict(client, f"{image_server.url}/object.png", {"result": [keypoint(50, 50)]}).json[
        "results"][0]["result"][0]
    expected = OfflineScorer()(image_server.image, decode(region))
    assert region["score"] == pytest.approx(expected, abs=1e-3)
    task = {"predictions": [{"result": [rectangle_around(image_server.mask)]}]}  # stored predictions: always
    refined = predict(make_client(tmp_path / "default"), f"{image_server.url}/object.png", task_extra=task).json[
        "results"][0]["result"][0]
    assert refined["score"] == pytest.approx(OfflineScorer()(image_server.image, decode(refined)), abs=1e-3)


def test_interactive_answers_carry_the_tool_s_own_confidence_by_default(client, image_server):
    from model.tools import make_segmenter

    region = predict(client, f"{image_server.url}/object.png", {"result": [keypoint(50, 50)]}).json[
        "results"][0]["result"][0]
    tool = make_segmenter("classical").predict(image_server.image, [Click(160, 120, True)])
    assert region["score"] == pytest.approx(tool.score, abs=1e-3)


def test_submitted_annotations_are_scored_and_listed_worst_first(tmp_path, image_server):
    image = f"{image_server.url}/object.png"
    with LabelStudioTasks({1: {"image": image}, 2: {"image": image}}) as label_studio:
        client = make_client(tmp_path, label_studio_url=label_studio.url, label_studio_api_key="key")
        for annotation_id, task_id, mask in ((21, 1, image_server.mask), (22, 2, np.roll(image_server.mask, 70, 1))):
            payload = brush_annotation(mask, annotation_id=annotation_id)
            payload["task"] = {"id": task_id, "data": {"image": image}}
            assert client.post("/webhook", json=payload).status_code == 200
        assert _wait_for(lambda: client.get("/status").json["background_jobs"]["annotation"]["done"] == 2)
        worst = client.get("/quality?project=3").json
        assert [row["task_id"] for row in worst["annotations"]] == [2, 1]
        assert worst["annotations"][0]["link"] == f"{label_studio.url}/projects/3/data?task=2"
        assert ("PATCH", "/api/tasks/2", "Token key") in label_studio.requests
        assert label_studio.tasks[2] == {"image": image, "segagent_quality": worst["annotations"][0]["quality"]}
        assert label_studio.tasks[1]["segagent_quality"] > label_studio.tasks[2]["segagent_quality"]
    assert client.get("/quality").status_code == 400
    assert client.get("/quality?project=3&limit=x").status_code == 400


def test_without_label_studio_the_scores_are_kept_and_the_write_back_skipped(client, image_server, caplog):
    payload = brush_annotation(image_server.mask, annotation_id=31)
    payload["task"] = {"id": 9, "data": {"image": f"{image_server.url}/object.png"}}
    client.post("/webhook", json=payload)
    assert _wait_for(lambda: client.get("/status").json["background_jobs"]["annotation"]["done"] == 1)
    assert client.get("/quality?project=3").json["annotations"][0]["task_id"] == 9
    assert "not written to the task: no Label Studio is known for project 3" in caplog.text
    assert client.get("/status").json["derived_work"]["pending"] == 0


def test_write_back_failures_are_counted_not_fatal_and_stay_owed(tmp_path, image_server):
    client = make_client(tmp_path, label_studio_url=f"http://127.0.0.1:{free_port()}", label_studio_api_key="key")
    payload = brush_annotation(image_server.mask, annotation_id=32)
    payload["task"] = {"id": 9, "data": {"image": f"{image_server.url}/object.png"}}
    client.post("/webhook", json=payload)  # Label Studio is down: the scores are kept, the push fails
    assert _wait_for(lambda: client.get("/status").json["background_jobs"]["annotation"]["failed"] == 1)
    assert "ConnectionError" in client.get("/status").json["background_jobs"]["annotation"]["last_error"]
    assert client.get("/quality?project=3").json["annotations"][0]["task_id"] == 9
    assert client.get("/status").json["derived_work"]["pending"] == 1  # owed: retried at the next start


# ---------------------------------------------------------------- trajectories from annotations

def _annotation_for(image_server, annotation_id=41, updated="2026-01-01T00:00:00Z", task_id=7, mask=None):
    mask = image_server.mask if mask is None else mask
    payload = brush_annotation(mask, annotation_id=annotation_id, updated=updated)
    payload["task"] = {"id": task_id, "data": {"image": f"{image_server.url}/object.png"}}
    return payload


def test_annotations_become_trajectories_with_the_real_clicks(app, client, image_server):
    backend = app.backend
    url = f"{image_server.url}/object.png"
    predict(client, url, {"result": [keypoint(50, 50)]})
    predict(client, url, {"result": [keypoint(50, 50), keypoint(62.5, 50, positive=False)]})
    jobs = lambda: client.get("/status").json["background_jobs"]["annotation"]  # noqa: E731
    client.post("/webhook", json=_annotation_for(image_server))
    assert _wait_for(lambda: jobs()["pending"] == 0 and jobs()["done"] + jobs()["failed"] == 1)
    counts = client.get("/status").json["trajectories"]
    assert counts == {"total": 2, "correction": 0, "scratch": 1, "human": 1}
    human = next(r for r in backend.trajectories.records() if r.source == "human")
    assert [s.click.positive for s in human.steps] == [True, False]
    assert human.steps[0].click.x == pytest.approx(160.0)

    assert client.post("/webhook", json=_annotation_for(image_server)).json["status"] == "unchanged"
    client.post("/webhook", json={**_annotation_for(image_server, updated="2026-02-01T00:00:00Z"),
                                  "action": "ANNOTATION_UPDATED"})
    assert _wait_for(lambda: jobs()["pending"] == 0 and jobs()["done"] + jobs()["failed"] == 2)
    assert client.get("/status").json["trajectories"]["total"] == 2  # replaced, not added
    client.post("/webhook", json={"action": "ANNOTATION_DELETED", "annotation": {"id": 41}})
    assert client.get("/status").json["trajectories"]["total"] == 0


def test_a_correction_trajectory_starts_from_our_own_prediction(tmp_path, image_server, taught_vlm):
    client = make_client(tmp_path, policy=str(taught_vlm))
    predict(client, f"{image_server.url}/object.png", config=ONE_LABEL)  # an auto-mode episode for task 7
    corrected = image_server.mask.copy()
    corrected[:, 160:] = False  # the annotator kept only the left half: our prediction needs correcting
    client.post("/webhook", json=_annotation_for(image_server, mask=corrected))
    assert _wait_for(lambda: client.get("/status").json["trajectories"]["total"] >= 2)
    counts = client.get("/status").json["trajectories"]
    assert counts["correction"] == 1 and counts["scratch"] == 1


def test_old_episodes_and_interactive_requests_are_forgotten(tmp_path):
    from backend.store import AnnotationStore

    store = AnnotationStore(tmp_path / "annotations.sqlite3")
    mask = np.zeros((4, 4), bool)
    store.record_interactive("3", 7, "Object", [(1.0, 1.0, True)], mask)
    store.record_episode("3", 7, "Object", "a blob", "segagent-classical-agent-v0", [], mask, 0.5, "finish")
    assert store.prune(before=0) == 0  # nothing is that old
    assert store.counts()["episodes"] == 1 and len(store.interactive_steps("3", 7, "Object")) == 1
    assert store.prune(before=time.time() + 1) == 2
    assert store.counts()["episodes"] == 0 and store.interactive_steps("3", 7, "Object") == []
