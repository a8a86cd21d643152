"""End to end with Label Studio 1.23: an annotation that corrects the backend's pre-annotation becomes a label for
the project's quality scorer (the prediction's true IoU), once, and an update replaces it."""
from __future__ import annotations

import time

import numpy as np
import pytest
import requests
from label_studio_sdk import LabelStudio
from label_studio_sdk.converter import brush

from backend.quality_labels import QualityLabels
from model.core.masks import iou
from tests.e2e.test_label_studio import CONFIG, _bbox_percent, _decode, _ours, _preannotated

pytestmark = pytest.mark.e2e


def _labels(backend_server, project: int, count: int, timeout: float = 120) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = requests.get(f"{backend_server['url']}/status", timeout=10).json()
        mine = status["quality"]["projects"].get(str(project))
        if mine and mine["labels"] >= count and status["derived_work"]["pending"] == 0:
            return mine
        time.sleep(1)
    raise AssertionError(f"no {count} labels for project {project} after {timeout} s: {status['quality']}")


def _brush(region_id: str, mask: np.ndarray) -> dict:
    return {"id": region_id, "from_name": "tag", "to_name": "image", "type": "brushlabels", "original_width": 320,
            "original_height": 240, "image_rotation": 0,
            "value": {"format": "rle", "rle": brush.mask2rle(mask.astype(np.uint8) * 255), "brushlabels": ["Object"]}}


def test_a_corrected_preannotation_is_a_label_for_the_project_s_scorer(label_studio, backend_server, image_server):
    client = LabelStudio(base_url=label_studio["url"], api_key=label_studio["token"])
    project = client.projects.create(title="segagent quality labels", label_config=CONFIG)
    client.ml.create(project=project.id, url=backend_server["url"], is_interactive=True, title="SegAgent")
    box = {"from_name": "box", "to_name": "image", "type": "rectanglelabels",
           "value": {**_bbox_percent(image_server.mask), "rectanglelabels": ["Object"]}}
    client.projects.import_tasks(id=project.id, request=[
        {"data": {"image": f"{image_server.url}/object.png"}, "predictions": [{"model_version": "detector",
                                                                               "result": [box]}]}])
    _preannotated(backend_server["url"], project.id)  # the backend's own prediction, from the box
    [(task_id, [prediction])] = [(t, p) for t, p in _ours(client, project.id).items() if p]
    [region] = prediction.result
    predicted = _decode(region)
    corrected = predicted.copy()
    corrected[100:140, 20:60] = True  # the annotator paints a part the prediction missed

    # the editor keeps a prediction's result id as its region's id when the annotation is made from it
    annotation = client.annotations.create(id=task_id, result=[_brush(region["id"], corrected)], was_cancelled=False)
    mine = _labels(backend_server, project.id, 1)
    assert mine["labels"] == 1 and mine["by_source"]["prediction"] == 1 and mine["active_scorer"] == "v0"
    store = QualityLabels(backend_server["log"].parent / "quality_labels.sqlite3")
    try:
        _, ious, tasks, _ = store.training_set(str(project.id))
        assert tasks == [task_id] and ious == pytest.approx([iou(predicted, corrected)], abs=1e-6)

        moved = np.roll(predicted, 10, axis=1)  # the annotation updated: its label replaced, not added
        client.annotations.update(id=annotation.id, result=[_brush(region["id"], moved)])
        deadline = time.time() + 120
        while time.time() < deadline and list(store.training_set(str(project.id))[1]) != \
                pytest.approx([iou(predicted, moved)], abs=1e-6):
            time.sleep(1)
        _, ious, _, _ = store.training_set(str(project.id))
        assert ious == pytest.approx([iou(predicted, moved)], abs=1e-6)
        assert _labels(backend_server, project.id, 1)["labels"] == 1
        assert [row["count"] for row in store.daily_counts(str(project.id))] == [1]
    finally:
        store.close()
