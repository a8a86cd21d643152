"""The Dockerfile and the compose file, checked without a Docker engine."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


def test_dockerfile_passes_hadolint():
    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run([str(hadolint), str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_runs_as_non_root_with_a_healthcheck():
    text = (ROOT / "Dockerfile").read_text()
    user_lines = [line for line in text.splitlines() if line.startswith("USER ")]
    assert user_lines and user_lines[-1].split()[1] not in ("root", "0")
    assert "HEALTHCHECK" in text and "/health" in text


def test_compose_wires_label_studio_and_the_backend():
    compose = yaml.safe_load((ROOT / "docker" / "docker-compose.yml").read_text())
    services = compose["services"]
    assert services["label-studio"]["image"].startswith("heartexlabs/label-studio:")
    backend_env = dict(item.split("=", 1) for item in services["backend"]["environment"])
    assert backend_env["LABEL_STUDIO_URL"] == "http://label-studio:8080"
    assert services["backend"]["build"]["dockerfile"] == "Dockerfile"


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="Debian's docker-compose is not installed")
def test_compose_file_validates():
    result = subprocess.run(["docker-compose", "-f", str(ROOT / "docker" / "docker-compose.yml"), "config", "-q"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
