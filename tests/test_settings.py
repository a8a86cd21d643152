"""The one settings model: the environment it reads, its rules, and the training job spec that carries it.
The page rendered from it, docs/configuration.md, is checked in tests/test_docs.py."""
from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import get_args

import pytest
from pydantic import ValidationError

from model.flywheel.job import JobSpec
from model.settings import SECRETS, Settings
from model.tools import TOOL_NAMES

ENV_NAMES = {field.alias: name for name, field in Settings.model_fields.items()}


@pytest.fixture
def env(monkeypatch):
    """A clean environment of settings; set(NAME=value, ...) adds to it."""
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)

    def set_env(**values: str) -> None:
        for name, value in values.items():
            monkeypatch.setenv(name, value)

    return set_env


def test_reads_the_environment(env):
    env(SEGAGENT_POLICY="http://policy:8000/v1", SEGAGENT_AGENT_STEPS="7", SEGAGENT_RETURN_CLICKS="yes",
        SEGAGENT_DATA_DIR="/srv/data", LABEL_STUDIO_URL="http://ls:8080/", SEGAGENT_PROMPT_FIELDS=" title , text ",
        SEGAGENT_MAX_IMAGE_MB="2", SEGAGENT_BANNED_SUBNETS="10.0.0.1/8, fe80::/10", SEGAGENT_POLICY_SCOPE="Shared",
        BASIC_AUTH_USER="annotator", BASIC_AUTH_PASS=" secret ", SEGAGENT_TRAIN_LR="0.01")
    settings = Settings()
    assert settings.policy == "http://policy:8000/v1" and settings.agent_steps == 7 and settings.return_clicks
    assert settings.data_dir == Path("/srv/data") and settings.label_studio_url == "http://ls:8080"
    assert settings.prompt_fields == ("title", "text") and settings.max_image_bytes == 2 << 20
    assert settings.banned_subnets == (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fe80::/10"))
    assert settings.policy_scope == "shared" and settings.train_learning_rate == 0.01
    assert settings.basic_auth and settings.basic_auth_pass == " secret "  # compared byte for byte


def test_a_blank_value_means_the_default_and_field_names_are_not_read(env):
    env(SEGAGENT_AGENT_STEPS=" ", SEGAGENT_BANNED_SUBNETS="", SEGAGENT_TOOL="", agent_steps="9", tool="sam")
    settings = Settings()
    assert settings.agent_steps == 5 and settings.tool == "classical"
    assert ipaddress.ip_network("169.254.0.0/16") in settings.banned_subnets


@pytest.mark.parametrize("variable, value", [
    ("SEGAGENT_AGENT_STEPS", "five"), ("SEGAGENT_POLICY_SCOPE", "everyone"), ("SEGAGENT_TOOL", "magic"),
    ("SEGAGENT_BANNED_SUBNETS", "10.0.0.0/99"), ("SEGAGENT_RETURN_CLICKS", "perhaps"), ("SEGAGENT_AGENT_STEPS", "0"),
    ("SEGAGENT_DATABASE_URL", "mysql://u:p@db/segagent"), ("SEGAGENT_DATABASE_URL", "/srv/data/annotations.sqlite3"),
])
def test_a_bad_value_names_its_variable(env, variable, value):
    env(**{variable: value})
    with pytest.raises(ValidationError, match=variable):
        Settings()


def test_the_stores_and_blobs_are_where_the_settings_say(env, tmp_path):
    env(SEGAGENT_DATA_DIR=str(tmp_path), SEGAGENT_DATABASE_URL="", SEGAGENT_BLOB_DIR="")
    local = Settings()
    assert local.store("annotations") == tmp_path / "annotations.sqlite3" and local.blobs == tmp_path
    env(SEGAGENT_DATABASE_URL="postgres://segagent:pw@db:5432/segagent", SEGAGENT_BLOB_DIR="/mnt/blobs")
    shared = Settings()
    assert shared.store("annotations") == shared.store("trajectories") == "postgresql://segagent:pw@db:5432/segagent"
    assert shared.blobs == Path("/mnt/blobs") and "pw" not in repr(shared)


def test_the_tool_is_sam_when_a_checkpoint_is_set(env):
    assert Settings().tool == "classical"
    assert Settings(sam_checkpoint="x.pth").tool == "sam"
    env(SAM_CHECKPOINT="/models/sam_vit_b.pth")
    assert Settings().tool == "sam"
    env(SEGAGENT_TOOL="classical")
    assert Settings().tool == "classical"
    assert get_args(Settings.model_fields["tool"].annotation) == TOOL_NAMES


def test_fields_by_name_and_immutable(env, tmp_path):
    settings = Settings(data_dir=tmp_path, tool="classical", banned_subnets="169.254.0.0/16", max_request_mb=0.5)
    assert settings.data_dir == tmp_path and settings.max_request_bytes == 1 << 19
    with pytest.raises(ValidationError):
        settings.tool = "sam"
    with pytest.raises(ValidationError):
        Settings(no_such_setting=1)


def test_a_job_spec_round_trips_through_json_with_every_setting(env, tmp_path):
    settings = Settings(data_dir=tmp_path, policy="bench/tiny-vlm", policy_adapter="adapters/a",
                        sam_checkpoint="https://example.com/sam_vit_b.pth", sam_sha256="ab" * 32,
                        train_epochs=3, train_learning_rate=1e-3, train_lora_rank=8, train_held_out=0.3,
                        gate_turns=50, gate_episodes=4, agent_steps=2, gate_tolerance=0.05,
                        prompt_fields=("title",), banned_subnets="10.0.0.0/8,fe80::/10",
                        label_studio_api_key="token", basic_auth_user="u", basic_auth_pass="p",
                        redis_url="redis://:password@redis:6379/0")
    spec = JobSpec(scope="project-3", job_id="project-3_1_abcdef", settings=settings)
    text = json.dumps(spec.to_dict())
    assert "ab" * 32 in text
    assert "token" not in text and "password" not in text and '"p"' not in text  # credentials stay out
    again = JobSpec.model_validate(json.loads(text))
    assert again.scope == "project-3" and again.job_id == "project-3_1_abcdef"
    assert again.settings.model_dump(exclude=SECRETS) == settings.model_dump(exclude=SECRETS)
    assert again.settings.sam_sha256 == "ab" * 32 and again.settings.tool == "sam"
    assert again.train == spec.train and again.train.lora_rank == 8 and again.train.lora_alpha == 16
    assert again.gate == spec.gate and again.gate.steps == 2 and again.gate.max_turns == 50


def test_a_job_spec_resolves_the_data_dir(env, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = JobSpec(scope="shared", settings=Settings(data_dir="data"))
    assert spec.settings.data_dir == tmp_path / "data"
