"""Training jobs' records: one writer at a time across processes, reads that write nothing, and a writer
(the reaper, or queueing the next job) that reports a job whose process died."""
from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from backend.dispatch import InProcess
from backend.store import AnnotationStore
from backend.training_jobs import TrainingJobs
from model.flywheel.registry import JobRecord, JobState, Registry, this_host
from model.settings import Settings
from tests.apps import App

UPDATES = 1000


def _update_one_field(root: str, job_id: str, field: str, start, regressions) -> None:
    """Write `field` UPDATES times, each time first reading the job's record to check that its previous
    value survived the other process's writes; counts the times it did not."""
    registry = Registry(root)
    start.wait()
    for value in range(1, UPDATES + 1):
        if getattr(registry.job(job_id), field) != value - 1:
            regressions.value += 1
        registry.write_job(job_id, **{field: value})


def test_two_processes_writing_one_job_lose_no_update(tmp_path):
    """The backend (its runner writes the pid) and the job process (its data, progress, heartbeat) both
    update one job record: each read-change-write is one transaction, so none undoes another."""
    registry = Registry(tmp_path)
    job_id = registry.new_job_id("project-1")
    registry.write_job(job_id, state="running", through_id=0, pid=0)
    context = multiprocessing.get_context("spawn")
    regressions = {field: context.Value("i", 0) for field in ("through_id", "pid")}
    start = context.Barrier(len(regressions))  # both write at once
    workers = [context.Process(target=_update_one_field, args=(str(tmp_path), job_id, field, start, regressions[field]))
               for field in regressions]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
        assert worker.exitcode == 0
    on_disk = registry.job(job_id).to_json()
    lost = {field: count.value for field, count in regressions.items()}
    assert lost == {"through_id": 0, "pid": 0}, f"updates overwritten by the other process: {lost}"
    assert on_disk["through_id"] == on_disk["pid"] == UPDATES and on_disk["state"] == "running"


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def _a_job_whose_process_died(registry: Registry, scope: str = "project-3") -> JobRecord:
    """A job as the backend's process runner leaves it when its training process is killed while the
    backend is down: running on this host, its process gone, nobody left to say so."""
    job_id = registry.new_job_id(scope)
    return registry.write_job(job_id, state="running", runner="process", host=this_host(), owner=_dead_pid(),
                              pid=_dead_pid(), trigger="request", through_id=4)


def test_status_job_status_and_versions_write_nothing(tmp_path):
    client = App(Settings(data_dir=tmp_path)).client
    registry = Registry(tmp_path / "models")
    job = _a_job_whose_process_died(registry)
    before = registry.job(job.id).to_json()

    answer = client.post("/job_status", json={"job": job.id}).json
    assert answer == {"job_status": "started", **before}
    training = client.get("/status?project=3").json["training"]
    assert training["state"] == "running" and training["last_job"] == before
    assert training["scopes"]["project-3"]["last_job"]["id"] == job.id
    assert client.get("/status").json["training"]["last_job"]["id"] == job.id
    assert client.get("/versions?project=3").json["versions"] == [client.get("/health").json["model_version"]]
    assert registry.job(job.id) == job  # no read wrote the job's record, not even its time


def _training_jobs(data: Path, registry: Registry, reap_every: float) -> TrainingJobs:
    return TrainingJobs(Settings(data_dir=data), registry, InProcess({}), AnnotationStore(data / "annotations.sqlite3"),
                        reap_every=reap_every)


def test_queueing_the_next_job_fails_the_one_that_died(tmp_path):
    registry = Registry(tmp_path / "models")
    dead = _a_job_whose_process_died(registry)
    jobs = _training_jobs(tmp_path, registry, reap_every=3600)
    try:
        queued, new = jobs.queue("project-3", "request", through_id=5)
    finally:
        jobs.close()
    assert new and queued.id != dead.id and queued.state is JobState.queued
    failed = registry.job(dead.id)
    assert failed is not None and failed.state is JobState.failed
    assert f"training process {dead.pid} is gone" in (failed.error or "") and failed.finished


def test_the_reaper_fails_a_dead_job_with_no_request(tmp_path):
    registry = Registry(tmp_path / "models")
    dead = _a_job_whose_process_died(registry)
    alive = registry.write_job(registry.new_job_id("project-4"), state="running", runner="process",
                               host=this_host(), pid=os.getpid())
    jobs = _training_jobs(tmp_path, registry, reap_every=0.2)
    try:
        with registry.lock("project-4"):  # the alive job's trainer holds its training lock, as run_job does
            deadline = time.time() + 20
            while time.time() < deadline and registry.job(dead.id).state is not JobState.failed:
                time.sleep(0.1)
            time.sleep(0.5)  # a few more rounds of the reaper
    finally:
        jobs.close()
    assert registry.job(dead.id).state is JobState.failed
    assert registry.job(alive.id) == alive  # a job whose process runs is left alone, not even touched


def _train_holding_the_lock(root: str, database: str, scope: str, job_id: str, holding) -> None:
    """A trainer as run_job is one: the scope's training lock, then the job recorded running, then training."""
    registry = Registry(root, database)
    with registry.lock(scope), registry.heartbeat(job_id):
        registry.write_job(job_id, state=JobState.running, stage="training", pid=os.getpid(), host="machine-b")
        holding.set()
        time.sleep(600)


def test_a_trainer_killed_mid_training_is_failed_in_seconds(tmp_path, database_url):
    """Jobs of RQ trainers on another machine (no process of this host to watch, RQ not asked: never enqueued
    from here). One trainer is killed with SIGKILL mid-training: the training lock it held is freed with it, and
    the reaper fails its job within seconds instead of after 900 s without a heartbeat. The other, alive and
    holding its lock, is left running."""
    database = database_url or str(tmp_path / "registry.sqlite3")
    registry = Registry(tmp_path / "models", database)
    context = multiprocessing.get_context("spawn")
    trainers, ids = {}, {}
    for scope in ("project-5", "project-6"):
        ids[scope] = registry.new_job_id(scope)
        registry.write_job(ids[scope], state=JobState.queued, runner="rq", host="machine-b", trigger="request",
                           through_id=3)
        holding = context.Event()
        trainers[scope] = context.Process(target=_train_holding_the_lock,
                                          args=(str(tmp_path / "models"), database, scope, ids[scope], holding))
        trainers[scope].start()
        assert holding.wait(60), "the trainer never started"
    jobs = _training_jobs(tmp_path, registry, reap_every=0.2)
    try:
        time.sleep(1.0)  # several rounds of the reaper: both trainers hold their locks
        assert {registry.job(i).state for i in ids.values()} == {JobState.running}
        os.kill(trainers["project-5"].pid, signal.SIGKILL)
        trainers["project-5"].join(30)
        deadline = time.time() + 20
        while time.time() < deadline and registry.job(ids["project-5"]).state is not JobState.failed:
            time.sleep(0.1)
        killed = registry.job(ids["project-5"])
        assert killed.state is JobState.failed and "its trainer is gone" in (killed.error or "")
        assert registry.job(ids["project-6"]).state is JobState.running
    finally:
        jobs.close()
        for trainer in trainers.values():
            if trainer.is_alive():
                trainer.kill()
            trainer.join(30)


def test_a_record_refuses_what_a_job_file_cannot_hold(tmp_path):
    registry = Registry(tmp_path)
    job_id = registry.new_job_id("project-1")
    with pytest.raises(ValueError, match="no field stat"):
        registry.write_job(job_id, stat="running")  # a misspelt field
    with pytest.raises(ValueError):
        registry.write_job(job_id, state="exploded")
    assert registry.job(job_id) is None
    registry.write_job(job_id, state="running")
    with registry.db.transaction() as tx:
        tx.execute("UPDATE registry_jobs SET record = ? WHERE job_id = ?",
                   (json.dumps({"id": job_id, "state": "exploded"}), job_id))
    assert registry.job(job_id) is None and registry.jobs("project-1") == []  # left out, not a 500


def test_an_rq_trainer_uses_its_own_folders_when_the_stores_are_shared(monkeypatch, tmp_path):
    from backend.training_runs import on_this_machine
    from model.flywheel.job import JobSpec

    queued_by_b = JobSpec(scope="project-3", settings=Settings(data_dir=tmp_path / "b", blob_dir=tmp_path / "b-mount"))
    assert on_this_machine(queued_by_b).settings.data_dir == (tmp_path / "b").resolve()  # SQLite: the job's folder
    monkeypatch.setenv("SEGAGENT_DATABASE_URL", "postgresql://segagent@db.internal:5432/segagent")
    monkeypatch.setenv("SEGAGENT_DATA_DIR", str(tmp_path / "a"))
    monkeypatch.setenv("SEGAGENT_BLOB_DIR", str(tmp_path / "a-mount"))
    spec = JobSpec.model_validate(queued_by_b.model_dump(mode="json"))  # as the trainer on machine A receives it
    local = on_this_machine(spec).settings
    assert (local.data_dir, local.blob_dir) == ((tmp_path / "a").resolve(), tmp_path / "a-mount")
    assert local.database_url == "postgresql://segagent@db.internal:5432/segagent"  # from the trainer's environment
