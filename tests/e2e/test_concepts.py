"""End to end: concept pre-annotation with a tiny random SAM 3 (SEGAGENT_TOOL=sam3) and Label Studio 1.23. A task
with nothing to start from gets, per label, one region per instance SAM 3 scores above the threshold, looked
for by the label's phrase (SEGAGENT_CONCEPT_PROMPTS): on import (TASKS_CREATED), by "Retrieve predictions" (/predict),
through /preannotate (the backend's threads, and an RQ worker), as brushes or polygons as the config says; with a
policy, each instance is refined by an agent's episode. The expected instances are what the same weights find in
this process: random weights give arbitrary masks, so the structure is checked, not their quality."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from itertools import pairwise
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import requests
from label_studio_sdk import LabelStudio

from model.core.masks import iou
from model.core.polygons import mask_to_polygons
from model.settings import Settings
from tests.e2e.conftest import make_serve
from tests.e2e.test_label_studio import _decode, _forget_ours, _keypoint, _ours, _preannotated

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
PHRASES = {"Object": "cat"}  # "Other" is looked for by its name
LIMIT = 8  # SEGAGENT_CONCEPT_MAX_INSTANCES: each region is scored by the quality scorer (a fraction of a second)
CONFIG = """
<View>
  <Image name="image" value="$image"/>
  <{tag} name="{name}" toName="image"><Label value="Object"/><Label value="Other"/></{tag}>
  <KeyPointLabels name="point" toName="image" smart="true">
    <Label value="Object" smart="true"/><Label value="Other" smart="true"/>
  </KeyPointLabels>
</View>"""
BRUSH = CONFIG.format(tag="BrushLabels", name="tag")
POLYGON = CONFIG.format(tag="PolygonLabels", name="outline")


def _threshold(scores: list[float]) -> float:
    """A threshold in the middle of the widest gap between the middle half of the scores: some instances are
    left out, and none is within a rounding error of it (random weights score every query about alike)."""
    ordered = sorted(scores)
    middle = ordered[len(ordered) // 4: 3 * len(ordered) // 4 + 1]
    low, high = max(pairwise(middle), key=lambda pair: pair[1] - pair[0])
    assert high - low > 1e-5, ordered
    return (low + high) / 2


@pytest.fixture(scope="module")
def sam3(tmp_path_factory, image_server):
    """The tiny SAM 3's folder, the threshold the backends use, and per label the instances it finds in this
    process (the highest scored, at most LIMIT, with a mask), and those of the label's own name."""
    from model.tools import segmenter_from
    from tests.tiny_sam3 import tiny_sam3_folder

    folder = tiny_sam3_folder(tmp_path_factory)
    segmenter = segmenter_from(Settings(tool="sam3", sam3_checkpoint=str(folder), device="cpu",
                                        data_dir=tmp_path_factory.mktemp("sam3-data")))
    every = {phrase: segmenter.find_instances(image_server.image, phrase, 0.0) for phrase in ("cat", "Other", "Object")}
    threshold = _threshold([i.score for phrase in ("cat", "Other") for i in every[phrase]])

    def kept(phrase: str) -> list:
        above = sorted((i for i in every[phrase] if i.score > threshold), key=lambda i: -i.score)[:LIMIT]
        return [i for i in above if i.mask.any()]

    expected = {"Object": kept("cat"), "Other": kept("Other"), "unmapped Object": kept("Object")}
    assert expected["Object"] and expected["Other"], (threshold, {p: [i.score for i in v] for p, v in every.items()})
    return SimpleNamespace(folder=folder, threshold=threshold, expected=expected)


def _env(sam3, label_studio, **extra) -> dict:
    return {"SEGAGENT_TOOL": "sam3", "SAM3_CHECKPOINT": str(sam3.folder), "SEGAGENT_DEVICE": "cpu",
            "SEGAGENT_CONCEPT_THRESHOLD": repr(sam3.threshold), "SEGAGENT_CONCEPT_PROMPTS": json.dumps(PHRASES),
            "SEGAGENT_CONCEPT_MAX_INSTANCES": str(LIMIT), "LABEL_STUDIO_URL": label_studio["url"],
            "LABEL_STUDIO_API_KEY": label_studio["token"], **extra}


@pytest.fixture(scope="module")
def concept_backend(sam3, label_studio, tmp_path_factory):
    with make_serve(tmp_path_factory.mktemp("concept-backend"), **_env(sam3, label_studio)) as server:
        yield server


def _matches(expected: list[np.ndarray], got: list[np.ndarray]) -> bool:
    """Whether each expected mask is one of the masks got, one to one (IoU 0.98: the same up to a pixel)."""
    if len(expected) != len(got):
        return False
    left = list(got)
    for mask in expected:
        best = max(range(len(left)), key=lambda k: iou(mask, left[k]))
        if iou(mask, left[best]) < 0.98:
            return False
        left.pop(best)
    return True


def _brush_regions(prediction) -> dict[str, list[dict]]:
    regions: dict[str, list[dict]] = {"Object": [], "Other": []}
    for region in prediction.result:
        assert region["type"] == "brushlabels" and region["from_name"] == "tag", region["type"]
        regions[region["value"]["brushlabels"][0]].append(region)
    return regions


def _check_brushes(prediction, sam3) -> dict[str, list[dict]]:
    """One brush region per instance of each label's phrase, masks as the tool found them, each scored at most
    its instance's probability; the task's score is the lowest region's."""
    regions = _brush_regions(prediction)
    for label in ("Object", "Other"):
        expected = sam3.expected[label]
        assert len(regions[label]) == len(expected)
        assert _matches([i.mask for i in expected], [_decode(region) for region in regions[label]])
        assert all(0 <= region["score"] <= max(i.score for i in expected) + 1e-3 for region in regions[label])
    assert not _matches([i.mask for i in sam3.expected["unmapped Object"]], [_decode(r) for r in regions["Object"]])
    assert prediction.score == pytest.approx(min(r["score"] for r in prediction.result), abs=1e-4)
    assert prediction.model_version.startswith("segagent-sam3-")
    return regions


@pytest.fixture(scope="module")
def connected(label_studio, concept_backend, image_server):
    client = LabelStudio(base_url=label_studio["url"], api_key=label_studio["token"])
    project = client.projects.create(title="segagent concepts", label_config=BRUSH)
    ml = client.ml.create(project=project.id, url=concept_backend["url"], is_interactive=True, title="SegAgent")
    client.projects.import_tasks(id=project.id, request=[{"data": {"image": f"{image_server.url}/object.png"}}])
    [task] = list(client.tasks.list(project=project.id))
    return SimpleNamespace(client=client, project=project, ml=ml, task=task,
                           headers={"Authorization": f"Token {label_studio['token']}"})


def test_an_imported_task_gets_a_region_per_instance_and_a_click_refines_one(connected, concept_backend, sam3,
                                                                             label_studio):
    # the job's read of the task makes Label Studio ask /predict itself (it shows predictions to annotators), so the
    # prediction is written by Label Studio or by the job: either way, one
    progress = _preannotated(concept_backend["url"], connected.project.id)
    assert progress["done"] == 1 and progress["failed"] == 0, progress
    [prediction] = _ours(connected.client, connected.project.id)[connected.task.id]
    regions = _check_brushes(prediction, sam3)

    # a click on a pre-annotated instance refines that region: the answer carries its id
    region = regions["Object"][0]
    row, col = np.argwhere(_decode(region))[0]
    height, width = region["original_height"], region["original_width"]
    response = requests.post(
        f"{label_studio['url']}/api/ml/{connected.ml.id}/interactive-annotating", headers=connected.headers,
        json={"task": connected.task.id, "context": {"result": [
            {**_keypoint(100 * (col + 0.5) / width, 100 * (row + 0.5) / height), "original_width": width,
             "original_height": height}]}}, timeout=120)
    response.raise_for_status()
    [answer] = response.json()["data"]["result"]
    assert answer["id"] in {r["id"] for r in regions["Object"]}


def test_retrieve_predictions_gives_a_region_per_instance(connected, concept_backend, sam3):
    _preannotated(concept_backend["url"], connected.project.id)
    _forget_ours(connected.client, connected.project.id)
    connected.client.actions.create(id="retrieve_tasks_predictions", project=connected.project.id,
                                    selected_items={"all": True, "excluded": []})
    [prediction] = _ours(connected.client, connected.project.id)[connected.task.id]
    _check_brushes(prediction, sam3)


def test_preannotate_writes_polygons_per_instance(label_studio, concept_backend, sam3, image_server):
    """POST /preannotate for a project not connected to the backend, whose config has PolygonLabels: one
    polygon region per instance (a region per connected part of its mask, their ids derived from its id)."""
    client = LabelStudio(base_url=label_studio["url"], api_key=label_studio["token"])
    project = client.projects.create(title="segagent concept polygons", label_config=POLYGON)
    client.projects.import_tasks(id=project.id, request=[{"data": {"image": f"{image_server.url}/object.png"}}])
    answer = requests.post(f"{concept_backend['url']}/preannotate", json={"project": project.id}, timeout=30)
    assert answer.status_code == 202 and answer.json()["queued"] == 1, answer.text
    assert _preannotated(concept_backend["url"], project.id)["written"] == 1
    [[prediction]] = _ours(client, project.id).values()
    for label in ("Object", "Other"):
        parts = [r for r in prediction.result if r["value"]["polygonlabels"] == [label]]
        assert all(r["type"] == "polygonlabels" and r["from_name"] == "outline" for r in parts)
        instances = {r["id"].split("-")[0] for r in parts}
        expected = [i for i in sam3.expected[label] if mask_to_polygons(i.mask, 1.0)]
        assert len(instances) == len(expected)
        assert len(parts) == sum(len(mask_to_polygons(i.mask, 1.0)) for i in expected)


def test_with_a_policy_each_instance_is_refined_by_the_agent(label_studio, sam3, image_server, taught_vlm,
                                                              tmp_path):
    """The tiny policy, taught to click the centre, one step: each instance's episode is recorded, and its click
    comes back as a keypoint (SEGAGENT_RETURN_CLICKS) with the region's label."""
    env = _env(sam3, label_studio, SEGAGENT_POLICY=str(taught_vlm), SEGAGENT_AGENT_STEPS="1",
               SEGAGENT_RETURN_CLICKS="true")
    client = LabelStudio(base_url=label_studio["url"], api_key=label_studio["token"])
    with make_serve(tmp_path, **env) as backend:
        project = client.projects.create(title="segagent concepts refined", label_config=BRUSH)
        client.ml.create(project=project.id, url=backend["url"], is_interactive=True, title="SegAgent")
        client.projects.import_tasks(id=project.id, request=[{"data": {"image": f"{image_server.url}/object.png"}}])
        assert _preannotated(backend["url"], project.id, timeout=300)["failed"] == 0
        episodes = requests.get(f"{backend['url']}/status", timeout=10).json()["annotations"]["episodes"]
    [[prediction]] = _ours(client, project.id).values()
    assert prediction.model_version.startswith("segagent-sam3-agent-")
    brushes = [r for r in prediction.result if r["type"] == "brushlabels"]
    keypoints = [r for r in prediction.result if r["type"] == "keypointlabels"]
    assert episodes == len(sam3.expected["Object"]) + len(sam3.expected["Other"])
    for label in ("Object", "Other"):  # an episode whose mask came out empty gives no region
        regions = [b for b in brushes if b["value"]["brushlabels"] == [label]]
        assert 0 < len(regions) <= len(sam3.expected[label])
        assert sum(k["value"]["keypointlabels"] == [label] for k in keypoints) == len(regions)
    assert all(k["value"]["x"] == pytest.approx(50, abs=1) and k["value"]["y"] == pytest.approx(50, abs=1)
               for k in keypoints)


def test_an_rq_worker_preannotates_by_concepts(label_studio, sam3, image_server, redis_url, tmp_path):
    """With REDIS_URL, the task is predicted by `segagent-worker preannotate`, SAM 3 built in the worker."""
    from tests.apps import App

    client = LabelStudio(base_url=label_studio["url"], api_key=label_studio["token"])
    project = client.projects.create(title="segagent concepts by rq", label_config=BRUSH)
    client.projects.import_tasks(id=project.id, request=[{"data": {"image": f"{image_server.url}/object.png"}}])
    env = {**_env(sam3, label_studio), "REDIS_URL": redis_url, "SEGAGENT_DATA_DIR": str(tmp_path),
           "SEGAGENT_BANNED_SUBNETS": "169.254.0.0/16"}
    web = App(Settings(data_dir=tmp_path, tool="sam3", sam3_checkpoint=str(sam3.folder), device="cpu",
                       label_studio_url=label_studio["url"], label_studio_api_key=label_studio["token"],
                       redis_url=redis_url, banned_subnets="169.254.0.0/16")).client  # the version the worker serves
    answer = web.post("/preannotate", json={"project": project.id})
    assert answer.status_code == 202 and answer.json["runner"] == "rq" and answer.json["queued"] == 1
    worker = subprocess.run([str(Path(sys.executable).with_name("segagent-worker")), "preannotate", "--burst"],
                            cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=300)
    assert worker.returncode == 0, worker.stderr[-2000:]
    [[prediction]] = _ours(client, project.id).values()
    _check_brushes(prediction, sam3)
