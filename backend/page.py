"""The figures of the flywheel page (GET / in a browser), per project: what the stores hold, read through the
composition root and never written. page_html.py draws them."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from model.flywheel.registry import BASE_VERSION, RegistryError
from model.flywheel.scopes import is_project_id

from .container import Backend

DAYS = 30  # the days the plots over time show, ending today (or with the last day that has data)
WORST = 10  # the worst annotations linked


@dataclass
class PolicyVersion:
    name: str
    status: str  # promoted, rejected; "base" for v0
    created: float | None
    active: bool
    gate: dict[str, Any]  # the candidate's figures and those of the version it was gated against
    reason: str = ""
    parent: str | None = None


@dataclass
class ProjectFigures:
    project: str
    label_studio: str  # the project's Label Studio address without any credential, "" when unknown
    trajectories: list[dict]  # {day, source, count}
    labels: list[dict]  # the quality scorer's labels by day and source
    preannotation: dict | None  # the queue's progress; None: never pre-annotated
    scope: str | None  # the registry scope whose policy versions serve the project
    policy_versions: list[PolicyVersion]
    scorer_versions: list[dict] | None  # {version, created_at, labels, gate, active, status}, oldest first;
    # None for a project id that has no scorer scope
    qualities: list[float]  # each scored annotation's worst region
    unscored: int
    worst: list[dict] = field(default_factory=list)  # {annotation_id, task_id, quality, labels, link}
    webhook_problem: str = ""  # why Label Studio's webhook could not be given the basic auth header; "" when fine

    @property
    def annotations(self) -> int:
        return len(self.qualities) + self.unscored


@dataclass
class PageFigures:
    generated: float
    tool: str | None
    policy: str | None
    policy_reason: str | None
    scorer: str | None
    training: str | None  # why training is off; None when it is on
    policy_scope: str
    projects: list[ProjectFigures]


def gather(backend: Backend, only: str = "") -> PageFigures:
    """Every project any store knows (or only the one asked for), numerically ordered."""
    caps = backend.capabilities
    projects = [only] if only else sorted(_projects(backend), key=lambda p: (not p.isdigit(), int(p) if p.isdigit()
                                                                              else 0, p))
    return PageFigures(generated=time.time(), tool=caps.tool.name, policy=caps.policy.name,
                       policy_reason=caps.policy.reason, scorer=caps.scorer.name, training=backend.server.trainable,
                       policy_scope=backend.settings.policy_scope,
                       projects=[_project(backend, project) for project in projects])


def _projects(backend: Backend) -> set[str]:
    projects = set(backend.annotations.projects()) | set(backend.trajectories.projects())
    projects |= set(backend.preannotator.queue.projects())
    projects |= {scope.split("-", 1)[1] for scope in backend.registry.scopes() if scope.startswith("project-")}
    projects |= set(backend.webhook_auth.projects_not_given())  # connected, but no event can come in yet
    return projects | set(backend.quality_labels.projects()) | set(backend.scorers.projects())


def _project(backend: Backend, project: str) -> ProjectFigures:
    qualities = backend.annotations.annotation_qualities(project)
    scored = [float(q) for q in qualities if q is not None]
    progress = backend.preannotator.queue.progress(project)
    scope, versions = _policy_versions(backend, project)
    worst = backend.ingest.quality(project, WORST)["annotations"]
    return ProjectFigures(
        project=project, label_studio=backend.connection.for_project(project).url,
        trajectories=backend.trajectories.daily_counts(project),
        labels=backend.quality_labels.daily_counts(project),
        preannotation=progress if progress["total"] else None, scope=scope, policy_versions=versions,
        scorer_versions=backend.scorers.scorer_versions(project) if is_project_id(project) else None,
        qualities=scored, unscored=len(qualities) - len(scored), worst=worst,
        webhook_problem=backend.webhook_auth.problem(project))


def _policy_versions(backend: Backend, project: str) -> tuple[str | None, list[PolicyVersion]]:
    """The scope serving the project and its versions, newest first, the base (v0) last."""
    try:
        scope = backend.server.scope(project)
    except RegistryError:  # not a Label Studio project id: no policy of its own
        return None, []
    registry = backend.registry
    active = registry.active(scope)
    versions = [PolicyVersion(name=meta["name"], status=str(meta.get("status", "")), created=meta.get("created"),
                              active=meta["name"] == active, gate=meta.get("gate") or {},
                              reason=str(meta.get("reason") or ""), parent=meta.get("parent"))
                for meta in reversed(registry.versions(scope))]
    base = PolicyVersion(name=BASE_VERSION, status="base", created=None, active=active == BASE_VERSION, gate={},
                         reason="the policy the settings name, untrained")
    return scope, [*versions, base]


def day_window(rows: list[dict], today: date | None = None, days: int = DAYS) -> list[str]:
    """The days a plot over time shows: up to `days` of them, from the first with data to today (or to the last
    with data, when that is later)."""
    today = today or datetime.now(UTC).date()
    seen = sorted(date.fromisoformat(row["day"]) for row in rows)
    last = max([today, *seen[-1:]])
    first = max(seen[0] if seen else last, last - timedelta(days=days - 1))
    return [(first + timedelta(days=offset)).isoformat() for offset in range((last - first).days + 1)]


def by_source(rows: list[dict], days: list[str]) -> dict[str, list[int]]:
    """{source: [count of each day]} over the window; the rows before it are left out."""
    index = {day: position for position, day in enumerate(days)}
    series: dict[str, list[int]] = {}
    for row in rows:
        counts = series.setdefault(str(row["source"]), [0] * len(days))
        if row["day"] in index:
            counts[index[row["day"]]] += int(row["count"])
    return series


def totals(rows: list[dict]) -> dict[str, int]:
    """All-time counts by source."""
    counted: dict[str, int] = {}
    for row in rows:
        counted[str(row["source"])] = counted.get(str(row["source"]), 0) + int(row["count"])
    return counted
