"""A named lock with one holder at a time, freed when its holder dies, even by SIGKILL: on PostgreSQL a
session-level advisory lock on a connection held for the lock's length (the server frees it when that connection
dies), so it excludes processes on every machine sharing the database; on SQLite (one machine) an flock on a file.

    with exclusive(db, "train:models:project-3", folder / "train.lock"):   # Held if another process has it
        ...
"""
from __future__ import annotations

import fcntl
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import text

from model.core.database import Database


class Held(RuntimeError):
    """Another holder has the lock."""


@contextmanager
def exclusive(database: Database, name: str, file: Path) -> Iterator[None]:
    """Hold the lock `name` of the database's store for the block; Held at once if another holder has it.
    `file` is the lock's file on SQLite (created if missing); PostgreSQL does not use it."""
    if database.postgres:
        with _advisory(database, name):
            yield
    else:
        with _flock(file, name):
            yield


@contextmanager
def _advisory(database: Database, name: str) -> Iterator[None]:
    # the two-key form: a key space apart from the stores' one-key transaction locks
    keys = {"store": _int32(database.store), "name": _int32(name)}
    # autocommit: holding the lock must not hold a transaction open (a snapshot, vacuum held back) for hours
    connection = database.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
    try:
        if not connection.execute(text("SELECT pg_try_advisory_lock(:store, :name)"), keys).scalar():
            raise Held(f"{name} is held by another process")
        try:
            yield
        finally:
            try:
                connection.execute(text("SELECT pg_advisory_unlock(:store, :name)"), keys)
            except Exception:
                # a connection that may still hold the lock must not go back to the pool: closing it frees the lock
                connection.invalidate()
                raise
    finally:
        connection.close()


@contextmanager
def _flock(file: Path, name: str) -> Iterator[None]:
    # flock belongs to the open file: two opens of the file, in two threads or two processes, exclude each other
    file.parent.mkdir(parents=True, exist_ok=True)
    with open(file, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise Held(f"{name} is held by another process") from exc
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _int32(value: str) -> int:
    """A signed 32-bit key (PostgreSQL's int4) for a name."""
    key = zlib.crc32(f"segagent:{value}".encode())
    return key - (1 << 32) if key >= 1 << 31 else key
