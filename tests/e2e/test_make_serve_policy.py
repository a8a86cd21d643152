"""`make serve` with SEGAGENT_POLICY pointing at a tiny VLM taught to answer `Positive point: (500, 500)`
answers a task with no clicks with a brush mask of the object at the image centre."""
import numpy as np
import pytest
import requests
from label_studio_sdk.converter import brush

from model.core.masks import iou
from tests.e2e.conftest import make_serve

pytestmark = pytest.mark.e2e

CONFIG = """<View><Image name="image" value="$image"/>
<BrushLabels name="tag" toName="image"><Label value="Object"/></BrushLabels></View>"""


def test_make_serve_with_a_policy_answers_a_task_without_clicks(tmp_path, taught_vlm, image_server):
    with make_serve(tmp_path, SEGAGENT_POLICY=str(taught_vlm)) as server:
        health = requests.get(f"{server['url']}/health", timeout=10).json()
        assert health["capabilities"]["policy"]["on"] is True
        response = requests.post(f"{server['url']}/predict", timeout=120, json={
            "tasks": [{"id": 1, "data": {"image": f"{image_server.url}/object.png"}}], "label_config": CONFIG})
        assert response.status_code == 200, response.text
        [region] = response.json()["results"][0]["result"]
        mask = brush.decode_rle(region["value"]["rle"]).reshape(240, 320, 4)[:, :, 3] > 0
        assert iou(mask, image_server.mask) >= 0.5
        assert np.isclose(region["score"], response.json()["results"][0]["score"])
