"""Where Label Studio is and how to authenticate to it, per project. A host and its token are kept together,
as a pair, and a token is only ever sent to the host it came with: the environment's pair (LABEL_STUDIO_URL
with LABEL_STUDIO_API_KEY) for every project when LABEL_STUDIO_URL is set, else the pair each project's
/setup sent."""
from __future__ import annotations

import logging
import threading
import time
from urllib.parse import urlsplit

import requests

from model.settings import Settings

log = logging.getLogger(__name__)


class LabelStudio:
    """One Label Studio host and the token that came with it."""

    def __init__(self, url: str = "", key: str = ""):
        self.url = url.rstrip("/")
        self.key = key if self.url else ""
        self._access: tuple[str, float] | None = None  # a short-lived JWT from a personal access token
        self._lock = threading.Lock()

    @property
    def pair(self) -> tuple[str, str]:
        return self.url, self.key

    def auth_header(self, session: requests.Session, timeout: float) -> dict:
        """The header for this host; send it only where owns() says so."""
        if not self.key:
            return {}
        if self.key.count(".") != 2:  # a legacy token
            return {"Authorization": f"Token {self.key}"}
        with self._lock:  # a personal access token (a JWT refresh token): trade it for an access token
            if self._access is None or self._access[1] < time.time():
                response = session.post(f"{self.url}/api/token/refresh", json={"refresh": self.key}, timeout=timeout)
                response.raise_for_status()
                self._access = (response.json()["access"], time.time() + 240)
            return {"Authorization": f"Bearer {self._access[0]}"}

    def api(self, session: requests.Session, method: str, path: str, timeout: float, **kwargs) -> dict:
        """A call to Label Studio's API; raises requests' errors."""
        if not self.key:
            raise requests.ConnectionError("Label Studio is unknown: set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY, "
                                           "or connect the backend from Label Studio")
        response = session.request(method, f"{self.url}{path}", headers=self.auth_header(session, timeout),
                                   timeout=timeout, **kwargs)
        response.raise_for_status()
        return response.json() if response.content else {}

    def owns(self, url: str) -> bool:
        if not self.url:
            return False
        mine, theirs = urlsplit(self.url), urlsplit(url)
        return (mine.scheme, mine.hostname, mine.port) == (theirs.scheme, theirs.hostname, theirs.port)


NOWHERE = LabelStudio()


class LabelStudioConnection:
    """The Label Studio of each project: the environment's pair for every project when LABEL_STUDIO_URL is
    set, else the pair each project's /setup sent."""

    def __init__(self, settings: Settings):
        self._env = LabelStudio(settings.label_studio_url, settings.label_studio_api_key) \
            if settings.label_studio_url else None
        if settings.label_studio_api_key and not settings.label_studio_url:
            log.warning("LABEL_STUDIO_API_KEY is unused until LABEL_STUDIO_URL is set: it is never sent to a host "
                        "that a request names")
        self._projects: dict[str, LabelStudio] = {}
        self._lock = threading.Lock()

    def remember_setup(self, project: str, hostname: str | None, access_token: str | None) -> None:
        """What a project's /setup sent, as one pair: a host without a token gets no token, a token without a
        host is dropped. Nothing a request sends changes what the environment set."""
        if self._env or not _is_web_origin(hostname or ""):
            return
        pair = LabelStudio(hostname or "", access_token or "")
        with self._lock:
            if self._projects.get(project, NOWHERE).pair != pair.pair:
                self._projects[project] = pair  # a new pair: its access token is fetched anew

    def for_project(self, project: str) -> LabelStudio:
        return self._env or self._projects.get(project, NOWHERE)


def _is_web_origin(url: str) -> bool:
    try:
        parts = urlsplit(url)
        port_is_valid = parts.port is None or parts.port > 0
    except ValueError:  # a malformed IPv6 address or port
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname) and port_is_valid
