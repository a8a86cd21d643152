"""The SQLite layer under the stores: transactions that roll back, migrations that apply once and whole,
files of a newer version refused; the annotation store opening files written before it had migrations;
the trajectory store's delete rolling back and its images named by the one image digest."""
import json
import sqlite3

import numpy as np
import pytest
from PIL import Image

from backend.store import MIGRATIONS as ANNOTATION_MIGRATIONS
from backend.store import AnnotationStore
from model.core.clicks import Click
from model.core.imageio import image_digest
from model.core.masks import rle_encode
from model.core.sqlite import Database, SchemaTooNewError, split_statements
from model.flywheel.trajectories import StepRecord, TrajectoryRecord, TrajectoryStore

ITEMS = "CREATE TABLE items (name TEXT NOT NULL UNIQUE)"


def names(db: Database) -> list[str]:
    return [name for (name,) in db.fetchall("SELECT name FROM items ORDER BY name")]


def test_transaction_commits_or_leaves_nothing_written(tmp_path):
    db = Database(tmp_path / "db.sqlite3", [ITEMS])
    with db.transaction() as conn:
        conn.execute("INSERT INTO items VALUES ('a')")
    with pytest.raises(RuntimeError, match="midway"), db.transaction() as conn:
        conn.execute("INSERT INTO items VALUES ('b')")
        raise RuntimeError("midway")
    with pytest.raises(sqlite3.IntegrityError), db.transaction() as conn:
        conn.execute("INSERT INTO items VALUES ('c')")
        conn.execute("INSERT INTO items VALUES ('a')")  # not unique
    assert names(db) == ["a"]
    with db.transaction() as conn:  # no transaction was left open
        conn.execute("INSERT INTO items VALUES ('d')")
    db.close()
    assert names(Database(tmp_path / "db.sqlite3", [ITEMS])) == ["a", "d"]


def test_migrations_apply_once_in_order_and_data_steps_run(tmp_path):
    def fill(conn: sqlite3.Connection) -> None:
        conn.executemany("INSERT INTO items VALUES (?)", [("x",), ("y",)])

    migrations = [ITEMS, fill, "ALTER TABLE items ADD COLUMN size INTEGER; UPDATE items SET size = length(name) + 1"]
    db = Database(tmp_path / "db.sqlite3", migrations[:1])
    assert db.user_version == 1 and names(db) == []
    db.close()
    db = Database(tmp_path / "db.sqlite3", migrations)
    assert db.user_version == 3 and db.fetchall("SELECT name, size FROM items ORDER BY name") == [("x", 2), ("y", 2)]
    db.close()
    assert Database(tmp_path / "db.sqlite3", migrations).fetchone("SELECT COUNT(*) FROM items") == (2,)


def test_a_failing_migration_leaves_the_previous_version(tmp_path):
    def fail(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO items VALUES ('half')")
        raise RuntimeError("crash mid-migration")

    with pytest.raises(RuntimeError, match="crash"):
        Database(tmp_path / "db.sqlite3", [ITEMS, fail])
    db = Database(tmp_path / "db.sqlite3", [ITEMS])
    assert db.user_version == 1 and names(db) == []
    db.close()
    with pytest.raises(sqlite3.OperationalError):  # the second statement fails: the first is undone too
        Database(tmp_path / "db.sqlite3", [ITEMS, "CREATE TABLE other (x); SELECT * FROM missing"])
    db = Database(tmp_path / "db.sqlite3", [ITEMS])
    assert db.user_version == 1
    assert db.fetchone("SELECT COUNT(*) FROM sqlite_master WHERE name = 'other'") == (0,)


def test_a_newer_file_is_refused(tmp_path):
    Database(tmp_path / "db.sqlite3", [ITEMS, "CREATE TABLE more (x)"]).close()
    with pytest.raises(SchemaTooNewError, match="schema version 2, newer than this code knows \\(1\\)"):
        Database(tmp_path / "db.sqlite3", [ITEMS])
    path = tmp_path / "annotations.sqlite3"
    AnnotationStore(path)
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {len(ANNOTATION_MIGRATIONS) + 1}")
    with pytest.raises(SchemaTooNewError):
        AnnotationStore(path)


def test_split_statements_keeps_literals_comments_and_triggers_whole():
    script = """CREATE TABLE a (x TEXT DEFAULT 'a;b'); -- a comment; still one
    CREATE TRIGGER t AFTER INSERT ON a BEGIN UPDATE a SET x = 'y;'; END;
    """
    first, second = split_statements(script)
    assert first == "CREATE TABLE a (x TEXT DEFAULT 'a;b')" and second.endswith("SET x = 'y;'; END")


# The annotation store's schema as released before migrations (user_version 0), frozen here.
SCHEMA_BEFORE_MIGRATIONS = """
CREATE TABLE IF NOT EXISTS annotation_regions (
    project TEXT NOT NULL, task_id INTEGER NOT NULL, annotation_id INTEGER NOT NULL, updated_at TEXT NOT NULL,
    region_index INTEGER NOT NULL, label TEXT NOT NULL, prompt TEXT, source TEXT NOT NULL, mask_rle TEXT NOT NULL,
    received REAL NOT NULL, quality REAL, PRIMARY KEY (annotation_id, region_index)
);
CREATE INDEX IF NOT EXISTS regions_by_task ON annotation_regions (project, task_id);
CREATE TABLE IF NOT EXISTS agent_episodes (
    id INTEGER PRIMARY KEY AUTOINCREMENT, project TEXT NOT NULL, task_id INTEGER NOT NULL, label TEXT NOT NULL,
    description TEXT NOT NULL, model_version TEXT NOT NULL, steps TEXT NOT NULL, mask_rle TEXT NOT NULL,
    score REAL NOT NULL, stop_reason TEXT NOT NULL, created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS episodes_by_task ON agent_episodes (project, task_id);
CREATE TABLE IF NOT EXISTS interactive_steps (
    id INTEGER PRIMARY KEY AUTOINCREMENT, project TEXT NOT NULL, task_id INTEGER NOT NULL, label TEXT NOT NULL,
    clicks TEXT NOT NULL, mask_rle TEXT NOT NULL, created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS interactive_by_task ON interactive_steps (project, task_id, label);
"""


def test_annotation_store_opens_a_file_written_before_migrations(tmp_path):
    mask = np.zeros((20, 30), bool)
    mask[5:10, 8:20] = True
    rle = json.dumps(rle_encode(mask))
    path = tmp_path / "data" / "annotations.sqlite3"
    path.parent.mkdir()
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(SCHEMA_BEFORE_MIGRATIONS)
        conn.executemany("INSERT INTO annotation_regions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         [("3", 7, 11, "t1", 0, "Cat", "a cat", "brush", rle, 1.0, 0.25),
                          ("3", 7, 11, "t1", 1, "Dog", None, "brush", rle, 1.0, None)])
        conn.execute("INSERT INTO agent_episodes (project, task_id, label, description, model_version, steps, mask_rle,"
                     " score, stop_reason, created) VALUES ('3', 7, 'Cat', 'a cat', 'v0', ?, ?, 0.5, 'finish', 1.0)",
                     (json.dumps([{"action": "click", "x": 1, "y": 2, "positive": True, "score": 0.5}]), rle))
        conn.execute("INSERT INTO interactive_steps (project, task_id, label, clicks, mask_rle, created) "
                     "VALUES ('3', 7, 'Cat', ?, ?, 1.0)", (json.dumps([[1.0, 2.0, True]]), rle))
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone() == (0,)

    store = AnnotationStore(path)
    assert store.schema_version == len(ANNOTATION_MIGRATIONS)
    cat, dog = store.regions(11)
    assert (cat["label"], cat["prompt"], cat["source"], cat["quality"]) == ("Cat", "a cat", "brush", 0.25)
    assert dog["label"] == "Dog" and dog["prompt"] is None and (dog["mask"] == mask).all()
    [episode] = store.episodes("3", 7)
    assert episode["steps"][0]["x"] == 1 and episode["stop_reason"] == "finish" and (episode["mask"] == mask).all()
    [(clicks, kept)] = store.interactive_steps("3", 7, "Cat")
    assert clicks == [[1.0, 2.0, True]] and (kept == mask).all()
    assert store.counts() == {"annotations": 1, "regions": 2, "episodes": 1}
    assert store.lowest_quality("3", 5)[0]["annotation_id"] == 11
    assert not store.replace("3", 7, 11, "t1", [])  # the version kept then is recognised
    assert AnnotationStore(path).regions(11)[0]["label"] == "Cat"  # reopening migrates nothing twice


def trajectory(image_sha: str = "x") -> TrajectoryRecord:
    mask = np.zeros((8, 8), bool)
    mask[2:5, 2:5] = True
    return TrajectoryRecord("scratch", "L", "p", image_sha, mask, [StepRecord(Click(3, 3, True), mask, mask, 1.0)])


def test_trajectory_delete_rolls_back_when_it_fails_midway(tmp_path):
    store = TrajectoryStore(tmp_path)
    store.replace_annotation("p", 1, 11, "v", [trajectory()])
    store.replace_annotation("p", 2, 12, "v", [trajectory()])
    with sqlite3.connect(tmp_path / "trajectories.sqlite3") as conn:  # the second delete fails
        conn.execute("CREATE TRIGGER refuse BEFORE DELETE ON trajectories WHEN old.annotation_id = 12 "
                     "BEGIN SELECT RAISE(ABORT, 'refused'); END")
    with pytest.raises(sqlite3.IntegrityError, match="refused"):
        store.delete_annotations([11, 12])
    assert store.counts()["total"] == 2 and all(len(r.steps) == 1 for r in store.records())
    with sqlite3.connect(tmp_path / "trajectories.sqlite3") as conn:
        conn.execute("DROP TRIGGER refuse")
    assert store.delete_annotations([11, 12]) == 2 and store.counts()["total"] == 0


def test_trajectory_images_use_the_image_digest_and_old_names_still_read(tmp_path):
    store = TrajectoryStore(tmp_path)
    image = np.random.default_rng(0).integers(0, 256, (12, 16, 3), dtype=np.uint8)
    assert store.put_image(image) == image_digest(image)
    old_name = "a" * 64  # a sha256 hex digest, as the store named images before
    Image.fromarray(image[::-1]).save(store.images_dir / f"{old_name}.png")
    store.replace_annotation("p", 1, 11, "v", [trajectory(old_name)])
    [record] = store.records()
    assert record.image_sha == old_name and (store.image(record.image_sha) == image[::-1]).all()
