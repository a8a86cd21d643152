"""With basic auth on, /setup has the backend give Label Studio's webhook to it the Authorization header (Label Studio
makes it with none): only that webhook, only through the project's own Label Studio, looked at each /setup and
written only where it lacks the header, a failure logged and shown, never when turned off. Against a stand-in of
Label Studio's webhook API on loopback; tests/e2e/test_basic_auth_webhook.py does the same against Label Studio
1.23.2."""
from __future__ import annotations

import base64
import logging
import re

from model.settings import Settings
from tests.apps import App
from tests.labelstudio_projects import CONFIG, LabelStudioProject

AUTH = ("ls", "s3cret")
HEADER = "Basic " + base64.b64encode(b"ls:s3cret").decode()
OURS = "http://localhost/webhook"  # the Flask test client calls the backend at http://localhost/


def _app(tmp_path, label_studio: LabelStudioProject | None = None, **overrides) -> App:
    where = {"label_studio_url": label_studio.url, "label_studio_api_key": "tok-123"} if label_studio else {}
    return App(Settings(data_dir=tmp_path, banned_subnets="169.254.0.0/16", basic_auth_user=AUTH[0],
                        basic_auth_pass=AUTH[1], **where, **overrides))


def _setup(app: App, project: str = "3", **body) -> None:
    answer = app.client.post("/setup", json={"project": f"{project}.1700000000", "schema": CONFIG, **body},
                             auth=AUTH)
    assert answer.status_code == 200, answer.text


def _drain(app: App) -> None:
    """Wait for the background work /setup started."""
    app.backend.webhook_auth._pool.submit(lambda: None).result(timeout=30)


def test_setup_gives_the_webhook_to_this_backend_the_header_and_leaves_the_others(tmp_path):
    hooks = [{"id": 7, "url": OURS + "/", "headers": {"X-Trace": "on"}},
             {"id": 8, "url": "http://other-service:9000/webhook", "headers": {}}]
    with LabelStudioProject(3, {}, webhooks=hooks) as label_studio:
        app = _app(tmp_path, label_studio)
        _setup(app)
        _drain(app)
        _setup(app)  # looked at again, not changed again
        _drain(app)
    assert app.client.get("/status?project=3", auth=AUTH).json["label_studio"]["webhook_auth"] == \
        f"given to the webhook to {OURS}"
    assert 'data-alert="webhook-auth"' not in app.client.get("/", headers={"Accept": "text/html"},
                                                             auth=AUTH).get_data(as_text=True)
    assert label_studio.webhook_edits == [(7, {"headers": {"X-Trace": "on", "Authorization": HEADER}})]
    assert hooks[1]["headers"] == {}
    assert set(label_studio.authorizations) == {"Token tok-123"}  # Label Studio's token, to Label Studio only
    assert len(label_studio.authorizations) == 3  # two reads, one change


def test_a_webhook_made_after_the_first_setup_gets_it_at_the_next(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="backend.webhook_auth")
    with LabelStudioProject(3, {}) as label_studio:
        app = _app(tmp_path, label_studio)
        _setup(app)  # Label Studio checks the URL with /setup before it makes the webhook
        _drain(app)
        assert "has no webhook to http://localhost/webhook yet" in caplog.text
        label_studio.webhooks.append({"id": 1, "url": OURS, "headers": {"Authorization": "Basic b2xkOnBhc3M="}})
        _setup(app)
        _drain(app)
        assert label_studio.webhooks[0]["headers"] == {"Authorization": HEADER}  # a stale password replaced
        label_studio.webhooks[0]["headers"] = {}  # deleted and made anew in Label Studio: no header again
        _setup(app)
        _drain(app)
    assert [edit for _, edit in label_studio.webhook_edits] == [{"headers": {"Authorization": HEADER}}] * 2


def test_a_refusing_label_studio_is_logged_setup_still_answers_and_the_next_setup_tries_again(tmp_path, caplog):
    with LabelStudioProject(3, {}, answer_every_call_with=403, webhooks=[{"id": 1, "url": OURS}]) as label_studio:
        app = _app(tmp_path, label_studio)
        _setup(app)
        _drain(app)
        assert "could not give Label Studio's webhook to http://localhost/webhook the basic auth header" in caplog.text
        assert "403" in caplog.text and "tok-123" not in caplog.text
        _setup(app)
        _drain(app)
    assert len(label_studio.authorizations) == 2  # tried at each /setup, nothing written
    assert "403" in app.client.get("/status?project=3", auth=AUTH).json["label_studio"]["webhook_auth"]
    page = app.client.get("/", headers={"Accept": "text/html"}, auth=AUTH).get_data(as_text=True)
    alert = re.search(r'<section class="project" id="project-3".*?<p class="alert" data-alert="webhook-auth">(.*?)</p>',
                      page, re.S)  # a project with no annotation yet is shown, with why none can come in
    assert alert and "403" in alert.group(1) and "tok-123" not in page
    assert label_studio.webhook_edits == []


def test_the_host_and_token_setup_sent_are_used_when_the_environment_names_no_label_studio(tmp_path):
    with LabelStudioProject(3, {}, webhooks=[{"id": 4, "url": OURS, "headers": {}}]) as label_studio:
        app = _app(tmp_path)
        _setup(app, hostname=label_studio.url, access_token="legacy-tok")
        _drain(app)
    assert label_studio.authorizations == ["Token legacy-tok"] * 2
    assert label_studio.webhooks[0]["headers"] == {"Authorization": HEADER}


def test_nothing_is_asked_when_turned_off_or_without_basic_auth(tmp_path):
    with LabelStudioProject(3, {}, webhooks=[{"id": 1, "url": OURS, "headers": {}}]) as label_studio:
        off = _app(tmp_path / "off", label_studio, webhook_auth=False)
        _setup(off)
        _drain(off)
        open_backend = App(Settings(data_dir=tmp_path / "open", label_studio_url=label_studio.url,
                                    label_studio_api_key="tok-123"))
        assert open_backend.client.post("/setup", json={"project": "3", "schema": CONFIG}).status_code == 200
        _drain(open_backend)
        assert open_backend.client.get("/status?project=3").json["label_studio"]["webhook_auth"].startswith("off")
    assert label_studio.authorizations == [] and label_studio.webhooks[0]["headers"] == {}



def test_an_unforeseen_failure_is_logged_and_shown_and_the_next_setup_tries_again(tmp_path, caplog, monkeypatch):
    with LabelStudioProject(3, {}, webhooks=[{"id": 1, "url": OURS, "headers": {}}]) as label_studio:
        app = _app(tmp_path, label_studio)
        connection = app.backend.connection

        def broken(project: str):
            raise RuntimeError("a bug")

        monkeypatch.setattr(connection, "for_project", broken)
        _setup(app)
        _drain(app)
        assert "giving Label Studio's webhook the basic auth header failed" in caplog.text
        monkeypatch.undo()  # /status asks the connection too
        assert "RuntimeError" in app.client.get("/status?project=3", auth=AUTH).json["label_studio"]["webhook_auth"]
        _setup(app)
        _drain(app)
    assert label_studio.webhooks[0]["headers"] == {"Authorization": HEADER}
