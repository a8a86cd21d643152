"""End to end: a project whose config has PolygonLabels. Label Studio 1.23 stores the backend's polygon
predictions (made on import, and by "Retrieve predictions", for a task with an imported rectangle) and
answers its interactive pre-annotation from a smart keypoint with a polygon; all outline the object."""
from __future__ import annotations

import numpy as np
import pytest
import requests
from label_studio_sdk import LabelStudio

from model.core.masks import iou, polygons_to_mask
from tests.e2e.test_label_studio import _bbox_percent, _forget_ours, _keypoint, _ours, _preannotated

pytestmark = pytest.mark.e2e

CONFIG = """
<View>
  <Image name="image" value="$image" zoom="true"/>
  <PolygonLabels name="outline" toName="image"><Label value="Object" background="#ff0000"/></PolygonLabels>
  <KeyPointLabels name="point" toName="image" smart="true">
    <Label value="Object" smart="true" background="#00ff00"/>
  </KeyPointLabels>
  <RectangleLabels name="box" toName="image" smart="true"><Label value="Object" background="#00ffff"/></RectangleLabels>
</View>
"""


def _rasterised(region) -> np.ndarray:
    width, height = region["original_width"], region["original_height"]
    points = [value for x, y in region["value"]["points"] for value in (x * width / 100, y * height / 100)]
    return polygons_to_mask([points], height, width)


@pytest.fixture(scope="module")
def polygon_project(label_studio, backend_server, image_server):
    client = LabelStudio(base_url=label_studio["url"], api_key=label_studio["token"])
    project = client.projects.create(title="segagent polygons", label_config=CONFIG)
    ml = client.ml.create(project=project.id, url=backend_server["url"], is_interactive=True, title="SegAgent")
    box = {"from_name": "box", "to_name": "image", "type": "rectanglelabels",
           "value": {**_bbox_percent(image_server.mask), "rectanglelabels": ["Object"]}}
    client.projects.import_tasks(id=project.id, request=[
        {"data": {"image": f"{image_server.url}/object.png"},
         "predictions": [{"model_version": "detector", "result": [box]}]}])
    [task] = list(client.tasks.list(project=project.id))
    return {"client": client, "project": project, "ml": ml, "task": task,
            "headers": {"Authorization": f"Token {label_studio['token']}"}}


def test_imported_and_retrieved_predictions_are_polygons(polygon_project, backend_server, image_server):
    client, project = polygon_project["client"], polygon_project["project"]
    _preannotated(backend_server["url"], project.id)  # on import (TASKS_CREATED)
    imported = _ours(client, project.id)[polygon_project["task"].id]
    _forget_ours(client, project.id)  # so that "Retrieve predictions" asks the backend again
    client.actions.create(id="retrieve_tasks_predictions", project=project.id,
                          selected_items={"all": True, "excluded": []})
    retrieved = _ours(client, project.id)[polygon_project["task"].id]
    assert len(imported) == 1 and len(retrieved) == 1
    for prediction in imported + retrieved:
        [region] = prediction.result
        assert region["type"] == "polygonlabels" and region["from_name"] == "outline"
        assert region["value"]["polygonlabels"] == ["Object"]
        assert iou(_rasterised(region), image_server.mask) >= 0.8


def test_interactive_keypoint_gives_a_polygon(label_studio, polygon_project, image_server):
    response = requests.post(
        f"{label_studio['url']}/api/ml/{polygon_project['ml'].id}/interactive-annotating",
        headers=polygon_project["headers"], timeout=120,
        json={"task": polygon_project["task"].id, "context": {"result": [_keypoint(50, 50)]}})
    response.raise_for_status()
    [region] = response.json()["data"]["result"]
    assert region["type"] == "polygonlabels"
    assert iou(_rasterised(region), image_server.mask) >= 0.8
