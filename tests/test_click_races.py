"""Concurrent clicks through the real app on loopback (werkzeug's threaded server, requests from threads),
with a tool whose predict waits at a gate the test opens: requests that may be for one object are answered
as one object (one region id), requests for other objects or tasks still run side by side. And a click
does not wait for the store: its record is written behind it, and kept when the backend closes."""
from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pytest
import requests
from werkzeug.serving import make_server

from backend.app import create_app
from backend.container import Backend
from backend.prediction import InteractiveRecorder
from backend.store import AnnotationStore
from model.settings import Settings
from model.tools import Tool
from tests.synthetic import FileServer, png_bytes, two_objects
from tests.test_backend import CONFIG, make_app
from tests.test_interactive_objects import A_EDGE, A, B, point

B_EDGE = (80.0, 45.0)  # another point on the right object
WAIT = 30.0  # no step waits longer: a bug fails a test, never hangs it
GIVEN_TIME = 1.0  # how long a request that must wait is given to reach the tool all the same


class GatedTool:
    """The classical tool, each predict held at a gate until the test opens it; `entered` counts arrivals."""

    def __init__(self, tool: Tool):
        self.tool = tool
        self.name = tool.name
        self.gate = threading.Event()
        self.entered = threading.Semaphore(0)

    def encode(self, image):
        return self.tool.encode(image)

    def predict(self, encoded, clicks, box=None, previous=None):
        self.entered.release()
        assert self.gate.wait(WAIT), "the test never opened the gate"
        return self.tool.predict(encoded, clicks, box, previous)


@dataclass
class Served:
    backend: Backend
    tool: GatedTool
    url: str
    image: str

    def click(self, *points: dict, task: int = 7) -> dict:
        response = requests.post(f"{self.url}/predict", timeout=WAIT, json={
            "tasks": [{"id": task, "data": {"image": self.image}}], "label_config": CONFIG, "project": "3",
            "params": {"context": {"result": list(points)}}})
        assert response.status_code == 200, response.text
        [region] = response.json()["results"][0]["result"]
        return region


@pytest.fixture(scope="module")
def image_url(tmp_path_factory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("two-objects")
    (folder / "two.png").write_bytes(png_bytes(two_objects()[0]))
    with FileServer(folder) as files:
        yield f"{files.url}/two.png"


@pytest.fixture
def served(tmp_path, image_url) -> Iterator[Served]:
    backend = make_app(tmp_path).backend
    segmenter = backend.capabilities.tool.get()
    gated = GatedTool(segmenter.tool)
    segmenter.tool = gated
    server = make_server("127.0.0.1", 0, create_app(backend), threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield Served(backend, gated, f"http://127.0.0.1:{server.server_port}", image_url)
    gated.gate.set()
    server.shutdown()
    server.server_close()


def entered(tool: GatedTool, timeout: float = WAIT) -> bool:
    return tool.entered.acquire(timeout=timeout)


@pytest.mark.parametrize("first, second", [
    ([point(A, "k1")], [point(A, "k1"), point(A_EDGE, "k2")]),  # clicked again before the first answer
    ([point(A, "k1")], [point(A, "k1")]),  # the same request twice
    ([point(A, "k1")], [point(A_EDGE, "k2")]),  # each click alone, as with Auto-Accept
], ids=["refined", "repeated", "alone"])
def test_concurrent_first_clicks_on_one_object_make_one_region(served, first, second):
    with ThreadPoolExecutor(2) as pool:
        answers: list[Future] = [pool.submit(served.click, *first)]
        assert entered(served.tool)
        answers.append(pool.submit(served.click, *second))
        second_ran_alongside = entered(served.tool, GIVEN_TIME)
        served.tool.gate.set()
        ids = {answer.result(WAIT)["id"] for answer in answers}
    assert len(ids) == 1, "two regions for one object"
    assert not second_ran_alongside
    assert len(served.backend.predictor.sessions) == 1


def test_clicks_on_other_tasks_and_objects_run_side_by_side(served):
    served.tool.gate.set()
    on_a, on_b = served.click(point(A, "k1")), served.click(point(B, "k3"))
    for _ in range(2):
        assert entered(served.tool)
    served.tool.gate.clear()
    with ThreadPoolExecutor(3) as pool:
        answers = [pool.submit(served.click, point(A, "k1"), point(A_EDGE, "k2")),
                   pool.submit(served.click, point(B, "k3"), point(B_EDGE, "k4")),  # another object of the task
                   pool.submit(served.click, point(A, "k5"), task=8)]  # another task
        assert all(entered(served.tool) for _ in answers), "a click waited for another object's"
        served.tool.gate.set()
        refined_a, refined_b, other_task = (answer.result(WAIT) for answer in answers)
    assert refined_a["id"] == on_a["id"] and refined_b["id"] == on_b["id"]
    assert len({refined_a["id"], refined_b["id"], other_task["id"]}) == 3


def test_a_click_does_not_wait_for_a_locked_store_and_its_record_is_kept_at_close(tmp_path, image_url):
    """Another connection holds the store's write lock (as a long transaction or another process would):
    the click is answered at once (SQLite would have it wait 30 s, then fail), its record written later."""
    backend = Backend.build(Settings(data_dir=tmp_path, banned_subnets="169.254.0.0/16"))
    client = create_app(backend).test_client()
    locker = sqlite3.connect(tmp_path / "annotations.sqlite3", isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")
    try:
        with ThreadPoolExecutor(1) as pool:
            answer = pool.submit(client.post, "/predict", json={
                "tasks": [{"id": 7, "data": {"image": image_url}}], "label_config": CONFIG, "project": "3",
                "params": {"context": {"result": [point(A, "k1")]}}})
            try:
                assert answer.result(timeout=10).status_code == 200
            finally:
                locker.execute("COMMIT")
    finally:
        backend.close()
        locker.close()
    [(clicks, mask)] = AnnotationStore(tmp_path / "annotations.sqlite3").interactive_steps("3", 7, "Object")
    assert len(clicks) == 1 and mask.any()


def test_records_wait_within_their_bound_are_written_in_order_and_close_writes_those_waiting(tmp_path):
    store = AnnotationStore(tmp_path / "annotations.sqlite3")
    recorder = InteractiveRecorder(store, waiting=2)
    locker = sqlite3.connect(tmp_path / "annotations.sqlite3", isolation_level=None)
    mask = np.ones((4, 4), bool)
    try:
        with ThreadPoolExecutor(1) as pool:
            locker.execute("BEGIN IMMEDIATE")
            for n in range(2):
                recorder.record("3", 7, "Object", [(n, n, True)], mask, "r1")
            third = pool.submit(recorder.record, "3", 7, "Object", [(2, 2, True)], mask, "r1")
            time.sleep(GIVEN_TIME)
            assert not third.done(), "a third record did not wait for room"
            locker.execute("COMMIT")
            third.result(WAIT)
            deadline = time.monotonic() + WAIT
            while len(store.interactive_steps("3", 7, "Object")) < 3 and time.monotonic() < deadline:
                time.sleep(0.05)

            locker.execute("BEGIN IMMEDIATE")  # nothing left to write: the next record is the only one waiting
            recorder.record("3", 7, "Object", [(3, 3, True)], mask, "r1")
            closed = pool.submit(recorder.close)
            time.sleep(GIVEN_TIME)
            assert not closed.done(), "close did not wait for the record still to write"
            locker.execute("COMMIT")
            closed.result(WAIT)
        assert [clicks[0][0] for clicks, _ in store.interactive_steps("3", 7, "Object")] == [0, 1, 2, 3]
    finally:
        locker.close()
        store.close()


def test_a_click_sent_many_times_holds_no_more_threads_than_the_bound(served):
    """A click repeated (a double send, a client's retries) while its object is being worked on waits for that
    object holding one of the `interactive_concurrency` places; beyond them the repeats are answered 503 at once,
    so they can never take every server thread from /health."""
    bound = served.backend.settings.interactive_concurrency

    def send() -> requests.Response:
        return requests.post(f"{served.url}/predict", timeout=WAIT, json={
            "tasks": [{"id": 7, "data": {"image": served.image}}], "label_config": CONFIG, "project": "3",
            "params": {"context": {"result": [point(A, "k1")]}}})

    with ThreadPoolExecutor(2 * bound) as pool:
        first = pool.submit(send)
        assert entered(served.tool)
        repeats = [pool.submit(send) for _ in range(2 * bound - 1)]
        deadline = time.time() + WAIT
        while time.time() < deadline and sum(r.done() for r in repeats) < bound:
            time.sleep(0.05)
        answered_at_once = [r for r in repeats if r.done()]
        assert len(answered_at_once) == bound, "repeats of a click waited for its object beyond the bound"
        assert all(r.result().status_code == 503 and r.result().headers["Retry-After"] == "1"
                   for r in answered_at_once)
        assert requests.get(f"{served.url}/health", timeout=5).status_code == 200
        served.tool.gate.set()
        waited = [r.result(WAIT) for r in repeats if r not in answered_at_once]
    assert first.result(WAIT).status_code == 200 and all(r.status_code == 200 for r in waited)
