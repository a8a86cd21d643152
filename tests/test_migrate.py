"""`python -m backend migrate`: a data folder's SQLite stores copied into PostgreSQL. A folder written by the code of
ae0981c (tests/fixtures/data-folder-ae0981c.tar.gz: SQLite files at PRAGMA user_version, registries as json files)
and one written by the current code arrive whole: every store read back through its class on the URL answers what it
answered on the files; new rows get new ids; a second run is refused and writes nothing; the password is not shown."""
from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import MetaData, create_engine, select
from sqlalchemy.engine import make_url

from backend.migrate import STORES
from backend.preannotation_queue import PreannotationQueue
from backend.predicted_regions import PredictedRegions
from backend.quality_labels import Label, QualityLabels
from backend.store import AnnotationStore, PendingWork
from model.core.clicks import Click
from model.core.database import dispose_engines
from model.flywheel.registry import JobState, Registry
from model.flywheel.trajectories import StepRecord, TrajectoryRecord, TrajectoryStore

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = Path(__file__).with_name("fixtures") / "data-folder-ae0981c.tar.gz"


def _migrate(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SEGAGENT_")}
    return subprocess.run([sys.executable, "-m", "backend", "migrate", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=180, env={**clean, **(env or {})})


def _unpacked(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    with tarfile.open(FIXTURE) as archive:
        archive.extractall(folder, filter="data")
    return folder


def _engine(url: str):
    return create_engine(make_url(url).set(drivername="postgresql+psycopg"))


def _rows(engine, skip_column: dict[str, str] | None = None) -> dict[str, list[tuple]]:
    """Every table's rows, sorted (a version table left out)."""
    schema = MetaData()
    schema.reflect(bind=engine)
    with engine.connect() as connection:
        return {table.name: sorted((tuple(row) for row in connection.execute(select(*(
            c for c in table.columns if c.name != (skip_column or {}).get(table.name))))), key=repr)
            for table in schema.sorted_tables if not table.name.endswith("_schema_version")}


def _source_rows(data: Path) -> dict[str, list[tuple]]:
    rows: dict[str, list[tuple]] = {}
    for store in STORES:
        for name in store.files:
            if (data / name).exists():
                for table, found in _rows(create_engine(f"sqlite:///{data / name}"), store.renumbered).items():
                    rows[table] = sorted(rows.get(table, []) + found, key=repr)
    return rows


def _registries(data: Path, url: str | None) -> list[Registry]:
    return [Registry(data / "models", url, kind="models"), Registry(data / "scorers", url, kind="scorers")]


def _stores(data: Path, url: str | None) -> dict:
    """What the stores answer, read through their classes: on the folder's files (url None) or on the URL."""
    def place(name: str) -> str | Path:
        return url or data / f"{name}.sqlite3"

    annotations = AnnotationStore(place("annotations"))
    queue = PreannotationQueue(place("preannotation"))
    labels = QualityLabels(place("quality_labels"))
    trajectories = TrajectoryStore(data / "trajectories", url)
    try:
        progress = queue.progress("1")
        return {
            "regions": {a: [{**r, "mask": r["mask"].tolist()} for r in annotations.regions(a)] for a in (100, 101)},
            "owed": [(w.annotation_id, w.updated_at, w.image, w.task_data, w.attempts) for w in annotations.pending_work()],
            "episodes": [{**e, "mask": e["mask"].tolist()} for e in annotations.episodes("1", 10)],
            "interactive": [(o[0], o[1], o[2].tolist()) for o in annotations.interactive_objects("1", 10)],
            "queue": {k: progress[k] for k in ("done", "failed", "remaining", "total", "written", "skipped")},
            "predicted": [(p.region_id, p.label, p.model_version, p.score, p.mask.tolist())
                          for p in PredictedRegions(place("predicted_regions")).for_task("1", 10, 10**9)],
            "labels": [(x.tolist() if isinstance(x, np.ndarray) else x) for x in labels.training_set("1")],
            "trajectories": [(r.id, r.source, r.label, r.prompt, r.image_sha, r.target.tolist(), r.annotation_id,
                              [(s.click, s.mask_before.tolist(), s.mask_after.tolist(), s.iou) for s in r.steps])
                             for r in trajectories.records("1")],
            "registries": [(r.active("project-1"), r.versions("project-1"), r.history("project-1"),
                            [j.to_json() for j in r.jobs("project-1")]) for r in _registries(data, url)],
        }
    finally:
        queue.close()


def _box(top: int, left: int, bottom: int, right: int) -> np.ndarray:
    mask = np.zeros((16, 16), bool)
    mask[top:bottom, left:right] = True
    return mask


def test_a_folder_written_by_ae0981c_arrives_whole(tmp_path, postgres_url):
    data = _unpacked(tmp_path)
    assert not (data / "models" / "registry.sqlite3").exists()  # the registries are json files still
    result = _migrate("--data-dir", str(data), "--database-url", postgres_url)
    assert result.returncode == 0, result.stderr
    password = make_url(postgres_url).password
    assert password and password not in result.stdout + result.stderr
    assert "annotation_regions 3 rows" in result.stdout and "registry_jobs 1 rows" in result.stdout
    assert "cp -a" in result.stdout and str(data / "trajectories" / "images") in result.stdout

    assert _rows(_engine(postgres_url), {"registry_history": "seq"}) == _source_rows(data)
    on_files, on_url = _stores(data, None), _stores(data, postgres_url)
    assert on_url == on_files
    assert [r["label"] for r in on_url["regions"][100]] == ["Car", "Tree"] and on_url["regions"][100][0]["mask"] == \
        _box(2, 2, 8, 8).tolist()
    assert [w[0] for w in on_url["owed"]] == [100]  # 101's work was done
    assert on_url["queue"]["done"] == 1 and on_url["queue"]["remaining"] == 2
    predicted = {p[0]: p for p in on_url["predicted"]}
    assert sorted(predicted) == ["p1", "p2"] and predicted["p1"][4] == _box(2, 2, 9, 9).tolist()
    assert sorted(on_url["labels"][1]) == pytest.approx([0.81, 0.93])
    assert [len(t[7]) for t in on_url["trajectories"]] == [2, 1]
    (policy, scorer) = on_url["registries"]
    assert policy[0] == "v1" and [v["name"] for v in policy[1]] == ["v1"] and policy[2][0]["reason"] == "gate passed"
    assert [j["state"] for j in policy[3]] == [JobState.promoted] and scorer[0] == "v1"
    assert (data / "models" / "project-1" / "versions" / "v1" / "adapter" / "adapter_config.json").exists()

    refused = _migrate("--data-dir", str(data), "--database-url", postgres_url)
    assert refused.returncode == 2 and "rows already" in refused.stderr
    assert password not in refused.stdout + refused.stderr
    assert _stores(data, postgres_url) == on_url  # the refused run wrote nothing

    _write_after(data, postgres_url)


def _write_after(data: Path, url: str) -> None:
    """The sequences were moved past the ids copied: new rows get new ids."""
    annotations = AnnotationStore(url)
    annotations.record_episode("1", 10, "Car", "again", "v2", [], _box(0, 0, 2, 2), 0.5, "done")
    annotations.record_interactive("1", 10, "Car", [(1.0, 1.0, True)], _box(0, 0, 2, 2), "r9")
    assert len(annotations.episodes("1", 10)) == 2
    trajectories = TrajectoryStore(data / "trajectories", url)
    before = trajectories.newest_id()
    sha = trajectories.records("1").__next__().image_sha
    trajectories.replace_annotation("1", 11, 101, "2026-01-02T00:00:00Z", [TrajectoryRecord(
        "human", "Car", "", sha, _box(0, 0, 4, 4), [StepRecord(Click(1.0, 1.0, True), _box(0, 0, 1, 1), _box(0, 0, 4, 4),
                                                               1.0)])])
    assert trajectories.newest_id() == before + 1
    labels = QualityLabels(url)
    assert labels.replace_annotation("1", 11, 101, "2026-01-02T00:00:00Z",
                                     [Label("prediction", "p3", "Car", "v1", 0.5, np.zeros(8))])
    assert labels.count_after("1", 2) == 1
    policies = Registry(data / "models", url, kind="models")
    policies.activate("project-1", "v0", "rolled back")
    assert [h["version"] for h in policies.history("project-1")] == ["v1", "v0"]


def test_a_folder_written_by_the_current_code_migrates(tmp_path, postgres_url):
    data = tmp_path / "data"
    AnnotationStore(data / "annotations.sqlite3").replace(
        "2", 5, 50, "2026-02-01T00:00:00Z", [("Cat", None, "human", _box(1, 1, 5, 5), "a")],
        PendingWork(50, "2026-02-01T00:00:00Z", "2", 5, "http://images/5.png", {"image": "5.png"}))
    trajectories = TrajectoryStore(data / "trajectories")
    sha = trajectories.put_image(np.zeros((16, 16, 3), np.uint8))
    trajectories.replace_annotation("2", 5, 50, "2026-02-01T00:00:00Z", [TrajectoryRecord(
        "human", "Cat", "", sha, _box(1, 1, 5, 5), [StepRecord(Click(2.0, 2.0, True), _box(0, 0, 0, 0),
                                                               _box(1, 1, 5, 5), 1.0)])])
    for registry in _registries(data, None):
        with registry.lock("shared"):
            name, folder = registry.allocate("shared")
            (folder / "weights").write_text(name)
            registry.register("shared", name, {"parent": "v0"})
            registry.activate("shared", name, f"first {registry.kind}")
    dispose_engines()

    result = _migrate(env={"SEGAGENT_DATA_DIR": str(data), "SEGAGENT_DATABASE_URL": postgres_url})
    assert result.returncode == 0, result.stderr
    assert "preannotation: skipped" in result.stdout and "registry_history 2 rows" in result.stdout
    assert _rows(_engine(postgres_url), {"registry_history": "seq"}) == _source_rows(data)
    assert AnnotationStore(postgres_url).regions(50)[0]["mask"].tolist() == _box(1, 1, 5, 5).tolist()
    assert [r.steps[0].click for r in TrajectoryStore(data / "trajectories", postgres_url).records("2")] == [
        Click(2.0, 2.0, True)]
    assert [(r.kind, r.active("shared"), [h["reason"] for h in r.history("shared")])
            for r in _registries(data, postgres_url)] == [("models", "v1", ["first models"]),
                                                          ("scorers", "v1", ["first scorers"])]


def test_registries_kept_in_the_blob_folder_are_migrated_from_there(tmp_path, postgres_url):
    data, blobs = tmp_path / "data", tmp_path / "blobs"  # SQLite with SEGAGENT_BLOB_DIR: the registries are there
    AnnotationStore(data / "annotations.sqlite3")
    for registry in _registries(blobs, None):
        with registry.lock("shared"):
            name, _ = registry.allocate("shared")
            registry.register("shared", name, {"parent": "v0"})
            registry.activate("shared", name, f"kept in the blob folder ({registry.kind})")
    dispose_engines()

    result = _migrate(env={"SEGAGENT_DATA_DIR": str(data), "SEGAGENT_BLOB_DIR": str(blobs),
                           "SEGAGENT_DATABASE_URL": postgres_url})
    assert result.returncode == 0, result.stderr
    assert [(r.active("shared"), [h["reason"] for h in r.history("shared")]) for r in _registries(blobs, postgres_url)] \
        == [("v1", ["kept in the blob folder (models)"]), ("v1", ["kept in the blob folder (scorers)"])]


def test_without_a_database_url_it_says_so(tmp_path):
    result = _migrate("--data-dir", str(tmp_path))
    assert result.returncode == 2 and "SEGAGENT_DATABASE_URL" in result.stderr
    usage = subprocess.run([sys.executable, "-m", "backend"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert usage.returncode == 1 and "python -m backend migrate" in usage.stderr
