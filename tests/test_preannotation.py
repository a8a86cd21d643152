"""The pre-annotation queue (durable, one row per task and version, retries with backoff) and the edge of
POST /preannotate; the whole path against a real Label Studio is in tests/e2e/test_preannotation.py."""
from __future__ import annotations

import time

from backend.preannotation_queue import MAX_ATTEMPTS, Item, PreannotationQueue
from model.settings import Settings
from tests.apps import App
from tests.synthetic import free_port


def _claim_oldest(queue: PreannotationQueue) -> Item | None:
    waiting = queue.waiting()
    return queue.claim(*waiting[0].key) if waiting else None


def test_a_task_is_queued_once_per_version(tmp_path):
    queue = PreannotationQueue(tmp_path / "q.sqlite3")
    assert [item.task_id for item in queue.add("1", [1, 2, 3], "v0")] == [1, 2, 3]
    assert [item.task_id for item in queue.add("1", [2, 3, 4], "v0")] == [4]  # 2 and 3 are queued already
    assert len(queue.add("1", [1], "v1")) == 1  # another version is another prediction
    assert queue.progress("1")["total"] == 5


def test_what_was_taken_but_not_finished_is_taken_again_after_a_restart(tmp_path):
    queue = PreannotationQueue(tmp_path / "q.sqlite3")
    queue.add("1", [1, 2], "v0")
    first = _claim_oldest(queue)
    assert first is not None and first.task_id == 1
    queue.close()  # a clean stop hands task 1 back (after a kill, its lease runs out: test_preannotation_leases.py)
    reopened = PreannotationQueue(tmp_path / "q.sqlite3")
    assert [item.task_id for item in reopened.waiting()] == [1, 2]


def test_a_restart_hands_out_a_task_in_backoff_when_its_backoff_ends(tmp_path):
    """The backoff of a failed attempt is the row's (not_before): a restart keeps it instead of trying again at
    once."""
    app = App(Settings(data_dir=tmp_path, banned_subnets="169.254.0.0/16"))
    queue = app.backend.preannotator.queue
    queue.add("1", [5, 6], "v0")
    before = time.time()
    queue.failed(queue.claim("1", 5, "v0"), "HTTP 503")  # first failure: 2 s of backoff
    queue.later(queue.claim("1", 6, "v0"), 3600, "Label Studio not known yet")
    by_task = {item.task_id: item for item in queue.waiting()}
    assert before + 2 <= by_task[5].not_before <= time.time() + 2 and by_task[5].attempts == 1
    assert by_task[6].not_before >= before + 3600 and by_task[6].attempts == 0

    handed: list[tuple[int, float]] = []
    app.backend.preannotator.dispatcher.submit = lambda kind, project, task, version, delay=0.0: handed.append(
        (task, delay))
    app.backend.preannotator.resume()  # what a start does
    delays = dict(handed)
    assert sorted(delays) == [5, 6]
    assert 0 < delays[5] <= 2 and 3590 < delays[6] <= 3600


def test_failures_are_counted_and_give_up_after_the_last_attempt(tmp_path):
    queue = PreannotationQueue(tmp_path / "q.sqlite3")
    queue.add("1", [7], "v0")
    item = queue.claim("1", 7, "v0")
    queue.failed(item, "HTTP 503")
    for attempt in range(1, MAX_ATTEMPTS):
        item = queue.claim("1", 7, "v0")  # as the job handed out again after the backoff does
        assert item is not None and item.attempts == attempt
        queue.failed(item, "HTTP 503")
    progress = queue.progress("1")
    assert progress["failed"] == 1 and progress["remaining"] == 0
    assert progress["failures"] == [{"task": 7, "reason": "HTTP 503"}]


def test_done_tasks_give_a_rate_and_nothing_left_gives_no_wait(tmp_path):
    queue = PreannotationQueue(tmp_path / "q.sqlite3")
    queue.add("1", [1, 2, 3], "v0")
    for _ in range(2):
        queue.done(_claim_oldest(queue))
    progress = queue.progress("1")
    assert progress["done"] == 2 and progress["remaining"] == 1
    while (item := _claim_oldest(queue)) is not None:
        queue.done(item)
    assert queue.progress("1")["eta_seconds"] == 0


def test_preannotate_says_what_is_missing_and_when_label_studio_fails(tmp_path):
    client = App(Settings(data_dir=tmp_path / "a", banned_subnets="169.254.0.0/16")).client
    answer = client.post("/preannotate", json={"project": 3})
    assert answer.status_code == 400 and "LABEL_STUDIO_URL" in answer.json["error"]
    assert client.post("/preannotate", json={"project": "x"}).status_code == 400
    down = App(Settings(data_dir=tmp_path / "b", label_studio_url=f"http://127.0.0.1:{free_port()}",
                        label_studio_api_key="key", banned_subnets="169.254.0.0/16")).client
    answer = down.post("/preannotate", json={"project": 3})
    assert answer.status_code == 502 and "Label Studio at" in answer.json["error"]
    assert down.get("/health").status_code == 200


def test_with_redis_down_the_tasks_stay_queued_and_the_answer_says_so(tmp_path):
    settings = Settings(data_dir=tmp_path, label_studio_url=f"http://127.0.0.1:{free_port()}",
                        label_studio_api_key="key", redis_url=f"redis://127.0.0.1:{free_port()}/0",
                        banned_subnets="169.254.0.0/16")
    app = App(settings)
    answer = app.client.post("/preannotate", json={"project": 3, "tasks": [11, 12]})
    assert answer.status_code == 503 and "queued" in answer.json["error"]
    assert [item.task_id for item in app.backend.preannotator.queue.waiting()] == [11, 12]
