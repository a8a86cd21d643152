"""End to end with Label Studio 1.23: a backend behind basic auth. Label Studio makes the connected model's project
webhook with no headers; the backend gives it the Authorization header after /setup, so annotation events arrive
with nothing set by hand. Turned off (SEGAGENT_WEBHOOK_AUTH=false), the events are refused (401, with a log line that
says what is missing) until a user gives the webhook the header, as docs/deployment.md says; then they arrive."""
from __future__ import annotations

import base64

import pytest
import requests
from label_studio_sdk import LabelStudio

from tests.e2e.conftest import make_serve
from tests.e2e.test_label_studio import CONFIG
from tests.e2e.test_quality_labels import _brush
from tests.test_backend import _wait_for

pytestmark = pytest.mark.e2e
AUTH = ("segagent", "s3cret-pass")


def _events(backend: dict) -> dict:
    return requests.get(f"{backend['url']}/status", auth=AUTH, timeout=10).json()["webhook_events"]


def _connect(client: LabelStudio, backend: dict, title: str):
    """A project with the backend connected as a user connects it (Label Studio then makes the webhook)."""
    project = client.projects.create(title=title, label_config=CONFIG)
    client.ml.create(project=project.id, url=backend["url"], is_interactive=True, title="SegAgent",
                     auth_method="BASIC_AUTH", basic_auth_user=AUTH[0], basic_auth_pass=AUTH[1])
    [hook] = [h for h in client.webhooks.list(project=str(project.id)) if h.url.rstrip("/").endswith("/webhook")]
    return project, hook


def test_the_backend_gives_label_studio_s_webhook_its_basic_auth_header_when_connected(
        label_studio, tmp_path, image_server):
    data = tmp_path / "data"
    data.mkdir()
    with make_serve(data, BASIC_AUTH_USER=AUTH[0], BASIC_AUTH_PASS=AUTH[1]) as backend:
        client = LabelStudio(base_url=label_studio["url"], api_key=label_studio["token"])
        project, hook = _connect(client, backend, "basic auth, webhook set by the backend")
        token = base64.b64encode(":".join(AUTH).encode()).decode()
        assert _wait_for(lambda: (client.webhooks.get(id=hook.id).headers or {}).get("Authorization")
                         == f"Basic {token}", 60), backend["log"].read_text()[-2000:]
        client.projects.import_tasks(id=project.id, request=[{"data": {"image": f"{image_server.url}/object.png"}}])
        [task] = list(client.tasks.list(project=project.id))
        client.annotations.create(id=task.id, result=[_brush("first", image_server.mask)], was_cancelled=False)
        assert _wait_for(lambda: _events(backend).get("ANNOTATION_CREATED") == 1, 60), _events(backend)
        assert "refused, bad or missing basic auth" not in backend["log"].read_text()


def test_label_studio_s_webhook_reaches_a_backend_behind_basic_auth_once_given_the_header_by_hand(
        label_studio, tmp_path, image_server):
    data = tmp_path / "data"
    data.mkdir()
    with make_serve(data, BASIC_AUTH_USER=AUTH[0], BASIC_AUTH_PASS=AUTH[1], SEGAGENT_WEBHOOK_AUTH="false") as backend:
        client = LabelStudio(base_url=label_studio["url"], api_key=label_studio["token"])
        project, hook = _connect(client, backend, "basic auth, webhook set by hand")
        assert not hook.headers  # as Label Studio makes it
        client.projects.import_tasks(id=project.id, request=[{"data": {"image": f"{image_server.url}/object.png"}}])
        [task] = list(client.tasks.list(project=project.id))

        client.annotations.create(id=task.id, result=[_brush("first", image_server.mask)], was_cancelled=False)
        assert _wait_for(lambda: "add the header Authorization: Basic" in backend["log"].read_text(), 60)
        assert "ANNOTATION_CREATED" not in _events(backend)

        token = base64.b64encode(":".join(AUTH).encode()).decode()
        client.webhooks.update(id=hook.id, headers={"Authorization": f"Basic {token}"})
        client.annotations.create(id=task.id, result=[_brush("second", image_server.mask)], was_cancelled=False)
        assert _wait_for(lambda: _events(backend).get("ANNOTATION_CREATED") == 1, 60), _events(backend)
