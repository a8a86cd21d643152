"""The compose file's PostgreSQL: the stores of the backend, the worker and the trainer, behind a required password."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

COMPOSE = Path(__file__).resolve().parents[1] / "docker" / "docker-compose.yml"
URL = "postgresql://segagent:${POSTGRES_PASSWORD}@postgres:5432/segagent"


def test_the_backend_the_worker_and_the_trainer_use_one_postgres_once_it_answers():
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    postgres = services["postgres"]
    assert postgres["image"] == "postgres:17" and "ports" not in postgres  # only the compose network reaches it
    assert postgres["environment"]["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD:?")
    assert {"POSTGRES_USER": "segagent", "POSTGRES_DB": "segagent"}.items() <= postgres["environment"].items()
    assert "pg_isready" in postgres["healthcheck"]["test"]
    assert any(volume.startswith("postgres-data:") for volume in postgres["volumes"])
    for name in ("backend", "worker", "trainer"):
        assert services[name]["environment"]["SEGAGENT_DATABASE_URL"] == URL, name
        assert services[name]["depends_on"]["postgres"] == {"condition": "service_healthy"}, name


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="Debian's docker-compose is not installed")
def test_compose_refuses_to_start_without_a_postgres_password():
    environment = {name: value for name, value in os.environ.items() if name != "POSTGRES_PASSWORD"}
    environment |= {"BASIC_AUTH_PASS": "pw", "REDIS_PASSWORD": "r3dis"}
    run = lambda env: subprocess.run(["docker-compose", "-f", str(COMPOSE), "config"],  # noqa: E731
                                     capture_output=True, text=True, env=env, timeout=60)
    without = run(environment)
    assert without.returncode != 0 and "set POSTGRES_PASSWORD" in without.stderr
    configured = run({**environment, "POSTGRES_PASSWORD": "p0stgres"})
    assert configured.returncode == 0, configured.stderr
    services = yaml.safe_load(configured.stdout)["services"]
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"] == "p0stgres"
    assert services["worker"]["environment"]["SEGAGENT_DATABASE_URL"] == URL.replace("${POSTGRES_PASSWORD}", "p0stgres")
