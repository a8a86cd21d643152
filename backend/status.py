"""/health (what Label Studio and a container's health check read) and /status (what an operator reads). Every
URL in them is shown without its user:password@ (a policy endpoint's, Label Studio's, one in an error)."""
from __future__ import annotations

import time
from typing import Any

from model.core.database import redact as redact_database

from .connection import redact
from .container import Backend


def redacted(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {key: redacted(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [redacted(item) for item in value]
    return value


def health(backend: Backend) -> dict:
    caps = backend.capabilities
    return redacted({
        "status": "UP",
        "model_class": "SegAgentBackend",
        "model_version": backend.server.base_version,
        "device": caps.devices,
        "capabilities": {
            "tool": {"on": caps.tool.on, "name": caps.tool.name, "error": caps.tool.reason, **tool_details(backend)},
            "policy": {"on": caps.policy.on, "name": caps.policy.name, "reason": caps.policy.reason},
            "quality": {"on": caps.scorer.on, "name": caps.scorer.name, "error": caps.scorer.reason},
            "training": {"on": backend.server.trainable is None, "runner": backend.dispatcher.name,
                         "reason": backend.server.trainable},
        },
    })


def tool_details(backend: Backend) -> dict[str, str]:
    """Where the tool runs and where its weights came from, for a tool that says where they came from (SAM 3)."""
    component = backend.capabilities.tool.component
    tool = component.tool if component is not None else None
    weights = getattr(tool, "weights", None)
    return {"device": str(getattr(tool, "device", "cpu")), "weights": str(weights)} if weights else {}


def storage(backend: Backend) -> dict[str, str]:
    """Where the stores' rows and the shared files are (the database's URL without its password)."""
    settings = backend.settings
    return {"database": redact_database(settings.database_url) if settings.database_url
            else f"sqlite ({settings.data_dir})", "blobs": str(settings.blobs)}


def status(backend: Backend, project: str) -> dict:
    caps = backend.capabilities
    label_studio = backend.connection.for_project(project)
    return redacted({
        "policy": caps.policy.name,
        "policy_reason": caps.policy.reason,
        "tool": caps.tool.name,
        "embedding_store": store.status() if caps.tool.on and (store := caps.tool.get().store) else None,
        "active_version": backend.server.serving(project).version,
        "annotations": backend.annotations.counts(),
        "trajectories": backend.trajectories.counts(project or None),
        "webhook_events": dict(backend.webhooks.events),
        "training": backend.training.status(project),
        "quality": {"scorer": caps.scorer.name, **backend.scorers.status(project)},
        "background_jobs": backend.dispatcher.status(),
        "derived_work": backend.ingest.work_status(),
        "preannotation": backend.preannotator.status(),
        "label_studio": {"url": label_studio.url or None, "token": bool(label_studio.key),
                         "webhook_auth": backend.webhook_auth.status(project)},
        "storage": storage(backend),
        "uptime_seconds": round(time.time() - backend.started, 1),
    })
