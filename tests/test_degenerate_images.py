"""Images that used to make a click slow: one colour, near-flat noise, a few flat areas, dithered black and
white, pure noise. Each answers within seconds with a sensible mask, and slow clicks never take every thread
of a real server (gunicorn on loopback, its memory capped, as `make serve` runs it): /health answers within a
second throughout, extra clicks get 503 with Retry-After, and an ordinary click is answered."""
from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests

from model.core.clicks import Click
from model.tools.classical import ClassicalTool
from tests.synthetic import FileServer, free_port, png_bytes, scene
from tests.test_backend import CONFIG

ROOT = Path(__file__).resolve().parents[1]
HEIGHT, WIDTH = 400, 600
RNG = np.random.default_rng(0)


def grey(levels: np.ndarray) -> np.ndarray:
    return np.repeat(levels.astype(np.uint8)[:, :, None], 3, axis=2)


def two_halves() -> np.ndarray:
    image = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    image[:, WIDTH // 2:] = 255
    return image


def checkerboard() -> np.ndarray:
    return grey((np.indices((HEIGHT, WIDTH)).sum(0) % 2) * 255)


def sparse_dither() -> np.ndarray:
    return grey((RNG.random((HEIGHT, WIDTH)) < 0.02) * 255)


FLAT = {
    "one colour": np.full((HEIGHT, WIDTH, 3), 128, np.uint8),
    "near flat": (128 + RNG.integers(-1, 2, (HEIGHT, WIDTH, 3))).astype(np.uint8),
    "two halves": two_halves(),
    "checkerboard": checkerboard(),
}
TEXTURED = {
    "random dither": grey((RNG.random((HEIGHT, WIDTH)) < 0.5) * 255),
    "sparse dither": sparse_dither(),
    "noise": RNG.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8),
}
CLICK = Click(WIDTH * 0.75, HEIGHT / 2, True)
BOX = (WIDTH / 3, HEIGHT / 4, WIDTH * 2 / 3, HEIGHT * 3 / 4)


def timed(call):
    started = time.perf_counter()
    result = call()
    return result, time.perf_counter() - started


@pytest.mark.parametrize("name", FLAT)
def test_a_flat_image_answers_a_click_with_its_flat_region_at_once(name):
    """Before: GrabCut's colour models collapse onto single colours, and its graph cut took up to 6 s here."""
    tool = ClassicalTool()
    encoded = tool.encode(FLAT[name])
    result, seconds = timed(lambda: tool.predict(encoded, [CLICK]))
    assert seconds < 0.5, seconds
    expected = {"one colour": np.ones((HEIGHT, WIDTH), bool), "near flat": np.ones((HEIGHT, WIDTH), bool),
                "two halves": two_halves()[:, :, 0] > 0}.get(name)
    if expected is not None:
        assert (result.mask == expected).mean() > 0.99
    else:  # a checkerboard's flat region is the click's square (at the working scale)
        assert result.mask[CLICK.pixel] and result.mask.mean() < 0.01
    _, box_seconds = timed(lambda: tool.predict(encoded, [], box=BOX))
    assert box_seconds < 0.5, box_seconds


def test_a_negative_click_takes_its_flat_region_away():
    tool = ClassicalTool()
    encoded = tool.encode(two_halves())
    both = tool.predict(encoded, [Click(WIDTH / 4, HEIGHT / 2, True), CLICK])
    assert both.mask.all()
    white_only = tool.predict(encoded, [CLICK, Click(WIDTH / 4, HEIGHT / 2, False)], previous=both)
    assert (white_only.mask == (two_halves()[:, :, 0] > 0)).mean() > 0.99


@pytest.mark.parametrize("name", TEXTURED)
def test_dithered_and_noise_images_answer_within_seconds(name):
    tool = ClassicalTool()
    encoded = tool.encode(TEXTURED[name])
    for call in (lambda: tool.predict(encoded, [CLICK]), lambda: tool.predict(encoded, [], box=BOX)):
        _, seconds = timed(call)
        assert seconds < 20, seconds


def _capped(limit_bytes: int):
    def apply():
        resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))
    return apply


def _click(url: str, image_url: str, box: bool, task: int = 7) -> requests.Response:
    if box:
        result = {"type": "rectanglelabels", "original_width": WIDTH, "original_height": HEIGHT,
                  "value": {"x": 33, "y": 25, "width": 34, "height": 50, "rectanglelabels": ["Object"]}}
    else:
        result = {"type": "keypointlabels", "original_width": WIDTH, "original_height": HEIGHT,
                  "value": {"x": 50, "y": 50, "width": 1, "keypointlabels": ["Object"]}}
    body = {"tasks": [{"id": task, "data": {"image": image_url}}], "label_config": CONFIG, "project": "3.1700000000",
            "params": {"context": {"result": [result]}}}
    return requests.post(f"{url}/predict", json=body, timeout=300)


def _serve(tmp_path: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "SEGAGENT_DATA_DIR": str(tmp_path), "PYTHONUNBUFFERED": "1"}
    log = (tmp_path / "server.log").open("w")
    return subprocess.Popen([sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", "1",
                             "--threads", "8", "--timeout", "300", "backend.wsgi:app"], cwd=ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT, preexec_fn=_capped(6 << 30))


def _wait_up(url: str) -> None:
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            if requests.get(f"{url}/health", timeout=2).ok:
                return
        except requests.RequestException:
            time.sleep(0.5)
    raise AssertionError("the server did not start")


def test_slow_clicks_never_starve_health_or_an_ordinary_click(tmp_path):
    """Twelve boxes at once, each on its own task, on a sparse dither (seconds of GrabCut each) against 8
    threads. Before: every thread worked on one, and /health waited for them."""
    folder = tmp_path / "served"
    folder.mkdir()
    (folder / "dither.png").write_bytes(png_bytes(sparse_dither()))
    (folder / "object.png").write_bytes(png_bytes(scene(WIDTH, HEIGHT, seed=1)[0]))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = _serve(tmp_path, port)
    health_seconds: list[float] = []
    try:
        _wait_up(url)
        with FileServer(folder) as images, ThreadPoolExecutor(12) as pool:
            assert _click(url, f"{images.url}/object.png", box=False).ok  # the tool is built on its first use
            slow = [pool.submit(_click, url, f"{images.url}/dither.png", True, task) for task in range(12)]
            deadline = time.time() + 20
            while time.time() < deadline and not all(future.done() for future in slow):
                try:
                    _, seconds = timed(lambda: requests.get(f"{url}/health", timeout=5).raise_for_status())
                except requests.Timeout:
                    seconds = 5.0
                health_seconds.append(seconds)
                time.sleep(0.2)
            answers = [future.result() for future in slow]
            ordinary = _answered_click(url, f"{images.url}/object.png")
        assert max(health_seconds) < 1.0, health_seconds
        assert {answer.status_code for answer in answers} <= {200, 503}
        busy = [answer for answer in answers if answer.status_code == 503]
        assert busy and all(answer.headers["Retry-After"] == "1" and "busy" in answer.json()["error"]
                            for answer in busy)
        assert ordinary.status_code == 200 and ordinary.json()["results"][0]["result"]
    finally:
        server.terminate()
        server.wait(timeout=20)


def _answered_click(url: str, image_url: str) -> requests.Response:
    """A click, sent again after Retry-After while the server is busy, for a minute at most."""
    deadline = time.time() + 60
    while True:
        answer = _click(url, image_url, box=False)
        if answer.status_code != 503 or time.time() > deadline:
            return answer
        time.sleep(float(answer.headers.get("Retry-After", 1)))
