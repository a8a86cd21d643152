"""Polygon predictions: with PolygonLabels in the config (or SEGAGENT_OUTPUT=polygon), every mode answers
with polygon regions in percent, one per connected part, labelled as brushes would be."""
from __future__ import annotations

import numpy as np

from model.core.masks import iou, polygons_to_mask
from model.settings import Settings
from tests.apps import App
from tests.test_backend import CONFIG, keypoint, predict, rectangle_around

POLYGONS = """<View>
  <Image name="image" value="$image"/>
  <PolygonLabels name="outline" toName="image"><Label value="Object"/></PolygonLabels>
  <KeyPointLabels name="kp" toName="image" smart="true"><Label value="Object" smart="true"/></KeyPointLabels>
  <RectangleLabels name="box" toName="image" smart="true"><Label value="Object"/></RectangleLabels>
</View>"""
BOTH = CONFIG.replace("</View>", '<PolygonLabels name="outline" toName="image"><Label value="Object"/></PolygonLabels>\n'
                                 "</View>")


def client_for(tmp_path, **overrides):
    return App(Settings(data_dir=tmp_path, banned_subnets="169.254.0.0/16", **overrides)).client


def rasterised(region: dict) -> np.ndarray:
    width, height = region["original_width"], region["original_height"]
    points = [coordinate for x, y in region["value"]["points"] for coordinate in (x * width / 100, y * height / 100)]
    return polygons_to_mask([points], height, width)


def test_an_interactive_click_gives_a_polygon_of_the_object(tmp_path, image_server):
    response = predict(client_for(tmp_path), f"{image_server.url}/object.png", {"result": [keypoint(50, 50)]},
                       config=POLYGONS)
    [region] = response.json["results"][0]["result"]
    assert region["type"] == "polygonlabels" and region["from_name"] == "outline"
    assert region["value"]["polygonlabels"] == ["Object"] and region["value"]["closed"] is True
    assert 3 <= len(region["value"]["points"]) <= 200 and region["score"] > 0
    assert iou(rasterised(region), image_server.mask) > 0.85


def test_refine_mode_answers_polygons_too(tmp_path, image_server):
    task = {"predictions": [{"result": [rectangle_around(image_server.mask)]}]}
    response = predict(client_for(tmp_path), f"{image_server.url}/object.png", config=POLYGONS, task_extra=task)
    regions = response.json["results"][0]["result"]
    assert regions and all(r["type"] == "polygonlabels" for r in regions)
    assert iou(rasterised(regions[0]), image_server.mask) > 0.85


def test_brushes_win_when_both_are_there_unless_polygons_are_asked_for(tmp_path, image_server):
    url, context = f"{image_server.url}/object.png", {"result": [keypoint(50, 50)]}
    brush = predict(client_for(tmp_path / "a"), url, context, config=BOTH).json["results"][0]["result"]
    polygon = predict(client_for(tmp_path / "b", output="polygon"), url, context, config=BOTH).json["results"][0]["result"]
    assert [r["type"] for r in brush] == ["brushlabels"]
    assert [r["type"] for r in polygon] == ["polygonlabels"]


def test_asking_for_polygons_with_a_brush_only_config_says_what_is_missing(tmp_path, image_server):
    response = predict(client_for(tmp_path, output="polygon"), f"{image_server.url}/object.png",
                       {"result": [keypoint(50, 50)]})
    assert response.status_code == 400 and "<PolygonLabels>" in response.json["error"]
    assert "SEGAGENT_OUTPUT=polygon" in response.json["error"]


def test_the_tolerance_setting_trades_vertices(tmp_path, image_server):
    url, context = f"{image_server.url}/object.png", {"result": [keypoint(50, 50)]}
    fine = predict(client_for(tmp_path / "a", polygon_tolerance=0.5), url, context, config=POLYGONS)
    coarse = predict(client_for(tmp_path / "b", polygon_tolerance=4), url, context, config=POLYGONS)
    count = lambda response: len(response.json["results"][0]["result"][0]["value"]["points"])  # noqa: E731
    assert count(coarse) < count(fine)
