"""Every setting of the backend, read from the environment once. Each default works offline on a CPU."""
from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path

# Never fetched, whatever a task says: link-local (cloud metadata services live there) and "this host".
DEFAULT_BANNED_SUBNETS = "169.254.0.0/16,0.0.0.0/8,fe80::/10,fd00:ec2::254/128,100.100.100.200/32"


def _int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    return int(value) if value else default


def _float(name: str, default: float) -> float:
    value = os.environ.get(name, "").strip()
    return float(value) if value else default


def _choice(name: str, choices: tuple[str, ...]) -> str:
    value = os.environ.get(name, "").strip().lower() or choices[0]
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, not {value!r}")
    return value


def _list(name: str, default: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in os.environ.get(name, default).split(",") if item.strip())


@dataclass(frozen=True)
class Settings:
    policy: str = ""
    policy_adapter: str = ""
    policy_model: str = ""
    policy_format: str = "segagent"
    agent_steps: int = 5
    agent_samples: int = 1
    prm: str = "tool"
    return_clicks: bool = False
    tool: str = "classical"
    sam_checkpoint: str = ""
    sam_sha256: str = ""
    data_dir: Path = Path("data")
    label_studio_url: str = ""
    label_studio_api_key: str = ""
    basic_auth_user: str = ""
    basic_auth_pass: str = ""
    redis_url: str = ""
    policy_scope: str = "project"
    train_every: int = 50
    train_interval: float = 0.0
    train_epochs: int = 1
    train_learning_rate: float = 2e-4
    gate_tolerance: float = 0.0
    gate_episodes: int = 16
    train_timeout: float = 6 * 3600.0
    prompt_fields: tuple[str, ...] = ("prompt", "text", "caption", "description")
    max_image_bytes: int = 50 << 20
    max_image_pixels: int = 80_000_000
    fetch_timeout: float = 20.0
    image_cache_bytes: int = 512 << 20
    tool_cache_bytes: int = 1024 << 20
    interactive_ttl: float = 600.0
    retention_days: float = 30.0
    max_request_bytes: int = 64 << 20
    banned_subnets: tuple = field(default_factory=lambda: _subnets(DEFAULT_BANNED_SUBNETS))

    @classmethod
    def from_env(cls) -> "Settings":
        sam_checkpoint = os.environ.get("SAM_CHECKPOINT", "").strip()
        return cls(
            policy=os.environ.get("SEGAGENT_POLICY", "").strip(),
            policy_adapter=os.environ.get("SEGAGENT_POLICY_ADAPTER", "").strip(),
            policy_model=os.environ.get("SEGAGENT_POLICY_MODEL", "").strip(),
            policy_format=os.environ.get("SEGAGENT_POLICY_FORMAT", "").strip() or "segagent",
            agent_steps=_int("SEGAGENT_AGENT_STEPS", 5),
            agent_samples=_int("SEGAGENT_AGENT_SAMPLES", 1),
            prm=os.environ.get("SEGAGENT_PRM", "").strip() or "tool",
            return_clicks=os.environ.get("SEGAGENT_RETURN_CLICKS", "").strip().lower() in ("1", "true", "yes"),
            tool=os.environ.get("SEGAGENT_TOOL", "").strip() or ("sam" if sam_checkpoint else "classical"),
            sam_checkpoint=sam_checkpoint,
            sam_sha256=os.environ.get("SAM_CHECKPOINT_SHA256", "").strip(),
            data_dir=Path(os.environ.get("SEGAGENT_DATA_DIR", "").strip() or "data"),
            label_studio_url=os.environ.get("LABEL_STUDIO_URL", "").strip().rstrip("/"),
            label_studio_api_key=os.environ.get("LABEL_STUDIO_API_KEY", "").strip(),
            basic_auth_user=os.environ.get("BASIC_AUTH_USER", ""),
            basic_auth_pass=os.environ.get("BASIC_AUTH_PASS", ""),
            redis_url=os.environ.get("REDIS_URL", "").strip(),
            policy_scope=_choice("SEGAGENT_POLICY_SCOPE", ("project", "shared")),
            train_every=_int("SEGAGENT_TRAIN_EVERY", 50),
            train_interval=_float("SEGAGENT_TRAIN_INTERVAL", 0.0),
            train_epochs=_int("SEGAGENT_TRAIN_EPOCHS", 1),
            train_learning_rate=_float("SEGAGENT_TRAIN_LR", 2e-4),
            gate_tolerance=_float("SEGAGENT_GATE_TOLERANCE", 0.0),
            gate_episodes=_int("SEGAGENT_GATE_EPISODES", 16),
            train_timeout=_float("SEGAGENT_TRAIN_TIMEOUT", 6 * 3600.0),
            prompt_fields=_list("SEGAGENT_PROMPT_FIELDS", "prompt,text,caption,description"),
            max_image_bytes=_int("SEGAGENT_MAX_IMAGE_MB", 50) << 20,
            max_image_pixels=_int("SEGAGENT_MAX_IMAGE_PIXELS", 80_000_000),
            fetch_timeout=_float("SEGAGENT_FETCH_TIMEOUT", 20.0),
            image_cache_bytes=_int("SEGAGENT_IMAGE_CACHE_MB", 512) << 20,
            tool_cache_bytes=_int("SEGAGENT_TOOL_CACHE_MB", 1024) << 20,
            interactive_ttl=_float("SEGAGENT_INTERACTIVE_TTL", 600.0),
            retention_days=_float("SEGAGENT_RETENTION_DAYS", 30.0),
            max_request_bytes=_int("SEGAGENT_MAX_REQUEST_MB", 64) << 20,
            banned_subnets=_subnets(os.environ.get("SEGAGENT_BANNED_SUBNETS", DEFAULT_BANNED_SUBNETS)),
        )

    @property
    def basic_auth(self) -> bool:
        return bool(self.basic_auth_user and self.basic_auth_pass)


def _subnets(spec: str) -> tuple:
    return tuple(ipaddress.ip_network(item.strip(), strict=False) for item in spec.split(",") if item.strip())
