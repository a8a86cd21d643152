"""Synthetic scenes for tests: a coloured object on a textured background, with its exact mask."""
from __future__ import annotations

import io
import socket
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np
from PIL import Image


def scene(width: int = 320, height: int = 240, seed: int = 0, center: tuple[int, int] | None = None,
          axes: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """An RGB image with a smooth reddish ellipse on a noisy greenish-blue background, and its mask."""
    rng = np.random.default_rng(seed)
    background = rng.normal(0, 12, (height, width, 3)) + np.array([60, 120, 150])
    mask = np.zeros((height, width), np.uint8)
    center = center or (width // 2, height // 2)
    axes = axes or (width // 5, height // 4)
    cv2.ellipse(mask, center, axes, 20, 0, 360, 1, -1)
    obj = rng.normal(0, 10, (height, width, 3)) + np.array([200, 70, 50])
    image = np.where(mask[..., None] > 0, obj, background)
    return np.clip(image, 0, 255).astype(np.uint8), mask.astype(bool)


def two_objects(seed: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 320 x 240 scene with two separated objects of one kind, left and right: the image and each mask."""
    left, mask_a = scene(320, 240, seed=seed, center=(85, 120), axes=(50, 38))
    right, mask_b = scene(320, 240, seed=seed, center=(235, 120), axes=(50, 38))  # the same background
    return np.where(mask_b[..., None], right, left), mask_a, mask_b


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class FileServer:
    """Serves a folder over HTTP on 127.0.0.1, in a thread."""

    def __init__(self, folder: Path):
        handler = partial(_QuietHandler, directory=str(folder))
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FileServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def copyfile(self, source, outputfile) -> None:
        try:
            super().copyfile(source, outputfile)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the backend stopped reading on purpose (an image over its byte limit)


class RecordingServer:
    """A stand-in for a web host (Label Studio's HTTP surface, or any image host) on 127.0.0.1: GET answers
    with fixed bytes, PATCH with {}; each request's path, Authorization header and JSON body are recorded."""

    def __init__(self, body: bytes = b""):
        import json

        seen: dict[str, tuple[str | None, object]] = {}

        class Handler(SimpleHTTPRequestHandler):
            def _answer(self, payload: bytes, content_type: str) -> None:
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self):
                seen[self.path] = (self.headers.get("Authorization"), None)
                self._answer(body, "image/png")

            def do_PATCH(self):
                length = int(self.headers.get("Content-Length") or 0)
                seen[self.path] = (self.headers.get("Authorization"), json.loads(self.rfile.read(length) or b"{}"))
                self._answer(b"{}", "application/json")

            def log_message(self, *args) -> None:
                pass

        self.seen = seen
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> RecordingServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


class LabelStudioTasks:
    """A stand-in for Label Studio 1.23's task API on 127.0.0.1. GET /api/tasks/<id> answers the task, with the
    storage URIs (s3://) of its data resolved to Label Studio's proxy links unless ?resolve_uri=false; PATCH
    /api/tasks/<id> replaces the fields it sends, `data` whole (Label Studio's ModelSerializer update). `tasks`
    (id: data) is the task table, which a test may edit as a reviewer would; `requests` records each request's
    method, path and Authorization header."""

    def __init__(self, tasks: dict[int, dict]):
        import json
        from urllib.parse import parse_qs, urlsplit

        self.tasks = tasks
        self.requests: list[tuple[str, str, str | None]] = []
        stand_in = self

        class Handler(SimpleHTTPRequestHandler):
            def _task_id(self) -> int | None:
                stand_in.requests.append((self.command, self.path, self.headers.get("Authorization")))
                parts = urlsplit(self.path).path.strip("/").split("/")
                if parts[:2] != ["api", "tasks"] or len(parts) != 3 or not parts[2].isdigit() \
                        or int(parts[2]) not in stand_in.tasks:
                    self.send_error(404)
                    return None
                return int(parts[2])

            def _answer(self, task_id: int, data: dict) -> None:
                payload = json.dumps({"id": task_id, "data": data}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self):
                task_id = self._task_id()
                if task_id is None:
                    return
                data = stand_in.tasks[task_id]
                if parse_qs(urlsplit(self.path).query).get("resolve_uri", ["true"])[0] != "false":
                    data = {key: f"/tasks/{task_id}/resolve/?fileuri={value}" if str(value).startswith("s3://")
                            else value for key, value in data.items()}
                self._answer(task_id, data)

            def do_PATCH(self):
                task_id = self._task_id()
                if task_id is None:
                    return
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                if "data" in body:
                    stand_in.tasks[task_id] = body["data"]
                self._answer(task_id, stand_in.tasks[task_id])

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> LabelStudioTasks:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def record_predictions(predictor, monkeypatch) -> list[dict]:
    """Every later call to a SAM predictor's predict: its keywords and its answer."""
    calls: list[dict] = []
    real = predictor.predict

    def recording(**kwargs):
        answer = real(**kwargs)
        calls.append({**kwargs, "answer": answer})
        return answer

    monkeypatch.setattr(predictor, "predict", recording)
    return calls
