"""Where the flywheel's stores are for a given configuration: rows in the database (SQLite files in the data folder,
or SEGAGENT_DATABASE_URL), files (images, adapters, scorer versions) in the blob folder every machine shares. (On
SQLite a registry's rows are in a file of its own folder, as before the database held them.)"""
from __future__ import annotations

from model.flywheel.registry import Registry
from model.flywheel.trajectories import TrajectoryStore
from model.settings import Settings


def trajectory_store(settings: Settings) -> TrajectoryStore:
    rows = settings.database_url or settings.data_dir / "trajectories" / "trajectories.sqlite3"
    return TrajectoryStore(settings.blobs / "trajectories", rows)


def policy_registry(settings: Settings) -> Registry:
    return Registry(settings.blobs / "models", settings.database_url or None, kind="models")


def scorer_registry(settings: Settings) -> Registry:
    return Registry(settings.blobs / "scorers", settings.database_url or None, kind="scorers")
