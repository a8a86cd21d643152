"""docs/configuration.md, rendered from the settings model: each field's variable, default, accepted values and
description. `python -m model settings-doc --out docs/configuration.md` (`make docs`) writes it;
tests/test_docs.py fails when the committed page is not what this renders."""
from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from pathlib import Path
from types import UnionType
from typing import Any, Literal, get_args, get_origin

import annotated_types
from pydantic.fields import FieldInfo

from model.settings import Settings

PAGE = Path("docs") / "configuration.md"
COMMAND = "make docs"

# Sections of the page, by field name; a field in none of them is listed last, under OTHER.
GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("The interactive tool", (
        "tool", "sam_checkpoint", "sam_sha256", "sam2_checkpoint", "sam2_sha256", "sam2_config", "sam3_checkpoint",
        "sam3_revision", "hf_token", "device")),
    ("The policy and the agent", (
        "policy", "policy_adapter", "policy_model", "policy_format", "policy_python", "agent_steps",
        "agent_samples", "prm", "return_clicks")),
    ("Predictions and interactive sessions", (
        "interactive_score", "output", "polygon_tolerance", "prompt_fields", "interactive_ttl",
        "session_cache_mb", "preannotate_workers", "concept_threshold", "concept_prompts", "concept_max_instances")),
    ("Label Studio, access and storage", (
        "label_studio_url", "label_studio_api_key", "basic_auth_user", "basic_auth_pass", "data_dir",
        "retention_days", "redis_url")),
    ("Limits and caches", (
        "max_request_mb", "max_image_mb", "max_image_pixels", "max_mask_pixels", "fetch_timeout", "banned_subnets",
        "image_cache_mb", "tool_cache_mb", "interactive_concurrency")),
    ("Training, the gate and versions", (
        "policy_scope", "train_every", "train_interval", "train_timeout", "train_epochs", "train_learning_rate",
        "train_lora_rank", "train_accumulation", "train_max_turns", "train_held_out", "train_seed", "gate_turns",
        "gate_episodes", "gate_tolerance")),
)
OTHER = "Other settings"

# What `make serve` reads besides the settings (the Makefile's and backend/wsgi.py's defaults).
SERVE_VARIABLES: tuple[tuple[str, str, str], ...] = (
    ("PORT", "9090", "the port the backend listens on"),
    ("HOST", "0.0.0.0", "the address it listens on (`127.0.0.1`: this machine only)"),
    ("THREADS", "8", "request threads in its one gunicorn process"),
    ("LOG_LEVEL", "INFO", "the log level: `DEBUG`, `INFO`, `WARNING` or `ERROR`"),
)

INTRO = f"""\
# Configuration

<!-- Generated from model/settings.py by `{COMMAND}`: edit the field descriptions there, not this page. -->

Every setting is an environment variable, read by one model (`model/settings.py`) that the backend, the CLI's
defaults and the training jobs share; each default works offline on a CPU. A blank value means the default; a
bad one stops the start with the variable's name. Only the environment is read: no `.env` file.

The object's text prompt comes from, in order: a `TextArea` in the interactive context, the first non-empty task
data field of `SEGAGENT_PROMPT_FIELDS`, the selected (or only) label.
"""

SERVE_INTRO = """\
## What `make serve` reads

Not settings of the model: `make serve` passes them to gunicorn and the log. The Docker image reads `PORT`,
`THREADS` and `LOG_LEVEL` too, and always listens on `0.0.0.0`.
"""

OUTRO = """\
The SegAgent-Qwen policy server (`SEGAGENT_REGISTRY`, `--device`) is configured on its own: see
[the policy and the agent](policy.md). The benchmarks' own variables (`DATA`, `FLYWHEEL_DATASET`,
`FLYWHEEL_LIMIT`) are in [benchmarks](benchmarks.md).
"""


def render() -> str:
    """The whole page, from the settings model's fields as they are now."""
    fields = Settings.model_fields
    grouped = [name for _, names in GROUPS for name in names]
    missing = [name for name in grouped if name not in fields]
    if missing:
        raise KeyError(f"model/settings_docs.py groups fields that model/settings.py lacks: {missing}")
    groups = [*GROUPS, (OTHER, tuple(name for name in fields if name not in grouped))]
    parts = [INTRO]
    for title, names in groups:
        if names:
            parts.append(_section(title, [fields[name] for name in names]))
    parts.append(SERVE_INTRO + "\n" + _table(("variable", "default", "meaning"),
                                             [(f"`{name}`", f"`{default}`", meaning)
                                              for name, default, meaning in SERVE_VARIABLES]))
    parts.append(OUTRO)
    return "\n".join(parts)


def default_text(field: FieldInfo) -> str:
    """The default as a person would set it; a computed one points at the description, which says how."""
    if field.default_factory is not None:
        return "computed: see the meaning"
    value = field.default
    if value is None or value == "" or value == ():
        return "empty"
    return f"`{_setting_text(value)}`"


def _setting_text(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, Path):
        return str(value) if value.is_absolute() or str(value).startswith(".") else f"./{value}"
    if isinstance(value, tuple):
        return ",".join(_setting_text(item) for item in value)
    return str(value)


def values_text(field: FieldInfo) -> str:
    """What the variable accepts, from the field's type and bounds."""
    annotation = field.annotation
    if get_origin(annotation) is Literal:
        return ", ".join(f"`{choice}`" for choice in get_args(annotation))
    if annotation is bool:
        return "`true` or `false` (also `1`/`0`, `yes`/`no`)"
    if get_origin(annotation) is tuple:
        item = get_args(annotation)[0]
        if isinstance(item, UnionType) and ipaddress.IPv4Network in get_args(item):
            return "subnets (CIDR), comma-separated"
        return "names, comma-separated"
    kinds: dict[Any, str] = {int: "an integer", float: "a number", str: "text", Path: "a folder"}
    kind = kinds.get(annotation, str(annotation))
    return " ".join([kind, *_bounds(field)])


def _bounds(field: FieldInfo) -> list[str]:
    signs = {annotated_types.Ge: ("ge", ">="), annotated_types.Gt: ("gt", ">"), annotated_types.Le: ("le", "<="),
             annotated_types.Lt: ("lt", "<")}
    found = []
    for constraint in field.metadata:
        if type(constraint) in signs:
            attribute, sign = signs[type(constraint)]
            found.append(f"{sign} {_setting_text(getattr(constraint, attribute))}")
    return [" and ".join(found)] if found else []


def _section(title: str, fields: list[FieldInfo]) -> str:
    rows = [(f"`{field.alias}`", default_text(field), values_text(field), field.description or "")
            for field in fields]
    return f"## {title}\n\n" + _table(("variable", "default", "values", "meaning"), rows)


def _table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> str:
    lines = [header, tuple("---" for _ in header), *rows]
    return "".join("| " + " | ".join(cell.replace("|", "\\|") for cell in line) + " |\n" for line in lines)
