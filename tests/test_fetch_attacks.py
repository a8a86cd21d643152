"""Attacks on the image fetcher, each against real servers on loopback: banned subnets hidden in IPv6
forms, DNS rebinding between the check and the connection, hosts that drip bytes, too many downloads."""
from __future__ import annotations

import collections
import shutil
import socket
import ssl
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from backend import images
from backend.connection import LabelStudioConnection
from backend.errors import ImageForbidden, ImageUnavailable
from backend.images import ImageFetcher
from model.settings import Settings
from tests.apps import App
from tests.synthetic import png_bytes, scene

IMAGE = scene(64, 48, seed=3)[0]
PNG = png_bytes(IMAGE)


class Site:
    """An HTTP host on 127.0.0.1 (or HTTPS, given a TLS context): GET /object.png answers the PNG, GET of a
    path in `redirects` answers 302 to its target; every request's path and headers are recorded."""

    def __init__(self, redirects: dict[str, str] | None = None, tls: ssl.SSLContext | None = None):
        self.requests: list[tuple[str, dict[str, str]]] = []
        site = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                site.requests.append((self.path, dict(self.headers)))
                if self.path in (redirects or {}):
                    self.send_response(302)
                    self.send_header("Location", redirects[self.path])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200 if self.path == "/object.png" else 404)
                self.send_header("Content-Length", str(len(PNG)))
                self.end_headers()
                self.wfile.write(PNG)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"

    @property
    def paths(self) -> list[str]:
        return [path for path, _ in self.requests]

    def __enter__(self) -> Site:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


class DripServer:
    """A host that answers every GET one byte each 0.5 s, forever: after complete headers ("body"), or
    within the headers themselves ("headers"). It records when each request came."""

    def __init__(self, phase: str):
        self.stop = threading.Event()
        self.started: list[float] = []
        drip = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                drip.started.append(time.monotonic())
                try:
                    self.wfile.write(b"HTTP/1.1 200 OK\r\n")
                    if phase == "body":
                        self.wfile.write(b"Content-Type: image/png\r\nContent-Length: 1000000\r\n\r\n")
                    while not drip.stop.wait(0.5):
                        self.wfile.write(b"x")
                except OSError:
                    pass  # the fetcher gave up and closed the connection

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> DripServer:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()


def fetcher(tmp_path, **overrides) -> ImageFetcher:
    settings = Settings(data_dir=tmp_path, **overrides)
    return ImageFetcher(settings, LabelStudioConnection(settings))


def fake_dns(monkeypatch, answers: dict[str, list[tuple[str, ...]]]) -> collections.Counter:
    """Each name in `answers` resolves to its answers in turn (the last one ever after); other names and
    address literals resolve for real. Returns how often each fake name was looked up."""
    real = socket.getaddrinfo
    lookups: collections.Counter = collections.Counter()

    def getaddrinfo(host, port, *args, **kwargs):
        if host not in answers:
            return real(host, port, *args, **kwargs)
        addresses = answers[host][min(lookups[host], len(answers[host]) - 1)]
        lookups[host] += 1
        return [info for address in addresses for info in real(address, port, *args, **kwargs)]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return lookups


@pytest.mark.parametrize("host", ["[::ffff:127.0.0.1]", "[::ffff:7f00:1]", "[::127.0.0.1]", "[2002:7f00:1::]",
                                  "[64:ff9b::127.0.0.1]"])
def test_ipv6_forms_of_a_banned_ipv4_address_are_refused_before_connecting(tmp_path, host):
    with Site() as site:
        with pytest.raises(ImageForbidden, match="banned subnet"):
            fetcher(tmp_path, banned_subnets="127.0.0.0/8").fetch(f"http://{host}:{site.port}/object.png")
        assert site.requests == []


def test_mapped_metadata_address_is_refused_by_default(tmp_path):
    with pytest.raises(ImageForbidden):
        fetcher(tmp_path).fetch("http://[::ffff:169.254.169.254]/latest/meta-data")


def test_mapped_banned_address_is_403_at_the_edge(tmp_path):
    config = ('<View><Image name="image" value="$image"/><BrushLabels name="tag" toName="image">'
              '<Label value="Object"/></BrushLabels><KeyPointLabels name="kp" toName="image" smart="true">'
              '<Label value="Object" smart="true"/></KeyPointLabels></View>')
    click = {"type": "keypointlabels", "from_name": "kp", "to_name": "image", "original_width": 64,
             "original_height": 48, "value": {"x": 50, "y": 50, "width": 1, "keypointlabels": ["Object"]}}
    with Site() as site:
        client = App(Settings(data_dir=tmp_path, banned_subnets="127.0.0.0/8")).client
        task = {"id": 7, "data": {"image": f"http://[::ffff:127.0.0.1]:{site.port}/object.png"}}
        response = client.post("/predict", json={"tasks": [task], "label_config": config, "project": "3.1",
                                                 "params": {"context": {"result": [click]}}})
        assert response.status_code == 403, response.json
        assert site.requests == []


def test_ipv6_loopback_is_not_taken_for_a_banned_ipv4_address(tmp_path, monkeypatch):
    """::1 lies in ::/96 but is no IPv4-compatible address (0.0.0.0/8 is banned by default); nothing listens
    on it, so the fetch goes on to the host's next checked address."""
    fake_dns(monkeypatch, {"dual.test": [("::1", "127.0.0.1")]})
    with Site() as site:
        assert np.array_equal(fetcher(tmp_path).fetch(f"http://dual.test:{site.port}/object.png"), IMAGE)
        assert site.paths == ["/object.png"]


def test_connection_goes_to_the_checked_address_not_a_rebound_one(tmp_path, monkeypatch):
    lookups = fake_dns(monkeypatch, {"images.test": [("127.0.0.1",), ("169.254.169.254",)]})
    with Site() as site:
        image = fetcher(tmp_path, banned_subnets="169.254.0.0/16", fetch_timeout=2).fetch(
            f"http://images.test:{site.port}/object.png")
        assert np.array_equal(image, IMAGE)
        assert lookups["images.test"] == 1
        assert [(path, headers["Host"]) for path, headers in site.requests] == [
            ("/object.png", f"images.test:{site.port}")]


def test_the_checked_resolution_is_the_first(tmp_path, monkeypatch):
    fake_dns(monkeypatch, {"images.test": [("169.254.169.254",), ("127.0.0.1",)]})
    with Site() as site:
        with pytest.raises(ImageForbidden):
            fetcher(tmp_path, banned_subnets="169.254.0.0/16").fetch(f"http://images.test:{site.port}/object.png")
        assert site.requests == []


@pytest.mark.parametrize("rebound", [False, True])
def test_each_redirect_hop_is_resolved_checked_and_pinned(tmp_path, monkeypatch, rebound):
    """A redirect target that resolves into a banned subnet is refused; one that resolves to an allowed
    address first and a banned one later is fetched from the allowed one."""
    answers = [("127.0.0.1",), ("169.254.169.254",)] if rebound else [("169.254.169.254",)]
    lookups = fake_dns(monkeypatch, {"images.test": [("127.0.0.1",)], "cdn.test": answers})
    with Site() as cdn, Site({"/a.png": f"http://cdn.test:{cdn.port}/object.png"}) as origin:
        fetch = fetcher(tmp_path, banned_subnets="169.254.0.0/16", fetch_timeout=2).fetch
        url = f"http://images.test:{origin.port}/a.png"
        if rebound:
            assert np.array_equal(fetch(url), IMAGE)
            assert [headers["Host"] for _, headers in cdn.requests] == [f"cdn.test:{cdn.port}"]
        else:
            with pytest.raises(ImageForbidden):
                fetch(url)
            assert cdn.requests == []
        assert origin.paths == ["/a.png"] and lookups["cdn.test"] == 1


def test_a_redirect_away_from_label_studio_drops_the_token(tmp_path):
    with Site() as other, Site({"/data/upload/3/object.png": f"{other.url}/object.png"}) as label_studio:
        fetch = fetcher(tmp_path, label_studio_url=label_studio.url, label_studio_api_key="tok").fetch
        assert np.array_equal(fetch("/data/upload/3/object.png"), IMAGE)
        assert label_studio.requests[0][1]["Authorization"] == "Token tok"
        assert other.paths == ["/object.png"] and "Authorization" not in other.requests[0][1]


@pytest.fixture
def certificate(tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("no openssl to make a certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=images.test",
                    "-addext", "subjectAltName=DNS:images.test", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    return cert, key


def test_https_to_a_pinned_address_keeps_the_hostname_for_sni_and_the_certificate(tmp_path, monkeypatch, certificate):
    cert, key = certificate
    server_names: list[str | None] = []
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    tls.sni_callback = lambda _sock, name, _context: server_names.append(name)
    fake_dns(monkeypatch, {"images.test": [("127.0.0.1",)], "other.test": [("127.0.0.1",)]})
    with Site(tls=tls) as site:
        fetch = fetcher(tmp_path, fetch_timeout=5)
        fetch._tls = ssl.create_default_context(cafile=str(cert))
        assert np.array_equal(fetch.fetch(f"https://images.test:{site.port}/object.png"), IMAGE)
        assert server_names == ["images.test"]
        with pytest.raises(ImageUnavailable, match="certificate"):
            fetch.fetch(f"https://other.test:{site.port}/object.png")
        assert site.paths == ["/object.png"]


@pytest.mark.parametrize("phase, timeout", [("body", 2.0), ("headers", 1.0)])
def test_a_dripping_host_is_cut_off_at_the_fetch_timeout(tmp_path, phase, timeout):
    with DripServer(phase) as drip:
        start = time.monotonic()
        with pytest.raises(ImageUnavailable, match="SEGAGENT_FETCH_TIMEOUT"):
            fetcher(tmp_path, fetch_timeout=timeout).fetch(f"{drip.url}/object.png")
        assert time.monotonic() - start < timeout + 1.0


def test_downloads_in_flight_are_bounded_and_all_end_in_bounded_time(tmp_path, monkeypatch):
    """Three fetches from a dripping host with two slots: two are cut off at the timeout, the third waits
    for a slot (then is cut off too, or gives up waiting); afterwards the slots are free again."""
    monkeypatch.setattr(images, "MAX_CONCURRENT_FETCHES", 2)
    fetch = fetcher(tmp_path, fetch_timeout=1.0)
    errors: list[Exception] = []

    def attempt(i: int) -> None:
        try:
            fetch.fetch(f"{drip.url}/{i}.png")
        except Exception as exc:
            errors.append(exc)

    with DripServer("body") as drip:
        start = time.monotonic()
        threads = [threading.Thread(target=attempt, args=(i,)) for i in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=5)
        assert time.monotonic() - start < 3.5
        assert len(errors) == 3 and all(isinstance(exc, ImageUnavailable) for exc in errors)
        assert sum(started < start + 0.9 for started in drip.started) == 2  # the third waited for a slot
    with Site() as site:
        assert np.array_equal(fetch.fetch(f"{site.url}/object.png"), IMAGE)
