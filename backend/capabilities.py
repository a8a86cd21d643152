"""What this backend can do, built once from the settings: the interactive tool, the policy, the quality
scorer and the agent. A capability that is off is still an object: it says why, and asking it for its
component raises CapabilityOff (a 503 that carries the reason), so request code never checks for None.
One setting stops the start instead: SEGAGENT_DEVICE=cuda without a usable GPU (DeviceError).
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np

from model.agent.loop import Agent, AgentConfig
from model.policies import Policy, PolicyError, make_policy
from model.quality.scorers import OfflineScorer, PolicyScorer
from model.settings import Settings
from model.tools import Segmenter, segmenter_from
from model.tools.loading import resolve_device

from .errors import CapabilityOff

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class Capability(Generic[T]):
    """A component, or the reason it is off."""

    what: str
    component: T | None
    reason: str | None = None

    @property
    def on(self) -> bool:
        return self.component is not None

    @property
    def name(self) -> str | None:
        """The component's name (a scorer has none: its class's), None when off."""
        if self.component is None:
            return None
        return getattr(self.component, "name", type(self.component).__name__)

    def get(self) -> T:
        if self.component is None:
            raise CapabilityOff(f"the {self.what} is off: {self.reason}")
        return self.component

    @classmethod
    def build(cls, what: str, make: Callable[[], T]) -> Capability[T]:
        """Build a component; any failure turns the capability off (logged), not the server."""
        try:
            component = make()
        except Exception as exc:
            log.error("the %s is off: %s: %s", what, type(exc).__name__, exc)
            return cls(what, None, f"{type(exc).__name__}: {exc}")
        capability = cls(what, component)
        log.info("%s: %s", what, capability.name)
        return capability


Scorer = Callable[[np.ndarray, np.ndarray, str], float]


@dataclass(frozen=True)
class Capabilities:
    tool: Capability[Segmenter]
    policy: Capability[Policy]
    scorer: Capability[Scorer]
    agent: Capability[Agent]
    # a project's own offline scorer (project_scorers.py), None for the shipped one; asked only when the scorer
    # is the offline one
    per_project: Callable[[str], Scorer | None] | None = None

    @classmethod
    def build(cls, settings: Settings, per_project: Callable[[str], Scorer | None] | None = None) -> Capabilities:
        if settings.device == "cuda":
            resolve_device("cuda")  # no usable GPU: DeviceError, the backend does not start (not the CPU, silently)
        tool: Capability[Segmenter] = Capability.build("interactive tool", lambda: segmenter_from(settings))
        if settings.policy:
            policy: Capability[Policy] = Capability.build("policy", lambda: make_policy(
                settings.policy, adapter=settings.policy_adapter or None, answer_format=settings.policy_format,
                model=settings.policy_model or None, device=settings.device))
        else:
            log.info("auto mode is off: no policy configured (SEGAGENT_POLICY)")
            policy = Capability("policy", None, "no policy configured")
        if policy.on and settings.prm == "policy":
            scorer: Capability[Scorer] = Capability(
                "quality scorer", PolicyScorer(policy.get(), observation=settings.policy_format))
        else:
            scorer = Capability.build("quality scorer", OfflineScorer)
        capabilities = cls(tool, policy, scorer, _agent(settings, tool, policy, scorer), per_project)
        devices = capabilities.devices
        log.info("devices: tool %s, policy %s (SEGAGENT_DEVICE=%s)", devices["tool"] or "off",
                 devices["policy"] or "off", settings.device)
        return capabilities

    @property
    def devices(self) -> dict[str, str | None]:
        """Where the tool and the policy run: cuda or cpu, remote for a policy behind an endpoint; None when off."""
        # the classical tool has no device: it runs on the CPU; only an in-process policy has one
        tool = getattr(self.tool.component.tool, "device", "cpu") if self.tool.component else None
        policy = getattr(self.policy.component, "device", "remote") if self.policy.component else None
        return {"tool": tool, "policy": policy}

    @property
    def concepts(self) -> bool:
        """Whether the tool finds every instance of a phrase (SAM 3): concept pre-annotation."""
        return self.tool.component is not None and self.tool.component.supports_concepts

    def estimate(self, image: np.ndarray, mask: np.ndarray, description: str, fallback: float,
                 project: str = "") -> float:
        """A mask's estimated IoU: the score of every prediction and of every submitted region, by the project's
        own scorer when it has one."""
        if not self.scorer.on:
            return fallback
        try:
            score = float(self._scorer(project)(image, mask, description))
        except (PolicyError, ValueError) as exc:
            log.warning("quality scorer failed, using the tool's score: %s", exc)
            return fallback
        if not 0.0 <= score <= 1.0:  # NaN too: a score is kept (a NOT NULL column) and written to Label Studio
            log.warning("quality scorer answered %s, using the tool's score", score)
            return fallback
        return score

    def _scorer(self, project: str) -> Scorer:
        scorer = self.scorer.get()
        if project and self.per_project is not None and isinstance(scorer, OfflineScorer):
            try:
                return self.per_project(project) or scorer
            except Exception:  # a broken version file: the shipped scorer answers, the log says why
                log.exception("project %s: its quality scorer does not load; the shipped one answers", project)
        return scorer


def _agent(settings: Settings, tool: Capability[Segmenter], policy: Capability[Policy],
           scorer: Capability[Scorer]) -> Capability[Agent]:
    if not policy.on:
        return Capability("agent", None, policy.reason)
    if not tool.on:
        return Capability("agent", None, f"the interactive tool is off ({tool.reason})")
    prm = scorer.component if settings.prm == "policy" else None
    return Capability("agent", make_agent(settings, tool.get(), policy.get(), prm))


def make_agent(settings: Settings, segmenter: Segmenter, policy: Policy, prm: Scorer | None) -> Agent:
    return Agent(segmenter, policy, AgentConfig.from_settings(settings), prm)
