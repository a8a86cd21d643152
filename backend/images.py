"""Fetching task images safely: Label Studio uploads and local files, http(s) URLs, cloud storage URIs.

Rules: only http and https are ever fetched. Each hop (redirects included, at most MAX_REDIRECTS) resolves
its host once and is refused when any address is in a banned subnet (link-local and cloud metadata by
default); an IPv6 address that carries an IPv4 one (mapped, compatible, 6to4, NAT64) counts as both. The
connection then goes to an address that was checked, never to a second lookup's answer (DNS rebinding),
while the Host header, TLS SNI and the certificate check keep the hostname. A project's Label Studio token
is sent to that Label Studio's own host only, hop by hop.

A whole fetch, redirects included, takes at most SEGAGENT_FETCH_TIMEOUT seconds: a watchdog shuts the
socket of a host that drips bytes in under each read timeout. At most MAX_CONCURRENT_FETCHES run at once;
another waits as long again for a slot, then fails. Bodies are read up to a byte limit and decoded only
below a pixel limit; at most DECODING_BUDGET times that many pixels are decoded at once (a decode takes up
to about 8 bytes a pixel, model/core/imageio.py), and a decode beyond it waits as long again, then fails.
Images are cached by URL (for a short while) and by content.
"""
from __future__ import annotations

import base64
import contextlib
import http.client
import ipaddress
import logging
import socket
import ssl
import threading
import time
from collections import OrderedDict
from urllib.parse import SplitResult, urljoin, urlsplit

import numpy as np
import requests
from requests.utils import DEFAULT_CA_BUNDLE_PATH, default_user_agent, requote_uri

from model.core.imageio import ImageError, ImageTooLarge, decode_image, image_digest, pixels_in
from model.settings import Settings

from .connection import LabelStudio, LabelStudioConnection
from .errors import ImageForbidden, ImageReferenceInvalid, ImageTooBig, ImageUnavailable

log = logging.getLogger(__name__)

CLOUD_SCHEMES = ("s3", "gs", "azure-blob", "azure-spi")
URL_CACHE_SECONDS = 300
MAX_REDIRECTS = 3
MAX_CONCURRENT_FETCHES = 8
DECODING_BUDGET = 2  # images of the largest size allowed decoded at once (or more pixels' worth of smaller ones)
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")
NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
IPV6_LOOPBACK = ipaddress.IPv6Address("::1")  # in ::/96, but no IPv4 address

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class ImageFetcher:
    def __init__(self, settings: Settings, connection: LabelStudioConnection):
        self.settings = settings
        self.connection = connection
        self._tls = ssl.create_default_context(cafile=DEFAULT_CA_BUNDLE_PATH)
        self._slots = threading.BoundedSemaphore(MAX_CONCURRENT_FETCHES)
        self._decoding = PixelBudget(DECODING_BUDGET * settings.max_image_pixels)
        self._by_url: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._by_digest: OrderedDict[str, np.ndarray] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def fetch(self, reference: str, task_id=None, project: str = "") -> np.ndarray:
        """The RGB image a task's image field refers to, with the project's Label Studio token where it applies."""
        if not isinstance(reference, str) or not reference.strip():
            raise ImageReferenceInvalid("the task has no image URL in its image field")
        label_studio = self.connection.for_project(project)
        url = self._absolute_url(reference.strip(), task_id, label_studio)
        # what one project's token fetched from Label Studio is no cache hit for another project
        cache_key = f"{project} {url}" if label_studio.owns(url) else url
        cached = self._cached(cache_key)
        if cached is not None:
            return cached
        data = self._download(url, label_studio)
        try:
            image = self._decode(data, reference)
        except ImageTooLarge as exc:
            raise ImageTooBig(f"{_short(reference)}: {exc}") from exc
        except ImageError as exc:
            raise ImageUnavailable(f"{_short(reference)}: {exc}") from exc
        self._store(cache_key, image)
        return image

    def _decode(self, data: bytes, reference: str) -> np.ndarray:
        pixels, limit = pixels_in(data), self.settings.max_image_pixels
        if pixels > limit:
            raise ImageTooLarge(f"the image has {pixels} pixels, more than the {limit} allowed")
        with self._decoding.reserve(pixels, self.settings.fetch_timeout, reference):
            return decode_image(data, limit)

    def _absolute_url(self, reference: str, task_id, label_studio: LabelStudio) -> str:
        scheme = urlsplit(reference).scheme.lower()
        if scheme in ("http", "https"):
            return reference
        if scheme in CLOUD_SCHEMES:
            if not label_studio.url or task_id is None:
                raise ImageReferenceInvalid(f"{_short(reference)} is a cloud storage URI; resolving it needs Label Studio "
                               "(LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY, or /setup) and a task id")
            encoded = base64.urlsafe_b64encode(reference.encode()).decode()
            return f"{label_studio.url}/tasks/{int(task_id)}/resolve/?fileuri={encoded}"
        if scheme == "" and reference.startswith("/"):
            if not label_studio.url:
                raise ImageReferenceInvalid(f"{_short(reference)} is a Label Studio path; set LABEL_STUDIO_URL and "
                               "LABEL_STUDIO_API_KEY (or connect the backend from Label Studio)")
            return urljoin(label_studio.url + "/", reference.lstrip("/"))
        raise ImageReferenceInvalid(f"{_short(reference)}: only http(s) URLs, Label Studio paths and cloud storage URIs "
                       "are fetched")

    def _download(self, url: str, label_studio: LabelStudio) -> bytes:
        if not self._slots.acquire(timeout=self.settings.fetch_timeout):
            raise ImageUnavailable(f"{_short(url)}: too many image downloads in progress; try again")
        try:
            deadline = time.monotonic() + self.settings.fetch_timeout
            for _ in range(MAX_REDIRECTS + 1):
                parts = urlsplit(url)
                addresses = self._checked_addresses(parts, url)
                headers = self._headers_for(url, label_studio, deadline)
                location, body = self._get(parts, url, addresses, headers, deadline)
                if location is None:
                    return body
                url = urljoin(url, location)
            raise ImageUnavailable(f"{_short(url)}: too many redirects")
        finally:
            self._slots.release()

    def _checked_addresses(self, parts: SplitResult, url: str) -> list[str]:
        """The addresses the URL's host resolves to now, refused if any of them is in a banned subnet."""
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ImageReferenceInvalid(f"{_short(url)}: only http(s) URLs are fetched")
        try:
            infos = socket.getaddrinfo(parts.hostname, _port(parts), type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError, ValueError) as exc:
            raise ImageUnavailable(f"{_short(url)}: host does not resolve ({exc})") from exc
        addresses = [str(info[4][0]) for info in infos]
        for address in addresses:
            if any(candidate in subnet for candidate in _meanings(address) for subnet in self.settings.banned_subnets):
                raise ImageForbidden(f"{_short(url)}: host {parts.hostname} is in a banned subnet")
        return addresses

    def _headers_for(self, url: str, label_studio: LabelStudio, deadline: float) -> dict:
        if not label_studio.owns(url):
            return {}
        try:
            return label_studio.auth_header()
        except requests.RequestException as exc:
            raise ImageUnavailable(f"{_short(url)}: cannot authenticate to Label Studio ({type(exc).__name__})") from exc

    def _get(self, parts: SplitResult, url: str, addresses: list[str], headers: dict,
             deadline: float) -> tuple[str | None, bytes]:
        """One GET sent to a checked address: where it redirects to, or else the body."""
        sock = _connect(addresses, _port(parts), deadline, url)
        watchdog = _Watchdog(sock, deadline)
        try:
            if parts.scheme == "https":
                sock = self._tls.wrap_socket(sock, server_hostname=parts.hostname)
            host = parts.netloc.rpartition("@")[2]
            client = http.client.HTTPConnection(host)
            client.sock = sock  # already connected, to the checked address: no second lookup
            target = requote_uri((parts.path or "/") + (f"?{parts.query}" if parts.query else ""))
            client.request("GET", target, headers={"Host": host, "User-Agent": default_user_agent(),
                                                   "Connection": "close", **headers})
            response = client.getresponse()
            if response.status in REDIRECT_STATUSES and response.getheader("location"):
                result: tuple[str | None, bytes] = (response.getheader("location"), b"")
            elif response.status != 200:
                raise ImageUnavailable(f"{_short(url)}: HTTP {response.status}")
            else:
                result = (None, self._read_limited(response, url))
        except (OSError, http.client.HTTPException) as exc:
            if not watchdog.fired:
                raise ImageUnavailable(f"{_short(url)}: cannot fetch ({type(exc).__name__}: {exc})") from exc
        finally:
            watchdog.stop()
            sock.close()
        if watchdog.fired:
            raise _too_slow(url)
        return result

    def _read_limited(self, response: http.client.HTTPResponse, url: str) -> bytes:
        limit = self.settings.max_image_bytes
        declared = response.getheader("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise ImageTooBig(f"{_short(url)}: {int(declared)} bytes, more than the {limit} allowed")
        chunks, total = [], 0
        while chunk := response.read(1 << 16):
            total += len(chunk)
            if total > limit:
                raise ImageTooBig(f"{_short(url)}: more than the {limit} bytes allowed")
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


class PixelBudget:
    """Pixels being decoded at once: a decode waits until its pixels fit beside those under way."""

    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0
        self._changed = threading.Condition()

    @contextlib.contextmanager
    def reserve(self, pixels: int, timeout: float, reference: str):
        with self._changed:
            if not self._changed.wait_for(lambda: self.used + pixels <= self.limit, timeout):
                raise ImageUnavailable(f"{_short(reference)}: too many images being decoded; try again")
            self.used += pixels
        try:
            yield
        finally:
            with self._changed:
                self.used -= pixels
                self._changed.notify_all()


class _Watchdog:
    """Shuts a connection down when the fetch's deadline passes: a read timeout bounds each read, not a
    host that sends a byte just before each one would expire. It holds a duplicate of the socket, so
    that shutting down never races with the fetching thread's own use or closing of it."""

    def __init__(self, sock: socket.socket, deadline: float):
        self._sock = sock.dup()
        self.fired = False
        self._timer = threading.Timer(max(0.0, deadline - time.monotonic()), self._fire)
        self._timer.daemon = True
        self._timer.start()

    def _fire(self) -> None:
        self.fired = True
        with contextlib.suppress(OSError):  # the peer closed it already
            self._sock.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        self._timer.cancel()
        self._timer.join()
        self._sock.close()


def _connect(addresses: list[str], port: int, deadline: float, url: str) -> socket.socket:
    """A connection to the first checked address that answers (localhost may be ::1 without a listener)."""
    error: OSError | None = None
    for address in addresses:
        try:
            return socket.create_connection((address, port), timeout=_remaining(deadline, url))
        except OSError as exc:
            error = exc
    raise ImageUnavailable(f"{_short(url)}: cannot connect ({error})")


def _meanings(text: str) -> list[Address]:
    """An address, and the IPv4 address an IPv6 one carries (mapped, compatible, 6to4, NAT64), if any."""
    address = ipaddress.ip_address(text.split("%")[0])
    if isinstance(address, ipaddress.IPv4Address):
        return [address]
    carried = address.ipv4_mapped or address.sixtofour
    if carried is None and ((address in IPV4_COMPATIBLE and address != IPV6_LOOPBACK) or address in NAT64):
        carried = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return [address] if carried is None else [address, carried]


def _port(parts: SplitResult) -> int:
    try:
        return parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise ImageReferenceInvalid(f"{_short(parts.geturl())}: {exc}") from exc


def _remaining(deadline: float, url: str) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise _too_slow(url)
    return left


def _too_slow(url: str) -> ImageUnavailable:
    return ImageUnavailable(f"{_short(url)}: not fetched within the time allowed (SEGAGENT_FETCH_TIMEOUT)")


def _short(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
