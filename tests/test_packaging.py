"""The Dockerfile and the compose file, checked without a Docker engine."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "docker/segagent-qwen.Dockerfile"])
def test_dockerfiles_pass_hadolint(dockerfile):
    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run([str(hadolint), str(ROOT / dockerfile)], capture_output=True, text=True)
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
    backend_env = services["backend"]["environment"]
    assert backend_env["LABEL_STUDIO_URL"] == "http://label-studio:8080"
    assert services["backend"]["build"]["dockerfile"] == "Dockerfile"
    assert services["policy"]["profiles"] == ["gpu"]
    assert backend_env["REDIS_URL"] == "redis://:${REDIS_PASSWORD}@redis:6379/0"  # tests/test_secrets.py: why
    assert services["redis"]["image"].startswith("redis:")
    # the project's own worker command: every kind of work is taken by one of them, training in forked processes
    worker, trainer = services["worker"]["command"], services["trainer"]["command"]
    assert worker[:4] == trainer[:4] == ["python", "-m", "backend", "worker"]
    assert set(worker[4:]) | set(trainer[4:]) == {"preannotate", "annotation", "train", "--fork"}
    assert "--fork" in trainer and "--fork" not in worker
    for name in ("worker", "trainer"):
        assert services[name]["environment"] == {k: v for k, v in backend_env.items() if not k.startswith("BASIC_")}
        assert services[name]["volumes"] == services["backend"]["volumes"]  # one /data: trajectories, versions
    gpu_env = dict(line.split("=", 1) for line in (ROOT / "docker" / "gpu.env").read_text().splitlines()
                   if line and not line.startswith("#"))
    assert gpu_env["SEGAGENT_POLICY"] == "http://policy:8000/v1"
    assert gpu_env["SEGAGENT_POLICY_FORMAT"] == "segagent-qwen"

@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="Debian's docker-compose is not installed")
@pytest.mark.parametrize("extra", [[], ["--env-file", str(ROOT / "docker" / "gpu.env"), "--profile", "gpu"]])
def test_compose_file_validates(extra):
    result = subprocess.run(["docker-compose", "-f", str(ROOT / "docker" / "docker-compose.yml"), *extra, "config"],
                            capture_output=True, text=True,
                            env={**os.environ, "BASIC_AUTH_PASS": "s3cret", "REDIS_PASSWORD": "r3dis",
                                 "POSTGRES_PASSWORD": "p0stgres"})
    assert result.returncode == 0, result.stderr
    if extra:
        assert "SEGAGENT_POLICY: http://policy:8000/v1" in result.stdout
