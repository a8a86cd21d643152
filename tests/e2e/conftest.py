"""A real Label Studio (PyPI label-studio, in its own cached virtual environment) and the backend
started with `make serve`, both on free loopback ports, each with a fresh data directory."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from tests.synthetic import free_port

ROOT = Path(__file__).resolve().parents[2]
LABEL_STUDIO_VERSION = "1.23.2"
LS_VENV = Path(os.environ.get("SEGAGENT_LS_VENV",
                              Path.home() / ".cache" / "segagent" / f"label-studio-{LABEL_STUDIO_VERSION}"))
TOKEN = "e2e0123456789abcdef0123456789abcdef0123"
LS_ENV = {"LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true", "USE_DEFAULT_BANNED_SUBNETS": "false",
          "LATEST_VERSION_CHECK": "false", "COLLECT_ANALYTICS": "false", "SENTRY_DSN": "", "DJANGO_DB": "sqlite"}


def _ensure_label_studio() -> Path:
    """Label Studio installed once, and a freshly initialised data directory (migrated database, one
    user with a legacy token) kept as a template: a copy of it starts in seconds instead of minutes."""
    binary = LS_VENV / "bin" / "label-studio"
    if not (LS_VENV / ".installed").exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(LS_VENV)], check=True)
        subprocess.run([str(LS_VENV / "bin" / "pip"), "install", "--quiet", f"label-studio=={LABEL_STUDIO_VERSION}"],
                       check=True, timeout=1200)
        (LS_VENV / ".installed").touch()
    template = LS_VENV / "template"
    if not (template / ".initialised").exists():
        shutil.rmtree(template, ignore_errors=True)
        subprocess.run([str(binary), "init", "--data-dir", str(template), "--username", "e2e@example.com",
                        "--password", "e2e-password-123", "--user-token", TOKEN],
                       env={**os.environ, **LS_ENV, "LABEL_STUDIO_BASE_DATA_DIR": str(template)},
                       check=True, timeout=900, capture_output=True)
        (template / ".initialised").touch()
    return binary


def _wait_up(url: str, process: subprocess.Popen, timeout: float, log: Path) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url} exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(1)
    raise RuntimeError(f"{url} did not come up in {timeout} s:\n{log.read_text()[-3000:]}")


def _stop(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=20)
    except ProcessLookupError:
        return  # killed already (a test's SIGKILL)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory):
    with running_label_studio(tmp_path_factory.mktemp("label-studio") / "data") as server:
        yield server


@contextmanager
def running_label_studio(data: Path):
    """Label Studio on a free loopback port, on a fresh copy of the initialised data directory."""
    binary = _ensure_label_studio()
    shutil.copytree(LS_VENV / "template", data)
    port = free_port()
    env = {**os.environ, **LS_ENV, "LABEL_STUDIO_BASE_DATA_DIR": str(data)}
    log = data / "label-studio.log"
    process = subprocess.Popen(
        [str(binary), "start", "--no-browser", "--internal-host", "127.0.0.1", "--port", str(port),
         "--data-dir", str(data)],
        stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_up(f"{url}/health", process, 600, log)
        yield {"url": url, "token": TOKEN, "log": log}
    finally:
        _stop(process)


@contextmanager
def make_serve(data: Path, **extra_env):
    """The backend as a user starts it, `make serve`, on a free port; yields its URL and log."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY")}
    env.update({"PORT": str(port), "HOST": "127.0.0.1", "SEGAGENT_DATA_DIR": str(data), **extra_env})
    log = data / "backend.log"
    process = subprocess.Popen(["make", "--no-print-directory", "serve"], cwd=ROOT, stdout=open(log, "w"),
                               stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_up(f"{url}/health", process, 180, log)
        yield {"url": url, "log": log, "process": process}
    finally:
        _stop(process)


@pytest.fixture(scope="session")
def backend_server(tmp_path_factory):
    """On the embedded defaults, with no Label Studio URL or key: it learns them from /setup."""
    with make_serve(tmp_path_factory.mktemp("backend-data")) as server:
        yield server
