"""Several pre-annotation queues on one database (threads of one process, or processes sharing SEGAGENT_DATA_DIR's
SQLite file or, as several machines do, one PostgreSQL database): a task is claimed by one of them at a time. A
claimed task is leased: its holder's heartbeat renews the lease while the holder lives, and the task is queued
again (and handed out) only once the lease has expired (its holder killed or frozen); what a holder that lost its
lease says afterwards changes nothing."""
from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from backend import preannotation_queue
from backend.preannotation_queue import MAX_ATTEMPTS, PreannotationQueue

LEASE = 2.0
ROOT = Path(__file__).resolve().parents[1]

# A holder in a process of its own: claims the `count` oldest tasks and prints their ids, then, for each line
# read, reports its first task done and prints what the queue then says.
HOLDER = """
import sys
from backend import preannotation_queue
preannotation_queue.LEASE_SECONDS = float(sys.argv[2])
queue = preannotation_queue.PreannotationQueue(sys.argv[1])
taken = [queue.claim(*item.key) for item in queue.waiting()[:int(sys.argv[3])]]
print(" ".join(str(item.task_id) for item in taken), flush=True)
for _ in sys.stdin:
    queue.done(taken[0])
    print(queue.progress("1")["done"], flush=True)
"""


@pytest.fixture(autouse=True)
def short_leases(monkeypatch):
    monkeypatch.setattr(preannotation_queue, "LEASE_SECONDS", LEASE)


@pytest.fixture
def path(tmp_path, database_url) -> str:
    """The queues' database: a SQLite file, or a PostgreSQL URL."""
    return database_url or str(tmp_path / "q.sqlite3")


def _holder(path: str, count: int) -> tuple[subprocess.Popen, list[int]]:
    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(path), str(LEASE), str(count)], cwd=ROOT,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    return process, [int(task) for task in process.stdout.readline().split()]


def _drain(queue: PreannotationQueue) -> list[int]:
    """Claim every queued task, as the runner's jobs do; the ids claimed."""
    return [item.task_id for item in queue.waiting() if queue.claim(*item.key) is not None]


def test_a_queue_opened_while_another_holds_tasks_takes_only_the_others(path):
    first = PreannotationQueue(path)
    first.add("1", [1, 2, 3, 4], "v0")
    held = [item.task_id for item in first.waiting()[:2] if first.claim(*item.key) is not None]
    second = PreannotationQueue(path)
    taken = _drain(second)
    time.sleep(2.5 * LEASE)  # the first queue's heartbeat keeps its tasks its own
    taken += _drain(second) + _drain(first)
    assert sorted(held + taken) == [1, 2, 3, 4]
    first.close()
    second.close()


def test_a_task_held_by_a_live_process_is_not_taken_and_a_killed_one_s_is_handed_out_after_its_lease(path):
    pending = PreannotationQueue(path)
    pending.add("1", [1, 2, 3, 4], "v0")
    handed_out: queue.Queue = queue.Queue()
    pending.on_expired = handed_out.put
    holder, held = _holder(path, 2)
    try:
        assert held == [1, 2]
        opened_now = PreannotationQueue(path)
        assert _drain(opened_now) == [3, 4]  # it leaves the holder's tasks alone
        time.sleep(2.5 * LEASE)
        assert _drain(pending) == [] and handed_out.empty()  # still held: the holder renews its leases
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(10)
        expired = handed_out.get(timeout=5 * LEASE)
        assert [(item.task_id, item.attempts) for item in expired] == [(1, 1), (2, 1)]  # the kill is an attempt
        assert _drain(pending) == [1, 2]
    finally:
        holder.kill()
        holder.wait(10)
    pending.close()
    opened_now.close()


def test_a_holder_that_lost_its_lease_does_not_finish_the_new_holder_s_task(path):
    pending = PreannotationQueue(path)
    pending.add("1", [1], "v0")
    handed_out: queue.Queue = queue.Queue()
    pending.on_expired = handed_out.put
    holder, held = _holder(path, 1)
    assert holder.stdin is not None and holder.stdout is not None
    try:
        assert held == [1]
        holder.send_signal(signal.SIGSTOP)  # frozen: its heartbeat stops, its lease runs out
        [expired] = handed_out.get(timeout=5 * LEASE)
        item = pending.claim(*expired.key)
        assert item is not None
        holder.send_signal(signal.SIGCONT)
        holder.stdin.write("done\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == "0"  # its done changed nothing
        assert pending.progress("1")["remaining"] == 1
        pending.done(item)
        assert pending.progress("1")["done"] == 1
    finally:
        holder.kill()
        holder.wait(10)
    pending.close()


def test_a_task_whose_worker_is_killed_each_time_fails_for_good_after_the_last_attempt(path):
    pending = PreannotationQueue(path)
    pending.add("1", [1], "v0")
    handed_out: queue.Queue = queue.Queue()
    pending.on_expired = handed_out.put
    for attempt in range(1, MAX_ATTEMPTS + 1):
        holder, held = _holder(path, 1)
        holder.kill()
        holder.wait(10)
        assert held == [1]
        if attempt < MAX_ATTEMPTS:
            assert [item.attempts for item in handed_out.get(timeout=5 * LEASE)] == [attempt]
    deadline = time.time() + 5 * LEASE
    while pending.progress("1")["failed"] == 0 and time.time() < deadline:
        time.sleep(0.1)
    assert pending.progress("1")["failures"] == [
        {"task": 1, "reason": f"its worker stopped while running it (attempt {MAX_ATTEMPTS})"}]
    assert handed_out.empty()
    pending.close()
