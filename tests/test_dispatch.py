"""The in-process dispatcher: each kind's work runs off the caller's thread, counted; a close lets the work under
way finish and drops what waits; a training job (which waits for its own long process) holds up neither a close
nor the interpreter's exit."""
from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

from backend.dispatch import InProcess

ROOT = Path(__file__).resolve().parents[1]


def test_work_runs_in_the_background_and_is_counted():
    dispatcher = InProcess({"annotation": 1})
    done = threading.Event()
    dispatcher.register("annotation", lambda annotation_id: done.set() if annotation_id == 7 else None)
    dispatcher.register("preannotate", lambda *_: 1 / 0)
    dispatcher.submit("annotation", 7)
    dispatcher.submit("preannotate", "3", 1, "v0")
    assert done.wait(10)
    deadline = time.time() + 10
    while time.time() < deadline and dispatcher.status()["preannotate"]["failed"] == 0:
        time.sleep(0.05)
    dispatcher.close()
    status = dispatcher.status()
    assert status["runner"] == "process" and status["annotation"]["done"] == 1
    assert status["preannotate"]["failed"] == 1 and "ZeroDivisionError" in status["preannotate"]["last_error"]


def test_delayed_work_runs_later_and_a_close_drops_it():
    dispatcher = InProcess({})
    ran = threading.Event()
    dispatcher.register("annotation", lambda _: ran.set())
    dispatcher.submit("annotation", 1, delay=0.3)
    assert not ran.is_set() and ran.wait(10)
    ran.clear()
    dispatcher.submit("annotation", 2, delay=0.5)
    dispatcher.close()
    assert not ran.wait(1.0)


def test_a_training_job_under_way_holds_up_neither_close_nor_exit():
    script = (
        "import threading, time\n"
        "from backend.dispatch import InProcess\n"
        "dispatcher = InProcess({})\n"
        "started = threading.Event()\n"
        "dispatcher.register('train', lambda job_id, spec: (started.set(), threading.Event().wait()))\n"
        "dispatcher.submit('train', 'project-3-job-1', {})\n"
        "assert started.wait(10)\n"
        "began = time.time()\n"
        "dispatcher.close()\n"
        "print(round(time.time() - began, 3))\n")
    run = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr[-2000:]
    assert float(run.stdout) < 1.0
