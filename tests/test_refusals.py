"""A refused request changes nothing, and a request that cannot be done is not answered as a success: a /setup with a
label config the backend cannot serve leaves the project's Label Studio host and token unremembered; Start Training
without a trainable policy is a 503 that says why (Label Studio 1.23 shows a non-2xx answer of /train and of the
ML backend's START_TRAINING webhook as the model's error; its project webhooks ignore the answer and never retry)."""
from __future__ import annotations

from model.settings import Settings
from tests.apps import App
from tests.labelstudio_projects import CONFIG

NO_POLICY = "no policy to fine-tune (no policy configured)"
NO_REFIT = "no scorer refit: the project has no quality labels yet"  # nor labels to refit the quality scorer on


def test_a_refused_setup_remembers_neither_the_host_nor_the_token(tmp_path):
    app = App(Settings(data_dir=tmp_path))
    blank = {"project": "5", "schema": "<View></View>", "hostname": "http://ls.example:8080",
             "access_token": "tok"}  # a new project's config: nothing to segment
    refused = app.client.post("/setup", json=blank)
    assert refused.status_code == 400 and "error" in refused.json
    assert app.backend.connection.for_project("5").pair == ("", "")
    assert not app.backend.configs.known("5")
    assert app.client.get("/status?project=5").json["label_studio"].items() >= {"url": None, "token": False}.items()
    accepted = app.client.post("/setup", json={**blank, "schema": CONFIG})
    assert accepted.status_code == 200
    assert app.backend.connection.for_project("5").pair == ("http://ls.example:8080", "tok")


def test_start_training_without_a_policy_is_an_error_that_says_why(tmp_path, caplog):
    client = App(Settings(data_dir=tmp_path)).client
    webhook = client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 3}})
    legacy = client.post("/train", json={"annotations": [], "project": "3.1"})
    for answer in (webhook, legacy):
        assert answer.status_code == 503 and answer.json == {"error": f"training is off: {NO_POLICY}; {NO_REFIT}"}
    assert "POST /train -> 503: training is off" in caplog.text
    training = client.get("/status").json["training"]
    assert training["state"] == "skipped" and training["last_job"]["reason"] == f"{NO_POLICY}; {NO_REFIT}"
