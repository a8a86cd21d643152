"""Where Label Studio is and how to authenticate to it: the environment first, then what /setup sent.
Its API token goes to its own host only."""
from __future__ import annotations

import threading
import time
from urllib.parse import urlsplit

import requests

from model.settings import Settings


class LabelStudioConnection:
    """Where Label Studio is and how to authenticate: the environment first, then what /setup sent."""

    def __init__(self, settings: Settings):
        self._env_url = settings.label_studio_url
        self._env_key = settings.label_studio_api_key
        self._setup_url = ""
        self._setup_key = ""
        self._access: tuple[str, float] | None = None  # a short-lived JWT from a personal access token
        self._lock = threading.Lock()

    def remember_setup(self, hostname: str | None, access_token: str | None) -> None:
        if isinstance(hostname, str) and hostname.startswith(("http://", "https://")):
            self._setup_url = hostname.rstrip("/")
        if isinstance(access_token, str) and access_token:
            self._setup_key = access_token

    @property
    def url(self) -> str:
        return self._env_url or self._setup_url

    @property
    def key(self) -> str:
        return self._env_key if self._env_url or self._env_key else self._setup_key

    def auth_header(self, session: requests.Session, timeout: float) -> dict:
        key = self.key
        if not key:
            return {}
        if key.count(".") != 2:  # a legacy token
            return {"Authorization": f"Token {key}"}
        with self._lock:  # a personal access token (a JWT refresh token): trade it for an access token
            if self._access is None or self._access[1] < time.time():
                response = session.post(f"{self.url}/api/token/refresh", json={"refresh": key}, timeout=timeout)
                response.raise_for_status()
                self._access = (response.json()["access"], time.time() + 240)
            return {"Authorization": f"Bearer {self._access[0]}"}

    def api(self, session: requests.Session, method: str, path: str, timeout: float, **kwargs) -> dict:
        """A call to Label Studio's API; raises requests' errors."""
        if not self.url or not self.key:
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
