"""SEGAGENT_DEVICE for the tool, the policy and its training: auto falls back to the CPU with a warning when
torch was built for CUDA, cuda without a usable GPU stops the backend at its start and says why, and /health
says where each part runs."""
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from backend.container import Backend
from model.flywheel.finetune import device_and_dtype
from model.flywheel.job import JobSpec
from model.policies import make_policy
from model.settings import Settings
from model.tools.loading import DeviceError, resolve_device
from tests.apps import App
from tests.synthetic import free_port

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def no_gpu(monkeypatch):
    """This machine as one whose torch is a CUDA 12.1 build that sees no GPU (an old driver, a container
    without the GPU), whatever it really has."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", "12.1")


def test_auto_falls_back_to_the_cpu_with_a_warning_only_for_a_cuda_build(no_gpu, monkeypatch, caplog):
    with caplog.at_level(logging.WARNING, logger="model.tools.loading"):
        assert resolve_device("auto") == "cpu"
    assert "SEGAGENT_DEVICE=auto runs on the CPU" in caplog.text and "built for CUDA 12.1" in caplog.text
    caplog.clear()
    monkeypatch.setattr(torch.version, "cuda", None)  # a CPU build: the CPU is what it is for
    with caplog.at_level(logging.WARNING, logger="model.tools.loading"):
        assert resolve_device("auto") == "cpu" and resolve_device("cpu") == "cpu"
    assert caplog.records == []


def test_cuda_without_a_gpu_stops_the_backend_at_its_start(no_gpu, tmp_path):
    with pytest.raises(DeviceError, match=r"SEGAGENT_DEVICE=cuda, but no usable CUDA GPU: .*CUDA 12\.1.*driver"):
        Backend.build(Settings(data_dir=tmp_path, device="cuda"))  # the classical tool and no policy: still refused
    with pytest.raises(DeviceError, match="SEGAGENT_DEVICE=cuda"):  # before any model is loaded
        make_policy(str(tmp_path / "no-model-here"), device="cuda")
    with pytest.raises(DeviceError, match="SEGAGENT_DEVICE=cuda"):
        device_and_dtype("cuda")  # training too
    assert device_and_dtype("cpu") == ("cpu", torch.float32)


def test_gunicorn_exits_non_zero_and_logs_why(tmp_path):
    environment = {**os.environ, "SEGAGENT_DEVICE": "cuda", "CUDA_VISIBLE_DEVICES": "", "SEGAGENT_DATA_DIR": str(tmp_path),
                   "HOST": "127.0.0.1", "LOG_LEVEL": "INFO"}
    environment.pop("BASIC_AUTH_USER", None), environment.pop("BASIC_AUTH_PASS", None)
    run = subprocess.run([str(Path(sys.executable).with_name("gunicorn")), "--bind", f"127.0.0.1:{free_port()}",
                          "--workers", "1", "backend.wsgi:app"], cwd=ROOT, env=environment, capture_output=True,
                         text=True, timeout=240)
    assert run.returncode != 0
    assert "ERROR backend: the backend cannot start: SEGAGENT_DEVICE=cuda, but no usable CUDA GPU" in run.stderr
    assert "Worker failed to boot" in run.stderr  # gunicorn stops rather than starting the worker again


def test_health_says_where_the_tool_and_the_policy_run(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="backend.capabilities"):
        client = App(Settings(data_dir=tmp_path / "a", device="cpu")).client
    assert client.get("/health").json["device"] == {"tool": "cpu", "policy": None}  # no policy configured
    assert "devices: tool cpu, policy off (SEGAGENT_DEVICE=cpu)" in caplog.text
    remote = App(Settings(data_dir=tmp_path / "b", device="cpu", policy=f"http://127.0.0.1:{free_port()}/v1",
                          policy_model="segagent-qwen")).client
    assert remote.get("/health").json["device"] == {"tool": "cpu", "policy": "remote"}


def test_the_in_process_policy_gets_the_resolved_device(no_gpu, tmp_path, taught_vlm):
    app = App(Settings(data_dir=tmp_path, device="auto", policy=str(taught_vlm)))
    assert app.backend.capabilities.policy.get().device == "cpu"  # auto resolved, not passed on as "auto"
    assert app.client.get("/health").json["device"] == {"tool": "cpu", "policy": "cpu"}


def test_training_jobs_take_the_device_from_the_settings(tmp_path):
    spec = JobSpec(scope="project-1", settings=Settings(data_dir=tmp_path, device="cpu"))
    assert spec.train.device == "cpu"
    assert JobSpec.model_validate(spec.to_dict()).train.device == "cpu"  # as an RQ worker reads it
