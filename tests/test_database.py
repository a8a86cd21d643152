"""The SQL layer under the stores, on SQLite and on PostgreSQL: transactions that roll back, Alembic revisions that
apply once and whole (also when processes start together), databases of a newer revision refused; the annotation
store opening files written before it had migrations, and those of today's SQLite code (PRAGMA user_version);
the trajectory store's delete rolling back and its images named by the one image digest."""
import json
import sqlite3
import subprocess
import sys
import threading

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import inspect
from sqlalchemy.exc import DBAPIError, IntegrityError

from backend.store import AnnotationStore
from model.core.clicks import Click
from model.core.database import Database, SchemaTooNewError
from model.core.imageio import image_digest
from model.core.masks import rle_encode
from model.flywheel.trajectories import StepRecord, TrajectoryRecord, TrajectoryStore


def revisions(folder, *steps: str):
    """A store's revision folder: each step the body of an upgrade() (op and sa in scope)."""
    folder.mkdir(exist_ok=True)
    for number, body in enumerate(steps, start=1):
        down = repr(f"{number - 1:04d}") if number > 1 else None
        (folder / f"{number:04d}_step.py").write_text(
            f"import sqlalchemy as sa\nfrom alembic import op\n\nrevision = {f'{number:04d}'!r}\n"
            f"down_revision = {down}\n\n\ndef upgrade():\n    {body}\n")
    return folder


ITEMS = "op.create_table('items', sa.Column('name', sa.Text, nullable=False, unique=True))"
FILL = "op.execute(\"INSERT INTO items VALUES ('x')\"); op.execute(\"INSERT INTO items VALUES ('y')\")"
SIZE = ("op.add_column('items', sa.Column('size', sa.Integer)); "
        "op.execute('UPDATE items SET size = length(name) + 1')")


def target(tmp_path, database_url):
    return database_url or tmp_path / "db.sqlite3"


def names(db: Database) -> list[str]:
    return [name for (name,) in db.fetchall("SELECT name FROM items ORDER BY name")]


def test_transaction_commits_or_leaves_nothing_written(tmp_path, database_url):
    migrations = revisions(tmp_path / "m", ITEMS)
    db = Database(target(tmp_path, database_url), store="t", migrations=migrations)
    with db.transaction() as tx:
        tx.execute("INSERT INTO items VALUES (?)", ("a",))
    with pytest.raises(RuntimeError, match="midway"), db.transaction() as tx:
        tx.execute("INSERT INTO items VALUES (?)", ("b",))
        raise RuntimeError("midway")
    with pytest.raises(IntegrityError), db.transaction() as tx:
        tx.execute("INSERT INTO items VALUES (?)", ("c",))
        tx.execute("INSERT INTO items VALUES (?)", ("a",))  # not unique
    assert names(db) == ["a"]
    with db.transaction() as tx:  # no transaction was left open
        tx.executemany("INSERT INTO items VALUES (?)", [("d",), ("e",)])
    assert names(Database(target(tmp_path, database_url), store="t", migrations=migrations)) == ["a", "d", "e"]


def test_migrations_apply_once_in_order_and_data_steps_run(tmp_path, database_url):
    where = target(tmp_path, database_url)
    first = revisions(tmp_path / "one", ITEMS)
    db = Database(where, store="t", migrations=first)
    assert db.revision == 1 and names(db) == []
    db = Database(where, store="t", migrations=revisions(tmp_path / "three", ITEMS, FILL, SIZE))
    assert db.revision == 3 and db.fetchall("SELECT name, size FROM items ORDER BY name") == [("x", 2), ("y", 2)]
    db = Database(where, store="t", migrations=tmp_path / "three")
    assert db.fetchone("SELECT COUNT(*) FROM items") == (2,)


def test_stores_sharing_a_database_keep_their_own_revisions(tmp_path, database_url):
    where = target(tmp_path, database_url)
    Database(where, store="a", migrations=revisions(tmp_path / "a", ITEMS))
    other = Database(where, store="b", migrations=revisions(tmp_path / "b", "op.create_table('things', "
                                                               "sa.Column('x', sa.Integer))", "pass"))
    assert other.revision == 2 and Database(where, store="a", migrations=tmp_path / "a").revision == 1


def test_a_failing_migration_leaves_the_previous_revision(tmp_path, database_url):
    where = target(tmp_path, database_url)
    failing = revisions(tmp_path / "fail", ITEMS, "op.execute(\"INSERT INTO items VALUES ('half')\"); "
                        "raise RuntimeError('crash mid-migration')")
    Database(where, store="t", migrations=revisions(tmp_path / "one", ITEMS))
    with pytest.raises(RuntimeError, match="crash"):
        Database(where, store="t", migrations=failing)
    db = Database(where, store="t", migrations=tmp_path / "one")
    assert db.revision == 1 and names(db) == []
    broken = revisions(tmp_path / "broken", ITEMS, "op.create_table('other', sa.Column('x', sa.Integer)); "
                       "op.execute('SELECT * FROM missing')")
    with pytest.raises(DBAPIError):  # the second statement fails: the first is undone too
        Database(where, store="t", migrations=broken)
    db = Database(where, store="t", migrations=tmp_path / "one")
    assert db.revision == 1 and "other" not in inspect(db.engine).get_table_names()


def test_a_newer_database_is_refused(tmp_path, database_url):
    where = target(tmp_path, database_url)
    Database(where, store="t", migrations=revisions(tmp_path / "two", ITEMS, "pass"))
    with pytest.raises(SchemaTooNewError, match="revision 0002, which this code does not know"):
        Database(where, store="t", migrations=revisions(tmp_path / "one", ITEMS))


def test_processes_starting_together_migrate_once(tmp_path, database_url):
    where = str(target(tmp_path, database_url))
    migrations = revisions(tmp_path / "m", ITEMS, FILL, SIZE)
    code = ("import sys; from pathlib import Path; from model.core.database import Database; "
            "db = Database(sys.argv[1], store='t', migrations=Path(sys.argv[2])); print(db.revision)")
    processes = [subprocess.Popen([sys.executable, "-c", code, where, str(migrations)], stdout=subprocess.PIPE,
                                  text=True) for _ in range(3)]
    assert [p.communicate(timeout=120)[0].strip() for p in processes] == ["3", "3", "3"]
    assert Database(where, store="t", migrations=migrations).fetchone("SELECT COUNT(*) FROM items") == (2,)


def test_a_file_whose_write_lock_is_held_is_opened_once_it_is_released(tmp_path):
    # entering WAL mode upgrades a read to a write, which SQLite fails at once rather than wait: what a process
    # opening a new file meets when another process is setting the file up
    path = tmp_path / "db.sqlite3"
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("CREATE TABLE unrelated (a)")
    holder.execute("BEGIN IMMEDIATE")
    threading.Timer(0.5, holder.execute, ("COMMIT",)).start()
    db = Database(path, store="t", migrations=revisions(tmp_path / "m", ITEMS), timeout=10)
    assert db.revision == 1
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_a_legacy_file_newer_than_the_code_is_refused(tmp_path):
    path = tmp_path / "annotations.sqlite3"
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version = 9")
    with pytest.raises(SchemaTooNewError, match="schema version 9"):
        AnnotationStore(path)


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
    assert store.schema_version == 3
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
    with pytest.raises(IntegrityError, match="refused"):
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
