"""The label config of each project, as /setup sent it, for the requests that come without one."""
from __future__ import annotations

import threading

from cachetools import LRUCache, cached

from .errors import InvalidLabelConfig
from .labelstudio.config import Schema

PARSED_CONFIGS = 64  # label configs kept parsed: Label Studio sends the project's config with every click


class ProjectConfigs:
    def __init__(self, output: str) -> None:
        self.output = output  # SEGAGENT_OUTPUT: brush, polygon or auto
        self._schemas: dict[str, Schema] = {}
        self._lock = threading.Lock()
        self._parse = cached(LRUCache(PARSED_CONFIGS), lock=threading.Lock())(
            lambda label_config: Schema.from_config(label_config, output))

    def remember(self, project: str, label_config: str) -> None:
        schema = Schema.from_config(label_config, self.output)
        with self._lock:
            self._schemas[project] = schema

    def known(self, project: str) -> bool:
        with self._lock:
            return project in self._schemas

    def schema(self, project: str, label_config: str | None) -> Schema:
        """The request's own label config, else the one its project was set up with."""
        if label_config:
            return self._parse(label_config)
        with self._lock:
            known = self._schemas.get(project)
        if known is None:
            raise InvalidLabelConfig("the request has no label_config and its project was not set up")
        return known
