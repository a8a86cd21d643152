"""python -m backend migrate [--data-dir D] [--database-url URL]: copy a data folder's SQLite stores into a
database (PostgreSQL), so that backends and workers on several machines share them.

Each store's SQLite file is opened first (which brings it to the newest revision: a file written before the stores
used Alembic is adopted), the target's schema made by the same revisions, and every table's rows copied in one
transaction per store. A target table that has rows already is refused (exit code 2) before anything is written.
The registries' state (D/models and D/scorers; json files of a folder written before are imported first) goes into
the database's registry tables, namespaced by kind. Files (images, adapters, scorer versions) are not
moved: they go to the blob folder by hand, as the command says at its end.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from sqlalchemy import Connection, Engine, MetaData, Table, create_engine, func, insert, inspect, select, text
from sqlalchemy.exc import SQLAlchemyError

from model.core.database import Database, dispose_engines, engine_for, is_database_url, redact
from model.flywheel import registry, trajectories
from model.flywheel.registry import Registry
from model.settings import Settings

from . import preannotation_queue, predicted_regions, quality_labels, store

BATCH = 500
BLOB_FOLDERS = ("trajectories/images", "models", "scorers")


@dataclass(frozen=True)
class Store:
    name: str
    migrations: Path
    files: tuple[str, ...]  # SQLite files, relative to the data folder
    renumbered: dict[str, str] = field(default_factory=dict)  # table -> serial column the target assigns anew
    in_blobs: bool = False  # its files are under the blob folder (SEGAGENT_BLOB_DIR), not the data folder


STORES = (
    Store("annotations", store.MIGRATIONS, ("annotations.sqlite3",)),
    Store("preannotation", preannotation_queue.MIGRATIONS, ("preannotation.sqlite3",)),
    Store("predicted_regions", predicted_regions.MIGRATIONS, ("predicted_regions.sqlite3",)),
    Store("quality_labels", quality_labels.MIGRATIONS, ("quality_labels.sqlite3",)),
    Store("trajectories", trajectories.MIGRATIONS, ("trajectories/trajectories.sqlite3",)),
    # two files, each numbering its history from 1: the target numbers the merged history (in each file's order)
    Store("registry", registry.MIGRATIONS, ("models/registry.sqlite3", "scorers/registry.sqlite3"),
          {"registry_history": "seq"}, in_blobs=True),
)
REGISTRIES = (("models", "models"), ("scorers", "scorers"))  # folder, kind


class Refused(Exception):
    """The migration cannot start; nothing was written to the target."""


def main(argv: list[str] | None = None, out: TextIO = sys.stdout) -> int:
    parser = argparse.ArgumentParser(prog="python -m backend migrate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, help="the data folder (default: SEGAGENT_DATA_DIR)")
    parser.add_argument("--database-url", help="the target, postgresql://... (default: SEGAGENT_DATABASE_URL)")
    parser.add_argument("--blob-dir", type=Path,
                        help="where the registries' folders are (default: SEGAGENT_BLOB_DIR, else the data folder)")
    args = parser.parse_args(argv)
    settings = Settings() if None in (args.data_dir, args.database_url, args.blob_dir) else None
    data_dir: Path = args.data_dir if args.data_dir is not None else settings.data_dir if settings else Path()
    url: str = args.database_url if args.database_url is not None else settings.database_url if settings else ""
    blob_dir = args.blob_dir if args.blob_dir is not None else settings.blob_dir if settings else None
    try:
        migrate(data_dir, url, out, blob_dir)
    except Refused as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 2
    except SQLAlchemyError as exc:
        print(f"failed: {type(exc).__name__}: {str(getattr(exc, 'orig', exc)).splitlines()[0]}", file=sys.stderr)
        return 1
    finally:
        dispose_engines()
    _blob_advice(data_dir, blob_dir, out)
    return 0


def migrate(data_dir: Path, url: str, out: TextIO, blob_dir: Path | None = None) -> None:
    """Copy every store of `data_dir` (the registries': of `blob_dir`, when given) found into `url`; Refused (nothing
    written) when a target table has rows."""
    if not url or not is_database_url(url):
        raise Refused("no database URL: give --database-url postgresql://... or set SEGAGENT_DATABASE_URL")
    if not data_dir.is_dir():
        raise Refused(f"{data_dir} is not a folder")
    print(f"migrating {data_dir} into {redact(url)}", file=out)
    with engine_for(url).connect():
        pass  # reachable, before the folder's files are brought up to date
    _open_registries(blob_dir or data_dir, out)
    sources: list[tuple[Store, list[Path]]] = []
    for each in STORES:
        folder = (blob_dir or data_dir) if each.in_blobs else data_dir
        files = [folder / name for name in each.files if (folder / name).is_file()]
        if not files:
            print(f"{each.name}: skipped, no {' or '.join(each.files)} in {folder}", file=out)
            continue
        for path in files:
            Database(path, store=each.name, migrations=each.migrations)  # adopts or upgrades the file
        sources.append((each, files))
    _refuse_rows(url, sources)
    for each, files in sources:
        counts = _copy_store(each, files, url)
        print(f"{each.name}: " + ", ".join(f"{table} {n} rows" for table, n in counts.items()), file=out)


def _open_registries(parent: Path, out: TextIO) -> None:
    """Open each registry folder, so that one written before the database has its json files imported."""
    for folder, kind in REGISTRIES:
        root = parent / folder
        if root.is_dir():
            had_database = (root / "registry.sqlite3").exists()
            Registry(root, kind=kind)
            if not had_database:
                print(f"registry {kind}: its json files imported into {root / 'registry.sqlite3'}", file=out)


def _tables(engine: Engine, each: Store) -> list[str]:
    skipped = {f"{each.name}_schema_version"}
    return [name for name in inspect(engine).get_table_names() if name not in skipped and not name.startswith("sqlite_")]


def _refuse_rows(url: str, sources: list[tuple[Store, list[Path]]]) -> None:
    with engine_for(url).connect() as connection:
        existing = set(inspect(connection).get_table_names())
        full = []
        for each, files in sources:
            for path in files:
                with _reading(path) as source:
                    names = _tables(source.engine, each)
                for table in names:
                    if table in existing and connection.execute(text(f'SELECT 1 FROM "{table}" LIMIT 1')).first():
                        full.append(table)
    if full:
        raise Refused(f"{redact(url)} has rows already in {', '.join(sorted(set(full)))}; the migration copies into "
                      "empty tables only (use a new database)")


@contextmanager
def _reading(path: Path) -> Iterator[Connection]:
    """A SQLite file read on a connection of its own (the stores' engines begin every transaction as a writer)."""
    engine = create_engine(f"sqlite:///{path.resolve()}")
    try:
        with engine.connect() as connection:
            yield connection
    finally:
        engine.dispose()


def _copy_store(each: Store, files: list[Path], url: str) -> dict[str, int]:
    """Every row of the store's files into the target, in one transaction; serial columns' sequences moved past
    the ids copied."""
    target = Database(url, store=each.name, migrations=each.migrations)
    counts: dict[str, int] = {}
    with target.transaction() as tx:
        schema = MetaData()
        schema.reflect(bind=tx.connection)
        for path in files:
            with _reading(path) as source:
                present = set(_tables(source.engine, each))
                for table in schema.sorted_tables:  # a referenced table before the tables referring to it
                    if table.name in present:
                        counts[table.name] = counts.get(table.name, 0) + _copy_table(source, tx.connection, table,
                                                                                      each.renumbered.get(table.name))
        if target.postgres:
            for table in schema.sorted_tables:
                for column in table.primary_key.columns:
                    _advance_sequence(tx.connection, table.name, column.name)
    return counts


def _copy_table(source: Connection, target: Connection, table: Table, renumbered: str | None) -> int:
    columns = [c.name for c in table.columns if c.name != renumbered]
    origin = MetaData()
    origin.reflect(bind=source, only=[table.name])
    rows = origin.tables[table.name]
    order = [rows.c[c.name] for c in rows.primary_key.columns] or [rows.c[columns[0]]]
    result = source.execution_options(stream_results=True).execute(
        select(*(rows.c[name] for name in columns)).order_by(*order))
    copied = 0
    while batch := result.fetchmany(BATCH):
        target.execute(insert(table), [dict(zip(columns, row, strict=True)) for row in batch])
        copied += len(batch)
    return copied


def _advance_sequence(connection: Connection, table: str, column: str) -> None:
    sequence = connection.execute(select(func.pg_get_serial_sequence(table, column))).scalar()
    if sequence is not None:
        connection.execute(text(f'SELECT setval(:sequence, COALESCE(MAX("{column}"), 1), MAX("{column}") IS NOT NULL) '
                                f'FROM "{table}"'), {"sequence": sequence})


def _blob_advice(data_dir: Path, blob_dir: Path | None, out: TextIO) -> None:
    folders = [data_dir / name for name in BLOB_FOLDERS if (data_dir / name).is_dir()]
    if not folders:
        return
    blobs = str(blob_dir) if blob_dir else "$SEGAGENT_BLOB_DIR"
    print("Not moved: the files. Copy them into the blob folder every machine mounts (SEGAGENT_BLOB_DIR), keeping "
          "their places:", file=out)
    for folder in folders:
        parent = folder.relative_to(data_dir).parent
        into = blobs if parent == Path() else f"{blobs}/{parent}"
        print(f"  mkdir -p {into} && cp -a {folder} {into}/", file=out)
    if (data_dir / "embeddings").is_dir():
        print(f"Not to copy: {data_dir / 'embeddings'}, a cache of image encodings (diskcache), which the blob folder "
              "keeps in a format of its own (a file per entry): it fills again as images are encoded.", file=out)
    print(f"({data_dir}/models/*/versions and {data_dir}/scorers/*/versions hold the versions' files; the "
          "registry.sqlite3 and json files beside them are read no more once SEGAGENT_DATABASE_URL is set.)", file=out)
