"""End to end: Label Studio 1.23 talks to the backend started by `make serve`.

Through Label Studio's API (label-studio-sdk): create a project with BrushLabels and smart
KeyPointLabels, connect the backend as an interactive ML backend, import tasks whose synthetic images
are served here, then (1) an interactive pre-annotation from a keypoint, (2) "Retrieve predictions"
for tasks with imported rectangles, (3) a submitted annotation reaching the backend's webhook.
"""
from __future__ import annotations

import time

import numpy as np
import pytest
import requests
from label_studio_sdk import LabelStudio
from label_studio_sdk.converter import brush

from model.core.masks import iou
from tests.synthetic import png_bytes

pytestmark = pytest.mark.e2e

CONFIG = """
<View>
  <Image name="image" value="$image" zoom="true"/>
  <BrushLabels name="tag" toName="image">
    <Label value="Object" background="#ff0000"/>
    <Label value="Other" background="#0000ff"/>
  </BrushLabels>
  <KeyPointLabels name="point" toName="image" smart="true">
    <Label value="Object" smart="true" background="#00ff00"/>
    <Label value="Other" smart="true" background="#ffff00"/>
  </KeyPointLabels>
  <RectangleLabels name="box" toName="image" smart="true">
    <Label value="Object" background="#00ffff"/>
  </RectangleLabels>
</View>
"""


def _decode(result: dict) -> np.ndarray:
    height, width = result["original_height"], result["original_width"]
    return brush.decode_rle(result["value"]["rle"]).reshape(height, width, 4)[:, :, 3] > 0


def _bbox_percent(mask: np.ndarray, pad: int = 6) -> dict:
    rows, cols = np.nonzero(mask)
    height, width = mask.shape
    x1, y1 = max(cols.min() - pad, 0), max(rows.min() - pad, 0)
    x2, y2 = min(cols.max() + pad, width - 1), min(rows.max() + pad, height - 1)
    return {"x": 100 * x1 / width, "y": 100 * y1 / height, "width": 100 * (x2 - x1) / width,
            "height": 100 * (y2 - y1) / height, "rotation": 0}


@pytest.fixture(scope="module")
def connected(label_studio, backend_server, image_server):
    client = LabelStudio(base_url=label_studio["url"], api_key=label_studio["token"])
    project = client.projects.create(title="segagent e2e", label_config=CONFIG)
    ml = client.ml.create(project=project.id, url=backend_server["url"], is_interactive=True, title="SegAgent")
    headers = {"Authorization": f"Token {label_studio['token']}"}
    # one task by URL, one uploaded into Label Studio (its image is then fetched from Label Studio itself)
    image_url = f"{image_server.url}/object.png"
    box = {"from_name": "box", "to_name": "image", "type": "rectanglelabels",
           "value": {**_bbox_percent(image_server.mask), "rectanglelabels": ["Object"]}}
    client.projects.import_tasks(id=project.id, request=[
        {"data": {"image": image_url}, "predictions": [{"model_version": "detector", "result": [box]}]},
    ])
    upload = requests.post(f"{label_studio['url']}/api/projects/{project.id}/import", headers=headers,
                           files={"file": ("uploaded.png", png_bytes(image_server.image), "image/png")}, timeout=60)
    upload.raise_for_status()
    tasks = list(client.tasks.list(project=project.id))
    assert len(tasks) == 2
    return {"client": client, "project": project, "ml": ml, "tasks": tasks, "headers": headers, "box": box}


def _interactive(label_studio, connected, task, context) -> dict:
    response = requests.post(f"{label_studio['url']}/api/ml/{connected['ml'].id}/interactive-annotating",
                             headers=connected["headers"], json={"task": task.id, "context": context}, timeout=120)
    response.raise_for_status()
    body = response.json()
    assert "errors" not in body, body
    return body["data"]


def _keypoint(x_percent, y_percent, positive=True, label="Object"):
    return {"from_name": "point", "to_name": "image", "type": "keypointlabels", "is_positive": positive,
            "original_width": 320, "original_height": 240, "image_rotation": 0,
            "value": {"x": x_percent, "y": y_percent, "width": 0.6, "keypointlabels": [label]}}


def test_backend_was_set_up_by_label_studio(connected, backend_server, label_studio):
    project = connected["project"].id
    status = requests.get(f"{backend_server['url']}/status?project={project}", timeout=10).json()
    assert status["label_studio"]["token"] is True  # the pair this project's /setup sent
    assert status["label_studio"]["url"].startswith("http://localhost:")


def test_interactive_keypoint_gives_the_object(label_studio, connected, image_server):
    for task in connected["tasks"]:  # the URL task and the uploaded one
        data = _interactive(label_studio, connected, task, {"result": [_keypoint(50, 50)]})
        [region] = data["result"]
        assert region["type"] == "brushlabels" and region["value"]["brushlabels"] == ["Object"]
        assert (region["original_width"], region["original_height"]) == (320, 240)
        assert 0 <= region["score"] <= 1 and 0 <= data["score"] <= 1
        assert data["model_version"].startswith("segagent-")
        assert iou(_decode(region), image_server.mask) >= 0.8


def _ours(client, project_id: int) -> dict[int, list]:
    """The backend's predictions of each task of the project."""
    return {task.id: [p for p in client.tasks.get(id=task.id).predictions or []
                      if str(p.model_version or "").startswith("segagent-")]
            for task in client.tasks.list(project=project_id)}


def _preannotated(backend_url: str, project_id: int, timeout: float = 120) -> dict:
    """The backend's pre-annotation of the project, once nothing is left to do."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        progress = requests.get(f"{backend_url}/status", timeout=10).json()["preannotation"].get(str(project_id))
        if progress and not progress["remaining"]:
            return progress
        time.sleep(0.5)
    raise AssertionError(f"project {project_id} is not pre-annotated after {timeout} s")


def test_imported_tasks_are_preannotated_without_anyone_asking(connected, backend_server, image_server):
    """Label Studio 1.23 tells a connected ML backend about imported tasks (TASKS_CREATED): the task with a
    rectangle gets its prediction with nobody pressing "Retrieve predictions"; the other has nothing to
    start from."""
    progress = _preannotated(backend_server["url"], connected["project"].id)
    assert progress["done"] == 2 and progress["failed"] == 0
    counts = sorted(len(predictions) for predictions in _ours(connected["client"], connected["project"].id).values())
    assert counts == [0, 1]


def test_retrieve_predictions_stores_masks(connected, backend_server, image_server):
    client, project = connected["client"], connected["project"]
    _preannotated(backend_server["url"], project.id)
    _forget_ours(client, project.id)  # Label Studio does not ask again for a version a task has already
    client.actions.create(id="retrieve_tasks_predictions", project=project.id,
                          selected_items={"all": True, "excluded": []})
    after = _ours(client, project.id)
    assert sorted(len(predictions) for predictions in after.values()) == [0, 1]  # the task with a rectangle
    [[prediction]] = [predictions for predictions in after.values() if predictions]
    [region] = prediction.result
    assert iou(_decode(region), image_server.mask) >= 0.8


def _forget_ours(client, project_id: int) -> None:
    for predictions in _ours(client, project_id).values():
        for prediction in predictions:
            client.predictions.delete(id=prediction.id)


def test_submitted_annotation_reaches_the_webhook(connected, backend_server, image_server):
    client = connected["client"]
    task = connected["tasks"][0]
    before = requests.get(f"{backend_server['url']}/status", timeout=10).json()["annotations"]["annotations"]
    result = {"from_name": "tag", "to_name": "image", "type": "brushlabels", "original_width": 320,
              "original_height": 240, "image_rotation": 0,
              "value": {"format": "rle", "rle": brush.mask2rle(image_server.mask.astype(np.uint8) * 255),
                        "brushlabels": ["Object"]}}
    client.annotations.create(id=task.id, result=[result], was_cancelled=False)
    deadline = time.time() + 60
    while time.time() < deadline:
        status = requests.get(f"{backend_server['url']}/status", timeout=10).json()
        if status["annotations"]["annotations"] > before:
            break
        time.sleep(1)
    assert status["annotations"]["annotations"] == before + 1
    assert status["webhook_events"].get("ANNOTATION_CREATED", 0) >= 1
    deadline = time.time() + 90  # the submitted mask becomes trajectories in the background
    while time.time() < deadline and status["trajectories"]["scratch"] < 1:
        time.sleep(1)
        status = requests.get(f"{backend_server['url']}/status", timeout=10).json()
    assert status["trajectories"]["scratch"] >= 1, status["annotation_jobs"]


def test_quality_scores_reach_the_data_manager(connected, backend_server, image_server):
    """Both tasks annotated, one well and one badly: the backend scores each submitted region and writes
    the worst score into the task's data, so a Data Manager view sorted by it lists the bad one first."""
    client, project = connected["client"], connected["project"]
    good_task, bad_task = connected["tasks"]
    shifted = np.roll(image_server.mask, 70, axis=1)
    for task, mask in ((good_task, image_server.mask), (bad_task, shifted)):
        existing = client.tasks.get(id=task.id).annotations or []
        if task is good_task and existing:
            continue  # annotated by the webhook test already
        result = {"from_name": "tag", "to_name": "image", "type": "brushlabels", "original_width": 320,
                  "original_height": 240, "image_rotation": 0,
                  "value": {"format": "rle", "rle": brush.mask2rle(mask.astype(np.uint8) * 255),
                            "brushlabels": ["Object"]}}
        client.annotations.create(id=task.id, result=[result], was_cancelled=False)
    deadline = time.time() + 120
    while time.time() < deadline:
        data = {t.id: client.tasks.get(id=t.id).data for t in (good_task, bad_task)}
        if all("segagent_quality" in d for d in data.values()):
            break
        time.sleep(2)
    status = requests.get(f"{backend_server['url']}/status", timeout=10).json()["quality"]
    assert all("segagent_quality" in d for d in data.values()), status
    assert data[bad_task.id]["segagent_quality"] < data[good_task.id]["segagent_quality"]

    column = "tasks:data.segagent_quality"
    view = client.views.create(project=project.id, data={"ordering": [column], "columnsDisplayType": {column: "Number"}})
    ordered = [t.id for t in client.tasks.list(project=project.id, view=view.id)]
    assert ordered == [bad_task.id, good_task.id]

    worst = requests.get(f"{backend_server['url']}/quality", params={"project": project.id}, timeout=10).json()
    assert [row["task_id"] for row in worst["annotations"]][:1] == [bad_task.id]
    assert worst["annotations"][0]["link"].endswith(f"/projects/{project.id}/data?task={bad_task.id}")
