"""One SQLite idiom for every store: a connection in WAL mode, writes in transactions that roll back
on any error, and a schema versioned by `PRAGMA user_version`.

A store lists its migrations in order, the first taking an empty database to version 1. Each is an
SQL script or a callable that takes the connection (for data changes). `Database` applies those above
the file's version, each in its own transaction together with the new version number, so that a crash
mid-migration leaves the file at the version before. A file of a newer version than the code knows
is refused: its data may mean something this code cannot tell.

    db = Database(path, migrations=[SCRIPT_1, SCRIPT_2])
    with db.transaction() as conn:
        conn.execute("INSERT ...")
    rows = db.fetchall("SELECT ...")
"""
from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

Migration = str | Callable[[sqlite3.Connection], None]


class SchemaTooNewError(RuntimeError):
    """The database was written by a newer version of the code."""


class Database:
    """A connection shared by the threads of a process; the lock gives each transaction or read the
    connection to itself (a read never sees another thread's write half done)."""

    def __init__(self, path: str | Path, migrations: Sequence[Migration] = (), timeout: float = 30.0):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(str(self.path), timeout=timeout, isolation_level=None, check_same_thread=False)
        self._lock = threading.RLock()
        try:
            self._conn.execute("PRAGMA journal_mode=WAL")
            # with WAL, NORMAL may lose the last commits to a power cut, never consistency
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute("PRAGMA foreign_keys=ON")
            self.migrate(migrations)
        except BaseException:
            self._conn.close()
            raise

    @property
    def user_version(self) -> int:
        row = self.fetchone("PRAGMA user_version")
        assert row is not None  # PRAGMA user_version always answers one row
        return row[0]

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """`BEGIN IMMEDIATE` (the write lock up front, so no upgrade from reader can deadlock), commit on
        success, roll back on any exception and re-raise it."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:  # SQLite ends some failed transactions itself
                    self._conn.execute("ROLLBACK")
                raise

    def fetchone(self, sql: str, args: Sequence[Any] = ()) -> tuple | None:
        with self._lock:
            return self._conn.execute(sql, args).fetchone()

    def fetchall(self, sql: str, args: Sequence[Any] = ()) -> list[tuple]:
        with self._lock:
            return self._conn.execute(sql, args).fetchall()

    def migrate(self, migrations: Sequence[Migration]) -> None:
        """Bring the file up to version len(migrations); refuse a file of a newer version."""
        found = self.user_version
        if found > len(migrations):
            raise SchemaTooNewError(
                f"{self.path} has schema version {found}, newer than this code knows ({len(migrations)}): "
                "it was written by a newer version; upgrade the code or use another data folder")
        for version in range(found + 1, len(migrations) + 1):
            with self.transaction() as conn:
                if conn.execute("PRAGMA user_version").fetchone()[0] >= version:
                    continue  # another process migrated it meanwhile
                step = migrations[version - 1]
                if callable(step):
                    step(conn)
                else:
                    for statement in split_statements(step):
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {int(version)}")

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def split_statements(script: str) -> list[str]:
    """The statements of an SQL script, to run one by one inside a transaction (`executescript`
    commits first). Semicolons inside literals, comments and trigger bodies do not split."""
    statements, pending = [], ""
    for piece in script.split(";"):
        pending += piece
        if sqlite3.complete_statement(pending + ";"):
            if pending.strip():
                statements.append(pending.strip())
            pending = ""
        else:
            pending += ";"
    if pending.strip():
        statements.append(pending.strip())  # unfinished: executing it lets SQLite say what is wrong
    return statements
