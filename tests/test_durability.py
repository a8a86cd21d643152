"""Acknowledged work is never lost: the derived work of an annotation (quality, write-back, trajectories)
is owed in the store from the moment the webhook is answered, resumed at the next start, and queued
again when a replayed annotation still owes it. Proven with a real server killed with SIGKILL."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import requests

from model.settings import Settings
from tests.apps import App, close_all
from tests.synthetic import free_port
from tests.test_backend import _annotation_for, _wait_for

ROOT = Path(__file__).resolve().parents[1]


def _event_for_missing_image(image_server, annotation_id: int) -> tuple[dict, Path]:
    """An annotation whose image is not served yet (its work fails), and where to put the image."""
    name = f"later-{uuid.uuid4().hex[:8]}.png"
    payload = _annotation_for(image_server, annotation_id=annotation_id)
    payload["task"]["data"]["image"] = f"{image_server.url}/{name}"
    return payload, image_server.folder / name


def _settings(data: Path) -> Settings:
    return Settings(data_dir=data, banned_subnets="169.254.0.0/16")


def test_work_that_failed_is_owed_and_a_replay_does_it(tmp_path, image_server):
    client = App(_settings(tmp_path)).client
    payload, image = _event_for_missing_image(image_server, 51)
    assert client.post("/webhook", json=payload).json["status"] == "ok"
    owed = lambda: client.get("/status").json["derived_work"]  # noqa: E731
    assert _wait_for(lambda: client.get("/status").json["background_jobs"]["annotation"]["failed"] == 1)
    assert owed()["pending"] == 1 and client.get("/status").json["trajectories"]["total"] == 0

    shutil.copy(image_server.folder / "object.png", image)
    assert client.post("/webhook", json=payload).json["status"] == "unchanged"  # a replay: kept already...
    assert _wait_for(lambda: client.get("/status").json["trajectories"]["total"] == 1)  # ...and its work done
    assert owed()["pending"] == 0


def test_work_owed_at_a_stop_is_resumed_at_the_next_start(tmp_path, image_server):
    client = App(_settings(tmp_path)).client
    payload, image = _event_for_missing_image(image_server, 52)
    client.post("/webhook", json=payload)
    assert _wait_for(lambda: client.get("/status").json["background_jobs"]["annotation"]["failed"] == 1)
    close_all()

    shutil.copy(image_server.folder / "object.png", image)
    restarted = App(_settings(tmp_path)).client
    assert _wait_for(lambda: restarted.get("/status").json["trajectories"]["total"] == 1)
    assert restarted.get("/status").json["derived_work"] == {"pending": 0, "failed": 0, "max_attempts": 3}


def _fails_once_more(client) -> bool:
    return _wait_for(lambda: client.get("/status").json["background_jobs"]["annotation"]["failed"] == 1)


def test_work_that_keeps_failing_is_given_up_after_three_attempts(tmp_path, image_server):
    payload, _ = _event_for_missing_image(image_server, 53)
    client = App(_settings(tmp_path)).client
    client.post("/webhook", json=payload)
    assert _fails_once_more(client)
    for _ in range(2):  # two restarts resume it: the second and third failures
        close_all()
        assert _fails_once_more(App(_settings(tmp_path)).client)
    close_all()
    client = App(_settings(tmp_path)).client  # the fourth start gives it up
    assert client.get("/status").json["derived_work"] == {"pending": 0, "failed": 1, "max_attempts": 3}
    assert client.get("/status").json["background_jobs"]["annotation"]["pending"] == 0


def _start(data: Path, port: int, log: Path) -> subprocess.Popen:
    env = {**os.environ, "SEGAGENT_DATA_DIR": str(data), "SEGAGENT_BANNED_SUBNETS": "169.254.0.0/16"}
    server = subprocess.Popen([sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", "1",
                               "--threads", "4", "backend.wsgi:app"], cwd=ROOT, env=env,
                              stdout=log.open("a"), stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            if requests.get(f"http://127.0.0.1:{port}/health", timeout=2).ok:
                return server
        except requests.RequestException:
            time.sleep(0.3)
    server.kill()
    raise RuntimeError(f"the backend did not start:\n{log.read_text()[-2000:]}")


@contextmanager
def killed_with_work_owed_then_restarted(data: Path, make_events: Callable[[str], list[dict]]
                                         ) -> Iterator[Callable[[], dict]]:
    """A real backend on `data` sends the webhook events `make_events(url)` makes and is killed with SIGKILL while
    the derived work they owe is pending; started again on the same folder, it finishes that work, and the events
    sent once more find it done. Yields the restarted backend's /status (a function) for the caller's checks."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = _start(data, port, data / "server.log")
    try:
        events = make_events(url)
        for event in events:
            assert requests.post(f"{url}/webhook", json=event, timeout=30).json()["status"] == "ok"
        owed_at_kill = requests.get(f"{url}/status", timeout=10).json()["derived_work"]["pending"]
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=20)
    assert owed_at_kill > 0  # the kill came while work was owed: the point of the test

    server = _start(data, port, data / "server.log")
    try:
        status = lambda: requests.get(f"{url}/status", timeout=10).json()  # noqa: E731
        assert _wait_for(lambda: status()["derived_work"]["pending"] == 0, timeout=120), status()
        for event in events:  # replays find the work done: nothing queued
            assert requests.post(f"{url}/webhook", json=event, timeout=30).json()["status"] == "unchanged"
        yield status
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=20)


def test_a_burst_acknowledged_before_a_kill_9_is_learned_after_the_restart(tmp_path, image_server):
    count = 20
    events = [_annotation_for(image_server, annotation_id=i, task_id=i) for i in range(1000, 1000 + count)]
    with killed_with_work_owed_then_restarted(tmp_path, lambda url: events) as status:
        assert status()["trajectories"]["scratch"] == count  # every annotation once, none twice
        assert status()["background_jobs"]["annotation"]["pending"] == 0
