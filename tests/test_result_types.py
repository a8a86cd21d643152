"""Label Studio results through the HTTP edge: each type the backend reads is validated into its model once,
with the request body; any other type is accepted and ignored; a malformed one of a known type is a 400 that
names its field; one a task (or a project export) already has is skipped with a warning, not fatal."""
from __future__ import annotations

import logging

import numpy as np
import pytest
from label_studio_sdk.converter import brush

from backend import webhooks
from backend.labelstudio.results import (
    BrushResult,
    KeypointResult,
    OtherResult,
    PolygonResult,
    RectangleResult,
    TextAreaResult,
)
from model.core.masks import iou
from model.settings import Settings
from tests.apps import App
from tests.test_backend import CONFIG, brush_annotation, decode, keypoint, predict

MASK = np.zeros((20, 20), bool)
MASK[4:12, 6:14] = True
POLYGON = {"id": "p1", "type": "polygonlabels", "from_name": "poly", "to_name": "image", "original_width": 20,
           "original_height": 20, "value": {"points": [[10, 10], [60, 10], [60, 60]], "polygonlabels": ["Object"]}}
RECTANGLE = {"id": "b1", "type": "rectanglelabels", "from_name": "box", "to_name": "image",
             "value": {"x": 10, "y": 10, "width": 30, "height": 20, "rotation": 0, "rectanglelabels": ["Object"]}}
TEXT = {"type": "textarea", "from_name": "prompt", "to_name": "image", "value": {"text": ["the", "blob"]}}
IGNORED = [
    {"type": "choices", "value": {"choices": ["Object"]}},
    {"type": "ellipselabels", "value": "not even an object"},
    {"type": 5},
    {"no": "type at all"},
]


@pytest.fixture
def app(tmp_path):
    return App(Settings(data_dir=tmp_path, banned_subnets="169.254.0.0/16"))


def annotation_with(*results):
    payload = brush_annotation(MASK)
    payload["annotation"]["result"] = [*payload["annotation"]["result"], *results]
    return payload


def test_each_type_is_validated_into_its_model_once_and_the_rest_ignored(app, monkeypatch):
    seen = []

    def recording(project, task, annotation, *args):
        seen.append(annotation.result)
        return annotation_input(project, task, annotation, *args)

    annotation_input = webhooks.annotation_input
    monkeypatch.setattr(webhooks, "annotation_input", recording)
    payload = annotation_with(POLYGON, keypoint(50, 50), RECTANGLE, TEXT, *IGNORED)
    answer = app.client.post("/webhook", json=payload)
    assert answer.status_code == 200 and answer.json["regions"] == 2, answer.json
    [results] = seen
    assert [type(result) for result in results] == [BrushResult, PolygonResult, KeypointResult, RectangleResult,
                                                    TextAreaResult, *[OtherResult] * len(IGNORED)]
    brush_result, polygon, click, box, text = results[:5]
    assert brush_result.id == "r1" and brush_result.label == "Object" and brush_result.image_size(10**6) == (20, 20)
    assert polygon.value.points[1] == (60.0, 10.0) and polygon.label == "Object"
    assert (click.value.x, click.value.y, click.is_positive, click.label) == (50.0, 50.0, True, "Object")
    assert (box.value.x, box.value.width, box.id) == (10.0, 30.0, "b1")
    assert text.value.text == "the blob"
    kept = {region["source"]: region for region in app.backend.annotations.regions(11)}
    assert set(kept) == {"brushlabels", "polygonlabels"} and (kept["brushlabels"]["mask"] == MASK).all()


def test_a_type_in_another_letter_case_is_still_read(app):
    payload = brush_annotation(MASK)
    payload["annotation"]["result"][0]["type"] = "BrushLabels"
    assert app.client.post("/webhook", json=payload).json["regions"] == 1


def test_a_context_of_every_type_answers_its_click(app, image_server):
    """Only the keypoint drives the answer; the brush, polygon and the types the backend ignores pass."""
    rle = brush.mask2rle(MASK.astype(np.uint8) * 255)
    strokes = {"type": "brushlabels", "original_width": 20, "original_height": 20,
               "value": {"format": "rle", "rle": rle, "brushlabels": ["Object"]}}
    context = {"result": [keypoint(50, 50), strokes, POLYGON, TEXT, *IGNORED]}
    response = predict(app.client, f"{image_server.url}/object.png", context)
    assert response.status_code == 200, response.json
    brushes = [r for r in response.json["results"][0]["result"] if r["type"] == "brushlabels"]
    assert iou(decode(brushes[0]), image_server.mask) >= 0.85


def _brush(**value):
    result = brush_annotation(MASK)["annotation"]["result"][0]
    return {**result, "value": {**result["value"], **value}}


MALFORMED_ANNOTATIONS = [
    (_brush(rle=[0, 0, 1, 144, 5, 300, 2, 1]), "annotation.result.0.brushlabels.value.rle.5",
     "less than or equal to 255"),
    (_brush(rle=[0, 0, 1]), "annotation.result.0.brushlabels.value.rle", "at least 8"),
    (_brush(format="png"), "annotation.result.0.brushlabels.value.format", "'rle'"),
    (_brush(brushlabels="Object"), "annotation.result.0.brushlabels.value.brushlabels", "list of label names"),
    ({**_brush(), "original_width": 0}, "annotation.result.0.brushlabels.original_width", "greater than or equal to 1"),
    ({**_brush(), "original_width": 21}, "annotation.result.0.brushlabels", "the RLE declares 1600 values"),
    ({**POLYGON, "value": {"points": [[10, 10], [60, 10, 5], [60, 60]]}}, "annotation.result.0.polygonlabels.value"
     ".points.1", "a polygon point must be [x, y]"),
    ({**POLYGON, "value": {"points": [[10, 10], [60, 10], [60, float("inf")]]}}, "annotation.result.0.polygonlabels"
     ".value.points.2.1", "finite number"),
    ({**POLYGON, "value": {"points": [[10, 10], [60, 10]]}}, "annotation.result.0.polygonlabels.value.points",
     "at least 3 [x, y] points"),
    ({**POLYGON, "id": {"a": 1}}, "annotation.result.0.polygonlabels.id", "a region id is a string or a number"),
    (5, "annotation.result.0.other", "valid dictionary"),
]


@pytest.mark.parametrize("result, field, message", MALFORMED_ANNOTATIONS)
def test_a_malformed_annotation_result_is_400_naming_its_field(app, result, field, message, caplog):
    payload = brush_annotation(MASK)
    payload["annotation"]["result"] = [result]
    with caplog.at_level(logging.WARNING, logger="backend"):
        response = app.client.post("/webhook", json=payload)
    assert response.status_code == 400 and response.json["error"].startswith(f"{field}: "), response.json
    assert message in response.json["error"] and "/webhook -> 400" in caplog.text
    assert app.client.get("/status").json["annotations"]["annotations"] == 0


MALFORMED_CONTEXTS = [
    ({**keypoint(50, 50), "value": {"x": "left", "y": 50}}, "value.x", "valid number"),
    (keypoint(50, 150), "value.y", "150% lies outside the image"),
    ({**keypoint(50, 50), "is_positive": "perhaps"}, "is_positive", "valid boolean"),
    ({"type": "keypointlabels", "to_name": "image"}, "value", "Field required"),
    ({**RECTANGLE, "value": {**RECTANGLE["value"], "width": 0}}, "value.width", "0% is not a size within the image"),
    ({**TEXT, "value": {"text": [1, 2]}}, "value.text", "a text or a list of texts"),
]


@pytest.mark.parametrize("result, field, message", MALFORMED_CONTEXTS)
def test_a_malformed_context_result_is_400_naming_its_field(app, image_server, result, field, message):
    response = predict(app.client, f"{image_server.url}/object.png", {"result": [keypoint(40, 40), result]})
    kind = result["type"]
    assert response.status_code == 400, response.json
    assert response.json["error"].startswith(f"params.context.result.1.{kind}.{field}: "), response.json
    assert message in response.json["error"]


def test_results_a_task_already_has_are_skipped_with_the_field_logged(app, image_server, caplog):
    broken = {"result": [{**RECTANGLE, "value": {**RECTANGLE["value"], "x": "a"}}, {"type": "mystery"}]}
    task = {"annotations": [5, {"result": None}], "predictions": [broken]}
    with caplog.at_level(logging.WARNING, logger="backend"):
        response = predict(app.client, f"{image_server.url}/object.png", task_extra=task)
    assert response.status_code == 200 and response.json["results"] == [[]]  # nothing to start from, no policy
    skipped = "task 7: skipping part of a stored annotation or prediction: "
    assert f"{skipped}Input should be a valid dictionary" in caplog.text
    assert f"{skipped}rectanglelabels.value.x: Input should be a valid number" in caplog.text
    assert "mystery" not in caplog.text


def test_legacy_train_keeps_the_good_annotations_of_an_export_and_logs_the_malformed(app, caplog):
    good, bad = brush_annotation(MASK)["annotation"], brush_annotation(MASK, annotation_id=12)["annotation"]
    bad["result"][0]["value"]["rle"] = [1, 2, 3]
    task = {"id": 7, "data": {"image": "x"}, "annotations": [bad, good]}
    with caplog.at_level(logging.WARNING, logger="backend"):
        answer = app.client.post("/train", json={"annotations": [task], "project": "3.1", "label_config": CONFIG})
    assert answer.status_code == 503 and "training is off" in answer.json["error"]  # no policy: kept, not trained
    assert "an annotation of task 7 not kept: result.0.brushlabels.value.rle: List should have at least 8" in caplog.text
    assert app.client.get("/status").json["annotations"]["annotations"] == 1
    assert app.client.post("/train", json={"annotations": [{"id": 7}]}).json["error"] == \
        "annotations.0.data: Field required"
