"""Backends built by the composition root, with a test client of their HTTP edge; every backend a test
builds is closed after it (tests/conftest.py), as the app closes its own on exit."""
from __future__ import annotations

from flask.testing import FlaskClient

from backend.app import create_app
from backend.container import Backend
from model.settings import Settings

BUILT: list[Backend] = []


class App:
    def __init__(self, settings: Settings):
        self.backend = Backend.build(settings)
        BUILT.append(self.backend)
        self.client: FlaskClient = create_app(self.backend).test_client()


def close_all() -> None:
    while BUILT:
        BUILT.pop().close()
