"""Concept pre-annotation in the backend's process (the end-to-end tests with Label Studio are
tests/e2e/test_concepts.py): SEGAGENT_CONCEPT_PROMPTS read and refused, and /predict with a tiny random SAM 3 asking
the tool for each label's phrase, one region per instance."""
from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from model.settings import Settings
from tests.apps import App

CONFIG = """<View><Image name="image" value="$image"/>
<BrushLabels name="tag" toName="image"><Label value="Object"/><Label value="Other"/></BrushLabels></View>"""


def test_concept_prompts_are_a_json_object_of_phrases(monkeypatch):
    monkeypatch.setenv("SEGAGENT_CONCEPT_PROMPTS", '{"Car": "red car"}')
    assert Settings().concept_phrases == {"Car": "red car"}
    assert Settings(concept_prompts={"Sign": "traffic sign"}).concept_phrases == {"Sign": "traffic sign"}
    monkeypatch.delenv("SEGAGENT_CONCEPT_PROMPTS")
    assert Settings().concept_phrases == {}
    for wrong in ('{"Car": ', '["car"]', '{"Car": ""}', '{"Car": 3}'):
        monkeypatch.setenv("SEGAGENT_CONCEPT_PROMPTS", wrong)
        with pytest.raises(ValidationError, match="SEGAGENT_CONCEPT_PROMPTS"):
            Settings()


@pytest.fixture(scope="module")
def tiny_sam3(tmp_path_factory):
    from tests.tiny_sam3 import tiny_sam3_folder

    return tiny_sam3_folder(tmp_path_factory)


def test_predict_asks_sam3_for_each_labels_phrase_and_answers_a_region_per_instance(tiny_sam3, image_server, tmp_path):
    app = App(Settings(data_dir=tmp_path, tool="sam3", sam3_checkpoint=str(tiny_sam3), device="cpu",
                       concept_threshold=0.0, concept_max_instances=3, concept_prompts=json.dumps({"Object": "cat"}),
                       banned_subnets="169.254.0.0/16"))
    segmenter = app.backend.capabilities.tool.get()
    asked: list[tuple[str, float]] = []
    found: dict[str, int] = {}
    find = segmenter.find_instances

    def spy(image, phrase, threshold):  # the real tool, watched at the model's boundary
        instances = find(image, phrase, threshold)
        asked.append((phrase, threshold))
        found[phrase] = sum(instance.mask.any() for instance in sorted(instances, key=lambda i: -i.score)[:3])
        return instances

    segmenter.find_instances = spy
    task = {"id": 5, "data": {"image": f"{image_server.url}/object.png"}}
    answer = app.client.post("/predict", json={"tasks": [task], "label_config": CONFIG})
    assert answer.status_code == 200, answer.json
    [prediction] = answer.json["results"]
    assert asked == [("cat", 0.0), ("Other", 0.0)]
    labels = [region["value"]["brushlabels"][0] for region in prediction["result"]]
    assert labels.count("Object") == found["cat"] and labels.count("Other") == found["Other"]
    assert len({region["id"] for region in prediction["result"]}) == len(labels) > 0
    assert prediction["score"] == min(region["score"] for region in prediction["result"])

    described = {"id": 6, "data": {"image": f"{image_server.url}/object.png", "prompt": "the other thing"}}
    answer = app.client.post("/predict", json={"tasks": [described], "label_config": CONFIG})
    assert asked[-1] == ("the other thing", 0.0)  # the description, labelled with the label it names
    assert {region["value"]["brushlabels"][0] for region in answer.json["results"][0]["result"]} <= {"Other"}

    unlabelled = CONFIG.replace('<Label value="Object"/><Label value="Other"/>', "")
    answer = app.client.post("/predict", json={"tasks": [described], "label_config": unlabelled})
    assert answer.status_code == 200 and answer.json["results"][0]["result"] == []  # no label to give a region
