"""Backends built by the composition root, with a test client of their HTTP edge; every backend a test
builds is closed after it (tests/conftest.py), as the app closes its own on exit. Run with `--database postgresql`,
each backend a test builds gets a fresh PostgreSQL database of the session's cluster instead of SQLite files."""
from __future__ import annotations

import uuid
from collections.abc import Callable

from flask.testing import FlaskClient

from backend.app import create_app
from backend.container import Backend
from model.core.database import dispose_engines
from model.settings import Settings

BUILT: list[Backend] = []
# set by tests/conftest.py under --database postgresql: a fresh database's URL per call
fresh_database: Callable[[str], str] | None = None


class App:
    def __init__(self, settings: Settings):
        if fresh_database is not None and not settings.database_url:
            settings = settings.model_copy(update={"database_url": fresh_database(f"app_{uuid.uuid4().hex}")})
        self.backend = Backend.build(settings)
        BUILT.append(self.backend)
        self.client: FlaskClient = create_app(self.backend).test_client()


def close_all() -> None:
    while BUILT:
        BUILT.pop().close()
    if fresh_database is not None:
        dispose_engines()  # a database per backend: their pools would add up past the server's connections
