"""Each project's quality scorer: the shipped offline scorer corrected on the project's labels (quality_labels.py),
refitted every SEGAGENT_SCORER_REFIT_EVERY new labels and on Start training without a policy, gated on held-out
tasks (model/quality/project_scorer.py), versioned and rolled back with the policy's registry machinery (kind
"scorers": rows in the registry's database, each version's correction.json under the blob folder's
scorers/<scope>/versions/vN/). v0 is the shipped scorer. A version fitted on other features or other shipped
weights than this code's is not served (the shipped scorer is, and /status says why)."""
from __future__ import annotations

import logging
import threading
import time

from model.flywheel.registry import BASE_VERSION, Busy, UnknownVersion
from model.flywheel.scopes import is_project_id, scope_for
from model.flywheel.stores import scorer_registry
from model.quality import project_scorer
from model.quality.project_scorer import FEATURES_VERSION, TooFewLabels
from model.quality.scorers import OfflineScorer, QualityModel
from model.settings import Settings

from .quality_labels import QualityLabels

log = logging.getLogger(__name__)
CORRECTION = "correction.json"


class ProjectScorers:
    def __init__(self, settings: Settings, labels: QualityLabels):
        self.settings = settings
        self.labels = labels
        self.registry = scorer_registry(settings)
        self._prior: QualityModel | None = None
        self._prior_digest = ""
        self._loaded: dict[tuple[str, str], tuple[OfflineScorer | None, str | None]] = {}  # scorer, or why not
        self._lock = threading.Lock()

    def _shipped(self) -> tuple[QualityModel, str]:
        """The shipped scorer's model (every correction's prior) and its weights' digest, loaded once."""
        if self._prior is None:
            self._prior, self._prior_digest = QualityModel.load(), project_scorer.prior_digest()
        return self._prior, self._prior_digest

    def scorer_for(self, project: str) -> OfflineScorer | None:
        """The project's active scorer; None for the shipped one (v0, or a version this code cannot serve)."""
        if not is_project_id(project):
            return None
        scope = scope_for(project)
        version = self.registry.active(scope)
        return None if version == BASE_VERSION else self._served(scope, version)[0]

    def _served(self, scope: str, version: str) -> tuple[OfflineScorer | None, str | None]:
        """The version's scorer, or None and why the shipped scorer answers in its place; loaded once."""
        with self._lock:
            if (scope, version) not in self._loaded:
                self._loaded[(scope, version)] = self._load(scope, version)
            return self._loaded[(scope, version)]

    def _load(self, scope: str, version: str) -> tuple[OfflineScorer | None, str | None]:
        why = self._unservable(self.registry.version(scope, version))
        if not why:
            path = self.registry.version_dir(scope, version) / CORRECTION
            try:
                return OfflineScorer(project_scorer.load(path, self._shipped()[0])), None
            except (OSError, ValueError) as exc:  # a lost or damaged file: roll back, or refit over the shipped one
                detail = exc.strerror if isinstance(exc, OSError) else str(exc)[:200]  # no server path shown
                why = f"its {CORRECTION} does not load: {type(exc).__name__}: {detail}"
        log.warning("%s: scorer %s is not served (%s): the shipped scorer is", scope, version, why)
        return None, why

    def _unservable(self, meta: dict) -> str | None:
        if meta.get("features_version") != FEATURES_VERSION:
            return f"fitted on features {meta.get('features_version')}, these are {FEATURES_VERSION}"
        if meta.get("prior") != self._shipped()[1]:
            return "fitted on other shipped weights"
        return None

    def after_new_labels(self, project: str) -> dict | None:
        """Every SEGAGENT_SCORER_REFIT_EVERY labels of the project since its last refit, a refit."""
        every = self.settings.scorer_refit_every
        if every <= 0 or not is_project_id(project):
            return None
        fresh = self._fresh(project)
        if fresh < every:
            return None
        return self.refit(project, f"{fresh} new labels (SEGAGENT_SCORER_REFIT_EVERY={every})")

    def _fresh(self, project: str) -> int:
        return self.labels.count_after(project, self._fitted_through(scope_for(project)))

    def _fitted_through(self, scope: str) -> int:
        return max((m.get("through", 0) for m in self.registry.versions(scope)), default=0)

    def refit(self, project: str, trigger: str) -> dict:
        """Fit a candidate on the project's labels and promote it if the gate says so: its version, status (promoted
        or rejected), labels and gate; {"status": "skipped", "reason": ...} when the labels are too few for a gate or
        another refit of the project is under way. A refit skipped for one under way leaves its labels to that one,
        which looks again when done, so labels that came in meanwhile are fitted even if none come after them."""
        answer = self._refit_once(project, trigger)
        every = self.settings.scorer_refit_every
        while answer["status"] != "skipped" and every > 0 and (fresh := self._fresh(project)) >= every:
            answer = self._refit_once(project, f"{fresh} new labels came in during a refit")
        return answer

    def _refit_once(self, project: str, trigger: str) -> dict:
        scope = scope_for(project)
        prior, digest = self._shipped()
        try:
            with self.registry.lock(scope):
                features, ious, tasks, through = self.labels.training_set(project)
                if fitted := self._fitted_on(scope, len(ious), through, digest):
                    return _skipped(scope, f"no new labels: the active {fitted} was fitted on these {len(ious)}")
                active_name = self.registry.active(scope)
                active = self.scorer_for(project)  # None when a broken version is active: the shipped one serves
                try:
                    candidate, gate, promote = project_scorer.refit(
                        prior, features, ious, tasks, active.model if active else None,
                        strength=self.settings.scorer_prior_strength, tolerance=self.settings.scorer_gate_tolerance)
                except TooFewLabels as exc:
                    return _skipped(scope, str(exc) if len(ious) else "the project has no quality labels yet")
                name, folder = self.registry.allocate(scope)
                project_scorer.save(candidate, folder / CORRECTION, digest)
                meta = self.registry.register(scope, name, {
                    "kind": "scorer", "parent": active_name, "created": time.time(), "trigger": trigger,
                    "labels": len(ious), "through": through, "gate": gate, "features_version": FEATURES_VERSION,
                    "prior": digest, "status": "promoted" if promote else "rejected", "reason": gate["reason"],
                    "strength": self.settings.scorer_prior_strength}, promote_over=active_name, why=gate["reason"])
        except Busy:
            return _skipped(scope, "a refit of the project's scorer is under way already")
        log.info("%s: scorer %s %s: %s", scope, name, meta["status"], meta["reason"])
        return {"version": name, "status": meta["status"], "labels": len(ious), "gate": gate}

    def _fitted_on(self, scope: str, labels: int, through: int, digest: str) -> str | None:
        """The active version when it is the newest, is served, and was fitted on these very labels with these
        settings: a refit would register its twin (a rejected or rolled-back newest one is refitted: the gate
        compares with another active scorer)."""
        newest = (self.registry.versions(scope) or [{}])[-1]
        fitted = (newest.get("labels"), newest.get("through"), newest.get("prior"), newest.get("features_version"),
                  newest.get("strength"))
        if (newest and newest["name"] == self.registry.active(scope) and self._served(scope, newest["name"])[1] is None
                and fitted == (labels, through, digest, FEATURES_VERSION, self.settings.scorer_prior_strength)):
            return str(newest["name"])
        return None

    def rollback(self, project: str, version: str | None) -> dict:
        """Serve an earlier scorer of the project: `version` (v0: the shipped one), by default the active one's
        parent."""
        scope = scope_for(project)
        to = self.registry.rollback(scope, version or None)
        log.warning("%s: scorer rolled back, %s is active", scope, to)
        return {"status": "ok", "scope": scope, "kind": "scorer", "active_version": to}

    def scorer_versions(self, project: str) -> list[dict]:
        """The project's scorer versions, oldest first: version, created_at, labels, gate (Pearson and MAE of the
        candidate and of the scorer active before, on held-out labels), active; v0 (the shipped scorer) first."""
        scope = scope_for(project)
        try:
            active = self.registry.active(scope)
        except UnknownVersion:
            active = BASE_VERSION
        rows: list[dict] = [{"version": BASE_VERSION, "created_at": None, "labels": 0, "gate": {},
                             "active": active == BASE_VERSION, "status": "shipped"}]
        for meta in self.registry.versions(scope):
            rows.append({"version": meta["name"], "created_at": meta.get("created"), "labels": meta.get("labels", 0),
                         "gate": meta.get("gate", {}), "active": meta["name"] == active, "status": meta.get("status"),
                         "trigger": meta.get("trigger"), "unservable": self._served(scope, meta["name"])[1]})
        return rows

    def versions_by_project(self, project: str) -> dict[str, list[dict]]:
        """/versions' scorers: of one project, or of every project with labels or scorer versions."""
        return {name: self.scorer_versions(name) for name in ([project] if project else self.projects())
                if is_project_id(name)}

    def projects(self) -> list[str]:
        scoped = [s.split("-", 1)[1] for s in self.registry.scopes() if s.startswith("project-")]
        return sorted(set(scoped) | set(self.labels.projects()), key=lambda p: (len(p), p))

    def status(self, project: str) -> dict:
        """Per project: the active scorer version, its labels (by source, stale ones apart) and versions."""
        projects = [project] if project else self.projects()
        answer = {}
        for name in projects:
            if not is_project_id(name):
                continue
            scope = scope_for(name)
            active = self.registry.active(scope)
            unservable = self._served(scope, active)[1] if active != BASE_VERSION else None
            answer[name] = {"active_scorer": active, "served": BASE_VERSION if unservable else active,
                            "unservable": unservable, "versions": len(self.registry.versions(scope)),
                            "new_labels": self.labels.count_after(name, self._fitted_through(scope)),
                            **self.labels.counts(name)}
        return {"refit_every": self.settings.scorer_refit_every, "features_version": FEATURES_VERSION,
                "projects": answer}


def _skipped(scope: str, reason: str) -> dict:
    log.info("%s: no scorer refit: %s", scope, reason)
    return {"status": "skipped", "reason": reason}
