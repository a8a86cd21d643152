"""Fetching task images safely: Label Studio uploads and local files, http(s) URLs, cloud storage URIs.

Rules: only http and https are ever fetched; hosts that resolve into a banned subnet (link-local and
cloud metadata by default) are refused, redirects included; Label Studio's token is sent to Label
Studio's own host only; bodies are read up to a byte limit and decoded only below a pixel limit.
Images are cached by URL (for a short while) and by content.
"""
from __future__ import annotations

import base64
import ipaddress
import logging
import socket
import threading
import time
from collections import OrderedDict
from urllib.parse import urljoin, urlsplit

import numpy as np
import requests

from model.core.imageio import ImageError, ImageTooLarge, decode_image, image_digest
from model.settings import Settings

from .connection import LabelStudioConnection
from .errors import ImageForbidden, ImageReferenceInvalid, ImageTooBig, ImageUnavailable

log = logging.getLogger(__name__)

CLOUD_SCHEMES = ("s3", "gs", "azure-blob", "azure-spi")
URL_CACHE_SECONDS = 300
MAX_REDIRECTS = 3


class ImageFetcher:
    def __init__(self, settings: Settings, connection: LabelStudioConnection):
        self.settings = settings
        self.connection = connection
        self.session = requests.Session()
        self.session.trust_env = False  # proxies from the environment must not reroute task URLs
        self._by_url: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._by_digest: OrderedDict[str, np.ndarray] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def fetch(self, reference: str, task_id=None) -> np.ndarray:
        """The RGB image a task's image field refers to."""
        if not isinstance(reference, str) or not reference.strip():
            raise ImageReferenceInvalid("the task has no image URL in its image field")
        url = self._absolute_url(reference.strip(), task_id)
        cached = self._cached(url)
        if cached is not None:
            return cached
        data = self._download(url)
        try:
            image = decode_image(data, self.settings.max_image_pixels)
        except ImageTooLarge as exc:
            raise ImageTooBig(f"{_short(reference)}: {exc}") from exc
        except ImageError as exc:
            raise ImageUnavailable(f"{_short(reference)}: {exc}") from exc
        self._store(url, image)
        return image

    def _absolute_url(self, reference: str, task_id) -> str:
        scheme = urlsplit(reference).scheme.lower()
        if scheme in ("http", "https"):
            return reference
        if scheme in CLOUD_SCHEMES:
            if not self.connection.url or task_id is None:
                raise ImageReferenceInvalid(f"{_short(reference)} is a cloud storage URI; resolving it needs Label Studio "
                               "(LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY, or /setup) and a task id")
            encoded = base64.urlsafe_b64encode(reference.encode()).decode()
            return f"{self.connection.url}/tasks/{int(task_id)}/resolve/?fileuri={encoded}"
        if scheme == "" and reference.startswith("/"):
            if not self.connection.url:
                raise ImageReferenceInvalid(f"{_short(reference)} is a Label Studio path; set LABEL_STUDIO_URL and "
                               "LABEL_STUDIO_API_KEY (or connect the backend from Label Studio)")
            return urljoin(self.connection.url + "/", reference.lstrip("/"))
        raise ImageReferenceInvalid(f"{_short(reference)}: only http(s) URLs, Label Studio paths and cloud storage URIs "
                       "are fetched")

    def _check_host(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ImageReferenceInvalid(f"{_short(url)}: only http(s) URLs are fetched")
        try:
            infos = socket.getaddrinfo(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80),
                                       proto=socket.IPPROTO_TCP)
        except (socket.gaierror, UnicodeError) as exc:
            raise ImageUnavailable(f"{_short(url)}: host does not resolve ({exc})") from exc
        for info in infos:
            address = ipaddress.ip_address(info[4][0].split("%")[0])
            if any(address in subnet for subnet in self.settings.banned_subnets):
                raise ImageForbidden(f"{_short(url)}: host {parts.hostname} is in a banned subnet")

    def _download(self, url: str) -> bytes:
        for _ in range(MAX_REDIRECTS + 1):
            self._check_host(url)
            headers = self.connection.auth_header(self.session, self.settings.fetch_timeout) \
                if self.connection.owns(url) else {}
            try:
                with self.session.get(url, headers=headers, timeout=self.settings.fetch_timeout, stream=True,
                                      allow_redirects=False) as response:
                    if response.is_redirect:
                        url = urljoin(url, response.headers["location"])
                        continue
                    if response.status_code != 200:
                        raise ImageUnavailable(f"{_short(url)}: HTTP {response.status_code}")
                    return self._read_limited(response, url)
            except requests.RequestException as exc:
                raise ImageUnavailable(f"{_short(url)}: cannot fetch ({type(exc).__name__})") from exc
        raise ImageUnavailable(f"{_short(url)}: too many redirects")

    def _read_limited(self, response: requests.Response, url: str) -> bytes:
        limit = self.settings.max_image_bytes
        declared = response.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise ImageTooBig(f"{_short(url)}: {int(declared)} bytes, more than the {limit} allowed")
        chunks, total, deadline = [], 0, time.monotonic() + self.settings.fetch_timeout * 3
        for chunk in response.iter_content(1 << 16):
            total += len(chunk)
            if total > limit:
                raise ImageTooBig(f"{_short(url)}: more than the {limit} bytes allowed")
            if time.monotonic() > deadline:
                raise ImageUnavailable(f"{_short(url)}: download too slow")
            chunks.append(chunk)
        return b"".join(chunks)

    def _cached(self, url: str) -> np.ndarray | None:
        with self._lock:
            entry = self._by_url.get(url)
            if entry and entry[1] > time.time() and entry[0] in self._by_digest:
                self._by_digest.move_to_end(entry[0])
                self.hits += 1
                return self._by_digest[entry[0]]
            self.misses += 1
            return None

    def _store(self, url: str, image: np.ndarray) -> None:
        digest = image_digest(image)
        with self._lock:
            self._by_url[url] = (digest, time.time() + URL_CACHE_SECONDS)
            while len(self._by_url) > 10_000:
                self._by_url.popitem(last=False)
            if digest not in self._by_digest:
                self._by_digest[digest] = image
                self._bytes += image.nbytes
            while self._bytes > self.settings.image_cache_bytes and len(self._by_digest) > 1:
                _, evicted = self._by_digest.popitem(last=False)
                self._bytes -= evicted.nbytes


def _short(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
