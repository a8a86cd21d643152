"""The registry's state in its database, on SQLite (a file) and on PostgreSQL (`database_url`): what one Registry
writes another sees, in another process as on another machine sharing the database and the blob folder; the train
lock has one holder across processes and is freed when its holder is killed; version numbers are unique however
many processes allocate at once; a root the registry wrote as files before is imported once."""
from __future__ import annotations

import json
import multiprocessing
import os
import signal
import time
from pathlib import Path

import pytest

from model.flywheel.registry import Busy, JobState, Registry, RegistryError, UnknownVersion

SPAWN = multiprocessing.get_context("spawn")


def _database(tmp_path: Path, database_url: str) -> str | Path:
    return database_url or tmp_path / "registry.sqlite3"


def _registry(tmp_path: Path, database_url: str, kind: str = "models") -> Registry:
    return Registry(tmp_path / "blobs" / kind, _database(tmp_path, database_url), kind=kind)


def _train_a_version(registry: Registry, scope: str, parent: str = "v0") -> str:
    with registry.lock(scope):
        name, folder = registry.allocate(scope)
        (folder / "adapter").mkdir()
        (folder / "adapter" / "weights").write_text(name)  # the files first, then the row
        registry.register(scope, name, {"parent": parent, "status": "promoted"})
        registry.activate(scope, name, "passed the gate")
    return name


def test_versions_the_active_one_its_history_and_jobs(tmp_path, database_url):
    registry = _registry(tmp_path, database_url)
    assert registry.scopes() == [] and registry.active("project-1") == "v0" and registry.versions("project-1") == []
    with pytest.raises(UnknownVersion):
        registry.rollback("project-1")  # never trained
    v1 = _train_a_version(registry, "project-1")
    v2 = _train_a_version(registry, "project-1", parent=v1)
    assert (v1, v2) == ("v1", "v2") and registry.active("project-1") == "v2"
    assert [m["name"] for m in registry.versions("project-1")] == ["v1", "v2"]
    assert registry.version("project-1", "v2") == {"name": "v2", "scope": "project-1", "parent": "v1",
                                                   "status": "promoted"}
    assert (registry.adapter_path("project-1", "v2") / "weights").read_text() == "v2"
    with pytest.raises(UnknownVersion):
        registry.activate("project-1", "v9", "no such version")
    with pytest.raises(RegistryError):
        registry.version("project-1", "v0")

    assert registry.rollback("project-1") == "v1" and registry.active("project-1") == "v1"
    assert registry.rollback("project-1", "v0") == "v0"
    assert [(h["version"], h["previous"]) for h in registry.history("project-1")] == [
        ("v1", "v0"), ("v2", "v1"), ("v1", "v2"), ("v0", "v1")]
    assert registry.history("project-1")[2]["reason"] == "rollback from v2"

    job_id = registry.new_job_id("shared")
    registry.write_job(job_id, state=JobState.running, through_id=7)
    registry.update_job(job_id, lambda job: {"progress": 0.5} if job and job.state is JobState.running else None)
    assert registry.update_job(job_id, lambda job: None) == registry.job(job_id)  # None: nothing written
    job = registry.job(job_id)
    assert job is not None and job.progress == 0.5 and job.through_id == 7 and job.scope == "shared"
    assert registry.jobs("shared") == [job] and registry.trained_through("shared") == 7
    assert registry.job_path(job_id).parent.is_dir()  # where the job's log goes
    assert registry.scopes() == ["project-1", "shared"]


def test_a_version_is_promoted_only_over_the_version_it_was_gated_against(tmp_path, database_url):
    """register(promote_over=...) activates in its own transaction, and only if what the candidate was gated
    against is still active: a rollback that came meanwhile wins, and the candidate is recorded as rejected."""
    registry = _registry(tmp_path, database_url)

    def candidate(over: str) -> dict:
        with registry.lock("project-1"):
            name, _ = registry.allocate("project-1")
            return registry.register("project-1", name, {"parent": over, "status": "promoted", "reason": "better"},
                                     promote_over=over, why="passed the gate")

    assert candidate("v0")["status"] == "promoted" and registry.active("project-1") == "v1"  # a first activation
    assert candidate("v1")["status"] == "promoted" and registry.active("project-1") == "v2"
    assert registry.history("project-1")[-1] | {"at": 0} == {"version": "v2", "previous": "v1",
                                                              "reason": "passed the gate", "at": 0}
    registry.rollback("project-1", "v0")
    late = candidate("v2")  # gated against v2, which a rollback replaced while it was made
    assert late["status"] == "rejected" and late["reason"] == "v0 became active while v3 was made"
    assert registry.active("project-1") == "v0" and registry.version("project-1", "v3")["status"] == "rejected"
    assert [entry["version"] for entry in registry.history("project-1")] == ["v1", "v2", "v0"]


@pytest.mark.parametrize("name", ["v01", "v00", "v0001"])
def test_a_version_has_one_spelling(tmp_path, database_url, name):
    registry = _registry(tmp_path, database_url)
    _train_a_version(registry, "project-1")
    with pytest.raises(RegistryError):
        registry.rollback("project-1", name)
    assert registry.active("project-1") == "v1"


def test_kinds_share_a_database_and_see_only_their_own_rows(tmp_path, database_url):
    policies, scorers = _registry(tmp_path, database_url), _registry(tmp_path, database_url, kind="scorers")
    _train_a_version(policies, "project-2")
    assert scorers.scopes() == [] and scorers.active("project-2") == "v0" and scorers.versions("project-2") == []
    assert _train_a_version(scorers, "project-2") == "v1"  # numbered apart from the policies' v1
    with policies.lock("project-2"), scorers.lock("project-2"):  # a lock of its own too
        assert scorers.allocate("project-2")[0] == "v2"
    with pytest.raises(RegistryError):
        Registry(tmp_path / "x", _database(tmp_path, database_url), kind="Models; DROP")


# ---------------------------------------------------------------- two processes, as two machines
def _promote_and_queue(root: str, database: str, scope: str, job_id: str) -> None:
    registry = Registry(root, database)
    _train_a_version(registry, scope)
    registry.write_job(job_id, state=JobState.promoted, version="v1", host="the-other-machine")


def test_a_registry_sees_what_another_process_wrote(tmp_path, database_url):
    here = _registry(tmp_path, database_url)
    job_id = here.new_job_id("project-3")
    here.write_job(job_id, state=JobState.queued, trigger="request")
    other = SPAWN.Process(target=_promote_and_queue,
                          args=(str(here.root), str(_database(tmp_path, database_url)), "project-3", job_id))
    other.start()
    other.join(120)
    assert other.exitcode == 0
    assert here.active("project-3") == "v1" and here.version("project-3", "v1")["status"] == "promoted"
    job = here.job(job_id)
    assert job is not None and job.state is JobState.promoted and job.host == "the-other-machine"
    assert job.trigger == "request"  # the other process changed the record, kept what it did not set
    assert here.jobs("project-3") == [job] and here.scopes() == ["project-3"]


def _count_up(root: str, database: str, job_id: str, start) -> None:
    registry = Registry(root, database)
    start.wait()
    for _ in range(COUNTS):
        registry.update_job(job_id, lambda job: {"through_id": (job.through_id or 0) + 1 if job else 1})


COUNTS = 200


def test_two_processes_changing_one_job_record_lose_no_change(tmp_path, database_url):
    """Each read-change-write of a record is one transaction: two processes counting up in one field
    together end at the sum of their counts."""
    registry = _registry(tmp_path, database_url)
    job_id = registry.new_job_id("project-8")
    registry.write_job(job_id, state=JobState.running, through_id=0)
    start = SPAWN.Barrier(2)
    workers = [SPAWN.Process(target=_count_up,
                             args=(str(registry.root), str(_database(tmp_path, database_url)), job_id, start))
               for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(300)
        assert worker.exitcode == 0
    job = registry.job(job_id)
    assert job is not None and job.through_id == 2 * COUNTS and job.state is JobState.running


def _hold_the_lock(root: str, database: str, scope: str, holding) -> None:
    registry = Registry(root, database)
    with registry.lock(scope):
        holding.set()
        time.sleep(600)  # until killed


def _wait(condition, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


def _free(registry: Registry, scope: str) -> bool:
    try:
        with registry.lock(scope):
            return True
    except Busy:
        return False


def test_the_train_lock_has_one_holder_and_a_killed_holder_frees_it(tmp_path, database_url):
    registry = _registry(tmp_path, database_url)
    holding = SPAWN.Event()
    holder = SPAWN.Process(target=_hold_the_lock,
                           args=(str(registry.root), str(_database(tmp_path, database_url)), "project-4", holding))
    holder.start()
    try:
        assert holding.wait(120), "the other process never took the lock"
        with pytest.raises(Busy, match="project-4"), registry.lock("project-4"):
            pass
        assert _free(registry, "project-5")  # another scope's lock is another lock
        os.kill(holder.pid, signal.SIGKILL)
        holder.join(30)
        assert holder.exitcode == -signal.SIGKILL
        assert _wait(lambda: _free(registry, "project-4")), "the killed holder's lock was never freed"
    finally:
        if holder.is_alive():
            holder.kill()
            holder.join(30)
    with registry.lock("project-4"):
        assert not _free(registry, "project-4")  # taken twice in one process: Busy too
    assert _free(registry, "project-4")  # and a lock left normally is free again


ALLOCATIONS = 25


def _allocate_many(root: str, database: str, who: str, start) -> None:
    registry = Registry(root, database)
    start.wait()
    for _ in range(ALLOCATIONS):
        name, folder = registry.allocate("project-6")
        (folder / who).write_text(name)
        registry.register("project-6", name, {"by": who})


def test_version_numbers_are_unique_when_processes_allocate_at_once(tmp_path, database_url):
    registry = _registry(tmp_path, database_url)
    start = SPAWN.Barrier(2)
    workers = [SPAWN.Process(target=_allocate_many,
                             args=(str(registry.root), str(_database(tmp_path, database_url)), who, start))
               for who in ("a", "b")]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(300)
        assert worker.exitcode == 0
    versions = registry.versions("project-6")
    assert [m["name"] for m in versions] == [f"v{n}" for n in range(1, 2 * ALLOCATIONS + 1)]
    for meta in versions:  # each folder written by the one process its number went to
        folder = registry.version_dir("project-6", meta["name"])
        assert [p.name for p in folder.iterdir()] == [meta["by"]]
    assert sorted(m["by"] for m in versions) == ["a"] * ALLOCATIONS + ["b"] * ALLOCATIONS


def test_an_allocation_a_killed_job_left_is_no_version_and_goes_at_the_next(tmp_path, database_url):
    registry = _registry(tmp_path, database_url)
    _train_a_version(registry, "project-7")
    with registry.lock("project-7"):
        name, folder = registry.allocate("project-7")
        (folder / "half-written").write_text("x")  # the job dies here
    assert name == "v2" and [m["name"] for m in registry.versions("project-7")] == ["v1"]
    with pytest.raises(UnknownVersion):
        registry.version("project-7", "v2")
    with registry.lock("project-7"):
        again, folder = registry.allocate("project-7")
    assert again == "v2" and list(folder.iterdir()) == []
    assert (registry.adapter_path("project-7", "v1") / "weights").exists()


# ---------------------------------------------------------------- a root written before the database
def _write_json(path: Path, data: dict) -> None:
    """As the registry wrote its files before the database (model/flywheel/registry.py before b5bf8af)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, sort_keys=True))


def _a_root_of_files(root: Path) -> dict:
    scope = root / "project-3"
    metas = {name: {"base": "http://policy/v1", "created": 1700000000.0 + n, "name": name, "parent": parent,
                    "scope": "project-3", "status": status}
             for n, (name, parent, status) in enumerate([("v1", "v0", "promoted"), ("v2", "v1", "rejected"),
                                                         ("v3", "v1", "promoted")])}
    for name, meta in metas.items():
        (scope / "versions" / name / "adapter").mkdir(parents=True)
        _write_json(scope / "versions" / name / "meta.json", meta)
    (scope / "versions" / "v4" / "adapter").mkdir(parents=True)  # a job killed while training: no meta.json
    history = [{"version": "v1", "previous": "v0", "reason": "job a: passed", "at": 1700000100.5},
               {"version": "v3", "previous": "v1", "reason": "job c: passed", "at": 1700000200.25}]
    _write_json(scope / "active.json", history[-1])
    with open(scope / "history.jsonl", "a") as lines:
        for entry in history:
            lines.write(json.dumps(entry) + "\n")
    job = {"created": 1700000150.0, "id": "project-3_1700000150000_abcdef", "scope": "project-3",
           "state": "promoted", "through_id": 42, "updated": 1700000160.0, "version": "v3"}
    _write_json(scope / "jobs" / f"{job['id']}.json", job)
    _write_json(scope / "jobs" / "project-3_1700000170000_0badf0.json", {"id": "x", "state": "exploded"})
    for lock in ("jobs.lock", "train.lock"):
        (scope / lock).touch()
    _write_json(root / "shared" / "jobs" / "shared_1700000180000_123456.json",
                {**job, "id": "shared_1700000180000_123456", "scope": "shared", "state": "queued"})
    return {"metas": metas, "history": history, "job": job}


def test_a_root_of_files_is_imported_once(tmp_path, database_url):
    root = tmp_path / "blobs" / "models"
    written = _a_root_of_files(root)
    registry = Registry(root, _database(tmp_path, database_url))
    assert registry.scopes() == ["project-3", "shared"]
    assert registry.active("project-3") == "v3"
    assert registry.versions("project-3") == list(written["metas"].values())
    assert registry.history("project-3") == written["history"]
    assert [job.to_json() for job in registry.jobs("project-3")] == [written["job"]]  # the broken one left out
    assert registry.trained_through("project-3") == 42
    assert [job.state for job in registry.jobs("shared")] == [JobState.queued]

    again = Registry(root, _database(tmp_path, database_url))  # a second open imports nothing
    assert again.history("project-3") == written["history"] and len(again.jobs("project-3")) == 1
    assert again.rollback("project-3") == "v1"
    with again.lock("project-3"):
        name, folder = again.allocate("project-3")
    assert name == "v4" and not (folder / "adapter").exists()  # the killed job's folder, emptied
    assert Registry(tmp_path / "blobs" / "scorers", _database(tmp_path, database_url), kind="scorers").scopes() == []
