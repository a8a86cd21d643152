"""Nothing the backend shows or logs carries a password or a token: a Label Studio address with user:password@ (from
/setup or LABEL_STUDIO_URL), its token, a policy endpoint's user:password@, whether in /status, /health, /versions,
/quality, an error's answer or a log line; and the compose Redis takes a password that every service reads from
the environment."""
from __future__ import annotations

import io
import logging
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from backend.connection import redact, redact_logs
from model.settings import Settings
from tests.apps import App
from tests.labelstudio_projects import CONFIG, LabelStudioProject
from tests.synthetic import free_port

ROOT = Path(__file__).resolve().parent.parent
SECRETS = ("pa55word", "tok-s3cret", "ppa55")


@pytest.fixture
def root_log():
    """What the root logger's handlers write, through the filter wsgi.py and the worker install."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    root = logging.getLogger()
    root.addHandler(handler)
    level = root.level
    root.setLevel(logging.INFO)
    redact_logs()
    yield stream
    root.removeHandler(handler)
    root.setLevel(level)


def test_redact_removes_every_urls_userinfo_and_nothing_else():
    assert redact("at http://user:pa55word@ls:8080/api and https://u:p@ss@h/x?a=b@c") == \
        "at http://ls:8080/api and https://h/x?a=b@c"
    assert redact("mail me@example.com, see http://host/path@x") == "mail me@example.com, see http://host/path@x"


def test_no_password_or_token_in_anything_the_backend_shows_or_logs(tmp_path, root_log):
    closed_port = free_port()  # nothing listens there: the policy's build fails, with its URL in the error
    settings = Settings(data_dir=tmp_path, banned_subnets="169.254.0.0/16",
                        policy=f"http://puser:ppa55@127.0.0.1:{closed_port}/v1")
    with LabelStudioProject(3, {}, answer_every_call_with=401) as label_studio:
        address = label_studio.url.replace("http://", "http://admin:pa55word@")
        client = App(settings).client
        setup = client.post("/setup", json={"project": "3", "schema": CONFIG, "hostname": address,
                                            "access_token": "tok-s3cret"})
        assert setup.status_code == 200
        shown = client.get("/status?project=3").json["label_studio"]
        assert shown.items() >= {"url": label_studio.url, "token": True}.items()
        refused = client.post("/preannotate", json={"project": 3})  # Label Studio says 401 to the task list
        assert refused.status_code == 502 and label_studio.url in refused.json["error"]
        shown = [setup.text, refused.text] + [client.get(path).text for path in (
            "/status?project=3", "/status", "/health", "/versions", "/versions?project=3", "/quality?project=3",
            "/metrics")]
    assert "ppa55" not in client.get("/health").json["capabilities"]["policy"]["reason"]
    assert f"127.0.0.1:{closed_port}" in client.get("/health").json["capabilities"]["policy"]["reason"]
    logged = root_log.getvalue()
    assert "POST /preannotate -> 502" in logged and f"127.0.0.1:{closed_port}" in logged
    for secret in SECRETS:
        assert all(secret not in text for text in shown), secret
        assert secret not in logged, secret


def test_the_calls_still_carry_the_addresss_userinfo(tmp_path):
    """The address shown loses user:password@; the calls to Label Studio still send it (requests' basic auth)."""
    with LabelStudioProject(3, {}, answer_every_call_with=401) as label_studio:
        app = App(Settings(data_dir=tmp_path, label_studio_url=label_studio.url.replace("//", "//admin:pa55word@"),
                           label_studio_api_key="tok-s3cret"))
        assert app.client.post("/preannotate", json={"project": 3}).status_code == 502
    assert label_studio.authorizations == ["Basic YWRtaW46cGE1NXdvcmQ="]  # admin:pa55word
    assert app.backend.connection.for_project("3").url == label_studio.url


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker" / "docker-compose.yml").read_text())["services"]


def _environment(service: dict) -> dict[str, str]:
    environment = service.get("environment", {})
    return environment if isinstance(environment, dict) else dict(item.split("=", 1) for item in environment)


def test_the_compose_redis_requires_the_password_every_service_reads_from_the_environment():
    services = _compose()
    command = services["redis"]["command"]
    assert command[command.index("--requirepass") + 1].startswith("${REDIS_PASSWORD:?")
    url = "redis://:${REDIS_PASSWORD}@redis:6379/0"
    users = {name for name, service in services.items() if "redis" in service.get("depends_on", [])}
    assert users == {"backend", "worker", "trainer", "policy-trainer"}
    read = {name: _environment(services[name]).get("RQ_REDIS_URL" if name == "policy-trainer" else "REDIS_URL")
            for name in users}  # `rq worker` reads RQ_REDIS_URL
    assert read == dict.fromkeys(users, url)
    assert not any("redis://" in str(part) for part in services["policy-trainer"]["command"])  # not in `ps`


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="Debian's docker-compose is not installed")
def test_compose_refuses_to_start_without_a_redis_password():
    environment = {name: value for name, value in os.environ.items() if name != "REDIS_PASSWORD"}
    run = lambda env: subprocess.run(  # noqa: E731
        ["docker-compose", "-f", str(ROOT / "docker" / "docker-compose.yml"), "config"], capture_output=True,
        text=True, env={**env, "BASIC_AUTH_PASS": "pw", "POSTGRES_PASSWORD": "p0stgres"}, timeout=60)
    without = run(environment)
    assert without.returncode != 0 and "REDIS_PASSWORD" in without.stderr
    configured = yaml.safe_load(run({**environment, "REDIS_PASSWORD": "r3dis"}).stdout)["services"]
    assert configured["worker"]["environment"]["REDIS_URL"] == "redis://:r3dis@redis:6379/0"
    assert configured["redis"]["command"][-2:] == ["--requirepass", "r3dis"]


@pytest.mark.parametrize("space", [" ", "\t"])
def test_an_address_whose_password_has_a_space_is_refused_not_shown(tmp_path, space):
    """redact() stops at whitespace, so an address with a space in its password would be shown whole: a URL has
    none (RFC 3986), so /setup ignores such a hostname and LABEL_STUDIO_URL or SEGAGENT_POLICY refuse it."""
    client = App(Settings(data_dir=tmp_path)).client
    hostname = f"http://lsuser:top{space}pa55word@127.0.0.1:1"
    assert client.post("/setup", json={"project": "3", "hostname": hostname, "access_token": "tok"}).status_code == 200
    assert client.get("/status?project=3").json["label_studio"].items() >= {"url": None, "token": False}.items()
    for text in (client.get("/status?project=3").text, client.get("/", headers={"Accept": "text/html"}).text):
        assert "pa55word" not in text
    for name in ("LABEL_STUDIO_URL", "SEGAGENT_POLICY"):
        with pytest.raises(ValidationError, match="percent-encode"):
            Settings(data_dir=tmp_path, **{name: hostname})


@pytest.mark.parametrize("token, hinted", [("0123abcd", True), ("head.body.signature", False)])
def test_a_refused_legacy_token_says_what_to_do(tmp_path, token, hinted):
    """Label Studio 1.23 organisations refuse legacy tokens by default, the kind its connection sends to /setup:
    a 401 with one says so; a personal access token refused is not that case."""
    with LabelStudioProject(3, {}, answer_every_call_with=401) as label_studio:
        app = App(Settings(data_dir=tmp_path, label_studio_url=label_studio.url, label_studio_api_key=token))
        answer = app.client.post("/preannotate", json={"project": 3})
    assert answer.status_code == 502 and "401" in answer.json["error"]
    assert ("set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY to a personal access token" in answer.json["error"]) is hinted
