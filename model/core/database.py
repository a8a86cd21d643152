"""One SQL idiom for every store, on SQLite (a file in the data folder, the embedded default) or on PostgreSQL
(SEGAGENT_DATABASE_URL, shared by backends and workers on several machines), through SQLAlchemy; each store's
schema is an Alembic revision chain that runs on both.

A write transaction holds the store's write lock for its whole length, so the stores keep SQLite's guarantees
on PostgreSQL without rewriting their logic: on SQLite `BEGIN IMMEDIATE` takes the file's write lock up front
(no upgrade from reader can deadlock); on PostgreSQL a transaction-scoped advisory lock per store does the
same. Reads take no lock. Stores write SQL with `?` placeholders; they become bound parameters here, for
either dialect. A released revision is never edited: a change to a schema is a new revision at the end of its chain.

    db = Database(target, store="annotations", migrations=FOLDER)   # target: a file path or a database URL
    with db.transaction() as tx:
        tx.execute("INSERT ...", (a, b))
    rows = db.fetchall("SELECT ...")
"""
from __future__ import annotations

import functools
import logging
import os
import re
import sqlite3
import threading
import time
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Connection, CursorResult, Engine, TextClause, create_engine, event, text
from sqlalchemy.engine import make_url

ENVIRONMENT = Path(__file__).with_name("migrations")
_ENGINES: dict[str, Engine] = {}
_ENGINES_LOCK = threading.Lock()
_READ_ONLY = "segagent_read"  # execution option: a read, which on SQLite begins no write transaction
log = logging.getLogger(__name__)
# Alembic logs two lines each time a store is opened ("Context impl ..."), drowning every command's output; the
# upgrades themselves are logged below, once.
logging.getLogger("alembic.runtime.migration").setLevel(logging.WARNING)


class SchemaTooNewError(RuntimeError):
    """The database was written by a newer version of the code."""


def is_database_url(target: str | Path) -> bool:
    return isinstance(target, str) and "://" in target


def is_postgres(url: str) -> bool:
    return make_url(url).get_backend_name() == "postgresql"


def redact(url: str) -> str:
    """The URL as it may be logged: no password."""
    return make_url(url).render_as_string(hide_password=True) if is_database_url(url) else url


class Transaction:
    """A connection inside a write transaction, taking `?` placeholders."""

    def __init__(self, connection: Connection):
        self.connection = connection

    def execute(self, sql: str, args: Sequence[Any] = ()) -> CursorResult:
        return self.connection.execute(_statement(sql), _params(args))

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            self.connection.execute(_statement(sql), [_params(row) for row in rows])


class Database:
    """A store's database. Connections come from a pool shared by the process's threads (per file on SQLite, per
    server on PostgreSQL); each transaction or read has one to itself."""

    def __init__(self, target: str | Path, *, store: str, migrations: Path, timeout: float = 30.0):
        self.store = store
        self.url = str(target) if is_database_url(target) else _sqlite_url(Path(target))
        self.path = None if is_database_url(target) else Path(target)
        self.engine = engine_for(self.url, timeout)
        self.postgres = is_postgres(self.url)
        self._lock_key = _lock_key(store)
        self._migrate(migrations)

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """Commit on success, roll back on any exception and re-raise it; the store's write lock held throughout."""
        with self.engine.begin() as connection:  # SQLite: BEGIN IMMEDIATE (the "begin" listener)
            if self.postgres:
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": self._lock_key})
            yield Transaction(connection)

    def fetchone(self, sql: str, args: Sequence[Any] = ()) -> Any:
        with self._reading() as connection:
            return connection.execute(_statement(sql), _params(args)).fetchone()

    def fetchall(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        with self._reading() as connection:
            return list(connection.execute(_statement(sql), _params(args)).fetchall())

    @property
    def revision(self) -> int:
        """The schema's revision number (revisions are named 0001, 0002, ...); 0 for an empty database."""
        current = self._stamped()
        return int(current) if current else 0

    def joined(self, column: str, separator: str) -> str:
        """The SQL aggregate joining a column's texts in a group (the dialects name it differently)."""
        function = "string_agg" if self.postgres else "group_concat"
        return f"{function}({column}, '{separator}')"

    def utc_day(self, column: str) -> str:
        """The SQL of a time's (seconds since the epoch) UTC day, as YYYY-MM-DD."""
        if self.postgres:
            return f"to_char(to_timestamp({column}) AT TIME ZONE 'UTC', 'YYYY-MM-DD')"
        return f"date({column}, 'unixepoch')"

    @property
    def version_table(self) -> str:
        return f"{self.store}_schema_version"

    def close(self) -> None:
        """Nothing to do: connections go back to the process's pool (`dispose_engines` closes them)."""

    @contextmanager
    def _reading(self) -> Iterator[Connection]:
        with self.engine.connect().execution_options(**{_READ_ONLY: True}) as connection:
            yield connection

    def _migrate(self, migrations: Path) -> None:
        """Bring the schema up to the newest revision in `migrations`, under the write lock so that processes
        starting together migrate once; refuse a database at a revision this code does not know."""
        config = _alembic_config(migrations)
        script = _script_directory(migrations)
        if self._current(script) == script.get_current_head():
            return
        with self.transaction() as tx:
            current = self._current(script)
            if current is None and self.path is not None:
                current = _adopt_legacy_sqlite(tx.connection, script, self.version_table)
            if current == script.get_current_head():
                return
            config.attributes.update(connection=tx.connection, version_table=self.version_table)
            log.info("%s store: schema %s -> %s", self.store, current or "empty", script.get_current_head())
            command.upgrade(config, "head")

    def _stamped(self) -> str | None:
        with self._reading() as connection:
            return MigrationContext.configure(connection, opts={"version_table": self.version_table}) \
                .get_current_revision()

    def _current(self, script: ScriptDirectory) -> str | None:
        current = self._stamped()
        if current is not None:
            try:
                script.get_revision(current)
            except CommandError:
                known = script.get_current_head()
                raise SchemaTooNewError(
                    f"{redact(self.url)}: the {self.store} store's schema is at revision {current}, which this code "
                    f"does not know (its newest is {known}): it was written by a newer version; upgrade the code or "
                    "use another database") from None
        return current


def _alembic_config(migrations: Path) -> Config:
    config = Config()
    config.set_main_option("script_location", str(ENVIRONMENT))
    config.set_main_option("version_locations", str(migrations))
    config.set_main_option("path_separator", "os")
    return config


@functools.lru_cache(maxsize=64)
def _script_directory(migrations: Path) -> ScriptDirectory:
    """A store's revisions, read once per process."""
    return ScriptDirectory.from_config(_alembic_config(migrations))


def _adopt_legacy_sqlite(connection: Connection, script: ScriptDirectory, version_table: str) -> str | None:
    """A file written before the stores used Alembic carries its version in `PRAGMA user_version`; its revision
    of the same number has the same schema, so the file is stamped at it."""
    legacy = connection.exec_driver_sql("PRAGMA user_version").scalar() or 0
    if not legacy:
        return None
    revision = f"{legacy:04d}"
    try:
        script.get_revision(revision)
    except CommandError:
        raise SchemaTooNewError(f"schema version {legacy}, newer than this code knows") from None
    MigrationContext.configure(connection, opts={"version_table": version_table}).stamp(script, revision)
    return revision


def engine_for(url: str, timeout: float = 30.0) -> Engine:
    """One engine (and its pool) per database per process."""
    with _ENGINES_LOCK:
        if url not in _ENGINES:
            _ENGINES[url] = _postgres_engine(url, timeout) if is_postgres(url) else _sqlite_engine(url, timeout)
        return _ENGINES[url]


def dispose_engines() -> None:
    """Close every pooled connection of this process."""
    with _ENGINES_LOCK:
        for engine in _ENGINES.values():
            engine.dispose()
        _ENGINES.clear()


def _forget_parents_connections() -> None:
    # a forked child (an RQ work horse) must not use the parent's sockets and file handles: new pools
    for engine in _ENGINES.values():
        engine.dispose(close=False)
    _ENGINES.clear()


os.register_at_fork(after_in_child=_forget_parents_connections)


def _sqlite_url(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path.resolve()}"


def _sqlite_engine(url: str, timeout: float) -> Engine:
    # connections stay open in the pool: opening one on a full disk fails before SQLite can say the disk is full
    engine = create_engine(url, pool_size=4, max_overflow=12,
                           connect_args={"timeout": timeout, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _configure(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # the driver begins nothing itself: the "begin" listener does
        _enter_wal_mode(dbapi_connection, timeout)
        # with WAL, NORMAL may lose the last commits to a power cut, never consistency
        dbapi_connection.execute("PRAGMA synchronous=NORMAL")
        dbapi_connection.execute("PRAGMA foreign_keys=ON")

    @event.listens_for(engine, "begin")
    def _begin(connection: Connection) -> None:
        if not connection.get_execution_options().get(_READ_ONLY):
            connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def _enter_wal_mode(dbapi_connection: sqlite3.Connection, timeout: float) -> None:
    """Entering WAL mode reads the file, then takes its write lock; SQLite fails that upgrade at once instead of
    waiting (waiting could deadlock), so processes opening a new file together retry it here, for `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            dbapi_connection.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _postgres_engine(url: str, timeout: float) -> Engine:
    driver_url = make_url(url).set(drivername="postgresql+psycopg")
    return create_engine(driver_url, pool_pre_ping=True, pool_size=4, max_overflow=12,
                         connect_args={"connect_timeout": int(timeout),
                                       # a machine that vanished holding a lock is noticed within a minute or so
                                       "keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10,
                                       "keepalives_count": 3,
                                       # a write lock (or any lock) waited for past the timeout fails, as on SQLite
                                       "options": f"-c lock_timeout={int(timeout * 1000)}"})


def _lock_key(store: str) -> int:
    return zlib.crc32(f"segagent:{store}".encode())


_PLACEHOLDER = re.compile(r"\?")


@functools.lru_cache(maxsize=1024)
def _statement(sql: str) -> TextClause:
    counter = iter(range(10_000))
    return text(_PLACEHOLDER.sub(lambda _: f":p{next(counter)}", sql))


def _params(args: Sequence[Any]) -> dict[str, Any]:
    return {f"p{i}": value for i, value in enumerate(args)}
