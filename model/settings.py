"""Every setting of the backend, the CLI and the training jobs, in one model read from the environment.
Each default works offline on a CPU. `Settings()` reads the environment; `Settings(tool="sam", ...)`
sets fields by name (what is not given still comes from the environment)."""
from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# Never fetched, whatever a task says: link-local (cloud metadata services live there) and "this host".
DEFAULT_BANNED_SUBNETS = "169.254.0.0/16,0.0.0.0/8,fe80::/10,fd00:ec2::254/128,100.100.100.200/32"
# Credentials are compared byte for byte: their spaces are kept.
VERBATIM = frozenset({"BASIC_AUTH_USER", "BASIC_AUTH_PASS"})
# Credentials (a Redis URL may carry a password) stay out of job specs, which go to disk and to Redis.
# The basic auth user goes too: a job needs no credentials, and half of them would not validate.
SECRETS = frozenset({"label_studio_api_key", "basic_auth_user", "basic_auth_pass", "redis_url"})


class Settings(BaseSettings):
    model_config = SettingsConfigDict(frozen=True, validate_by_name=True, validate_by_alias=True)

    sam_checkpoint: str = Field("", alias="SAM_CHECKPOINT", description="SAM checkpoint: a path or an http(s) URL")
    sam_sha256: str = Field("", alias="SAM_CHECKPOINT_SHA256",
                            description="the SHA-256 a downloaded checkpoint must have")
    sam2_checkpoint: str = Field("", alias="SAM2_CHECKPOINT",
                                 description="SAM 2 checkpoint: a path or an http(s) URL")
    sam2_sha256: str = Field("", alias="SAM2_CHECKPOINT_SHA256",
                             description="the SHA-256 a downloaded SAM 2 checkpoint must have")
    sam2_config: str = Field("", alias="SAM2_CONFIG", description=(
        "the SAM 2 model config: one shipped in the sam2 package (configs/sam2.1/sam2.1_hiera_t.yaml, ...) or a "
        "YAML file; empty: the one of Meta's checkpoint file name"))
    # its default reads the checkpoints; ahead of the fields that can fail, so their errors come alone
    tool: Literal["classical", "sam", "sam2"] = Field(
        default_factory=lambda data: "sam" if data["sam_checkpoint"] else "sam2" if data["sam2_checkpoint"]
        else "classical", alias="SEGAGENT_TOOL",
        description="the interactive tool: sam when SAM_CHECKPOINT is set, sam2 when SAM2_CHECKPOINT is, else classical")
    device: Literal["auto", "cuda", "cpu"] = Field(
        "auto", alias="SEGAGENT_DEVICE", description=(
            "where the SAM tools, an in-process policy and its training run: auto (CUDA when usable), cuda (refuse "
            "to start without a usable GPU) or cpu"))
    policy: str = Field("", alias="SEGAGENT_POLICY", description=(
        "the policy: a local folder or hub id of a transformers VLM, or an OpenAI-compatible endpoint"))
    policy_adapter: str = Field("", alias="SEGAGENT_POLICY_ADAPTER",
                                description="a LoRA adapter (peft) on top of a local policy")
    policy_model: str = Field("", alias="SEGAGENT_POLICY_MODEL",
                              description="the model name to ask a remote endpoint for (empty: its first)")
    policy_format: Literal["segagent", "segagent-qwen"] = Field(
        "segagent", alias="SEGAGENT_POLICY_FORMAT", description=(
            "the policy family: what it is shown (segagent-qwen: SegAgent's full-resolution JPEG overlay) and how it "
            "writes points"))
    policy_python: str = Field("", alias="SEGAGENT_POLICY_PYTHON", description=(
        "the interpreter of the SegAgent-Qwen server's environment, where its fine-tuning runs as a worker process "
        "(empty: through REDIS_URL's segagent-training-qwen queue)"))
    agent_steps: int = Field(5, ge=1, alias="SEGAGENT_AGENT_STEPS",
                             description="actions per episode, the gate's episodes included")
    agent_samples: int = Field(1, ge=1, alias="SEGAGENT_AGENT_SAMPLES",
                               description="candidate actions per step (above 1: PRM-guided search)")
    prm: Literal["tool", "policy"] = Field("tool", alias="SEGAGENT_PRM",
                                           description="what scores candidates in the search")
    return_clicks: bool = Field(False, alias="SEGAGENT_RETURN_CLICKS",
                                description="return the agent's clicks as keypoint regions")
    interactive_score: Literal["tool", "quality"] = Field(
        "tool", alias="SEGAGENT_INTERACTIVE_SCORE",
        description="an interactive answer's score: the tool's own confidence (fast), or the quality scorer's")
    output: Literal["auto", "brush", "polygon"] = Field(
        "auto", alias="SEGAGENT_OUTPUT",
        description="predicted regions: brush masks or polygons (auto: brushes when the config has BrushLabels)")
    polygon_tolerance: float = Field(1.0, ge=0, alias="SEGAGENT_POLYGON_TOLERANCE",
                                     description="pixels a polygon's outline may move from the mask")
    data_dir: Path = Field(Path("data"), alias="SEGAGENT_DATA_DIR",
                           description="the annotation store, the trajectories, checkpoints, the registry")
    label_studio_url: str = Field("", alias="LABEL_STUDIO_URL",
                                  description="Label Studio's address (empty: what /setup sends)")
    label_studio_api_key: str = Field("", alias="LABEL_STUDIO_API_KEY", repr=False,
                                      description="Label Studio's token (empty: what /setup sends)")
    basic_auth_user: str = Field("", alias="BASIC_AUTH_USER", description="basic auth user of every route but /health")
    basic_auth_pass: str = Field("", alias="BASIC_AUTH_PASS", repr=False, description="basic auth password")
    redis_url: str = Field("", alias="REDIS_URL", repr=False,
                           description="the Redis whose RQ queue runs training jobs (empty: a local process)")
    prompt_fields: tuple[str, ...] = Field(("prompt", "text", "caption", "description"),
                                           alias="SEGAGENT_PROMPT_FIELDS",
                                           description="task data fields read as the object's description")
    max_image_mb: float = Field(50, gt=0, alias="SEGAGENT_MAX_IMAGE_MB", description="larger task images are refused")
    max_image_pixels: int = Field(80_000_000, gt=0, alias="SEGAGENT_MAX_IMAGE_PIXELS",
                                  description="larger task images are refused before decoding")
    fetch_timeout: float = Field(20.0, gt=0, alias="SEGAGENT_FETCH_TIMEOUT",
                                 description="seconds a whole image fetch may take, redirects included")
    banned_subnets: tuple[Network, ...] = Field(DEFAULT_BANNED_SUBNETS, alias="SEGAGENT_BANNED_SUBNETS",
                                                validate_default=True,
                                                description="image hosts in these subnets are never fetched")
    image_cache_mb: float = Field(512, ge=0, alias="SEGAGENT_IMAGE_CACHE_MB", description="decoded images, LRU")
    tool_cache_mb: float = Field(1024, ge=0, alias="SEGAGENT_TOOL_CACHE_MB", description="encoded images, LRU")
    interactive_ttl: float = Field(600.0, ge=0, alias="SEGAGENT_INTERACTIVE_TTL",
                                   description="seconds an object's clicks are remembered between requests")
    session_cache_mb: float = Field(256, ge=0, alias="SEGAGENT_SESSION_CACHE_MB",
                                    description="interactive sessions (each keeps its last mask), oldest evicted")
    preannotate_workers: int = Field(2, ge=1, le=16, alias="SEGAGENT_PREANNOTATE_WORKERS",
                                     description="tasks pre-annotated at once in the background")
    retention_days: float = Field(30.0, ge=0, alias="SEGAGENT_RETENTION_DAYS",
                                  description="days unannotated episodes and requests are kept")
    max_request_mb: float = Field(64, gt=0, alias="SEGAGENT_MAX_REQUEST_MB", description="larger request bodies get 413")
    policy_scope: Literal["project", "shared"] = Field("project", alias="SEGAGENT_POLICY_SCOPE",
                                                       description="a policy per project, or one shared by all")
    train_every: int = Field(50, ge=0, alias="SEGAGENT_TRAIN_EVERY",
                             description="a training job after this many new trajectories of a scope (0: off)")
    train_interval: float = Field(0.0, ge=0, alias="SEGAGENT_TRAIN_INTERVAL",
                                  description="seconds between periodic training jobs (0: off)")
    train_timeout: float = Field(6 * 3600.0, gt=0, alias="SEGAGENT_TRAIN_TIMEOUT",
                                 description="seconds an RQ worker gives one job")
    train_epochs: int = Field(1, ge=1, alias="SEGAGENT_TRAIN_EPOCHS", description="LoRA epochs of a job")
    train_learning_rate: float = Field(2e-4, gt=0, alias="SEGAGENT_TRAIN_LR", description="LoRA learning rate")
    train_lora_rank: int = Field(16, ge=1, alias="SEGAGENT_TRAIN_LORA_RANK", description="LoRA rank (alpha: twice it)")
    train_accumulation: int = Field(4, ge=1, alias="SEGAGENT_TRAIN_ACCUMULATION", description="turns per optimizer step")
    train_max_turns: int = Field(4000, ge=1, alias="SEGAGENT_TRAIN_MAX_TURNS",
                                 description="turns per epoch, newest first")
    train_held_out: float = Field(0.2, ge=0, lt=1, alias="SEGAGENT_TRAIN_HELD_OUT",
                                  description="fraction of tasks held out for the gate")
    train_seed: int = Field(0, alias="SEGAGENT_TRAIN_SEED", description="seed of the split and of training")
    gate_turns: int = Field(200, ge=1, alias="SEGAGENT_GATE_TURNS",
                            description="held-out steps the gate asks for their next action")
    gate_episodes: int = Field(16, ge=1, alias="SEGAGENT_GATE_EPISODES",
                               description="held-out objects the gate segments from scratch")
    gate_tolerance: float = Field(0.0, alias="SEGAGENT_GATE_TOLERANCE",
                                  description="how much worse than the active version a candidate may be")

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource,
                                   dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource,
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Keyword arguments first, then the environment by variable name only: no .env or secrets files."""
        return init_settings, Environment(settings_cls)

    @field_validator("policy_format", "prm", "policy_scope", "tool", "output", "device", "interactive_score",
                     mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("label_studio_url")
    @classmethod
    def _no_trailing_slash(cls, value: str) -> str:
        return value.rstrip("/")

    @field_validator("prompt_fields", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        return _items(value) if isinstance(value, str) else value

    @field_validator("banned_subnets", mode="before")
    @classmethod
    def _networks(cls, value: Any) -> tuple[Network, ...]:
        items = _items(value) if isinstance(value, str) else value
        return tuple(ipaddress.ip_network(item, strict=False) for item in items)

    @model_validator(mode="after")
    def _basic_auth_whole(self) -> Settings:
        if bool(self.basic_auth_user) != bool(self.basic_auth_pass):
            raise ValueError("set both BASIC_AUTH_USER and BASIC_AUTH_PASS, or neither: with only one of them basic "
                             "auth would be off and every route open")
        return self

    @property
    def basic_auth(self) -> bool:
        return bool(self.basic_auth_user and self.basic_auth_pass)

    @property
    def max_image_bytes(self) -> int:
        return _bytes(self.max_image_mb)

    @property
    def image_cache_bytes(self) -> int:
        return _bytes(self.image_cache_mb)

    @property
    def tool_cache_bytes(self) -> int:
        return _bytes(self.tool_cache_mb)

    @property
    def session_cache_bytes(self) -> int:
        return _bytes(self.session_cache_mb)

    @property
    def max_request_bytes(self) -> int:
        return _bytes(self.max_request_mb)


class Environment(PydanticBaseSettingsSource):
    """Each field from its environment variable, never by its field name; a blank value means the default."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return os.environ.get(field.alias or field_name), field.alias or field_name, False

    def __call__(self) -> dict[str, str]:
        values = {}
        for name in (field.alias for field in self.settings_cls.model_fields.values() if field.alias):
            value = os.environ.get(name, "")
            if value.strip():
                values[name] = value if name in VERBATIM else value.strip()
        return values


def _items(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


def _bytes(megabytes: float) -> int:
    return int(megabytes * (1 << 20))
