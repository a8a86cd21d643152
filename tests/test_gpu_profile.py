"""The GPU profile, ready on first contact: gpu.env brings SAM ViT-H (Meta's checkpoint, checked against its
published SHA-256) on the GPU, the backend and the worker reserve the GPU only under it, and the SegAgent-Qwen
image installs a lock that pins every package. Checked without a Docker engine."""
import logging
import os
import re
import shutil
import subprocess
import threading
from pathlib import Path

import pytest
import yaml

from model.settings import Settings
from model.tools.loading import resolve_checkpoint, sha256_of
from tests.synthetic import FileServer

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
ANCHORS = ROOT.parent / "shared" / "ANCHORS.md"
# Meta's SAM ViT-H, as ANCHORS.md gives it (its published checkpoints table)
SAM_VIT_H = "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth"
SAM_VIT_H_SHA256 = "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e"
NVIDIA_GPU = {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}


def env_file(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if line and not line.startswith("#"))


def gpus(service: dict) -> list[dict]:
    return service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(path: Path) -> dict[str, str]:
    lines = [line.split("#", 1)[0].strip() for line in path.read_text().splitlines()]
    return {canonical(name): version for name, version in (line.split("==") for line in lines if line)}


def test_gpu_env_brings_sam_vit_h_on_the_gpu(monkeypatch):
    if ANCHORS.is_file():  # the reference figures beside this checkout
        row = next(line for line in ANCHORS.read_text().splitlines() if line.startswith("| `sam_vit_h_4b8939.pth`"))
        assert SAM_VIT_H_SHA256 in row and "https://dl.fbaipublicfiles.com/segment_anything/<file>" in ANCHORS.read_text()
    gpu = env_file(DOCKER / "gpu.env")
    assert gpu["SAM_CHECKPOINT"] == SAM_VIT_H and gpu["SAM_CHECKPOINT_SHA256"] == SAM_VIT_H_SHA256
    for name in [name for name in os.environ if name.startswith(("SEGAGENT_", "SAM"))]:
        monkeypatch.delenv(name)
    for name, value in gpu.items():
        if not name.startswith("COMPOSE_"):
            monkeypatch.setenv(name, value)
    settings = Settings()  # what the backend and the worker read from it
    assert (settings.tool, settings.device, settings.sam_checkpoint) == ("sam", "cuda", SAM_VIT_H)
    assert settings.policy == "http://policy:8000/v1" and settings.policy_format == "segagent-qwen"


def test_processes_sharing_the_data_dir_download_the_checkpoint_once(tmp_path, caplog):
    served = tmp_path / "served"
    served.mkdir()
    (served / "sam_vit_h_4b8939.pth").write_bytes(os.urandom(16 << 20))
    digest = sha256_of(served / "sam_vit_h_4b8939.pth")
    start, found = threading.Barrier(2), []

    def backend_or_worker():
        start.wait()
        found.append(resolve_checkpoint(f"{server.url}/sam_vit_h_4b8939.pth", tmp_path / "data", digest))

    with FileServer(served) as server, caplog.at_level(logging.INFO, logger="model.tools.loading"):
        threads = [threading.Thread(target=backend_or_worker) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    assert found == [tmp_path / "data" / "checkpoints" / "sam_vit_h_4b8939.pth"] * 2
    assert sha256_of(found[0]) == digest and sorted(p.name for p in found[0].parent.iterdir()) == [found[0].name]
    assert caplog.text.count("downloading SAM checkpoint") == 1  # the other waited, then found it there


def test_the_backend_and_the_worker_reserve_the_gpu_under_the_gpu_profile_only():
    compose = yaml.safe_load((DOCKER / "docker-compose.yml").read_text())
    services = compose["services"]
    assert not gpus(services["backend"]) and not gpus(services["worker"])  # the CPU setup starts without a GPU
    assert services["policy"]["profiles"] == ["gpu"] and gpus(services["policy"]) == [NVIDIA_GPU]
    gpu = env_file(DOCKER / "gpu.env")
    files = gpu["COMPOSE_FILE"].split(gpu["COMPOSE_PATH_SEPARATOR"])
    assert files[0] == "docker-compose.yml" and all((DOCKER / name).is_file() for name in files)
    assert gpu["COMPOSE_PROFILES"] == "gpu"
    reserved = {}
    for name in files[1:]:
        reserved.update(yaml.safe_load((DOCKER / name).read_text())["services"])
    assert set(reserved) == {"backend", "worker", "trainer"}
    assert all(gpus(service) == [NVIDIA_GPU] for service in reserved.values())
    for name in ("backend", "worker", "policy"):  # SEGAGENT_DEVICE reaches every service that runs a model
        environment = services[name]["environment"]
        variables = environment if isinstance(environment, dict) else dict(i.split("=", 1) for i in environment)
        assert variables["SEGAGENT_DEVICE"] == "${SEGAGENT_DEVICE:-auto}", name
    backend, worker = services["backend"]["environment"], services["worker"]["environment"]
    assert {k: v for k, v in backend.items() if not k.startswith("BASIC_AUTH_")} == worker  # the same settings


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="Debian's docker-compose is not installed")
def test_the_one_gpu_command_resolves_to_the_gpu_setup():
    environment = {name: value for name, value in os.environ.items()
                   if not name.startswith(("COMPOSE_", "SEGAGENT_", "SAM"))} | {"BASIC_AUTH_PASS": "pw",
                                                                             "REDIS_PASSWORD": "r3dis",
                                                                             "POSTGRES_PASSWORD": "p0stgres"}

    def config(*extra: str) -> dict:
        run = subprocess.run(["docker-compose", *extra, "config"], cwd=DOCKER, env=environment, capture_output=True,
                             text=True)
        assert run.returncode == 0, run.stderr
        return yaml.safe_load(run.stdout)["services"]

    gpu = config("--profile", "gpu", "--env-file", "gpu.env")  # the header's command, from docker/
    for name in ("backend", "worker", "trainer", "policy"):
        assert gpus(gpu[name]) == [NVIDIA_GPU], name
        assert gpu[name]["environment"]["SEGAGENT_DEVICE"] == "cuda", name
    for name in ("backend", "worker"):
        assert gpu[name]["environment"]["SAM_CHECKPOINT"] == SAM_VIT_H
        assert gpu[name]["environment"]["SAM_CHECKPOINT_SHA256"] == SAM_VIT_H_SHA256
    cpu = config()
    assert not gpus(cpu["backend"]) and not gpus(cpu["worker"])
    assert cpu["backend"]["environment"]["SEGAGENT_DEVICE"] == "auto"


def test_the_lock_pins_every_package_of_the_requirements():
    lock = ROOT / "requirements-segagent-qwen.lock"
    body = [line for line in lock.read_text().splitlines() if line and not line.startswith("#")]
    assert body and all(re.fullmatch(r"[a-z0-9-]+==[^=\s;]+", line) for line in body), "one name==version a line"
    locked = pins(lock)
    assert len(locked) == len(body)
    wanted = pins(ROOT / "requirements-segagent-qwen.txt")
    assert {name: locked.get(name) for name in wanted} == wanted  # each at the version asked for
    assert {"triton", "nvidia-cudnn-cu12", "huggingface-hub", "tokenizers"} <= set(locked)  # transitive, linux x86_64
    backend = pins(ROOT / "requirements.txt")
    assert {name: locked[name] for name in ("rq", "redis")} == {name: backend[name] for name in ("rq", "redis")}
    script = ROOT / "scripts" / "lock_segagent_qwen.sh"
    assert "scripts/lock_segagent_qwen.sh" in lock.read_text() and os.access(script, os.X_OK)


def test_the_qwen_image_installs_the_lock_and_nothing_else():
    text = (DOCKER / "segagent-qwen.Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.10", text, re.M)  # the Python the lock was resolved for
    assert "COPY requirements-segagent-qwen.lock ." in text
    assert "pip install --no-cache-dir --no-deps -r requirements-segagent-qwen.lock" in text
    assert "requirements-segagent-qwen.txt" not in text


def test_the_qwen_policy_trains_in_its_own_image_and_serves_what_it_trained():
    """START_TRAINING with gpu.env: the worker's job (REDIS_URL) hands the turns to the policy image's RQ worker,
    which writes the adapter into the registry that the policy service reads versions from."""
    from model.flywheel.remote_training import QUEUE, untrainable_reason

    services = yaml.safe_load((DOCKER / "docker-compose.yml").read_text())["services"]
    trainer, policy = services["policy-trainer"], services["policy"]
    assert trainer["profiles"] == ["gpu"] and gpus(trainer) == [NVIDIA_GPU]
    assert trainer["build"] == policy["build"] and trainer["command"][-1] == QUEUE
    assert "backend-data:/data" in trainer["volumes"] and "policy-models:/models" in trainer["volumes"]
    assert "SEGAGENT_REGISTRY=/data/models" in policy["environment"] and "backend-data:/data:ro" in policy["volumes"]
    gpu = env_file(DOCKER / "gpu.env")
    redis_url = "redis://:${REDIS_PASSWORD}@redis:6379/0"  # the worker's job and the policy's RQ worker: one Redis
    assert f"REDIS_URL={redis_url}" in _environment(services["worker"])
    assert f"RQ_REDIS_URL={redis_url}" in _environment(trainer)
    assert untrainable_reason(Settings(policy=gpu["SEGAGENT_POLICY"], policy_format=gpu["SEGAGENT_POLICY_FORMAT"],
                                       redis_url=redis_url)) is None


def _environment(service: dict) -> list[str]:
    environment = service.get("environment", [])
    return [f"{k}={v}" for k, v in environment.items()] if isinstance(environment, dict) else environment
