"""gunicorn entry point: gunicorn backend.wsgi:app"""
import atexit
import logging
import os

from model.settings import Settings

from .app import create_app
from .container import Backend

logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO"),
                    format="%(asctime)s %(levelname)s %(name)s: %(message)s")
backend = Backend.build(Settings())
atexit.register(backend.close)
app = create_app(backend)
