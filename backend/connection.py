"""Where Label Studio is and how to authenticate to it, per project. A host and its token are kept together,
as a pair, and a token is only ever sent to the host it came with: the environment's pair (LABEL_STUDIO_URL
with LABEL_STUDIO_API_KEY) for every project when LABEL_STUDIO_URL is set, else the pair each project's
/setup sent."""
from __future__ import annotations

import logging
import re
import threading
import time
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from model.settings import Settings

from .errors import LabelStudioFailed

log = logging.getLogger(__name__)

# the user:password@ of a URL, up to its last @ (an unescaped @ in a password) before the path
USERINFO = re.compile(r"(?<=://)[^/\s]*@")


def redact(text: str) -> str:
    """The text with every URL's user:password@ removed, for anything shown or logged."""
    return USERINFO.sub("", text)


class RedactedLogs(logging.Filter):
    """A record's message and traceback without URLs' user:password@ (a policy endpoint's in an error, one in a
    requests exception)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if USERINFO.search(message):
            record.msg, record.args = redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return True


def redact_logs() -> None:
    """On every handler of the root logger (a handler's filter sees every logger's records)."""
    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactedLogs())


class LabelStudio:
    """The one client of one Label Studio host: its address and the token that came with it, kept as a pair, and
    every call the backend makes to it (tasks, predictions, the project's label config, the quality write-back,
    and the header an image download from the host needs). Reads are retried with backoff on 429 and 5xx
    (Retry-After honoured); writes are not, since a retry after a lost answer would write twice or write what was
    read before the wait.
    Every failure is a LabelStudioFailed that says which call failed."""

    def __init__(self, url: str = "", key: str = "", timeout: float = 30.0):
        self._base = url.rstrip("/")  # what the calls go to: a user:password@ in it is requests' basic auth
        self.url = redact(self._base)  # what is shown, logged and built into links
        self.key = key if self.url else ""
        self.timeout = timeout
        self._access: tuple[str, float] | None = None  # a short-lived JWT from a personal access token
        self._lock = threading.Lock()
        self._session = requests.Session()
        self._session.trust_env = False  # proxies from the environment must not reroute Label Studio calls
        adapter = HTTPAdapter(max_retries=Retry(
            total=3, backoff_factor=0.5, status_forcelist=(429, 500, 502, 503, 504), raise_on_status=False,
            allowed_methods=frozenset({"GET"}), respect_retry_after_header=True))
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)

    @property
    def pair(self) -> tuple[str, str]:
        return self._base, self.key

    @property
    def known(self) -> bool:
        return bool(self.url and self.key)

    def auth_header(self) -> dict:
        """The header for this host; send it only where owns() says so."""
        if not self.key:
            return {}
        if self.key.count(".") != 2:  # a legacy token
            return {"Authorization": f"Token {self.key}"}
        with self._lock:  # a personal access token (a JWT refresh token): trade it for an access token
            if self._access is None or self._access[1] < time.time():
                response = self._session.post(f"{self._base}/api/token/refresh", json={"refresh": self.key},
                                              timeout=self.timeout, allow_redirects=False)
                response.raise_for_status()
                self._access = (response.json()["access"], time.time() + 240)
            return {"Authorization": f"Bearer {self._access[0]}"}

    def call(self, method: str, path: str, **kwargs) -> Any:
        """One API call; its JSON answer (an empty dict for none)."""
        if not self.known:
            raise LabelStudioFailed("Label Studio is unknown: set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY, or "
                                    "connect the backend from Label Studio")
        try:
            response = self._session.request(method, f"{self._base}{path}", headers=self.auth_header(),
                                             timeout=self.timeout, allow_redirects=False, **kwargs)
            response.raise_for_status()
            return response.json() if response.content else {}
        except (requests.RequestException, ValueError) as exc:
            raise LabelStudioFailed(f"Label Studio at {self.url}: {method} {path.split('?')[0]} failed: "
                                    f"{type(exc).__name__}: {redact(str(exc))[:200]}{self._hint(exc)}") from exc

    def _hint(self, exc: Exception) -> str:
        refused = isinstance(exc, requests.HTTPError) and exc.response is not None and exc.response.status_code == 401
        if not refused or self.key.count(".") == 2:
            return ""
        return (" (a legacy token, such as the one Label Studio sends when a project connects, is refused by an "
                "organisation with legacy tokens off, Label Studio 1.23's default: set LABEL_STUDIO_URL and "
                "LABEL_STUDIO_API_KEY to a personal access token, or turn legacy tokens on in the organisation)")

    def task(self, task_id: int) -> dict:
        return self.call("GET", f"/api/tasks/{int(task_id)}")

    def task_ids(self, project: str, page_size: int = 100) -> list[int]:
        """Every task id of the project, page by page (Label Studio says how many there are)."""
        ids: list[int] = []
        page = 1
        while True:
            body = self.call("GET", f"/api/tasks/?project={int(project)}&page={page}&page_size={page_size}"
                                    "&fields=task_only")
            tasks = body.get("tasks", []) if isinstance(body, dict) else body
            ids += [int(task["id"]) for task in tasks]
            total = body.get("total") if isinstance(body, dict) else None
            if len(tasks) < page_size or (isinstance(total, int) and len(ids) >= total):
                return ids
            page += 1

    def predictions(self, task_id: int) -> list[dict]:
        body = self.call("GET", f"/api/predictions/?task={int(task_id)}")
        return body if isinstance(body, list) else body.get("results", [])

    def create_prediction(self, task_id: int, prediction: dict) -> None:
        self.call("POST", "/api/predictions/", json={**prediction, "task": int(task_id)})

    def label_config(self, project: str) -> str:
        return str(self.call("GET", f"/api/projects/{int(project)}")["label_config"])

    def set_task_field(self, task_id: int, field: str, value: Any) -> None:
        """Set one field of the task's data, as the task is now. Label Studio's PATCH replaces `data` whole and
        takes no precondition, so the data is read (its stored URIs, not the links a GET resolves them to) and sent
        back at once with only this field changed; the PATCH is not retried, since a retry would send data read
        before its backoff. An edit made within that one round trip can still be lost."""
        data = self.call("GET", f"/api/tasks/{int(task_id)}?resolve_uri=false").get("data") or {}
        self.call("PATCH", f"/api/tasks/{int(task_id)}", json={"data": {**data, field: value}})

    def webhooks(self, project: str) -> list:
        body = self.call("GET", f"/api/webhooks/?project={int(project)}")
        return body if isinstance(body, list) else body.get("results", [])

    def set_webhook_headers(self, webhook_id: int, headers: dict) -> None:
        self.call("PATCH", f"/api/webhooks/{int(webhook_id)}/", json={"headers": headers})

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
        self.timeout = settings.fetch_timeout
        self._env = LabelStudio(settings.label_studio_url, settings.label_studio_api_key, self.timeout) \
            if settings.label_studio_url else None
        if settings.label_studio_api_key and not settings.label_studio_url:
            log.warning("LABEL_STUDIO_API_KEY is unused until LABEL_STUDIO_URL is set: it is never sent to a host "
                        "that a request names")
        self._projects: dict[str, LabelStudio] = {}
        self._lock = threading.Lock()

    def remember_setup(self, project: str, hostname: str | None, access_token: str | None) -> None:
        """What a project's /setup sent, as one pair: a host without a token gets no token, a token without a
        host is dropped. Nothing a request sends changes what the environment set."""
        if self._env or not hostname:
            return
        if not _is_web_origin(hostname):  # not logged: a malformed address may carry a password redact() misses
            log.warning("project %s: /setup's hostname is not an http(s) address without spaces; ignored", project)
            return
        pair = LabelStudio(hostname or "", access_token or "", self.timeout)
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
    no_space = not any(c.isspace() for c in url)  # RFC 3986; a password with one would escape redact()
    return parts.scheme in ("http", "https") and bool(parts.hostname) and port_is_valid and no_space
