import shutil
import subprocess
import uuid

import numpy as np
import pytest

from tests import apps
from tests.apps import close_all
from tests.synthetic import FileServer, free_port, png_bytes, scene


def pytest_addoption(parser):
    parser.addoption("--database", choices=("sqlite", "postgresql"), default="sqlite",
                     help="where the backends tests build keep their stores (postgresql: a fresh database each)")


@pytest.fixture(scope="session", autouse=True)
def apps_database(request):
    """Under --database postgresql, every backend a test builds (tests/apps.py) gets a database of one cluster."""
    if request.config.getoption("--database") != "postgresql":
        yield
        return
    server = request.getfixturevalue("postgres_server")
    apps.fresh_database = server.create_database
    yield
    apps.fresh_database = None


@pytest.fixture(autouse=True)
def close_backends():
    yield
    close_all()


@pytest.fixture(scope="session")
def image_server(tmp_path_factory):
    """A local HTTP server with synthetic scenes: object.png (ellipse at the centre) and friends."""
    folder = tmp_path_factory.mktemp("served")
    image, mask = scene(320, 240, seed=1)
    (folder / "object.png").write_bytes(png_bytes(image))
    np.save(folder / "object_mask.npy", mask)
    (folder / "not_an_image.png").write_bytes(b"this is text, not pixels")
    big = np.zeros((9000, 9000), np.uint8)
    (folder / "huge.png").write_bytes(png_bytes(big))
    with FileServer(folder) as server:
        server.folder = folder
        server.mask = mask
        server.image = image
        yield server


@pytest.fixture(scope="session")
def taught_vlm(tmp_path_factory):
    """A tiny Qwen2.5-VL, built from configs and taught to answer `Positive point: (500, 500)`."""
    from tests.tiny_vlm import build_tiny_vlm, teach

    folder = build_tiny_vlm(tmp_path_factory.mktemp("vlm") / "tiny-qwen2_5-vl")
    return teach(folder, "Positive point: (500, 500)")


@pytest.fixture
def redis_url(tmp_path):
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (.ci/run installs it)")
    port = free_port()
    server = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                               "--dir", str(tmp_path)], stdout=subprocess.DEVNULL)
    try:
        from redis import Redis

        _wait_until(lambda: _pings(Redis(port=port)), timeout=20)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.terminate()
        server.wait(10)


@pytest.fixture(scope="session")
def postgres_server():
    """One throwaway PostgreSQL cluster for the session (tests/postgres_server.py)."""
    from tests.postgres_server import PostgresServer, binaries

    if binaries() is None:
        pytest.skip("PostgreSQL is not installed (.ci/run installs it)")
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres_server):
    """A fresh database of the session's cluster, as postgresql://user:password@127.0.0.1:port/name."""
    name = f"test_{uuid.uuid4().hex}"
    yield postgres_server.create_database(name)
    postgres_server.drop_database(name)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request):
    """SEGAGENT_DATABASE_URL for a store test on both backends: "" (SQLite in the data folder) or a fresh
    PostgreSQL database; the sqlite case starts no PostgreSQL."""
    if request.param == "sqlite":
        return ""
    return request.getfixturevalue("postgres_url")


def _pings(client) -> bool:
    try:
        return client.ping()
    except Exception:
        return False


def _wait_until(condition, timeout: float) -> None:
    import time

    deadline = time.time() + timeout
    while time.time() < deadline and not condition():
        time.sleep(0.2)
