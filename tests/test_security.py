"""What outside attackers tried: stealing Label Studio's token through /setup, and getting past or around
basic auth. Label Studio and the attacker are web hosts on 127.0.0.1 that record every request."""
from __future__ import annotations

import atexit
import base64
import importlib
import itertools
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from backend.connection import LabelStudioConnection
from model.settings import Settings
from tests.apps import App
from tests.test_backend import CONFIG, _wait_for, brush_annotation, keypoint

ROOT = Path(__file__).resolve().parent.parent
LEGACY_TOKEN = "0123456789abcdef"
PERSONAL_TOKEN = "header.payload.signature"  # a JWT refresh token: traded at /api/token/refresh
ANNOTATION_IDS = itertools.count(100)


class Host:
    """A web host on 127.0.0.1 that records each request as (method, path, Authorization, body): GET answers an
    image, the token refresh an access token, anything else {}."""

    def __init__(self, image: bytes):
        requests: list[tuple[str, str, str | None, bytes]] = []

        class Handler(BaseHTTPRequestHandler):
            def _record_and_answer(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                requests.append((self.command, self.path, self.headers.get("Authorization"), body))
                if self.command == "GET":
                    payload, kind = image, "image/png"
                elif self.path == "/api/token/refresh":
                    payload, kind = json.dumps({"access": "access-jwt"}).encode(), "application/json"
                else:
                    payload, kind = b"{}", "application/json"
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PATCH = _record_and_answer

            def log_message(self, *args) -> None:
                pass

        self.requests = requests
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Host:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def saw_a_credential(self) -> bool:
        tokens = (LEGACY_TOKEN.encode(), PERSONAL_TOKEN.encode())
        return any(auth or method == "POST" or any(token in body for token in tokens)
                   for method, _, auth, body in self.requests)


@pytest.fixture
def hosts(image_server):
    image = (image_server.folder / "object.png").read_bytes()
    with Host(image) as label_studio, Host(image) as attacker:
        yield label_studio, attacker


def make_app(tmp_path: Path, **overrides) -> App:
    return App(Settings(data_dir=tmp_path, banned_subnets="169.254.0.0/16", **overrides))


def setup(client, project: str, hostname: str, token: str | None = None) -> None:
    body = {"project": project, "schema": CONFIG, "hostname": hostname}
    if token is not None:
        body["access_token"] = token
    assert client.post("/setup", json=body).status_code == 200


def use_label_studio(app: App, project: str, mask) -> None:
    """All that reaches Label Studio for a project: an upload and a cloud URI fetched, an annotation's image
    fetched and its quality pushed back (in the background, waited for)."""
    for reference in (f"/data/upload/{project}/object.png", "s3://bucket/object.png"):
        app.client.post("/predict", json={"tasks": [{"id": 7, "data": {"image": reference}}], "label_config": CONFIG,
                                          "project": project, "params": {"context": {"result": [keypoint(50, 50)]}}})
    jobs = lambda: app.backend.dispatcher.status()["annotation"]  # noqa: E731
    finished = jobs()["done"] + jobs()["failed"] + 1
    annotation = brush_annotation(mask, annotation_id=next(ANNOTATION_IDS))
    annotation["project"]["id"] = int(project)
    annotation["task"]["data"]["image"] = f"/data/upload/{project}/object.png"
    assert app.client.post("/webhook", json=annotation).status_code == 200
    assert _wait_for(lambda: jobs()["pending"] == 0 and jobs()["done"] + jobs()["failed"] == finished, timeout=20)


def header_sent(token: str) -> str:
    return f"Token {token}" if token == LEGACY_TOKEN else "Bearer access-jwt"


# ---------------------------------------------------------------- token theft through /setup

@pytest.mark.parametrize("token", [LEGACY_TOKEN, PERSONAL_TOKEN])
@pytest.mark.parametrize("project", ["1", "2"])
def test_a_setup_naming_another_host_never_gets_the_token(tmp_path, hosts, image_server, token, project):
    label_studio, attacker = hosts
    app = make_app(tmp_path)
    setup(app.client, "1", label_studio.url, token)
    use_label_studio(app, "1", image_server.mask)
    assert ("/data/upload/1/object.png", header_sent(token)) in {(p, a) for _, p, a, _ in label_studio.requests}

    setup(app.client, project, attacker.url)  # no token: it must get none, nor project 1's
    for used in ("1", "2"):
        use_label_studio(app, used, image_server.mask)
    assert not attacker.saw_a_credential(), attacker.requests
    assert app.backend.connection.for_project("1").pair == \
        ((attacker.url, "") if project == "1" else (label_studio.url, token))
    assert app.backend.connection.for_project("2").pair == ((attacker.url, "") if project == "2" else ("", ""))


def test_the_environments_label_studio_cannot_be_changed_by_setup(tmp_path, hosts, image_server):
    label_studio, attacker = hosts
    app = make_app(tmp_path, label_studio_url=label_studio.url, label_studio_api_key=LEGACY_TOKEN)
    setup(app.client, "1", attacker.url)
    setup(app.client, "2", attacker.url, "attackers-own-token")
    for project in ("1", "2"):
        use_label_studio(app, project, image_server.mask)
        assert app.backend.connection.for_project(project).pair == (label_studio.url, LEGACY_TOKEN)
    assert attacker.requests == []
    assert {auth for _, _, auth, _ in label_studio.requests} == {f"Token {LEGACY_TOKEN}"}
    assert app.client.get("/status").json["label_studio"].items() >= {"url": label_studio.url, "token": True}.items()


def test_an_environment_key_without_its_url_is_never_sent(tmp_path, hosts, image_server, caplog):
    label_studio, attacker = hosts
    with caplog.at_level(logging.WARNING, logger="backend.connection"):
        app = make_app(tmp_path, label_studio_api_key=LEGACY_TOKEN)
    assert "LABEL_STUDIO_API_KEY is unused until LABEL_STUDIO_URL is set" in caplog.text
    setup(app.client, "1", attacker.url)
    use_label_studio(app, "1", image_server.mask)
    assert attacker.requests and not attacker.saw_a_credential()
    setup(app.client, "2", label_studio.url, "its-own-token")  # a pair from /setup is used as it came
    assert app.backend.connection.for_project("2").pair == (label_studio.url, "its-own-token")


def test_each_project_keeps_the_pair_its_setup_sent(tmp_path):
    connection = LabelStudioConnection(Settings(data_dir=tmp_path))
    connection.remember_setup("1", "http://ls.example:8080/", "tok")
    connection.remember_setup("2", "http://other.example", None)
    connection.remember_setup("3", None, "a-token-without-a-host")
    for bad in ("ftp://ls.example", "http://", "http://[::1", "http://ls.example:99999", "ls.example"):
        connection.remember_setup("4", bad, "tok")
    assert connection.for_project("1").pair == ("http://ls.example:8080", "tok")
    assert connection.for_project("2").pair == ("http://other.example", "")
    assert connection.for_project("3").pair == connection.for_project("4").pair == ("", "")
    assert connection.for_project("1").owns("http://ls.example:8080/data/upload/1/x.png")
    assert not connection.for_project("1").owns("http://ls.example:8081/data/upload/1/x.png")


def test_half_the_credentials_refuse_to_start(monkeypatch):
    for name in ("BASIC_AUTH_USER", "BASIC_AUTH_PASS"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValueError, match="BASIC_AUTH_USER and BASIC_AUTH_PASS"):
        Settings(basic_auth_user="x")
    with pytest.raises(ValueError, match="BASIC_AUTH_USER and BASIC_AUTH_PASS"):
        Settings(basic_auth_pass="x")


def basic(credentials: bytes) -> dict:
    return {"Authorization": f"Basic {base64.b64encode(credentials).decode()}"}


@pytest.mark.parametrize("headers", [
    basic("é:ü".encode()), basic("é:ü".encode("latin-1")), basic("ls:s3cret\u00e9".encode()), basic(b"ls"),
    basic(b"\xff\xfe:\x80"), {"Authorization": "Basic !!!"}, {"Authorization": "Basic"},
    {"Authorization": "Bearer s3cret"}, {"Authorization": 'Digest username="ls"'}, {},
], ids=["utf8", "latin1", "close", "no-colon", "not-utf8", "not-base64", "empty", "bearer", "digest", "none"])
def test_credentials_that_do_not_match_get_401(tmp_path, headers):
    client = make_app(tmp_path, basic_auth_user="ls", basic_auth_pass="s3cret").client
    response = client.get("/status", headers=headers)
    assert response.status_code == 401 and response.headers["WWW-Authenticate"].startswith("Basic")


def test_non_ascii_credentials_are_compared_as_utf8(tmp_path):
    client = make_app(tmp_path, basic_auth_user="é", basic_auth_pass="ü").client
    assert client.get("/status", headers=basic("é:ü".encode())).status_code == 200
    assert client.get("/status", headers=basic("é:u".encode())).status_code == 401


def test_a_raw_non_ascii_header_gets_401(tmp_path):
    client = make_app(tmp_path, basic_auth_user="ls", basic_auth_pass="s3cret").client
    assert client.get("/status", headers={"Authorization": "Basic é:ü"}).status_code == 401


@pytest.fixture
def wsgi(monkeypatch, tmp_path):
    """backend.wsgi imported afresh, as gunicorn loads it: on the Makefile's default HOST, without basic auth."""
    monkeypatch.setenv("SEGAGENT_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("HOST", "0.0.0.0")
    for name in ("BASIC_AUTH_USER", "BASIC_AUTH_PASS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delitem(sys.modules, "backend.wsgi", raising=False)
    module = importlib.import_module("backend.wsgi")
    yield module
    atexit.unregister(module.backend.close)
    module.backend.close()


def test_listening_beyond_loopback_without_auth_warns(wsgi, tmp_path, caplog):
    assert "0.0.0.0 without basic auth" in " ".join(r.getMessage() for r in caplog.get_records("setup"))
    open_settings = Settings(data_dir=tmp_path)
    for host in ("0.0.0.0", "::", "10.1.2.3", "backend.example"):
        caplog.clear()
        wsgi.warn_if_exposed(host, open_settings)
        assert [r.levelno for r in caplog.records] == [logging.WARNING] and "BASIC_AUTH_USER" in caplog.text, host
    caplog.clear()
    for host in ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"):
        wsgi.warn_if_exposed(host, open_settings)
    wsgi.warn_if_exposed("0.0.0.0", Settings(data_dir=tmp_path, basic_auth_user="u", basic_auth_pass="p"))
    assert caplog.records == []


def test_compose_turns_basic_auth_on():
    text = (ROOT / "docker" / "docker-compose.yml").read_text()
    backend_env = yaml.safe_load(text)["services"]["backend"]["environment"]
    assert backend_env["BASIC_AUTH_USER"] == "${BASIC_AUTH_USER:-segagent}"
    assert backend_env["BASIC_AUTH_PASS"].startswith("${BASIC_AUTH_PASS:?")
    assert '"Use basic auth"' in text  # how to give Label Studio's model connection the same credentials
    if shutil.which("docker-compose") is None:
        return
    command = ["docker-compose", "-f", str(ROOT / "docker" / "docker-compose.yml"), "config"]
    environment = {name: value for name, value in os.environ.items() if not name.startswith("BASIC_AUTH_")}
    environment["REDIS_PASSWORD"] = "r3dis"  # required too (tests/test_secrets.py)
    environment["POSTGRES_PASSWORD"] = "p0stgres"  # and this one (the postgres service)
    refused = subprocess.run(command, capture_output=True, text=True, env=environment)
    assert refused.returncode != 0 and "set BASIC_AUTH_PASS" in refused.stderr
    accepted = subprocess.run(command, capture_output=True, text=True, env={**environment, "BASIC_AUTH_PASS": "pw"})
    assert accepted.returncode == 0 and "BASIC_AUTH_PASS: pw" in accepted.stdout
