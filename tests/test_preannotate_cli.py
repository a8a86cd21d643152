"""`python -m model preannotate` against a real backend on loopback (and a stand-in of Label Studio's API): it says
what it wrote, what it skipped and why, its true rate, and, when no backend answers at --backend, says so in a
line, without a traceback, with exit code 2."""
from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from werkzeug.serving import make_server

from backend.app import create_app
from model.cli import main, preannotate
from model.settings import Settings
from tests.apps import App
from tests.labelstudio_projects import LabelStudioProject
from tests.synthetic import free_port

ROOT = Path(__file__).resolve().parent.parent


@contextmanager
def serving(app: App) -> Iterator[str]:
    server = make_server("127.0.0.1", 0, create_app(app.backend), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(10)


def _box(mask: np.ndarray) -> dict:
    rows, cols = np.nonzero(mask)
    height, width = mask.shape
    x1, y1, x2, y2 = cols.min() - 6, rows.min() - 6, cols.max() + 6, rows.max() + 6
    return {"from_name": "box", "to_name": "image", "type": "rectanglelabels",
            "value": {"x": 100 * x1 / width, "y": 100 * y1 / height, "width": 100 * (x2 - x1) / width,
                      "height": 100 * (y2 - y1) / height, "rotation": 0, "rectanglelabels": ["Object"]}}


def test_preannotate_counts_what_it_wrote_and_skipped_and_reports_its_rate(tmp_path, image_server, monkeypatch,
                                                                           capsys):
    monkeypatch.setattr(preannotate, "POLL_SECONDS", 0.1)
    detector = {"model_version": "detector", "result": [_box(image_server.mask)]}
    tasks = {n: {"data": {"image": f"{image_server.url}/object.png?n={n}"},
                 "predictions": [detector] if n <= 5 else []} for n in range(1, 12)}
    with LabelStudioProject(3, tasks) as label_studio:
        app = App(Settings(data_dir=tmp_path, banned_subnets="169.254.0.0/16", label_studio_url=label_studio.url,
                           label_studio_api_key="tok"))
        with serving(app) as backend:
            started = time.monotonic()
            code = main(["preannotate", "--project", "3", "--backend", backend])
            wall = time.monotonic() - started
            out = capsys.readouterr().out
            assert main(["preannotate", "--project", "3", "--backend", backend]) == 0  # again: nothing new to do
            again = capsys.readouterr().out
    assert code == 0, out
    assert sorted(prediction["task"] for prediction in label_studio.written) == [1, 2, 3, 4, 5]
    summary = re.search(r"(\d+) tasks in ([\d.]+) s \(([\d.]+) tasks/min\): 5 predictions written, 6 skipped, "
                        r"0 failed", out)
    assert summary, out
    finished, seconds, rate = int(summary[1]), float(summary[2]), float(summary[3])
    assert finished == 11 and seconds <= wall + 0.1
    assert abs(rate - 60 * 11 / seconds) <= 0.05 * rate + 0.1  # this run's tasks over this run's time
    assert "skipped 6: nothing to predict from: no rectangles to refine, and no policy (no policy configured)" in out
    assert "0 tasks queued (11 asked for) with segagent-classical-v0; 11 were queued with it before" in again
    assert "0 predictions written, 0 skipped, 0 failed" in again
    assert len(label_studio.written) == 5


def test_preannotate_says_when_no_backend_answers():
    nowhere = f"http://127.0.0.1:{free_port()}"
    run = subprocess.run([sys.executable, "-m", "model", "preannotate", "--project", "3", "--backend", nowhere],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run.stderr
    assert run.stderr.strip().splitlines() == [
        f"error: no backend answers at {nowhere} (ConnectionError): start it, or give its address with --backend or "
        "SEGAGENT_BACKEND_URL"]
    assert "Traceback" not in run.stderr


def test_preannotate_says_when_something_else_answers(capsys):
    """A server that is not the backend (here, Label Studio's stand-in on the port given) is named, not parsed."""
    with LabelStudioProject(3, {}) as not_the_backend:
        assert main(["preannotate", "--project", "3", "--backend", not_the_backend.url]) == 2
    assert capsys.readouterr().err == f"error: {not_the_backend.url}/status answered HTTP 404, not as the SegAgent " \
        "backend does: is the backend at this address?\n"
