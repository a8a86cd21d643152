"""Webhooks out of order and a full disk: an annotation version older than the one kept changes nothing; with
the data folder full (a real one: a small tmpfs mounted as the data folder, filled with a ballast file), what
cannot be kept is refused with 507 while clicks are still answered, and the work owed by annotations
acknowledged before resumes once space returns, without a restart."""
from __future__ import annotations

import subprocess
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from backend import ingest
from model.settings import Settings
from tests.apps import App, close_all
from tests.test_backend import _annotation_for, _wait_for, keypoint, make_app, predict


@pytest.mark.parametrize("newer, older", [
    ("2026-01-02T00:00:00.5Z", "2026-01-02T00:00:00Z"),  # as texts, the older sorts after the newer
    ("2026-01-01T23:30:00Z", "2026-01-02T01:00:00+02:00"),  # another time zone
    ("2026-01-02T00:00:00.000001", "2026-01-02T00:00:00"),
])
def test_an_older_version_arriving_late_changes_nothing(tmp_path, image_server, newer, older):
    app = make_app(tmp_path)
    mask = image_server.mask
    moved = np.roll(mask, 5, axis=1)
    assert app.client.post("/webhook", json=_annotation_for(image_server, 31, newer, mask=moved)).json["status"] == "ok"
    late = _annotation_for(image_server, 31, older, mask=mask)
    late["action"] = "ANNOTATION_UPDATED"
    assert app.client.post("/webhook", json=late).json["status"] == "unchanged"
    [kept] = app.backend.annotations.regions(31)
    assert (kept["mask"] == moved).all()
    assert _wait_for(lambda: app.client.get("/status").json["derived_work"]["pending"] == 0)
    records = list(app.backend.trajectories.records())
    assert records and all((record.target == moved).all() for record in records)


class GatedImages:
    """Serves the image server's folder once `opened` is set: holds the annotation's work at its image fetch."""

    def __init__(self, folder):
        self.opened = threading.Event()
        gate = self.opened

        class Handler(SimpleHTTPRequestHandler):
            def do_GET(self):
                gate.wait(30)
                super().do_GET()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(folder)))
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.opened.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def small_disk(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode:
        pytest.skip(f"a tmpfs cannot be mounted here: {mounted.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        close_all()  # the backend's files, before the folder goes
        subprocess.run(["umount", "-l", str(folder)], check=True)


def _fill(folder):
    ballast = folder / "ballast"
    with ballast.open("wb") as out:
        try:
            while True:
                out.write(b"\0" * 65536)
                out.flush()
        except OSError:
            pass
    return ballast


def test_a_full_disk_refuses_what_it_cannot_keep_answers_clicks_and_resumes_owed_work(small_disk, image_server,
                                                                                     monkeypatch):
    monkeypatch.setattr(ingest, "SPACE_RETRY_FIRST", 0.2)
    gated = GatedImages(image_server.folder)
    try:
        app = App(Settings(data_dir=small_disk, banned_subnets="169.254.0.0/16"))
        client = app.client
        acknowledged = _annotation_for(image_server, 61)
        acknowledged["task"]["data"]["image"] = f"{gated.url}/object.png"
        assert client.post("/webhook", json=acknowledged).json["status"] == "ok"  # its work waits for the image

        ballast = _fill(small_disk)
        refused = client.post("/webhook", json=_annotation_for(image_server, 62))
        assert refused.status_code == 507 and "full" in refused.json["error"], refused.json
        click = predict(client, f"{image_server.url}/object.png", {"result": [keypoint(50, 50)]})
        assert click.status_code == 200 and click.json["results"][0]["result"], click.json

        gated.opened.set()  # the acknowledged annotation's work now fails for lack of space...
        jobs = lambda: client.get("/status").json["background_jobs"]["annotation"]  # noqa: E731
        assert _wait_for(lambda: jobs()["failed"] >= 1), jobs()
        assert client.get("/status").json["derived_work"]["pending"] == 1

        ballast.unlink()  # ...and is done once space returns
        status = lambda: client.get("/status").json  # noqa: E731
        assert _wait_for(lambda: status()["derived_work"]["pending"] == 0, timeout=30), status()["derived_work"]
        assert status()["trajectories"]["total"] >= 1
        assert client.post("/webhook", json=_annotation_for(image_server, 62)).json["status"] == "ok"
    finally:
        gated.close()


def test_a_full_disk_is_a_507_whichever_store_cannot_write(small_disk):
    """Not only the annotation store: queueing a pre-annotation on a full data folder is refused with 507 and
    says why, and the backend answers again once there is room."""
    app = App(Settings(data_dir=small_disk, banned_subnets="169.254.0.0/16", label_studio_url="http://127.0.0.1:9",
                       label_studio_api_key="key"))
    ballast = _fill(small_disk)
    refused = app.client.post("/preannotate", json={"project": 3, "tasks": list(range(1, 2000))})
    assert refused.status_code == 507 and "data folder is full" in refused.json["error"], refused.json
    assert app.client.get("/health").status_code == 200
    ballast.unlink()
    assert app.client.post("/preannotate", json={"project": 3, "tasks": [1]}).status_code == 202
