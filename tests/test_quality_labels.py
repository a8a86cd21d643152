"""Labels for the quality scorer from the annotators' corrections (backend/quality_labels.py) and each project's own
scorer (backend/project_scorers.py): through the HTTP routes, with the classical tool and a local image server."""
from __future__ import annotations

import numpy as np
import pytest

from backend.predicted_regions import KEPT_PER_TASK, PredictedRegions
from model.core.masks import iou
from model.quality import project_scorer
from model.quality.scorers import OfflineScorer, quality_features
from tests.apps import App
from tests.test_backend import _wait_for, brush_annotation, decode, keypoint, make_app, rectangle_around
from tests.test_project_scorer import domain


def predict(client, image_url, task_id, task_extra=None, context=None, project=3):
    task = {"id": task_id, "data": {"image": image_url}, **(task_extra or {})}
    response = client.post("/predict", json={"tasks": [task], "project": f"{project}.1700000000",
                                             "label_config": brush_annotation(np.ones((2, 2)))["project"]["label_config"],
                                             "params": {"context": context}})
    assert response.status_code == 200, response.json
    return response.json["results"][0]["result"][0]


def refined(client, image_server, task_id, project=3):
    """A prediction of the task in refine mode (a box around the object): kept as a predicted region."""
    return predict(client, f"{image_server.url}/object.png", task_id, project=project,
                   task_extra={"predictions": [{"result": [rectangle_around(image_server.mask, pad=20)]}]})


def annotation(image_server, regions, annotation_id=51, task_id=7, updated="2026-01-01T00:00:00Z", project=3):
    """A webhook event of an annotation with brush regions (id, label, mask)."""
    payload = brush_annotation(regions[0][2], annotation_id=annotation_id, updated=updated)
    template = payload["annotation"]["result"][0]
    payload["annotation"]["result"] = [
        {**template, "id": region_id, "value": {**brush_annotation(mask)["annotation"]["result"][0]["value"],
                                                "brushlabels": [label]}} for region_id, label, mask in regions]
    payload["task"] = {"id": task_id, "data": {"image": f"{image_server.url}/object.png"}}
    payload["project"]["id"] = project
    return payload


def learned(client, count):
    assert _wait_for(lambda: client.get("/status").json["background_jobs"]["annotation"]["done"] >= count)
    assert client.get("/status").json["derived_work"] == {"pending": 0, "failed": 0, "max_attempts": 3}


def test_a_correction_of_our_prediction_is_a_label_once(tmp_path, image_server):
    app = make_app(tmp_path)
    client, labels = app.client, app.backend.quality_labels
    region = refined(client, image_server, 7)
    predicted = decode(region)
    truth = predicted.copy()
    truth[100:140, 20:60] = True  # the annotator painted a part our prediction missed
    assert 0.5 < iou(predicted, truth) < 1

    event = annotation(image_server, [(region["id"], "Object", truth)])
    assert client.post("/webhook", json=event).json["status"] == "ok"
    learned(client, 1)
    features, ious, tasks, _ = labels.training_set("3")
    assert tasks == [7] and ious == pytest.approx([iou(predicted, truth)], abs=1e-6)
    assert np.allclose(features[0], quality_features(image_server.image, predicted), atol=1e-5)
    assert labels.counts("3") == {"labels": 1, "by_source": {"prediction": 1, "interactive": 0}, "stale": 0}

    assert client.post("/webhook", json=event).json["status"] == "unchanged"  # a re-delivery: counted once
    app.backend.ingest.corrections.learn(_input(app, 51), image_server.image)
    assert labels.counts("3")["labels"] == 1  # work done again (a resumed job): the same row

    moved = np.roll(truth, 8, axis=1)  # an update replaces the label, not adds one
    update = annotation(image_server, [(region["id"], "Object", moved)], updated="2026-01-02T00:00:00Z")
    assert client.post("/webhook", json=update).json["status"] == "ok"
    learned(client, 2)
    _, ious, _, _ = labels.training_set("3")
    assert ious == pytest.approx([iou(predicted, moved)], abs=1e-6)
    [day] = labels.daily_counts("3")
    assert day["source"] == "prediction" and day["count"] == 1 and len(day["day"]) == 10

    client.post("/webhook", json={"action": "ANNOTATIONS_DELETED", "annotations": [{"id": 51}]})
    assert labels.counts("3")["labels"] == 0


def _input(app, annotation_id):
    from backend.inputs import AnnotationInput, Region

    work_regions = app.backend.annotations.regions(annotation_id)
    return AnnotationInput(project="3", task_id=7, annotation_id=annotation_id, version="2026-01-01T00:00:00Z",
                           image="", prompt=None, task_data={},
                           regions=[Region(r["label"], r["mask"], r["source"], r["region_id"]) for r in work_regions])


def test_regions_are_matched_by_id_else_by_label_and_overlap(tmp_path, image_server):
    app = make_app(tmp_path)
    client = app.client
    region = refined(client, image_server, 8, project=4)
    predicted, truth = decode(region), image_server.mask
    far = np.zeros_like(truth)
    far[:20, :20] = True
    # Label Studio gave the region an id of its own: matched by label and IoU; another label and a far region
    # of the label are not the prediction's object
    event = annotation(image_server, [("ls-own", "Other", truth), ("ls-far", "Object", far),
                                      ("ls-new", "Object", truth)], annotation_id=61, task_id=8, project=4)
    assert client.post("/webhook", json=event).json["status"] == "ok"
    learned(client, 1)
    _, ious, tasks, _ = app.backend.quality_labels.training_set("4")
    assert tasks == [8] and ious == pytest.approx([iou(predicted, truth)], abs=1e-6)


def test_an_interactive_answer_edited_afterwards_is_a_label(tmp_path, image_server):
    app = make_app(tmp_path)
    client, backend = app.client, app.backend
    answer = predict(client, f"{image_server.url}/object.png", 9, context={"result": [keypoint(50, 50)]})
    clicked = decode(answer)
    assert _wait_for(lambda: backend.annotations.interactive_objects("3", 9))  # written in the background
    edited = clicked.copy()
    edited[100:140, 20:60] = True  # the annotator painted a part the click missed
    event = annotation(image_server, [(answer["id"], "Object", edited)], annotation_id=71, task_id=9)
    assert client.post("/webhook", json=event).json["status"] == "ok"
    learned(client, 1)
    assert backend.quality_labels.counts("3")["by_source"] == {"prediction": 0, "interactive": 1}
    _, ious, _, _ = backend.quality_labels.training_set("3")
    assert ious == pytest.approx([iou(clicked, edited)], abs=1e-6)

    kept = annotation(image_server, [(answer["id"], "Object", clicked)], annotation_id=71, task_id=9,
                      updated="2026-01-02T00:00:00Z")  # accepted as answered: no label (the annotator stopped there)
    assert client.post("/webhook", json=kept).json["status"] == "ok"
    learned(client, 2)
    assert backend.quality_labels.counts("3")["labels"] == 0


def _seed_labels(labels, project: str, count: int = 400, seed: int = 0) -> None:
    """A project's labels of a 'domain' the shipped scorer misjudges (tests/test_project_scorer.py), of annotation ids
    of their own per project and seed."""
    from backend.quality_labels import Label
    from model.quality.scorers import QualityModel

    features, ious, tasks = domain(QualityModel.load(), count, seed)
    first = 10_000 * int(project) + 1000 * seed
    for index in range(count):
        labels.replace_annotation(project, 1000 + int(tasks[index].split("-")[1]), first + index, "v", [
            Label("prediction", f"p{index}", "Object", "segagent-classical-v0", float(ious[index]), features[index])])


def test_labels_refit_the_project_s_scorer_which_is_gated_versioned_and_rolled_back(tmp_path, image_server):
    app = make_app(tmp_path, scorer_refit_every=401)
    client, backend = app.client, app.backend
    _seed_labels(backend.quality_labels, "3")
    assert client.get("/status").json["quality"]["projects"]["3"]["active_scorer"] == "v0"
    shipped = OfflineScorer()
    region = refined(client, image_server, 7)
    assert region["score"] == pytest.approx(shipped(image_server.image, decode(region)), abs=1e-3)

    event = annotation(image_server, [(region["id"], "Object", image_server.mask)])
    assert client.post("/webhook", json=event).json["status"] == "ok"  # the 401st label: a refit
    learned(client, 1)
    status = client.get("/status").json["quality"]
    assert status["projects"]["3"]["active_scorer"] == "v1" and status["projects"]["3"]["labels"] == 401
    assert status["projects"]["3"]["new_labels"] == 0 and status["refit_every"] == 401
    [v0, v1] = client.get("/versions").json["scorers"]["3"]
    assert v0["version"] == "v0" and not v0["active"]
    assert v1["active"] and v1["labels"] == 401 and v1["gate"]["candidate"]["mae"] < v1["gate"]["active"]["mae"]
    assert backend.scorers.scorer_versions("3") == client.get("/versions?project=3").json["scorers"]["3"]

    again = refined(client, image_server, 7)  # the project's predictions are scored by its scorer now
    mine = backend.scorers.scorer_for("3")
    assert mine is not None and again["score"] == pytest.approx(mine(image_server.image, decode(again)), abs=1e-3)
    assert abs(again["score"] - shipped(image_server.image, decode(again))) > 0.01
    other = refined(client, image_server, 7, project=5)  # another project's: the shipped scorer still
    assert other["score"] == pytest.approx(shipped(image_server.image, decode(other)), abs=1e-3)

    backend.scorers.settings = backend.settings.model_copy(update={"scorer_prior_strength": 1e6})
    worse = backend.scorers.refit("3", "test: a candidate held to the shipped scorer")
    assert worse["status"] == "rejected" and worse["version"] == "v2"
    assert backend.scorers.scorer_versions("3")[-1]["gate"]["reason"].startswith("worse than the active scorer")
    assert client.get("/status").json["quality"]["projects"]["3"]["active_scorer"] == "v1"

    rolled = client.post("/rollback", json={"project": 3, "kind": "scorer"}).json
    assert rolled["active_version"] == "v0" and rolled["kind"] == "scorer"
    back = refined(client, image_server, 7)
    assert back["score"] == pytest.approx(shipped(image_server.image, decode(back)), abs=1e-3)
    assert backend.scorers.scorer_for("3") is None
    assert client.post("/rollback", json={"project": 3, "kind": "scorer", "version": "v1"}).json[
        "active_version"] == "v1"
    assert client.post("/rollback", json={"project": 3, "kind": "scorer", "version": "v9"}).status_code == 404
    assert client.post("/rollback", json={"project": 3, "kind": "nonsense"}).status_code == 400


def test_start_training_without_a_policy_refits_the_scorer(tmp_path):
    app = make_app(tmp_path)
    client = app.client
    _seed_labels(app.backend.quality_labels, "3")
    answer = client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 3}})
    assert answer.status_code == 200 and answer.json["status"] == "scorer refitted"
    assert answer.json["scorer"]["version"] == "v1" and answer.json["scorer"]["status"] == "promoted"
    assert client.get("/status").json["quality"]["projects"]["3"]["active_scorer"] == "v1"
    nothing = client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 4}})  # no labels
    assert nothing.status_code == 503 and "no scorer refit: " in nothing.json["error"]
    same = client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 3}})  # nothing new since v1
    assert same.status_code == 503 and "no new labels: the active v1 was fitted on these 400" in same.json["error"]
    assert [v["version"] for v in app.backend.scorers.scorer_versions("3")] == ["v0", "v1"]
    _seed_labels(app.backend.quality_labels, "3", 20, seed=1)
    assert client.post("/train", json={"project": 3}).json["scorer"]["version"] == "v2"
    with app.backend.scorers.registry.lock("project-3"):  # a refit under way (in this or another process)
        busy = client.post("/train", json={"project": 3})
    assert busy.status_code == 503 and "refit of the project's scorer is under way" in busy.json["error"]


def test_labels_that_come_in_during_a_refit_are_fitted_when_it_ends(tmp_path, monkeypatch):
    app = make_app(tmp_path, scorer_refit_every=50)
    scorers = app.backend.scorers
    _seed_labels(app.backend.quality_labels, "3")
    fit = project_scorer.refit
    fitted_on: list[int] = []

    def labels_come_in_meanwhile(prior, features, *args, **kwargs):
        fitted_on.append(len(features))
        if len(fitted_on) == 1:  # 60 more labels, whose own refit finds this one under way
            _seed_labels(app.backend.quality_labels, "3", 60, seed=1)
            assert scorers.after_new_labels("3") == {
                "status": "skipped", "reason": "a refit of the project's scorer is under way already"}
        return fit(prior, features, *args, **kwargs)

    monkeypatch.setattr(project_scorer, "refit", labels_come_in_meanwhile)
    assert scorers.after_new_labels("3")["version"] == "v2"  # no label came after the 60: v1's refit fitted them
    assert fitted_on == [400, 460]
    assert [v["labels"] for v in scorers.scorer_versions("3")] == [0, 400, 460]
    assert scorers.scorer_versions("3")[-1]["trigger"] == "60 new labels came in during a refit"
    assert app.client.get("/status").json["quality"]["projects"]["3"]["new_labels"] == 0


def test_a_rollback_while_a_refit_runs_is_not_undone_by_it(tmp_path, monkeypatch):
    app = make_app(tmp_path)
    client, backend = app.client, app.backend
    _seed_labels(backend.quality_labels, "3")
    assert client.post("/train", json={"project": 3}).json["scorer"]["status"] == "promoted"
    fit = project_scorer.refit

    def rolled_back_meanwhile(*args, **kwargs):
        fitted = fit(*args, **kwargs)  # gated against v1, which it matches: it would be promoted
        assert client.post("/rollback", json={"project": 3, "kind": "scorer", "version": "v0"}).status_code == 200
        return fitted

    monkeypatch.setattr(project_scorer, "refit", rolled_back_meanwhile)
    _seed_labels(backend.quality_labels, "3", 20, seed=1)
    answer = client.post("/train", json={"project": 3}).json["scorer"]
    assert answer["version"] == "v2" and answer["status"] == "rejected"
    assert client.get("/status").json["quality"]["projects"]["3"]["active_scorer"] == "v0"
    assert backend.scorers.registry.version("project-3", "v2")["reason"] == "v0 became active while v2 was made"


@pytest.mark.parametrize("damage", ["garbage", '{"scale": NaN, "shift": 0, "weights": []}',
                                    '{"scale": 1, "shift": 0, "weights": [0.5, 0.1]}', '{"shift": 0}', None])
def test_a_damaged_active_scorer_is_not_served_says_why_and_is_refitted_over(tmp_path, image_server, damage):
    """A lost or damaged correction.json of the active version: the shipped scorer answers (not the tool's
    fallback, never a 500), /status and /versions say why, and Start training refits over the shipped scorer."""
    app = make_app(tmp_path)
    client, backend = app.client, app.backend
    _seed_labels(backend.quality_labels, "3")
    assert client.post("/train", json={"project": 3}).json["scorer"]["status"] == "promoted"
    correction = backend.scorers.registry.version_dir("project-3", "v1") / "correction.json"
    correction.unlink() if damage is None else correction.write_text(damage)
    fresh = App(backend.settings)  # a restart (the same database): nothing of v1 loaded before the damage
    region = refined(fresh.client, image_server, 7)
    assert region["score"] == pytest.approx(OfflineScorer()(image_server.image, decode(region)), abs=1e-3)
    status = fresh.client.get("/status").json["quality"]["projects"]["3"]
    assert status["active_scorer"] == "v1" and status["served"] == "v0"
    assert "correction.json does not load" in status["unservable"] and str(tmp_path) not in status["unservable"]
    [_, v1] = fresh.client.get("/versions").json["scorers"]["3"]
    assert v1["unservable"] == status["unservable"]
    assert fresh.client.get("/", headers={"Accept": "text/html"}).status_code == 200
    again = fresh.client.post("/train", json={"project": 3})  # gated against the shipped scorer, which serves
    assert again.status_code == 200 and again.json["scorer"]["version"] == "v2", again.json
    assert again.json["scorer"]["gate"]["active"] == app.backend.scorers.registry.version("project-3", "v1")[
        "gate"]["active"]  # the same held-out labels, the same shipped scorer: the same figures as v1's gate


def test_labels_and_versions_of_other_features_are_not_used(tmp_path, monkeypatch):
    from backend import quality_labels

    app = make_app(tmp_path)
    backend = app.backend
    _seed_labels(backend.quality_labels, "3")
    assert backend.scorers.refit("3", "test")["status"] == "promoted"
    monkeypatch.setattr(quality_labels, "FEATURES_VERSION", "older")
    _seed_labels(backend.quality_labels, "4", count=3)
    monkeypatch.undo()
    assert backend.quality_labels.counts("4") == {"labels": 0, "by_source": {"prediction": 0, "interactive": 0},
                                                  "stale": 3}
    assert backend.quality_labels.training_set("4")[1].size == 0

    monkeypatch.setattr("backend.project_scorers.FEATURES_VERSION", "newer")  # the features changed since v1
    fresh = make_app(tmp_path / "unused")
    fresh.backend.scorers.registry = backend.scorers.registry
    assert fresh.backend.scorers.scorer_for("3") is None
    status = fresh.backend.scorers.status("3")["projects"]["3"]
    assert status["active_scorer"] == "v1" and status["served"] == "v0" and "fitted on features" in status["unservable"]


def test_labels_of_work_acknowledged_before_a_kill_9_are_made_once_after_the_restart(tmp_path, image_server):
    import requests

    from tests.test_durability import killed_with_work_owed_then_restarted

    count = 6
    config = brush_annotation(np.ones((2, 2)))["project"]["label_config"]

    def edited_predictions(url: str) -> list[dict]:
        events = []
        for task_id in range(1, count + 1):
            task = {"id": task_id, "data": {"image": f"{image_server.url}/object.png"},
                    "predictions": [{"result": [rectangle_around(image_server.mask, pad=20)]}]}
            region = requests.post(f"{url}/predict", json={"tasks": [task], "project": "3.1", "label_config": config},
                                   timeout=60).json()["results"][0]["result"][0]
            edited = decode(region)
            edited[100:140, 20:60] = True
            events.append(annotation(image_server, [(region["id"], "Object", edited)], annotation_id=900 + task_id,
                                     task_id=task_id))
        return events

    with killed_with_work_owed_then_restarted(tmp_path, edited_predictions) as status:
        assert status()["quality"]["projects"]["3"]["labels"] == count  # every acknowledged label, once


def test_a_tasks_predicted_regions_are_bounded_in_rows_and_in_the_pixels_read(tmp_path):
    """Each Retrieve predictions adds regions: a task keeps its newest KEPT_PER_TASK, and an annotation's labels
    read the newest ones only as far as the pixel budget goes (the request budget, SEGAGENT_MAX_MASK_PIXELS)."""
    store = PredictedRegions(tmp_path / "predicted_regions.sqlite3")
    mask = np.zeros((10, 20), bool)
    mask[2:5, 3:9] = True
    for n in range(KEPT_PER_TASK + 6):
        store.record("3", 7, "v", [(f"r{n}", "Cat", mask, 0.5)])
    kept = store.for_task("3", 7, 10**9)
    assert [r.region_id for r in kept] == [f"r{n}" for n in range(KEPT_PER_TASK + 5, 5, -1)]
    store.record("3", 8, "v", [("other task", "Cat", mask, 0.5)])
    assert len(store.for_task("3", 7, 10**9)) == KEPT_PER_TASK  # another task's record prunes nothing here
    newest_three = [f"r{KEPT_PER_TASK + 5 - n}" for n in range(3)]
    assert [r.region_id for r in store.for_task("3", 7, 3 * mask.size + 1)] == newest_three
    assert store.for_task("3", 7, mask.size - 1) == []
